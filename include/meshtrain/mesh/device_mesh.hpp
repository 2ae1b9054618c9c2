#pragma once
#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/mesh/distributed_config.hpp"

namespace meshtrain {

// The devices of a job laid out as an N-D array (row-major: the last axis varies fastest,
// as jax.sharding.Mesh lays out a reshaped device list), with one communicator per axis:
// the ranks that differ only in that axis's coordinate.
class DeviceMesh {
 public:
  // Collective over base. Validates config against base's size (throws ConfigError).
  DeviceMesh(MPI_Comm base, const DistributedConfig& config);
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
  Communicator& axis_comm(const std::string& name) const;
  Communicator& world() const { return *world_; }

 private:
  DistributedConfig config_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> coords_;
  std::unique_ptr<Communicator> world_;
  std::vector<std::unique_ptr<Communicator>> axis_comms_;
};

}  // namespace meshtrain
