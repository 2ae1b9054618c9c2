#include "meshtrain/train/checkpoint_state.hpp"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <ctime>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string_view>
#include <vector>

#include "meshtrain/comm/broadcast.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/nn/dense.hpp"
#include "meshtrain/optim/optimizer.hpp"
#include "meshtrain/train/sharded_checkpoint.hpp"

namespace meshtrain {

namespace {

constexpr const char* kFormatKey = "meshtrain.format";
constexpr const char* kFormatName = "training_state";
constexpr const char* kVersionKey = "meshtrain.format_version";
constexpr const char* kShardedFormatName = kShardedIndexFormat;

std::string format_g17(double value) {
  if (std::isnan(value)) return "nan";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
}

std::string join_ints(const std::vector<int>& values, const char* separator) {
  std::string out;
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += separator;
    out += std::to_string(values[i]);
  }
  return out;
}

std::string format_list(const std::vector<double>& values) {
  std::string out = "[";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ", ";
    out += format_g17(values[i]);
  }
  return out + "]";
}

std::string format_shape_list(const std::vector<std::size_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// The time now in UTC, as strftime's format has it.
std::string utc_now(const char* format = "%Y-%m-%dT%H:%M:%SZ") {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, format, &tm);
  return buffer;
}

// Which moments the optimizer keeps; mirrors the allocation in Optimizer's constructor.
struct MomentKinds {
  bool first = false;
  bool second = false;
};
MomentKinds moment_kinds(OptimizerType optimizer) {
  const OptimizerConfig c = OptimizerConfig::of(optimizer);
  const bool sgd = c.type == OptimizerType::Sgd;
  return {!sgd || c.momentum != 0.0, !sgd};
}

// "key=value;..." as a map, for telling which settings differ.
std::map<std::string, std::string> signature_fields(const std::string& signature) {
  std::map<std::string, std::string> fields;
  std::size_t start = 0;
  while (start <= signature.size()) {
    const std::size_t end = std::min(signature.find(';', start), signature.size());
    const std::string item = signature.substr(start, end - start);
    const std::size_t eq = item.find('=');
    if (eq != std::string::npos) fields[item.substr(0, eq)] = item.substr(eq + 1);
    start = end + 1;
  }
  return fields;
}

std::string describe_differences(const std::string& stored, const std::string& current) {
  const auto a = signature_fields(stored);
  const auto b = signature_fields(current);
  std::set<std::string> keys;
  for (const auto& [k, v] : a) keys.insert(k);
  for (const auto& [k, v] : b) keys.insert(k);
  std::string out;
  for (const auto& key : keys) {
    const auto ia = a.find(key);
    const auto ib = b.find(key);
    const std::string va = ia == a.end() ? "-" : ia->second;
    const std::string vb = ib == b.end() ? "-" : ib->second;
    if (va == vb) continue;
    if (!out.empty()) out += ", ";
    out += key + " (checkpoint " + va + ", this run " + vb + ")";
  }
  return out;
}

// Reads a checkpoint's metadata, every error naming the checkpoint and the key.
class MetadataReader {
 public:
  MetadataReader(const Checkpoint& checkpoint, std::string source)
      : metadata_(checkpoint.metadata), source_(std::move(source)) {}

  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  [[noreturn]] void fail(const std::string& why) const {
    throw ConfigError("checkpoint " + source_ + ": " + why);
  }

  const std::string& text(const std::string& key) const {
    const auto it = metadata_.find(key);
    if (it == metadata_.end()) fail("metadata " + key + " is missing");
    return it->second;
  }

