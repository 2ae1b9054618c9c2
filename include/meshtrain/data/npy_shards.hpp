#pragma once
// A data set stored as one .npy file or as several (shards), read by rows without holding it:
// the files' headers are checked once (read_npy_info), and rows are read with pread from the
// payloads, counted across the shards in order. Host only (no Kokkos).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "meshtrain/data/npy.hpp"

namespace meshtrain {

// The .npy files a data path names: a file; a directory (its *.npy files, sorted by name);
// or a glob pattern (*, ?, [...]; the matches sorted by name). Throws ConfigError starting
// with spec when it names nothing.
std::vector<std::string> expand_npy_paths(const std::string& spec);

class NpyShards {
 public:
  NpyShards() = default;
  // Reads and checks every file's header: the same sample shape (the shape after the first
  // axis) in every shard, dtype '<f4' or '<f8', C order. Throws ConfigError naming the file.
  static NpyShards open(const std::string& spec);
  // The shards of a plan already checked (plan_text() of another rank's open()): nothing is
  // read but the files are opened.
  static NpyShards from_plan(const std::string& plan_text);
  // The paths, dtypes, payload offsets and shapes, as text, for from_plan().
  std::string plan_text() const;

  const std::string& spec() const { return spec_; }
  const std::vector<NpyInfo>& files() const { return files_; }
  std::size_t rows() const { return starts_.empty() ? 0 : static_cast<std::size_t>(starts_.back()); }
  std::size_t columns() const { return columns_; }
  // One sample's shape: {1} for a 1-D array, else the shape after the first axis.
  const std::vector<std::size_t>& sample_shape() const { return sample_shape_; }

  // Rows rows[i] (global, across shards) into out, rows.size() x columns(), as float32.
  // Consecutive rows of one shard are read with one pread. Thread-safe. Throws
  // std::runtime_error naming the file when a read fails (the file changed after its check).
  void read_rows(std::span<const std::int64_t> rows, float* out) const;
  // Rows [begin, begin + count).
  void read_range(std::size_t begin, std::size_t count, float* out) const;
  // Every row in order, chunk_rows at a time (0: as many as fit in about 1 MiB):
  // visit(first_row, rows, values).
  void scan(std::size_t chunk_rows,
            const std::function<void(std::size_t, std::size_t, const float*)>& visit) const;
  // Throws ConfigError "PATH: holds nan at flat index I" (the index in that file) for the
  // first NaN or Inf, as read_npy does, or for a float64 value out of float32 range.
  void check_values(std::size_t chunk_rows = 0) const;

 private:
  struct Descriptors;
  void build(std::string spec, std::vector<NpyInfo> files);
  // Rows [begin, begin + count) all in shard `file`, as float32.
  void read_contiguous(std::size_t file, std::size_t begin, std::size_t count, float* out) const;
  std::size_t chunk(std::size_t chunk_rows) const;  // 0: about 1 MiB of rows

  std::string spec_;
  std::vector<NpyInfo> files_;
  std::vector<std::uint64_t> starts_;  // files_.size() + 1 cumulative row counts
  std::size_t columns_ = 0;
  std::vector<std::size_t> sample_shape_;
  std::shared_ptr<Descriptors> fds_;
};

}  // namespace meshtrain
