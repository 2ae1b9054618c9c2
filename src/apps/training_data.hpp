#pragma once
// The run's data on every rank. Trainer::fit takes the full dataset on every rank (each rank
// trains on its shard of every global batch, picked by rank 0's plan), so files are read once,
// on rank 0, checked there and broadcast.
#include <optional>
#include <string>
#include <vector>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/nn/normalize.hpp"
#include "meshtrain/nn/types.hpp"
#include "run_config.hpp"

namespace meshtrain::app {

struct TrainingData {
  HostMatrix x, y;          // (samples, inputs), (samples, outputs)
  // One sample's shape in the files, e.g. (s, s, C) for a field; (inputs) for synthetic data.
  std::vector<std::size_t> x_sample_shape, y_sample_shape;
  HostMatrix val_x, val_y;    // zero rows when there is no validation set
  HostMatrix test_x, test_y;  // zero rows when there is no test set
  // data.normalize = "pointwise": the inputs above are encoded with the training inputs'
  // statistics, and output_decoder holds the training targets' (the model decodes with them).
  std::optional<PointwiseNormalizer> output_decoder;
  std::string description;  // for the run's header

  bool has_validation() const { return val_x.extent(0) > 0; }
  bool has_test() const { return test_x.extent(0) > 0; }
};

// Collective. Synthetic data is generated on every rank (deterministic in the seed); files
// are read by rank 0, checked against each other and the model (an MLP's widths; an FNO's
// fields of shape (N, s, s, C)), and broadcast.
// Throws the same ConfigError on every rank for any problem, naming the config key and the
// file.
TrainingData load_training_data(const RunConfig& config, Communicator& comm);

}  // namespace meshtrain::app