  std::int64_t integer(const std::string& key, std::int64_t min) const {
    const std::string& t = text(key);
    std::int64_t value = 0;
    const auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), value);
    if (t.empty() || ec != std::errc() || ptr != t.data() + t.size() || value < min) {
      fail("metadata " + key + " '" + t + "': expected an integer of at least " +
           std::to_string(min));
    }
    return value;
  }

  double real(const std::string& key) const { return parse_real(key, text(key)); }

  // "[a, b, ...]"; NaN allowed (an epoch without validation).
  std::vector<double> list(const std::string& key) const {
    const std::string& t = text(key);
    if (t.size() < 2 || t.front() != '[' || t.back() != ']') {
      fail("metadata " + key + " '" + t + "': expected a list [a, b, ...]");
    }
    std::vector<double> values;
    const std::string body = t.substr(1, t.size() - 2);
    if (body.find_first_not_of(' ') == std::string::npos) return values;
    std::size_t start = 0;
    while (start <= body.size()) {
      const std::size_t end = std::min(body.find(',', start), body.size());
      values.push_back(parse_real(key, body.substr(start, end - start)));
      start = end + 1;
    }
    return values;
  }

 private:
  double parse_real(const std::string& key, const std::string& item) const {
    const std::size_t b = item.find_first_not_of(' ');
    const std::size_t e = item.find_last_not_of(' ');
    const std::string t = b == std::string::npos ? "" : item.substr(b, e - b + 1);
    char* end = nullptr;
    const double value = t.empty() ? 0.0 : std::strtod(t.c_str(), &end);
    if (t.empty() || end != t.c_str() + t.size() || std::isinf(value)) {
      fail("metadata " + key + ": '" + t + "' is not a finite number");
    }
    return value;
  }

  const std::map<std::string, std::string>& metadata_;
  std::string source_;
};

std::size_t batches_per_epoch(const TrainingConfig& config, std::size_t samples) {
  const auto batch = static_cast<std::size_t>(std::max(config.batch_size, 1));
  return (samples + batch - 1) / batch;
}

}  // namespace

namespace {

// The widths and activations of a model made of Dense layers only (an MLP), else nothing.
struct DenseStack {
  std::vector<int> widths;
  std::vector<std::string> activations;
};
std::optional<DenseStack> dense_stack(const Model& model) {
  DenseStack stack;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    const auto* dense = dynamic_cast<const Dense*>(&model.layer(l));
    if (!dense) return std::nullopt;
    if (l == 0) stack.widths.push_back(static_cast<int>(dense->in_features()));
    stack.widths.push_back(static_cast<int>(dense->out_features()));
    stack.activations.push_back(name_of(dense->activation()));
  }
  return stack;
}

std::string join(const std::vector<std::string>& parts, const char* separator) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? separator : "") + parts[i];
  return out;
}

// An MLP as its checkpoints have always described it; any other model by its layers.
std::string model_signature(const Model& model) {
  if (const auto stack = dense_stack(model)) {
    return "widths=" + join_ints(stack->widths, ",") + ";activations=" + join(stack->activations, ",");
  }
  std::vector<std::string> layers;
  for (std::size_t l = 0; l < model.num_layers(); ++l) layers.push_back(model.layer(l).describe());
  return "layers=" + join(layers, "|");
}

// The schedule's and clipping's settings, which change a run's numbers, when they are not
// the defaults (so that checkpoints written before they existed keep their fingerprints).
// Accumulation is left out: it changes results only within float rounding, like the rank
// count.
std::string step_settings_signature(const TrainingConfig& c) {
  std::string out;
  const auto add = [&out](const char* key, const std::string& value) {
    out += std::string(";") + key + "=" + value;
  };
  if (c.schedule != Schedule::Constant) add("schedule", std::string(name_of(c.schedule)));
  if (c.schedule == Schedule::WarmupCosine || c.schedule == Schedule::WarmupConstant) {
    add("warmup_steps", std::to_string(c.warmup_steps));
    add("warmup_initial_learning_rate", format_g17(c.warmup_initial_learning_rate));
  }
  if (c.schedule == Schedule::WarmupCosine) {
    add("decay_steps", std::to_string(c.decay_steps));
    add("min_learning_rate", format_g17(c.min_learning_rate));
  }
  if (c.schedule == Schedule::Step) {
    add("step_size", std::to_string(c.step_size));
    add("gamma", format_g17(c.gamma));
  }
  if (c.clip_grad_norm > 0.0) add("clip_grad_norm", format_g17(c.clip_grad_norm));
  return out;
}

}  // namespace

std::string run_signature(const Model& model, const TrainingConfig& config, std::size_t samples) {
  // The loss only when it is not the default, so that older checkpoints keep their
  // fingerprints.
  const std::string loss = config.loss == Loss::Mse ? "" : ";loss=" + name_of(config.loss);
  // Likewise the gradient all-reduce's format, which changes the numbers.
  const std::string wire = config.grad_comm_dtype == Dtype::Fp32
                               ? ""
                               : ";grad_comm_dtype=" + name_of(config.grad_comm_dtype);
  const std::string compute = config.compute_dtype == Dtype::Fp32
                                  ? ""
                                  : ";compute_dtype=" + name_of(config.compute_dtype);
  return model_signature(model) + loss + wire + compute + ";optimizer=" + name_of(config.optimizer) +
         ";learning_rate=" + format_g17(config.learning_rate) +
         ";batch_size=" + std::to_string(config.batch_size) +
         ";seed=" + std::to_string(config.seed) +
         ";shuffle=" + (config.shuffle ? "true" : "false") + ";samples=" + std::to_string(samples) +
         step_settings_signature(config);
}

