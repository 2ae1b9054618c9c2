#include "meshtrain/mesh/device_mesh.hpp"

#include <atomic>
#include <string>

#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
std::atomic<int> g_alive{0};
}

DeviceMesh::DeviceMesh(const DistributedConfig& config, int world_size, int rank)
    : rank_(rank), size_(world_size) {
  config.validate(world_size);
  config_ = config.resolved(world_size);
  const std::size_t ndim = config_.mesh_shape.size();
  coords_.assign(ndim, 0);
  int rest = rank_;
  for (std::size_t a = ndim; a-- > 0;) {
    coords_[a] = rest % config_.mesh_shape[a];
    rest /= config_.mesh_shape[a];
  }
  ++g_alive;
}

DeviceMesh::~DeviceMesh() { --g_alive; }

int DeviceMesh::alive() { return g_alive.load(); }

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

int DeviceMesh::axis_group(const std::string& name) const {
  const auto axis = static_cast<std::size_t>(axis_index(name));
  // The mixed-radix number of every other coordinate (this axis's digit held at 0).
  int color = 0;
  for (std::size_t b = 0; b < coords_.size(); ++b) {
    color = color * config_.mesh_shape[b] + (b == axis ? 0 : coords_[b]);
  }
  return color;
}

}  // namespace meshtrain
