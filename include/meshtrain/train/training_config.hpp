#pragma once
#include <cstddef>
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
  // Gradient all-reduce: buckets of about this many bytes (whole tensors each), started
  // during backward as soon as each is complete when overlap_communication is on.
  std::size_t bucket_bytes = 4u << 20;
  bool overlap_communication = true;

  // Throws ConfigError naming the field and value. data_axis_size is the number of shards
  // each global batch is split into.
  void validate(int data_axis_size) const;
};

}  // namespace meshtrain
