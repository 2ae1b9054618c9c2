#include "training_data.hpp"

#include <algorithm>

#include "meshtrain/data/dataset.hpp"
#include "meshtrain/data/npy.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/mesh/distributed_config.hpp"
#include "root_io.hpp"

namespace meshtrain::app {

namespace {

std::string shape_text(const HostMatrix& m) {
  return format_shape({static_cast<int>(m.extent(0)), static_cast<int>(m.extent(1))});
}

// Reads one .npy file as a (rows, columns) matrix; errors name the key that gave the path.
HostMatrix read_matrix(const RunConfig& config, const std::string& key, const std::string& path) {
  NpyArray array;
  try {
    array = as_matrix(read_npy(path));
  } catch (const ConfigError& e) {
    throw ConfigError(config.where(key) + ": " + e.what());
  }
  HostMatrix m(key, array.shape[0], array.shape[1]);
  std::copy(array.data.begin(), array.data.end(), m.data());
  if (m.extent(0) == 0) {
    throw ConfigError(config.where(key) + ": " + path + ": no samples (shape " + shape_text(m) +
                      ")");
  }
  return m;
}

// x and y of one set against each other and the model.
void check_pair(const RunConfig& config, const std::string& x_key, const std::string& x_path,
                const HostMatrix& x, const std::string& y_key, const std::string& y_path,
                const HostMatrix& y) {
  const std::vector<int>& widths = config.model.widths;
  const auto inputs = static_cast<std::size_t>(widths.front());
  const auto outputs = static_cast<std::size_t>(widths.back());
  if (x.extent(1) != inputs) {
    throw ConfigError(config.where(x_key) + ": " + x_path + ": shape " + shape_text(x) + " has " +
                      std::to_string(x.extent(1)) + " features per sample, but the model takes " +
                      std::to_string(inputs) + " inputs (" + config.where("model.widths") + ")");
  }
  if (y.extent(0) != x.extent(0)) {
    throw ConfigError(config.where(y_key) + ": " + y_path + ": " + std::to_string(y.extent(0)) +
                      " samples, but " + x_key + " has " + std::to_string(x.extent(0)));
  }
  if (y.extent(1) != outputs) {
    throw ConfigError(config.where(y_key) + ": " + y_path + ": shape " + shape_text(y) + " has " +
                      std::to_string(y.extent(1)) + " targets per sample, but the model has " +
                      std::to_string(outputs) + " outputs (" + config.where("model.widths") + ")");
  }
}

TrainingData synthetic_data(const RunConfig& config) {
  const DataSettings& d = config.data;
  const std::vector<int>& widths = config.model.widths;
  if (d.dim != widths.front()) {
    throw ConfigError(config.where("data.dim") + ": " + std::to_string(d.dim) +
                      " features, but the model takes " + std::to_string(widths.front()) +
                      " inputs (" + config.where("model.widths") + ")");
  }
  if (widths.back() != 1) {
    throw ConfigError(config.where("model.widths") +
                      ": the reference data has one target, but "
                      "the model has " +
                      std::to_string(widths.back()) + " outputs");
  }
  // Exactly what distributed_pde trains on, so that the same seed gives the same numbers.
  ReferenceData data = make_reference_data(d.samples, d.dim, config.training.seed);
  TrainingData out;
  out.x = data.x;
  out.y = data.y;
  out.description = "synthetic reference, x=" + shape_text(out.x) + ", y=" + shape_text(out.y);
  return out;
}

}  // namespace

TrainingData load_training_data(const RunConfig& config, Communicator& comm) {
  if (!config.data.synthetic.empty()) return synthetic_data(config);

  const DataSettings& d = config.data;
  const bool validation = !d.val_x.empty();
  TrainingData out;
  on_root_sharing_errors(comm, [&] {
    out.x = read_matrix(config, "data.train_x", d.train_x);
    out.y = read_matrix(config, "data.train_y", d.train_y);
    check_pair(config, "data.train_x", d.train_x, out.x, "data.train_y", d.train_y, out.y);
    if (validation) {
      out.val_x = read_matrix(config, "data.val_x", d.val_x);
      out.val_y = read_matrix(config, "data.val_y", d.val_y);
      check_pair(config, "data.val_x", d.val_x, out.val_x, "data.val_y", d.val_y, out.val_y);
    }
  });
  broadcast_matrix(comm, out.x, "data.train_x");
  broadcast_matrix(comm, out.y, "data.train_y");
  if (validation) {
    broadcast_matrix(comm, out.val_x, "data.val_x");
    broadcast_matrix(comm, out.val_y, "data.val_y");
  }
  out.description =
      d.train_x + " " + shape_text(out.x) + ", " + d.train_y + " " + shape_text(out.y);
  if (validation) out.description += "; validation " + shape_text(out.val_x);
  return out;
}

}  // namespace meshtrain::app
