#pragma once
// Where a trainer reads the rows of its batches from when the data set is not in its memory:
// Trainer::prepare(std::shared_ptr<const RowSource>) reads, for every step, only the rows of
// this rank's shard of the global batch (under the epoch's permutation), one step ahead in a
// background thread. Host only (no Kokkos).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "meshtrain/data/npy_shards.hpp"

namespace meshtrain {

class RowSource {
 public:
  virtual ~RowSource() = default;
  virtual std::size_t rows() const = 0;
  virtual std::size_t x_columns() const = 0;
  virtual std::size_t y_columns() const = 0;
  // Rows rows[i] of the inputs into x (rows.size() x x_columns(), row-major) and of the
  // targets into y. Called from the trainer's prefetch thread while the caller computes: it
  // must be safe to call concurrently with itself.
  virtual void read(std::span<const std::int64_t> rows, float* x, float* y) const = 0;
};

// Inputs and targets from .npy files or shards, rows counted across the shards; the inputs
// optionally encoded per feature as (x - mean) / scale in float32, exactly as
// PointwiseNormalizer::encode does it to a matrix.
class NpyRowSource final : public RowSource {
 public:
  // Throws ConfigError when x and y do not have the same number of rows (naming y's spec).
  NpyRowSource(NpyShards x, NpyShards y);
  // Throws ConfigError for another feature count than x_columns().
  void encode_inputs(std::vector<float> mean, std::vector<float> scale);

  std::size_t rows() const override { return x_.rows(); }
  std::size_t x_columns() const override { return x_.columns(); }
  std::size_t y_columns() const override { return y_.columns(); }
  void read(std::span<const std::int64_t> rows, float* x, float* y) const override;

  const NpyShards& x() const { return x_; }
  const NpyShards& y() const { return y_; }

 private:
  NpyShards x_, y_;
  std::vector<float> mean_, scale_;  // empty: the inputs as they are
};

}  // namespace meshtrain
