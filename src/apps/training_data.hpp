#pragma once
// The run's data on every rank. Trainer::fit takes the full dataset on every rank (each rank
// trains on its shard of every global batch, picked by rank 0's plan), so files are read once,
// on rank 0, checked there and broadcast.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/data/row_source.hpp"
#include "meshtrain/nn/normalize.hpp"
#include "meshtrain/nn/types.hpp"
#include "run_config.hpp"

namespace meshtrain::app {

struct TrainingData {
  // data.loading = "memory" (and synthetic data): every set in memory on every rank.
  HostMatrix x, y;          // (samples, inputs), (samples, outputs)
  // One sample's shape in the files, e.g. (s, s, C) for a field; (inputs) for synthetic data.
  std::vector<std::size_t> x_sample_shape, y_sample_shape;
  HostMatrix val_x, val_y;    // zero rows when there is no validation set
  HostMatrix test_x, test_y;  // zero rows when there is no test set
  // data.normalize = "pointwise": the inputs above are encoded with the training inputs'
  // statistics, and output_decoder holds the training targets' (the model decodes with them).
  std::optional<PointwiseNormalizer> output_decoder;
  std::string description;  // for the run's header

  // data.loading = "sharded": the sets as readers of the files instead (x, y, val_*, test_*
  // empty), with the normalisation's input encoding applied as rows are read.
  std::shared_ptr<const NpyRowSource> train_source, val_source, test_source;
  std::size_t samples = 0;         // training samples, either way
  std::size_t features = 0;        // inputs + outputs per sample
  std::size_t held_out_samples = 0;  // validation + test
  std::uint32_t crc = 0;           // rank 0: CRC-32 of x then y as trained (float32)

  bool sharded() const { return train_source != nullptr; }
  bool has_validation() const { return val_x.extent(0) > 0 || val_source; }
  bool has_test() const { return test_x.extent(0) > 0 || test_source; }
};

// Collective. With data.loading = "sharded", rank 0 checks the files' headers, shapes and
// values and computes the normalisation's statistics and the data's CRC by streaming the
// files (holding a few thousand rows at a time), and every rank opens the files by rank 0's
// plan. Otherwise: synthetic data is generated on every rank (deterministic in the seed); files
// are read by rank 0, checked against each other and the model (an MLP's widths; an FNO's
// fields of shape (N, s, s, C)), and broadcast.
// Throws the same ConfigError on every rank for any problem, naming the config key and the
// file.
TrainingData load_training_data(const RunConfig& config, Communicator& comm);

}  // namespace meshtrain::app
