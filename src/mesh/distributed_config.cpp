#include "meshtrain/mesh/distributed_config.hpp"

#include <set>
#include <string>

#include "meshtrain/choices.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

std::string format_shape(const std::vector<int>& shape) {
  std::string out = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

std::string format_axis_names(const std::vector<std::string>& names) {
  std::string out = "(";
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ", ";
    out += "'" + names[i] + "'";
  }
  if (names.size() == 1) out += ",";
  return out + ")";
}

int DistributedConfig::num_devices() const {
  long long product = 1;
  for (int d : mesh_shape) {
    product *= d;
    if (product > (1LL << 30)) return -1;
  }
  return static_cast<int>(product);
}

DistributedConfig DistributedConfig::resolved(int world_size) const {
  DistributedConfig out = *this;
  if (out.mesh_shape.empty()) out.mesh_shape = {world_size};
  if (out.mesh_axis_names.empty() && out.mesh_shape.size() == 1) out.mesh_axis_names = {"data"};
  return out;
}

void DistributedConfig::validate(int world_size) const {
  const DistributedConfig c = resolved(world_size);
  const std::string shape = format_shape(c.mesh_shape);
  for (int d : c.mesh_shape) {
    if (d < 1) {
      throw ConfigError("mesh_shape", shape + ": every dimension must be at least 1");
    }
  }
  const int devices = c.num_devices();
  if (devices != world_size) {
    throw ConfigError("mesh_shape", shape + ": describes " +
                                        (devices < 0 ? std::string("too many")
                                                     : std::to_string(devices)) +
                                        " devices but the job has " +
                                        std::to_string(world_size) + " rank" +
                                        (world_size == 1 ? "" : "s"));
  }
  const std::string names = format_axis_names(c.mesh_axis_names);
  if (c.mesh_axis_names.size() != c.mesh_shape.size()) {
    throw ConfigError("mesh_axis_names", names + ": " +
                                             std::to_string(c.mesh_axis_names.size()) +
                                             " name(s) for a " +
                                             std::to_string(c.mesh_shape.size()) +
                                             "-D mesh " + shape);
  }
  std::set<std::string> seen;
  for (const auto& name : c.mesh_axis_names) {
    if (name.empty()) throw ConfigError("mesh_axis_names", names + ": an axis name is empty");
    if (!seen.insert(name).second) {
      throw ConfigError("mesh_axis_names", names + ": axis '" + name + "' appears twice");
    }
  }
  // The choices are enums: only a value cast from an integer can be outside their tables.
  check_choice("strategy", c.strategy);
  check_choice("comm", c.comm);
  if (!(c.collective_timeout_seconds >= 0) || c.collective_timeout_seconds > 1e7) {
    throw ConfigError("collective_timeout",
                      std::to_string(c.collective_timeout_seconds) +
                          ": must be a number of seconds >= 0 (0 turns the watchdog off)");
  }
  if (c.flight_records < 0 || c.flight_records > (1 << 24)) {
    throw ConfigError("flight_records", std::to_string(c.flight_records) +
                                            ": must be between 0 (off) and 16777216");
  }
  if (c.strategy == Strategy::Data && !seen.count("data")) {
    throw ConfigError("mesh_axis_names", names + ": strategy 'data' needs an axis named 'data' "
                                                 "to split the batch over");
  }
  if (c.strategy == Strategy::Fsdp && !seen.count("fsdp") && !seen.count("data")) {
    throw ConfigError("mesh_axis_names", names + ": strategy 'fsdp' needs an axis named 'fsdp' "
                                                 "or 'data' to shard over");
  }
}

}  // namespace meshtrain
