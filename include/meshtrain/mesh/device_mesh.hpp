#pragma once
// The devices of a job laid out as an N-D array, as arithmetic: no communication. The
// runtime (runtime/process_groups.hpp) splits the job's communicator along each axis with
// the colours and keys computed here.
#include <string>
#include <vector>

#include "meshtrain/mesh/distributed_config.hpp"

namespace meshtrain {

// Row-major (the last axis varies fastest, as jax.sharding.Mesh lays out a reshaped device
// list). The ranks that differ only in axis a's coordinate form a's group, ordered by it.
class DeviceMesh {
 public:
  // Validates config against world_size (throws ConfigError naming the field) and resolves
  // its defaults. rank is this process's rank in the job, 0 <= rank < world_size.
  DeviceMesh(const DistributedConfig& config, int world_size, int rank);
  ~DeviceMesh();
  DeviceMesh(const DeviceMesh&) = delete;
  DeviceMesh& operator=(const DeviceMesh&) = delete;

  const DistributedConfig& config() const { return config_; }
  const std::vector<int>& shape() const { return config_.mesh_shape; }
  const std::vector<std::string>& axis_names() const { return config_.mesh_axis_names; }
  const std::vector<int>& coords() const { return coords_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  bool has_axis(const std::string& name) const;
  int axis_index(const std::string& name) const;  // throws ConfigError for an unknown axis
  int axis_size(const std::string& name) const;
  int axis_coord(const std::string& name) const;
  // The same for every rank of this rank's group along the axis, and different from every
  // other group's: the colour for splitting the job's communicator; the key is axis_coord.
  int axis_group(const std::string& name) const;

  // DeviceMesh objects alive in this process (a run builds exactly one).
  static int alive();

 private:
  DistributedConfig config_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> coords_;
};

}  // namespace meshtrain
