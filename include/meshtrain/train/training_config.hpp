#pragma once
#include <cstdint>
#include <string>

#include "meshtrain/mesh/distributed_config.hpp"

namespace meshtrain {

// A training run, with the reference tutorial's names and defaults.
struct TrainingConfig {
  int num_epochs = 20;
  double learning_rate = 1e-3;
  int batch_size = 32;  // global: split across the mesh's "data" axis
  std::uint64_t seed = 0;
  std::string optimizer = "adam";  // "adam", "adamw" or "sgd"
  DistributedConfig distributed_config;

  // Throws ConfigError naming the field and value. data_axis_size is the number of shards
  // each global batch is split into.
  void validate(int data_axis_size) const;
};

}  // namespace meshtrain
