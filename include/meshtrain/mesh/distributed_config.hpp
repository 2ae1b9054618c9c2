#pragma once
#include <string>
#include <vector>

#include "meshtrain/choices.hpp"

namespace meshtrain {

// How the devices of a job are arranged, as in the reference tutorial:
// DistributedConfig(mesh_shape=(2,), mesh_axis_names=("data",), strategy="data").
struct DistributedConfig {
  std::vector<int> mesh_shape;               // empty: one axis spanning every rank
  std::vector<std::string> mesh_axis_names;  // empty: ("data",) for a 1-D mesh
  Strategy strategy = Strategy::Data;
  // Gradient collectives: Auto (NCCL when a GPU is visible and NCCL was built, else MPI),
  // Mpi or Nccl.
  CommBackend comm = CommBackend::Auto;
  // Watchdog: abort the job when a rank has waited this long in one collective (0: off).
  // MESHTRAIN_COLLECTIVE_TIMEOUT (seconds) overrides it.
  double collective_timeout_seconds = 600.0;
  // Compare every collective's kind, type, count and sequence number across ranks before
  // running it (MESHTRAIN_DEBUG_COLLECTIVES=1 turns it on too). Costs a small all-gather each.
  bool debug_collectives = false;
  // The flight recorder's ring: this many of each rank's last collectives (0: off).
  // MESHTRAIN_FLIGHT_RECORDS overrides it.
  int flight_records = 2048;

  // The config with defaults filled in for a job of world_size ranks.
  DistributedConfig resolved(int world_size) const;
  // Throws ConfigError (naming the field and value) unless the resolved config describes a
  // mesh of exactly world_size devices with distinct, non-empty axis names that the strategy
  // can use.
  void validate(int world_size) const;

  int num_devices() const;  // product of mesh_shape
  bool operator==(const DistributedConfig&) const = default;
};

// "(2,)" or "(2, 2)", as Python prints a tuple of ints.
std::string format_shape(const std::vector<int>& shape);
// "('data',)" or "('data', 'fsdp')", as Python prints a tuple of strings.
std::string format_axis_names(const std::vector<std::string>& names);

}  // namespace meshtrain