std::string fingerprint_of(const std::string& text) {
  std::uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  char buffer[17];
  std::snprintf(buffer, sizeof buffer, "%016llx", static_cast<unsigned long long>(hash));
  return buffer;
}

std::string new_run_id() {
  std::random_device device;
  const std::uint64_t id = (std::uint64_t{device()} << 32) ^ device();
  char buffer[17];
  std::snprintf(buffer, sizeof buffer, "%016llx", static_cast<unsigned long long>(id));
  return buffer;
}

std::string run_id_of(const std::map<std::string, std::string>& metadata) {
  for (const char* key : {kRunIdKey, "fingerprint"}) {
    const auto it = metadata.find(key);
    if (it != metadata.end() && !it->second.empty()) return it->second;
  }
  return "";
}

std::vector<CheckpointFileInfo> describe_checkpoints(const std::string& dir, const std::string& prefix) {
  std::vector<CheckpointFileInfo> files;
  for (const std::string& path : list_checkpoints(dir, prefix)) {
    CheckpointFileInfo info;
    info.path = path;
    const std::string name = std::filesystem::path(path).filename().string();
    const std::string digits = name.substr(prefix.size() + 1, name.size() - prefix.size() - 1 -
                                                                   std::strlen(".safetensors"));
    std::from_chars(digits.data(), digits.data() + digits.size(), info.step);
    try {
      info.run_id = run_id_of(read_checkpoint_metadata(path));
      if (info.run_id.empty()) info.problem = "not a meshtrain training-state checkpoint";
    } catch (const ConfigError& e) {
      info.problem = e.what();
    }
    files.push_back(std::move(info));
  }
  return files;
}

void prune_run_checkpoints(const std::string& dir, const std::string& prefix, std::size_t keep_last,
                           const std::string& run_id, const std::string& keep) {
  if (keep_last == 0) return;
  const auto is_keep = [&](const std::string& path) {
    return std::filesystem::path(path).filename() == std::filesystem::path(keep).filename();
  };
  std::vector<CheckpointFileInfo> ours;
  for (CheckpointFileInfo& file : describe_checkpoints(dir, prefix)) {
    if (is_keep(file.path) || (!run_id.empty() && file.run_id == run_id)) ours.push_back(std::move(file));
  }
  if (ours.size() <= keep_last) return;  // sorted by step: the oldest first
  std::size_t excess = ours.size() - keep_last;
  for (std::size_t i = 0; i < ours.size() && excess > 0; ++i) {
    if (is_keep(ours[i].path)) continue;
    remove_checkpoint(ours[i].path);
    --excess;
  }
}

std::vector<std::string> checkpoint_companions(const std::string& path) {
  namespace fs = std::filesystem;
  std::map<std::string, std::string> metadata;
  try {
    metadata = read_checkpoint_metadata(path);
  } catch (const ConfigError&) {
    return {};
  }
  if (!is_sharded_index(metadata)) return {};
  const auto dir = metadata.find("shards_dir");
  if (dir == metadata.end() || dir->second.empty() || dir->second.find('/') != std::string::npos ||
      dir->second == "." || dir->second == "..") {
    return {};
  }
  const fs::path shards = fs::path(path).parent_path() / dir->second;
  std::error_code ec;
  if (!fs::is_directory(shards, ec)) return {};
  return {shards.string()};
}

void remove_checkpoint(const std::string& path) {
  const std::vector<std::string> companions = checkpoint_companions(path);
  std::error_code ec;
  // The index first: once it is gone, nothing refers to the shards.
  if (!std::filesystem::remove(path, ec) && ec)
    throw std::runtime_error(path + ": cannot remove old checkpoint: " + ec.message());
  for (const std::string& dir : companions) {
    // Unless another index of the directory (a copy made by hand) still refers to them.
    bool shared = false;
    for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(path).parent_path(), ec)) {
      if (entry.path().extension() != ".safetensors" || !entry.is_regular_file(ec)) continue;
      for (const std::string& other : checkpoint_companions(entry.path().string())) shared = shared || other == dir;
    }
    if (shared) continue;
    std::filesystem::remove_all(dir, ec);
    if (ec) throw std::runtime_error(dir + ": cannot remove old checkpoint's shards: " + ec.message());
  }
}

