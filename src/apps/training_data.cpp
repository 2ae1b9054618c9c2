#include "training_data.hpp"

#include <algorithm>
#include <tuple>

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
// sample_shape receives the file's shape after its first axis.
HostMatrix read_matrix(const RunConfig& config, const std::string& key, const std::string& path,
                       std::vector<std::size_t>& sample_shape) {
  NpyArray array;
  try {
    array = read_npy(path);
    sample_shape.assign(array.shape.begin() + 1, array.shape.end());
    if (sample_shape.empty()) sample_shape = {1};
    array = as_matrix(std::move(array));
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

std::string shape_text(const std::vector<std::size_t>& shape) {
  std::vector<int> dims;
  for (std::size_t d : shape) dims.push_back(static_cast<int>(d));
  return format_shape(dims);
}

// An FNO's x and y: fields (N, s1, s2, C) on one grid.
void check_fields(const RunConfig& config, const std::string& x_key, const std::string& x_path,
                  const std::vector<std::size_t>& xs, const std::string& y_key,
                  const std::string& y_path, const std::vector<std::size_t>& ys) {
  for (const auto& [key, path, shape] :
       {std::tie(x_key, x_path, xs), std::tie(y_key, y_path, ys)}) {
    if (shape.size() != 3) {
      throw ConfigError(config.where(key) + ": " + path + ": samples of shape " +
                        shape_text(shape) + "; type = \"fno\" (" + config.where("model.type") +
                        ") needs fields, an array of shape (N, s1, s2, channels)");
    }
  }
  if (xs[0] != ys[0] || xs[1] != ys[1]) {
    throw ConfigError(config.where(y_key) + ": " + y_path + ": a grid of " +
                      std::to_string(ys[0]) + " x " + std::to_string(ys[1]) + ", but " + x_key +
                      " has " + std::to_string(xs[0]) + " x " + std::to_string(xs[1]));
  }
}

// x and y of one set against each other and the model.
void check_pair(const RunConfig& config, const std::string& x_key, const std::string& x_path,
                const HostMatrix& x, const std::string& y_key, const std::string& y_path,
                const HostMatrix& y) {
  if (y.extent(0) != x.extent(0)) {
    throw ConfigError(config.where(y_key) + ": " + y_path + ": " + std::to_string(y.extent(0)) +
                      " samples, but " + x_key + " has " + std::to_string(x.extent(0)));
  }
  if (config.model.type != ModelType::Mlp) return;
  const std::vector<int>& widths = config.model.widths;
  const auto inputs = static_cast<std::size_t>(widths.front());
  const auto outputs = static_cast<std::size_t>(widths.back());
  if (x.extent(1) != inputs) {
    throw ConfigError(config.where(x_key) + ": " + x_path + ": shape " + shape_text(x) + " has " +
                      std::to_string(x.extent(1)) + " features per sample, but the model takes " +
                      std::to_string(inputs) + " inputs (" + config.where("model.widths") + ")");
  }
  if (y.extent(1) != outputs) {
    throw ConfigError(config.where(y_key) + ": " + y_path + ": shape " + shape_text(y) + " has " +
                      std::to_string(y.extent(1)) + " targets per sample, but the model has " +
                      std::to_string(outputs) + " outputs (" + config.where("model.widths") + ")");
  }
}

TrainingData synthetic_data(const RunConfig& config) {
  const DataSettings& d = config.data;
  if (config.model.type != ModelType::Mlp) {
    throw ConfigError(config.where("data.synthetic") +
                      ": the reference data is not a field on a grid; type = \"fno\" trains "
                      "on .npy files of shape (N, s1, s2, channels)");
  }
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
  out.x_sample_shape = {static_cast<std::size_t>(d.dim)};
  out.y_sample_shape = {1};
  out.description = "synthetic reference, x=" + shape_text(out.x) + ", y=" + shape_text(out.y);
  return out;
}

void broadcast_shape(Communicator& comm, std::vector<std::size_t>& shape) {
  std::size_t n = shape.size();
  broadcast_size(comm, n);
  shape.resize(n);
  for (std::size_t& d : shape) broadcast_size(comm, d);
}

}  // namespace

namespace {

// The validation or the test set: both files, checked like the training files, with the
// training samples' shape for a field model.
struct HeldOutSet {
  const char* name;  // "validation", "test"
  std::string x_key, y_key;
  const std::string& x_path;
  const std::string& y_path;
  HostMatrix& x;
  HostMatrix& y;
};

void read_held_out(const RunConfig& config, const HeldOutSet& h, const TrainingData& train) {
  std::vector<std::size_t> x_shape, y_shape;
  h.x = read_matrix(config, h.x_key, h.x_path, x_shape);
  h.y = read_matrix(config, h.y_key, h.y_path, y_shape);
  check_pair(config, h.x_key, h.x_path, h.x, h.y_key, h.y_path, h.y);
  if (config.model.type == ModelType::Fno &&
      (x_shape != train.x_sample_shape || y_shape != train.y_sample_shape)) {
    throw ConfigError(config.where(h.x_key) + ": " + h.x_path + ": samples of shape " +
                      shape_text(x_shape) + " and " + shape_text(y_shape) +
                      ", but the training samples are " + shape_text(train.x_sample_shape) +
                      " and " + shape_text(train.y_sample_shape));
  }
}

TrainingData read_files(const RunConfig& config, Communicator& comm) {
  const DataSettings& d = config.data;
  TrainingData out;
  std::vector<HeldOutSet> held_out;
  if (!d.val_x.empty()) {
    held_out.push_back({"validation", "data.val_x", "data.val_y", d.val_x, d.val_y, out.val_x,
                        out.val_y});
  }
  if (!d.test_x.empty()) {
    held_out.push_back({"test", "data.test_x", "data.test_y", d.test_x, d.test_y, out.test_x,
                        out.test_y});
  }
  on_root_sharing_errors(comm, [&] {
    out.x = read_matrix(config, "data.train_x", d.train_x, out.x_sample_shape);
    out.y = read_matrix(config, "data.train_y", d.train_y, out.y_sample_shape);
    check_pair(config, "data.train_x", d.train_x, out.x, "data.train_y", d.train_y, out.y);
    if (config.model.type == ModelType::Fno) {
      check_fields(config, "data.train_x", d.train_x, out.x_sample_shape, "data.train_y",
                   d.train_y, out.y_sample_shape);
    }
    for (const HeldOutSet& h : held_out) read_held_out(config, h, out);
  });
  broadcast_shape(comm, out.x_sample_shape);
  broadcast_shape(comm, out.y_sample_shape);
  broadcast_matrix(comm, out.x, "data.train_x");
  broadcast_matrix(comm, out.y, "data.train_y");
  out.description =
      d.train_x + " " + shape_text(out.x) + ", " + d.train_y + " " + shape_text(out.y);
  for (const HeldOutSet& h : held_out) {
    broadcast_matrix(comm, h.x, h.x_key);
    broadcast_matrix(comm, h.y, h.y_key);
    out.description += std::string("; ") + h.name + " " + shape_text(h.x);
  }
  return out;
}

// Every rank computes the same statistics from the same training data (in double, in row
// order), so no communication is needed.
void normalize(const RunConfig& config, TrainingData& data) {
  if (config.data.normalize != Normalization::Pointwise) return;
  try {
    const PointwiseNormalizer inputs = PointwiseNormalizer::fit(data.x);
    for (HostMatrix* m : {&data.x, &data.val_x, &data.test_x}) {
      if (m->extent(0) > 0) inputs.encode(*m);
    }
    data.output_decoder = PointwiseNormalizer::fit(data.y);
  } catch (const ConfigError& e) {
    throw ConfigError(config.where("data.normalize") + ": " + e.what());
  }
  data.description += "; normalized pointwise";
}

}  // namespace

TrainingData load_training_data(const RunConfig& config, Communicator& comm) {
  TrainingData out = config.data.synthetic.empty() ? read_files(config, comm) : synthetic_data(config);
  normalize(config, out);
  return out;
}

}  // namespace meshtrain::app
