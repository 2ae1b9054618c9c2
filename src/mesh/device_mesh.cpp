#include "meshtrain/mesh/device_mesh.hpp"

#include <string>

#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

DeviceMesh::DeviceMesh(MPI_Comm base, const DistributedConfig& config) {
  int world_size = 1;
  check_mpi(MPI_Comm_size(base, &world_size), "MPI_Comm_size");
  config.validate(world_size);
  config_ = config.resolved(world_size);
  world_ = std::make_unique<MpiCommunicator>(base);
  rank_ = world_->rank();
  size_ = world_->size();

  const std::size_t ndim = config_.mesh_shape.size();
  coords_.assign(ndim, 0);
  int rest = rank_;
  for (std::size_t a = ndim; a-- > 0;) {
    coords_[a] = rest % config_.mesh_shape[a];
    rest /= config_.mesh_shape[a];
  }

  auto* world_mpi = static_cast<MpiCommunicator*>(world_.get());
  for (std::size_t a = 0; a < ndim; ++a) {
    // The ranks that share every coordinate but a's form a's communicator, ordered by a's.
    int color = 0;
    for (std::size_t b = 0; b < ndim; ++b) {
      color = color * config_.mesh_shape[b] + (b == a ? 0 : coords_[b]);
    }
    MPI_Comm split = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(world_mpi->comm(), color, coords_[a], &split), "MPI_Comm_split");
    axis_comms_.push_back(std::make_unique<MpiCommunicator>(split));
    MPI_Comm_free(&split);
  }
}

DeviceMesh::~DeviceMesh() = default;

bool DeviceMesh::has_axis(const std::string& name) const {
  for (const auto& n : config_.mesh_axis_names) {
    if (n == name) return true;
  }
  return false;
}

int DeviceMesh::axis_index(const std::string& name) const {
  for (std::size_t a = 0; a < config_.mesh_axis_names.size(); ++a) {
    if (config_.mesh_axis_names[a] == name) return static_cast<int>(a);
  }
  throw ConfigError("mesh axis '" + name + "': not in mesh_axis_names " +
                    format_axis_names(config_.mesh_axis_names));
}

int DeviceMesh::axis_size(const std::string& name) const {
  return config_.mesh_shape[axis_index(name)];
}

int DeviceMesh::axis_coord(const std::string& name) const { return coords_[axis_index(name)]; }

Communicator& DeviceMesh::axis_comm(const std::string& name) const {
  return *axis_comms_[axis_index(name)];
}

}  // namespace meshtrain