std::string move_files_aside(const std::string& dir, const std::vector<std::string>& given) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths;
  for (const std::string& path : given) {
    for (std::string& companion : checkpoint_companions(path)) paths.push_back(std::move(companion));
    paths.push_back(path);
  }
  const std::string base = (fs::path(dir) / ("replaced-" + utc_now("%Y%m%dT%H%M%SZ"))).string();
  std::string target = base;
  for (int n = 2; fs::exists(target); ++n) target = base + "-" + std::to_string(n);
  std::error_code ec;
  fs::create_directory(target, ec);
  for (const std::string& path : paths) {
    if (!ec) fs::rename(path, fs::path(target) / fs::path(path).filename(), ec);
  }
  if (ec) throw ConfigError(dir + ": cannot move files to " + target + ": " + ec.message());
  return target;
}

std::uint64_t checkpoint_size_estimate(const Model& model, const TrainingConfig& config) {
  const MomentKinds moments = moment_kinds(config.optimizer);
  const std::uint64_t copies = 1 + (moments.first ? 1 : 0) + (moments.second ? 1 : 0);
  std::uint64_t header = 8192;  // the metadata's fixed part, generously
  for (const TensorSpec& t : model.tensors()) header += copies * (t.name.size() + 96);
  // epoch_losses and validation_losses: up to 26 characters a number
  header += 2 * 26 * static_cast<std::uint64_t>(std::max(config.num_epochs, 0));
  return copies * model.num_parameters() * sizeof(float) + header;
}

void broadcast_state(Communicator& comm, TrainingState& s, std::size_t parameters, int root) {
  std::array<std::int64_t, 9> header{s.first_moment.extent(0) > 0,
                                     s.second_moment.extent(0) > 0,
                                     s.optimizer_step,
                                     s.steps,
                                     s.epoch,
                                     static_cast<std::int64_t>(s.batch),
                                     s.epoch_loss_count,
                                     s.skipped_steps,
                                     s.parameters.extent(0) > 0};
  comm.broadcast(std::span<std::int64_t>(header), root);
  s.optimizer_step = header[2];
  s.steps = header[3];
  s.epoch = static_cast<int>(header[4]);
  s.batch = static_cast<std::size_t>(header[5]);
  s.epoch_loss_count = header[6];
  s.skipped_steps = header[7];
  comm.broadcast(&s.epoch_loss_sum, 1, DataType::Float64, root);
  broadcast_doubles(comm, s.epoch_losses, root);
  broadcast_doubles(comm, s.validation_losses, root);
  broadcast_doubles(comm, s.test_losses, root);
  auto vector = [&](HostVector& v, bool present, const char* label) {
    if (!present) return;
    if (comm.rank() != root) v = HostVector(std::string(label), parameters);
    broadcast_floats(comm, v.data(), parameters, root);
  };
  vector(s.parameters, header[8] != 0, "meshtrain::state_parameters");
  vector(s.first_moment, header[0] != 0, "meshtrain::state_mu");
  vector(s.second_moment, header[1] != 0, "meshtrain::state_nu");
}

namespace {

// The metadata of a checkpoint of state (vectors aside) under format.
void add_state_metadata(Checkpoint& checkpoint, const TrainingState& state, const Model& model,
                        const TrainingConfig& config, std::size_t samples, const char* format);

}  // namespace

Checkpoint to_checkpoint(const TrainingState& raw_state, const Model& model,
                         const TrainingConfig& config, std::size_t samples) {
  const TrainingState state = at_epoch_boundary(raw_state, batches_per_epoch(config, samples));
  const std::size_t p = model.num_parameters();
  if (state.parameters.extent(0) != p) {
    throw std::invalid_argument("to_checkpoint: " + std::to_string(state.parameters.extent(0)) +
                                " parameters for a model of " + std::to_string(p));
  }
  Checkpoint checkpoint;
  auto add = [&](const std::string& group, const HostVector& flat) {
    for (const TensorSpec& t : model.tensors()) {
      const float* begin = flat.data() + t.offset;
      checkpoint.tensors.push_back(
          {group + t.name, t.shape, std::vector<float>(begin, begin + t.size)});
    }
  };
  add("params/", state.parameters);
  if (state.first_moment.extent(0) == p) add("adam/mu/", state.first_moment);
  if (state.second_moment.extent(0) == p) add("adam/nu/", state.second_moment);
  add_state_metadata(checkpoint, state, model, config, samples, kFormatName);
  return checkpoint;
}

