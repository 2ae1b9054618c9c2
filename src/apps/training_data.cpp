#include "training_data.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <tuple>
#include <utility>

#include "meshtrain/comm/broadcast.hpp"
#include "meshtrain/data/dataset.hpp"
#include "meshtrain/data/npy.hpp"
#include "meshtrain/data/npy_shards.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/mesh/distributed_config.hpp"
#include "root_io.hpp"

namespace meshtrain::app {

namespace {

std::string shape_text(std::size_t rows, std::size_t columns) {
  return format_shape({static_cast<int>(rows), static_cast<int>(columns)});
}

std::string shape_text(const HostMatrix& m) { return shape_text(m.extent(0), m.extent(1)); }

std::string shape_text(const std::vector<std::size_t>& shape);

// Reads the .npy file(s) a data path names (a file, a directory of shards or a glob), the
// shards' rows one after the other.
NpyArray read_shards(const std::string& spec) {
  const std::vector<std::string> paths = expand_npy_paths(spec);
  NpyArray array = read_npy(paths.front());
  for (std::size_t i = 1; i < paths.size(); ++i) {
    NpyArray part = read_npy(paths[i]);
    const std::vector<std::size_t> want(array.shape.begin() + 1, array.shape.end());
    const std::vector<std::size_t> got(part.shape.begin() + 1, part.shape.end());
    if (got != want) {
      throw ConfigError(paths[i] + ": samples of shape " + shape_text(got) + ", but " +
                        paths.front() + " has " + shape_text(want) + " (every shard of " + spec +
                        " needs the same sample shape)");
    }
    array.shape[0] += part.shape[0];
    array.data.insert(array.data.end(), part.data.begin(), part.data.end());
  }
  return array;
}

// Reads one .npy file as a (rows, columns) matrix; errors name the key that gave the path.
// sample_shape receives the file's shape after its first axis.
HostMatrix read_matrix(const RunConfig& config, const std::string& key, const std::string& path,
                       std::vector<std::size_t>& sample_shape) {
  NpyArray array;
  try {
    array = read_shards(path);
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
// (rows, columns) of x and y.
using Extents = std::pair<std::size_t, std::size_t>;

void check_pair(const RunConfig& config, const std::string& x_key, const std::string& x_path,
                Extents x, const std::string& y_key, const std::string& y_path, Extents y) {
  if (y.first != x.first) {
    throw ConfigError(config.where(y_key) + ": " + y_path + ": " + std::to_string(y.first) +
                      " samples, but " + x_key + " has " + std::to_string(x.first));
  }
  if (config.model.type != ModelType::Mlp) return;
  const std::vector<int>& widths = config.model.widths;
  const auto inputs = static_cast<std::size_t>(widths.front());
  const auto outputs = static_cast<std::size_t>(widths.back());
  if (x.second != inputs) {
    throw ConfigError(config.where(x_key) + ": " + x_path + ": shape " +
                      shape_text(x.first, x.second) + " has " + std::to_string(x.second) +
                      " features per sample, but the model takes " + std::to_string(inputs) +
                      " inputs (" + config.where("model.widths") + ")");
  }
  if (y.second != outputs) {
    throw ConfigError(config.where(y_key) + ": " + y_path + ": shape " +
                      shape_text(y.first, y.second) + " has " + std::to_string(y.second) +
                      " targets per sample, but the model has " + std::to_string(outputs) +
                      " outputs (" + config.where("model.widths") + ")");
  }
}

void check_pair(const RunConfig& config, const std::string& x_key, const std::string& x_path,
                const HostMatrix& x, const std::string& y_key, const std::string& y_path,
                const HostMatrix& y) {
  check_pair(config, x_key, x_path, Extents{x.extent(0), x.extent(1)}, y_key, y_path,
             Extents{y.extent(0), y.extent(1)});
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

// data.loading = "sharded": one set's x and y files.
struct ShardedSet {
  const char* name;  // "training", "validation", "test"
  std::string x_key, y_key;
  std::string x_path, y_path;
  NpyShards x, y;
  std::string x_plan, y_plan;
};

NpyShards open_shards(const RunConfig& config, const std::string& key, const std::string& path) {
  try {
    NpyShards shards = NpyShards::open(path);
    if (shards.rows() == 0) {
      throw ConfigError(path + ": no samples (shape " + shape_text(0, shards.columns()) + ")");
    }
    return shards;
  } catch (const ConfigError& e) {
    throw ConfigError(config.where(key) + ": " + e.what());
  }
}

constexpr std::size_t kScanRows = 0;  // NpyShards::scan: about 1 MiB of rows at a time

// Rank 0: every file's header, the sets' shapes against each other and the model, and every
// value (NaN, Inf), streamed.
void check_sharded_sets(const RunConfig& config, std::vector<ShardedSet>& sets) {
  for (ShardedSet& set : sets) {
    set.x = open_shards(config, set.x_key, set.x_path);
    set.y = open_shards(config, set.y_key, set.y_path);
    check_pair(config, set.x_key, set.x_path, Extents{set.x.rows(), set.x.columns()}, set.y_key,
               set.y_path, Extents{set.y.rows(), set.y.columns()});
    if (config.model.type != ModelType::Fno) continue;
    if (&set == &sets.front()) {
      check_fields(config, set.x_key, set.x_path, set.x.sample_shape(), set.y_key, set.y_path,
                   set.y.sample_shape());
    } else if (set.x.sample_shape() != sets.front().x.sample_shape() ||
               set.y.sample_shape() != sets.front().y.sample_shape()) {
      throw ConfigError(config.where(set.x_key) + ": " + set.x_path + ": samples of shape " +
                        shape_text(set.x.sample_shape()) + " and " +
                        shape_text(set.y.sample_shape()) + ", but the training samples are " +
                        shape_text(sets.front().x.sample_shape()) + " and " +
                        shape_text(sets.front().y.sample_shape()));
    }
  }
  // The relative error divides by each target's norm (the trainer checks sets in memory).
  if (config.training.loss == Loss::RelativeL2) {
    for (const ShardedSet& set : sets) {
      set.y.scan(kScanRows, [&](std::size_t first, std::size_t n, const float* rows) {
        for (std::size_t r = 0; r < n; ++r) {
          const float* row = rows + r * set.y.columns();
          if (std::all_of(row, row + set.y.columns(), [](float v) { return v == 0.0f; })) {
            throw ConfigError(config.where("training.loss") + " relative_l2: " + set.name +
                              " target " + std::to_string(first + r) +
                              " is all zeros, and its relative error is undefined");
          }
        }
      });
    }
  }
  for (ShardedSet& set : sets) {
    for (const auto& [key, shards] : {std::tie(set.x_key, set.x), std::tie(set.y_key, set.y)}) {
      try {
        shards.check_values();
      } catch (const ConfigError& e) {
        throw ConfigError(config.where(key) + ": " + e.what());
      }
    }
  }
}

// Rank 0: PointwiseNormalizer::fit's statistics of a set, streamed in two passes.
PointwiseNormalizer stream_statistics(const NpyShards& shards) {
  PointwiseStatistics statistics(shards.columns());
  shards.scan(kScanRows, [&](std::size_t, std::size_t n, const float* rows) {
    statistics.add_to_sums(rows, n);
  });
  shards.scan(kScanRows, [&](std::size_t, std::size_t n, const float* rows) {
    statistics.add_to_squares(rows, n);
  });
  return statistics.result();
}

void broadcast_normalizer(Communicator& comm, PointwiseNormalizer& n) {
  std::size_t features = n.mean.size();
  broadcast_size(comm, features);
  n.mean.resize(features);
  n.scale.resize(features);
  broadcast_floats(comm, n.mean.data(), features);
  broadcast_floats(comm, n.scale.data(), features);
}

// Every rank opens the files of rank 0's plans; an error on any rank is an error on all.
std::shared_ptr<NpyRowSource> open_source(Communicator& comm, ShardedSet& set) {
  broadcast_string(comm, set.x_plan);
  broadcast_string(comm, set.y_plan);
  std::string error;
  std::shared_ptr<NpyRowSource> source;
  try {
    if (comm.rank() != 0) {
      set.x = NpyShards::from_plan(set.x_plan);
      set.y = NpyShards::from_plan(set.y_plan);
    }
    source = std::make_shared<NpyRowSource>(set.x, set.y);
  } catch (const ConfigError& e) {
    error = e.what();
  }
  std::int32_t failed = error.empty() ? 0 : 1;
  comm.allreduce(std::span<std::int32_t>(&failed, 1), ReduceOp::Max);
  if (failed) {
    throw ConfigError(set.x_key + ": " +
                      (error.empty() ? "another rank cannot open the " + std::string(set.name) +
                                           " files"
                                     : error));
  }
  return source;
}

TrainingData read_sharded(const RunConfig& config, Communicator& comm) {
  const DataSettings& d = config.data;
  std::vector<ShardedSet> sets;
  sets.push_back({"training", "data.train_x", "data.train_y", d.train_x, d.train_y, {}, {}, {}, {}});
  if (!d.val_x.empty()) {
    sets.push_back({"validation", "data.val_x", "data.val_y", d.val_x, d.val_y, {}, {}, {}, {}});
  }
  if (!d.test_x.empty()) {
    sets.push_back({"test", "data.test_x", "data.test_y", d.test_x, d.test_y, {}, {}, {}, {}});
  }
  const bool pointwise = d.normalize == Normalization::Pointwise;
  TrainingData out;
  PointwiseNormalizer inputs, outputs;
  on_root_sharing_errors(comm, [&] {
    check_sharded_sets(config, sets);
    const ShardedSet& train = sets.front();
    if (pointwise) {
      try {
        inputs = stream_statistics(train.x);
        outputs = stream_statistics(train.y);
      } catch (const ConfigError& e) {
        throw ConfigError(config.where("data.normalize") + ": " + e.what());
      }
    }
    // The data's CRC as the in-memory path computes it: x as trained (encoded), then y.
    std::uint32_t crc = 0;
    std::vector<float> encoded;
    train.x.scan(kScanRows, [&](std::size_t, std::size_t n, const float* rows) {
      if (!pointwise) {
        crc = crc32(rows, n * train.x.columns() * sizeof(float), crc);
        return;
      }
      const std::size_t features = train.x.columns();
      encoded.assign(rows, rows + n * features);
      for (std::size_t r = 0; r < n; ++r) {
        for (std::size_t f = 0; f < features; ++f) {
          float& v = encoded[r * features + f];
          v = (v - inputs.mean[f]) / inputs.scale[f];
        }
      }
      crc = crc32(encoded.data(), encoded.size() * sizeof(float), crc);
    });
    train.y.scan(kScanRows, [&](std::size_t, std::size_t n, const float* rows) {
      crc = crc32(rows, n * train.y.columns() * sizeof(float), crc);
    });
    out.crc = crc;
    for (ShardedSet& set : sets) {
      set.x_plan = set.x.plan_text();
      set.y_plan = set.y.plan_text();
    }
  });
  if (pointwise) {
    broadcast_normalizer(comm, inputs);
    broadcast_normalizer(comm, outputs);
    out.output_decoder = outputs;
  }
  std::vector<std::shared_ptr<NpyRowSource>> sources;
  for (ShardedSet& set : sets) {
    sources.push_back(open_source(comm, set));
    if (pointwise) sources.back()->encode_inputs(inputs.mean, inputs.scale);
  }
  const ShardedSet& train = sets.front();
  out.train_source = sources[0];
  out.x_sample_shape = train.x.sample_shape();
  out.y_sample_shape = train.y.sample_shape();
  out.samples = train.x.rows();
  out.features = train.x.columns() + train.y.columns();
  auto files = [](const NpyShards& s) {
    return s.files().size() == 1 ? std::string() : " in " + std::to_string(s.files().size()) + " files";
  };
  out.description = "sharded, " + d.train_x + " " + shape_text(train.x.rows(), train.x.columns()) +
                    files(train.x) + ", " + d.train_y + " " +
                    shape_text(train.y.rows(), train.y.columns()) + files(train.y);
  for (std::size_t i = 1; i < sets.size(); ++i) {
    (std::string(sets[i].name) == "validation" ? out.val_source : out.test_source) = sources[i];
    out.held_out_samples += sets[i].x.rows();
    out.description += std::string("; ") + sets[i].name + " " +
                       shape_text(sets[i].x.rows(), sets[i].x.columns()) + files(sets[i].x);
  }
  if (pointwise) out.description += "; normalized pointwise";
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
  if (config.data.synthetic.empty() && config.data.loading == DataLoading::Sharded) {
    return read_sharded(config, comm);
  }
  TrainingData out = config.data.synthetic.empty() ? read_files(config, comm) : synthetic_data(config);
  normalize(config, out);
  out.samples = out.x.extent(0);
  out.features = out.x.extent(1) + out.y.extent(1);
  out.held_out_samples = out.val_x.extent(0) + out.test_x.extent(0);
  return out;
}

}  // namespace meshtrain::app