ShardedLayout sharded_layout_of(const Model& model) {
  ShardedLayout layout;
  layout.parameters = model.num_parameters();
  for (const TensorSpec& t : model.tensors()) layout.tensors.push_back({t.name, t.shape, t.offset, t.partition});
  return layout;
}

Checkpoint to_checkpoint_index(const TrainingState& position, const Model& model,
                               const TrainingConfig& config, std::size_t samples) {
  Checkpoint checkpoint;
  add_state_metadata(checkpoint, at_epoch_boundary(position, batches_per_epoch(config, samples)), model,
                     config, samples, kShardedFormatName);
  return checkpoint;
}

namespace {

void add_state_metadata(Checkpoint& checkpoint, const TrainingState& state, const Model& model,
                        const TrainingConfig& config, std::size_t samples, const char* format) {
  const std::string signature = run_signature(model, config, samples);
  const DistributedConfig& dist = config.distributed_config;
  auto& m = checkpoint.metadata;
  m[kFormatKey] = format;
  m[kVersionKey] = std::to_string(kTrainingStateFormatVersion);
  m["optimizer_step"] = std::to_string(state.optimizer_step);
  m["steps"] = std::to_string(state.steps);
  m["epoch"] = std::to_string(state.epoch);
  m["batch"] = std::to_string(state.batch);
  m["epoch_loss_sum"] = format_g17(state.epoch_loss_sum);
  m["epoch_loss_count"] = std::to_string(state.epoch_loss_count);
  m["skipped_steps"] = std::to_string(state.skipped_steps);
  m["epoch_losses"] = format_list(state.epoch_losses);
  m["validation_losses"] = format_list(state.validation_losses);
  // Absent when no history was given (a state built by hand): read back as "none evaluated".
  if (!state.test_losses.empty()) m["test_losses"] = format_list(state.test_losses);
  m["fingerprint"] = fingerprint_of(signature);
  m["run"] = signature;
  if (const auto stack = dense_stack(model)) {
    m["model_widths"] = "[" + join_ints(stack->widths, ", ") + "]";
    m["activation"] = stack->activations.size() > 1 ? stack->activations.front() : "none";
  } else {
    std::vector<std::string> layers;
    for (std::size_t l = 0; l < model.num_layers(); ++l) layers.push_back(model.layer(l).describe());
    m["model_layers"] = join(layers, ", ");
  }
  m["optimizer"] = name_of(config.optimizer);
  m["strategy"] = name_of(dist.strategy);
  m["mesh_shape"] = format_shape(dist.mesh_shape);
  m["world_size"] = dist.mesh_shape.empty() ? "unknown" : std::to_string(dist.num_devices());
  m["created"] = utc_now();
}

void check_format(const Checkpoint& checkpoint, const MetadataReader& meta) {
  const auto format = checkpoint.metadata.find(kFormatKey);
  if (format != checkpoint.metadata.end() && format->second == "training_state_shard") {
    meta.fail("one rank's shard of a sharded checkpoint: resume from its index, the "
              "PREFIX-STEP.safetensors file beside the shard directory");
  }
  if (format == checkpoint.metadata.end() ||
      (format->second != kFormatName && format->second != kShardedFormatName)) {
    meta.fail("not a meshtrain training-state checkpoint (metadata " + std::string(kFormatKey) +
              " is not '" + kFormatName + "')");
  }
  const std::int64_t version = meta.integer(kVersionKey, 1);
  if (version > kTrainingStateFormatVersion) {
    meta.fail("format version " + std::to_string(version) + "; this meshtrain reads versions 1 to " +
              std::to_string(kTrainingStateFormatVersion));
  }
  // Version 1 files checksummed their tensor data only; from version 2 on the whole file is,
  // so a file that claims version 2 without a verified whole-file checksum was edited.
  if (version >= 2 && checkpoint.header_unverified) {
    meta.fail(std::string("format version ") + std::to_string(version) +
              " but no whole-file checksum (metadata " + kCheckpointFileChecksumKey +
              ") covers its header: edited or damaged");
  }
}

void check_fingerprint(const Checkpoint& checkpoint, const MetadataReader& meta,
                       const std::string& signature) {
  const std::string expected = fingerprint_of(signature);
  const std::string& stored = meta.text("fingerprint");
  if (stored == expected) return;
  const auto run = checkpoint.metadata.find("run");
  const std::string differences =
      run == checkpoint.metadata.end() ? "" : describe_differences(run->second, signature);
  meta.fail("made for a different run (fingerprint " + stored + ", this run " + expected + ")" +
            (differences.empty() ? std::string("") : "; differs in " + differences));
}

// Every expected tensor with the model's shape, and nothing else, into state's vectors.
void read_tensors(const Checkpoint& checkpoint, const MetadataReader& meta, const Model& model,
                  OptimizerType optimizer, TrainingState& state) {
  const MomentKinds moments = moment_kinds(optimizer);
  std::vector<std::string> groups{"params/"};
  if (moments.first) groups.push_back("adam/mu/");
  if (moments.second) groups.push_back("adam/nu/");
  std::set<std::string> expected_names;
  for (const std::string& group : groups) {
    HostVector flat(group + "values", model.num_parameters());
    for (const TensorSpec& spec : model.tensors()) {
      const std::string name = group + spec.name;
      expected_names.insert(name);
      const CheckpointTensor* tensor = checkpoint.find(name);
      if (!tensor) meta.fail("tensor " + name + " is missing");
      if (tensor->shape != spec.shape) {
        meta.fail("tensor " + name + " has shape " + format_shape_list(tensor->shape) +
                  ", this model's is " + format_shape_list(spec.shape));
      }
      std::copy(tensor->values.begin(), tensor->values.end(), flat.data() + spec.offset);
    }
    if (group == "params/") state.parameters = flat;
    if (group == "adam/mu/") state.first_moment = flat;
    if (group == "adam/nu/") state.second_moment = flat;
  }
  for (const CheckpointTensor& tensor : checkpoint.tensors) {
    if (!expected_names.count(tensor.name)) {
      meta.fail("unexpected tensor " + tensor.name + " for this model and optimizer (" +
                name_of(optimizer) + ")");
    }
  }
}

// The position and history, checked against each other and against this run's epochs.
void read_position(const MetadataReader& meta, std::size_t batches, TrainingState& state) {
  state.optimizer_step = meta.integer("optimizer_step", 0);
  state.steps = meta.integer("steps", 0);
  state.epoch = static_cast<int>(meta.integer("epoch", 0));
  state.batch = static_cast<std::size_t>(meta.integer("batch", 0));
  state.epoch_loss_sum = meta.real("epoch_loss_sum");
  state.epoch_loss_count = meta.integer("epoch_loss_count", 0);
  state.skipped_steps = meta.integer("skipped_steps", 0);
  state.epoch_losses = meta.list("epoch_losses");
  state.validation_losses = meta.list("validation_losses");
  const auto epochs = static_cast<std::size_t>(state.epoch);
  // Checkpoints from before test sets have no test_losses: none was evaluated.
  state.test_losses = meta.has("test_losses")
                          ? meta.list("test_losses")
                          : std::vector<double>(epochs, std::numeric_limits<double>::quiet_NaN());
  if (state.epoch_losses.size() != epochs || state.validation_losses.size() != epochs ||
      state.test_losses.size() != epochs) {
    meta.fail("metadata epoch " + std::to_string(state.epoch) + " with " +
              std::to_string(state.epoch_losses.size()) + " epoch_losses, " +
              std::to_string(state.validation_losses.size()) + " validation_losses and " +
              std::to_string(state.test_losses.size()) + " test_losses");
  }
  if (state.batch >= batches) {
    meta.fail("metadata batch " + std::to_string(state.batch) + ": an epoch of this run has " +
              std::to_string(batches) + " batches");
  }
}

}  // namespace

TrainingState from_checkpoint(const Checkpoint& checkpoint, const std::string& source,
                              const Model& model, const TrainingConfig& config, std::size_t samples) {
  const MetadataReader meta(checkpoint, source);
  check_format(checkpoint, meta);
  check_fingerprint(checkpoint, meta, run_signature(model, config, samples));
  TrainingState state;
  if (is_sharded_index(checkpoint.metadata)) {
    if (!checkpoint.tensors.empty()) meta.fail("a sharded checkpoint's index with tensors in it");
    if (checkpoint.header_unverified) meta.fail("a sharded checkpoint's index without a whole-file checksum");
  } else {
    read_tensors(checkpoint, meta, model, config.optimizer, state);
  }
  read_position(meta, batches_per_epoch(config, samples), state);
  return state;
}

}  // namespace meshtrain
