#include "run_config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string_view>

#include "meshtrain/error.hpp"

namespace meshtrain::app {

namespace {

namespace fs = std::filesystem;

struct KeySpec {
  std::string_view key;
  std::string type;  // built from the choice tables for the choices
  std::string default_value;
  std::string meaning;
};

struct SectionSpec {
  std::string_view name;
  std::vector<KeySpec> keys;
};

// "\"auto\" | \"thread\" | \"poll\"": the TOML type of a choice, from its table.
template <NamedChoice E>
std::string choice_type() {
  std::string out;
  for (const auto& name : choice_names<E>()) out += (out.empty() ? "\"" : " | \"") + name + "\"";
  return out;
}

// "\"auto\"": a choice's default, from the library's default config.
template <NamedChoice E>
std::string quoted(E value) {
  return "\"" + name_of(value) + "\"";
}

// The one list of settings: the unknown-key check and --help both read it.
const std::vector<SectionSpec>& schema() {
  const TrainingConfig training;
  const DistributedConfig& distributed = training.distributed_config;
  static const std::vector<SectionSpec> sections = {
      {"training",
       {{"num_epochs", "integer >= 1", "20", "epochs to train"},
        {"learning_rate", "number > 0", "0.001", "learning rate"},
        {"batch_size", "integer >= 1", "32", "global batch, split over the 'data' axis"},
        {"seed", "integer >= 0", "0", "parameter initialisation, shuffle and synthetic data"},
        {"optimizer", choice_type<OptimizerType>(), quoted(training.optimizer),
         "optax defaults: " + choice_help<OptimizerType>()},
        {"loss", choice_type<Loss>(), quoted(training.loss), choice_help<Loss>()},
        {"shuffle", "boolean", "false", "a seeded permutation of the samples every epoch"},
        {"validation_every", "integer >= 0", "1",
         "validation loss every N epochs and after the last; 0: never"},
        {"nonfinite", choice_type<NonFinite>(), quoted(training.nonfinite),
         "a step with a NaN/Inf loss or gradient: " + choice_help<NonFinite>() +
             "; abort exits with code 3"},
        {"schedule", choice_type<Schedule>(), quoted(training.schedule),
         "learning rate per optimizer step: " + choice_help<Schedule>()},
        {"warmup_steps", "integer >= 0", "0",
         "warmup_cosine, warmup_constant: optimizer steps of linear warmup"},
        {"warmup_initial_learning_rate", "number >= 0", "0", "the warmup's first rate"},
        {"decay_steps", "integer >= 0", "0",
         "warmup_cosine: the schedule's optimizer steps, warmup included; 0: the whole run"},
        {"min_learning_rate", "number in [0, learning_rate]", "0",
         "warmup_cosine: the rate the cosine decays to"},
        {"step_size", "integer >= 1", "-", "step: epochs between decays (required)"},
        {"gamma", "number > 0", "0.1", "step: the factor of each decay"},
        {"clip_grad_norm", "number >= 0", "0",
         "scale the gradient down to this global L2 norm when it is larger; 0: off"},
        {"accumulation_steps", "integer >= 1", "1",
         "micro-batches per optimizer step, gradients summed locally and reduced once"},
        {"bucket_mb", "number in (0, 1024]", "4", "gradient all-reduce bucket size in MiB"},
        {"bucket_bytes", "integer >= 4", "4194304", "the same in bytes (give one of the two)"},
        {"overlap_communication", "boolean", "true",
         "start each bucket's all-reduce during backward"},
        {"progress", choice_type<Progress>(), quoted(training.progress),
         "how overlapped MPI all-reduces advance: " + choice_help<Progress>()},
        {"grad_comm_dtype", choice_type<Dtype>(), quoted(training.grad_comm_dtype),
         "the data-parallel gradient all-reduce's format (bf16 halves its bytes; weights, "
         "accumulation and optimizer state stay fp32; strategy data only)"},
        {"compute_dtype", choice_type<Dtype>(), quoted(training.compute_dtype),
         "the gemms of forward and backward: bf16 rounds their operands and sums in fp32 "
         "(dense layers; weights, activations and optimizer state stay fp32)"}}},
      {"distributed",
       {{"mesh_shape", "array of integers >= 1", "[RANKS]",
         "device mesh; its product must equal the rank count"},
        {"mesh_axis_names", "array of strings", "[\"data\"]",
         "one per axis: 'data' splits the batch, 'fsdp' shards, 'model' is tensor parallel"},
        {"strategy", choice_type<Strategy>(), quoted(distributed.strategy),
         "parallel strategy: " + choice_help<Strategy>()},
        {"comm", choice_type<CommBackend>(), quoted(distributed.comm),
         "gradient collectives: " + choice_help<CommBackend>()},
        {"collective_timeout", "number >= 0", "600",
         "seconds a rank may wait in one collective before the watchdog aborts the job; 0: off"},
        {"debug_collectives", "boolean", "false",
         "compare every collective across ranks before running it (slower)"},
        {"flight_records", "integer in [0, 16777216]", "2048",
         "the flight recorder: each rank's last N collectives, kept in "
         "flight-rank<R>.bin in output.dir (else checkpoint.dir) for `meshtrain triage`; 0: off"}}},
      {"model",
       {{"type", choice_type<ModelType>(), quoted(ModelSettings{}.type), choice_help<ModelType>()},
        {"widths", "array of integers >= 1", "[4, 64, 1]",
         "mlp: {in, hidden..., out}; or give input/hidden/layers/output"},
        {"input", "integer >= 1", "4", "mlp: input features"},
        {"hidden", "integer >= 1", "64", "mlp: width of each hidden layer"},
        {"layers", "integer >= 0", "1 (fno: 4)", "mlp: hidden layers; fno: Fourier layers (>= 1)"},
        {"output", "integer >= 1", "1", "mlp: outputs"},
        {"activation", choice_type<Activation>(), quoted(ModelSettings{}.activation),
         "mlp: after each hidden layer; the output layer is linear"},
        {"modes", "integer >= 1", "12",
         "fno: Fourier modes kept per axis (at most s/2); the grid comes from the data"},
        {"width", "integer >= 1", "32", "fno: channels inside the Fourier layers"},
        {"projection", "integer >= 1", "128", "fno: channels of the projection's hidden layer"}}},
      {"data",
       {{"train_x", "path", "-",
         ".npy (samples, inputs), float32/float64, C order; or shards: a directory of .npy "
         "files (sorted by name) or a glob, rows counted across them (every data path)"},
        {"train_y", "path", "-", ".npy (samples, outputs), or (samples,) for one output"},
        {"val_x", "path", "-", "validation inputs (optional, with val_y)"},
        {"val_y", "path", "-", "validation targets"},
        {"test_x", "path", "-", "test inputs (optional, with test_y), evaluated with validation"},
        {"test_y", "path", "-", "test targets"},
        {"normalize", choice_type<Normalization>(), quoted(DataSettings{}.normalize),
         choice_help<Normalization>()},
        {"loading", choice_type<DataLoading>(), quoted(DataSettings{}.loading),
         choice_help<DataLoading>()},
        {"max_resident_bytes", "integer >= 0", "0",
         "the most bytes of data one rank may hold (sets, batch buffers, permutation); more is "
         "an error before training; 0: no limit"},
        {"synthetic", "\"reference\"", "-",
         "instead of files: the tutorial's x ~ N(0, 1), y = sum(x^2), from training.seed"},
        {"samples", "integer >= 1", "256", "synthetic samples"},
        {"dim", "integer >= 1", "4", "synthetic input features"}}},
      {"checkpoint",
       {{"dir", "path", "-", "where checkpoints go; unset: no checkpoints"},
        {"every_epochs", "integer >= 0", "1",
         "write one every N epochs (0: only at the end and on preemption)"},
        {"keep_last", "integer >= 0", "3", "delete all but the newest N (0: keep all)"},
        {"prefix", "string of [A-Za-z0-9_.-]", "\"ckpt\"",
         "files are DIR/PREFIX-STEP.safetensors"},
        {"overwrite", "boolean", "false",
         "a run that does not resume may start where another run's checkpoints (same prefix) "
         "are: they are moved to DIR/replaced-TIME/ (without it, such a run is refused)"},
        {"format", choice_type<CheckpointFormat>(), quoted(CheckpointSettings{}.format),
         choice_help<CheckpointFormat>() + "; either format resumes either way"}}},
      {"output",
       {{"dir", "path", "-", "metrics.jsonl and metrics.csv, one record per epoch; unset: none"}}},
  };
  return sections;
}

const SectionSpec* find_section(std::string_view name) {
  for (const auto& s : schema()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

bool known_key(const SectionSpec& section, std::string_view key) {
  return std::any_of(section.keys.begin(), section.keys.end(),
                     [&](const KeySpec& k) { return k.key == key; });
}

std::string names_of(const SectionSpec& section) {
  std::string out;
  for (const auto& k : section.keys) out += (out.empty() ? "" : ", ") + std::string(k.key);
  return out;
}

std::string section_names() {
  std::string out;
  for (const auto& s : schema()) out += (out.empty() ? "" : ", ") + std::string(s.name);
  return out;
}

std::string type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return "string";
    case toml::node_type::integer:
      return "integer";
    case toml::node_type::floating_point:
      return "float";
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::array:
      return "array";
    case toml::node_type::table:
      return "table";
    case toml::node_type::date:
      return "date";
    case toml::node_type::time:
      return "time";
    case toml::node_type::date_time:
      return "date-time";
    default:
      return "nothing";
  }
}

std::string format_number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// A --set override: its own parsed document, so that the value keeps a node to point at.
struct Override {
  std::string section;
  std::string key;
  std::unique_ptr<toml::table> document;  // holds the value under "v"
};

Override parse_override(const std::string& text) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("--set '" + text +
                      "': expected SECTION.KEY=VALUE, e.g. training.batch_size=64");
  }
  const std::string path = text.substr(0, eq);
  const std::string value = text.substr(eq + 1);
  const auto dot = path.find('.');
  if (dot == std::string::npos || path.find('.', dot + 1) != std::string::npos) {
    throw ConfigError("--set " + path + ": expected SECTION.KEY, e.g. training.batch_size");
  }
  Override o{path.substr(0, dot), path.substr(dot + 1), nullptr};
  const SectionSpec* section = find_section(o.section);
  if (!section) {
    throw ConfigError("--set: " + path + ": unknown section '" + o.section +
                      "' (known: " + section_names() + ")");
  }
  if (!known_key(*section, o.key)) {
    throw ConfigError("--set: " + path + ": unknown key (" + o.section + " has " +
                      names_of(*section) + ")");
  }
  // TOML first (numbers, booleans, arrays, quoted strings); anything else is a plain string,
  // so that optimizer=sgd needs no quotes.
  try {
    const std::string document = "v = " + value;
    o.document = std::make_unique<toml::table>(
        toml::parse(std::string_view(document), std::string_view("--set")));
  } catch (const toml::parse_error&) {
    o.document = std::make_unique<toml::table>();
    o.document->insert("v", value);
  }
  if (!o.document->get("v")) {
    throw ConfigError("--set: " + path + ": expected one value after '='");
  }
  return o;
}

// Typed access to the settings, an override winning over the file.
class SettingsReader {
 public:
  SettingsReader(std::string file, toml::table table, std::vector<Override> overrides)
      : file_(std::move(file)), table_(std::move(table)), overrides_(std::move(overrides)) {}

  struct Found {
    const toml::node* node;
    std::string location;  // "run.toml:12" or "--set"
  };

  // Unknown sections and keys of the file, the first by line.
  void check_known_keys() const {
    std::optional<std::pair<std::uint32_t, std::string>> first;
    auto note = [&](const toml::source_region& where, const std::string& message) {
      const std::uint32_t line = where.begin.line;
      if (!first || line < first->first) first = {line, message};
    };
    for (auto&& [name, node] : table_) {
      const std::string s(name.str());
      const SectionSpec* section = find_section(s);
      const std::string at = file_ + ":" + std::to_string(name.source().begin.line) + ": ";
      if (!section) {
        note(name.source(), at + s + ": unknown section (known: " + section_names() + ")");
        continue;
      }
      const toml::table* t = node.as_table();
      if (!t) {
        note(name.source(), at + s + ": expected a table, got " + type_name(node));
        continue;
      }
      for (auto&& [key, value] : *t) {
        if (known_key(*section, key.str())) continue;
        note(key.source(), file_ + ":" + std::to_string(key.source().begin.line) + ": " + s + "." +
                               std::string(key.str()) + ": unknown key (" + s + " has " +
                               names_of(*section) + ")");
      }
    }
    if (first) throw ConfigError(first->second);
  }

  std::optional<Found> find(const std::string& section, const std::string& key) {
    for (auto it = overrides_.rbegin(); it != overrides_.rend(); ++it) {  // the last --set wins
      if (it->section == section && it->key == key)
        return remember(section, key, {it->document->get("v"), "--set"});
    }
    const toml::table* t = table_[section].as_table();
    const toml::node* node = t ? t->get(key) : nullptr;
    if (!node) return std::nullopt;
    return remember(section, key, {node, file_ + ":" + std::to_string(node->source().begin.line)});
  }

  bool has(const std::string& section, const std::string& key) {
    return find(section, key).has_value();
  }

  [[noreturn]] void fail(const Found& f, const std::string& name, const std::string& why) const {
    throw ConfigError(f.location + ": " + name + ": " + why);
  }
  [[noreturn]] void wrong_type(const Found& f, const std::string& name, const std::string& expected,
                               const toml::node& got) const {
    fail(f, name, "expected " + expected + ", got " + type_name(got));
  }

  std::optional<std::int64_t> integer(const std::string& section, const std::string& key,
                                      std::int64_t min,
                                      std::int64_t max = std::numeric_limits<int>::max()) {
    const auto f = find(section, key);
    if (!f) return std::nullopt;
    return checked_integer(*f, *f->node, section + "." + key, min, max);
  }

  enum class Bound { Exclusive, Inclusive };
  // A number (an integer is accepted too) in (min, max] or [min, max].
  std::optional<double> number(const std::string& section, const std::string& key, double min,
                               Bound min_bound, double max) {
    const auto f = find(section, key);
    if (!f) return std::nullopt;
    const std::string name = section + "." + key;
    double v = 0.0;
    if (const auto* i = f->node->as_integer()) {
      v = static_cast<double>(i->get());
    } else if (const auto* d = f->node->as_floating_point()) {
      v = d->get();
    } else {
      wrong_type(*f, name, "a number", *f->node);
    }
    if (!std::isfinite(v)) fail(*f, name, format_number(v) + " is not a finite number");
    const bool low = min_bound == Bound::Exclusive ? !(v > min) : v < min;
    if (low || v > max) {
      fail(*f, name,
           format_number(v) + " is out of range (" +
               (min_bound == Bound::Exclusive ? "greater than " : "at least ") +
               format_number(min) +
               (max < std::numeric_limits<double>::max() ? ", at most " + format_number(max) : "") +
               ")");
    }
    return v;
  }

  std::optional<bool> boolean(const std::string& section, const std::string& key) {
    const auto f = find(section, key);
    if (!f) return std::nullopt;
    const auto* b = f->node->as_boolean();
    if (!b) wrong_type(*f, section + "." + key, "a boolean (true or false)", *f->node);
    return b->get();
  }

  std::optional<std::string> text(const std::string& section, const std::string& key) {
    const auto f = find(section, key);
    if (!f) return std::nullopt;
    const auto* s = f->node->as_string();
    if (!s) wrong_type(*f, section + "." + key, "a string", *f->node);
    if (s->get().empty()) fail(*f, section + "." + key, "must not be empty");
    return s->get();
  }

  std::optional<std::string> choice(const std::string& section, const std::string& key,
                                    const std::vector<std::string>& choices) {
    const auto value = text(section, key);
    if (!value) return value;
    if (std::find(choices.begin(), choices.end(), *value) == choices.end()) {
      std::string list;
      for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
      fail(*find(section, key), section + "." + key, "'" + *value + "' is not one of " + list);
    }
    return value;
  }

  // A value of a named choice, its names from the choice's table.
  template <NamedChoice E>
  std::optional<E> choice(const std::string& section, const std::string& key) {
    const auto value = choice(section, key, choice_names<E>());
    if (!value) return std::nullopt;
    return parse_choice<E>(section + "." + key, *value);  // a name from the table: cannot fail
  }

  // A path from the file is relative to the file's directory; from --set, to the working
  // directory.
  std::optional<std::string> path(const std::string& section, const std::string& key) {
    const auto value = text(section, key);
    if (!value) return value;
    const fs::path p(*value);
    if (p.is_absolute() || find(section, key)->location == "--set")
      return p.lexically_normal().string();
    return (fs::path(file_).parent_path() / p).lexically_normal().string();
  }

  std::optional<std::vector<int>> integer_list(const std::string& section, const std::string& key,
                                               int min) {
    const auto f = find(section, key);
    if (!f) return std::nullopt;
    const std::string name = section + "." + key;
    const auto* a = f->node->as_array();
    if (!a) wrong_type(*f, name, "an array of integers", *f->node);
    if (a->empty()) fail(*f, name, "must not be empty");
    std::vector<int> out;
    for (std::size_t i = 0; i < a->size(); ++i) {
      out.push_back(
          static_cast<int>(checked_integer(*f, *a->get(i), name + "[" + std::to_string(i) + "]",
                                           min, std::numeric_limits<int>::max())));
    }
    return out;
  }

  std::optional<std::vector<std::string>> string_list(const std::string& section,
                                                      const std::string& key) {
    const auto f = find(section, key);
    if (!f) return std::nullopt;
    const std::string name = section + "." + key;
    const auto* a = f->node->as_array();
    if (!a) wrong_type(*f, name, "an array of strings", *f->node);
    if (a->empty()) fail(*f, name, "must not be empty");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < a->size(); ++i) {
      const auto* s = a->get(i)->as_string();
      if (!s) wrong_type(*f, name + "[" + std::to_string(i) + "]", "a string", *a->get(i));
      out.push_back(s->get());
    }
    return out;
  }

  // "section.key" -> where it was given, for every key looked up and found.
  const std::map<std::string, std::string>& origins() const { return origins_; }

 private:
  Found remember(const std::string& section, const std::string& key, Found f) {
    origins_[section + "." + key] = f.location;
    return f;
  }

  std::int64_t checked_integer(const Found& f, const toml::node& node, const std::string& name,
                               std::int64_t min, std::int64_t max) const {
    const auto* i = node.as_integer();
    if (!i) wrong_type(f, name, "an integer", node);
    const std::int64_t v = i->get();
    if (v < min)
      fail(f, name, std::to_string(v) + " is out of range (at least " + std::to_string(min) + ")");
    if (v > max)
      fail(f, name, std::to_string(v) + " is out of range (at most " + std::to_string(max) + ")");
    return v;
  }

  std::string file_;
  toml::table table_;
  std::vector<Override> overrides_;
  std::map<std::string, std::string> origins_;
};

toml::table parse_toml(const std::string& path, const std::string& text) {
  try {
    return toml::parse(std::string_view(text), std::string_view(path));
  } catch (const toml::parse_error& e) {
    throw ConfigError(path + ":" + std::to_string(e.source().begin.line) +
                      ": invalid TOML: " + std::string(e.description()));
  }
}

using Bound = SettingsReader::Bound;

// The ranges a key's type states; TrainingConfig::validate checks how the keys fit together
// (those a schedule does not read, decay_steps against warmup_steps, the floor against
// learning_rate) and names the field, which locate_library_error maps back to the key.
void read_schedule(SettingsReader& r, TrainingConfig& t) {
  const std::string s = "training";
  constexpr double kAny = std::numeric_limits<double>::max();
  if (auto v = r.choice<Schedule>(s, "schedule")) t.schedule = *v;
  if (auto v = r.integer(s, "warmup_steps", 0)) t.warmup_steps = static_cast<int>(*v);
  if (auto v = r.number(s, "warmup_initial_learning_rate", 0.0, Bound::Inclusive, kAny)) {
    t.warmup_initial_learning_rate = *v;
  }
  if (auto v = r.integer(s, "decay_steps", 0, std::numeric_limits<std::int64_t>::max())) {
    t.decay_steps = *v;
  }
  if (auto v = r.number(s, "min_learning_rate", 0.0, Bound::Inclusive, kAny)) {
    t.min_learning_rate = *v;
  }
  if (auto v = r.integer(s, "step_size", 1)) t.step_size = static_cast<int>(*v);
  if (auto v = r.number(s, "gamma", 0.0, Bound::Exclusive, kAny)) t.gamma = *v;
}

void read_training(SettingsReader& r, TrainingConfig& t) {
  const std::string s = "training";
  if (auto v = r.integer(s, "num_epochs", 1)) t.num_epochs = static_cast<int>(*v);
  if (auto v =
          r.number(s, "learning_rate", 0.0, Bound::Exclusive, std::numeric_limits<double>::max()))
    t.learning_rate = *v;
  if (auto v = r.integer(s, "batch_size", 1)) t.batch_size = static_cast<int>(*v);
  if (auto v = r.integer(s, "seed", 0, std::numeric_limits<std::int64_t>::max())) {
    t.seed = static_cast<std::uint64_t>(*v);
  }
  if (auto v = r.choice<OptimizerType>(s, "optimizer")) t.optimizer = *v;
  if (auto v = r.choice<Loss>(s, "loss")) t.loss = *v;
  if (auto v = r.boolean(s, "shuffle")) t.shuffle = *v;
  if (auto v = r.integer(s, "validation_every", 0)) t.validation_every = static_cast<int>(*v);
  if (auto v = r.choice<NonFinite>(s, "nonfinite")) t.nonfinite = *v;
  read_schedule(r, t);
  if (auto v = r.number(s, "clip_grad_norm", 0.0, Bound::Inclusive,
                        std::numeric_limits<double>::max())) {
    t.clip_grad_norm = *v;
  }
  if (auto v = r.integer(s, "accumulation_steps", 1)) t.accumulation_steps = static_cast<int>(*v);
  if (auto v = r.boolean(s, "overlap_communication")) t.overlap_communication = *v;
  if (auto v = r.choice<Progress>(s, "progress")) t.progress = *v;
  if (auto v = r.choice<Dtype>(s, "grad_comm_dtype")) t.grad_comm_dtype = *v;
  if (auto v = r.choice<Dtype>(s, "compute_dtype")) t.compute_dtype = *v;
  const bool mb = r.has(s, "bucket_mb");
  if (mb && r.has(s, "bucket_bytes")) {
    r.fail(*r.find(s, "bucket_bytes"), "training.bucket_bytes",
           "give bucket_bytes or bucket_mb, not both");
  }
  if (auto v = r.number(s, "bucket_mb", 0.0, Bound::Exclusive, 1024.0)) {
    t.bucket_bytes = std::max<std::size_t>(4, static_cast<std::size_t>(*v * 1024 * 1024));
  }
  if (auto v = r.integer(s, "bucket_bytes", 4, std::int64_t{1} << 40)) {
    t.bucket_bytes = static_cast<std::size_t>(*v);
  }
}

void read_distributed(SettingsReader& r, DistributedConfig& d) {
  const std::string s = "distributed";
  if (auto v = r.integer_list(s, "mesh_shape", 1)) d.mesh_shape = *v;
  if (auto v = r.string_list(s, "mesh_axis_names")) d.mesh_axis_names = *v;
  if (auto v = r.choice<Strategy>(s, "strategy")) d.strategy = *v;
  if (auto v = r.choice<CommBackend>(s, "comm")) d.comm = *v;
  if (auto v = r.number(s, "collective_timeout", 0.0, Bound::Inclusive, 1e7)) {
    d.collective_timeout_seconds = *v;
  }
  if (auto v = r.boolean(s, "debug_collectives")) d.debug_collectives = *v;
  if (auto v = r.integer(s, "flight_records", 0, std::int64_t{1} << 24)) {
    d.flight_records = static_cast<int>(*v);
  }
}

// Keys that belong to the other model type are errors, not silently ignored.
void refuse_keys(SettingsReader& r, const std::vector<const char*>& keys, const char* type) {
  for (const char* key : keys) {
    if (r.has("model", key)) {
      r.fail(*r.find("model", key), std::string("model.") + key,
             std::string("only with type = \"") + type + "\"");
    }
  }
}

void read_fno(SettingsReader& r, ModelSettings& m) {
  const std::string s = "model";
  refuse_keys(r, {"widths", "input", "hidden", "output", "activation"}, "mlp");
  m.modes = static_cast<int>(r.integer(s, "modes", 1).value_or(m.modes));
  m.width = static_cast<int>(r.integer(s, "width", 1).value_or(m.width));
  m.layers = static_cast<int>(r.integer(s, "layers", 1, 1000).value_or(m.layers));
  m.projection = static_cast<int>(r.integer(s, "projection", 1).value_or(m.projection));
}

void read_model(SettingsReader& r, ModelSettings& m) {
  const std::string s = "model";
  if (auto v = r.choice<ModelType>(s, "type")) m.type = *v;
  if (m.type == ModelType::Fno) {
    read_fno(r, m);
    return;
  }
  refuse_keys(r, {"modes", "width", "projection"}, "fno");
  const bool parts =
      r.has(s, "input") || r.has(s, "hidden") || r.has(s, "layers") || r.has(s, "output");
  if (auto widths = r.integer_list(s, "widths", 1)) {
    if (parts) {
      r.fail(*r.find(s, "widths"), "model.widths",
             "give widths or input/hidden/layers/output, not both");
    }
    if (widths->size() < 2) {
      r.fail(*r.find(s, "widths"), "model.widths", "needs at least two entries, {in, ..., out}");
    }
    m.widths = *widths;
  } else {
    const int input = static_cast<int>(r.integer(s, "input", 1).value_or(4));
    const int hidden = static_cast<int>(r.integer(s, "hidden", 1).value_or(64));
    const int layers = static_cast<int>(r.integer(s, "layers", 0, 1000).value_or(1));
    const int output = static_cast<int>(r.integer(s, "output", 1).value_or(1));
    m.widths = {input};
    for (int l = 0; l < layers; ++l) m.widths.push_back(hidden);
    m.widths.push_back(output);
  }
  if (auto v = r.choice<Activation>(s, "activation")) m.activation = *v;
}

void read_data(SettingsReader& r, DataSettings& d, const std::string& file) {
  const std::string s = "data";
  if (auto v = r.choice(s, "synthetic", {"reference"})) d.synthetic = *v;
  for (const char* key : {"train_x", "train_y", "val_x", "val_y", "test_x", "test_y"}) {
    if (!d.synthetic.empty() && r.has(s, key)) {
      r.fail(*r.find(s, key), std::string("data.") + key, "give synthetic or data files, not both");
    }
  }
  for (const char* key : {"samples", "dim"}) {
    if (d.synthetic.empty() && r.has(s, key)) {
      r.fail(*r.find(s, key), std::string("data.") + key, "only with synthetic = \"reference\"");
    }
  }
  if (auto v = r.choice<Normalization>(s, "normalize")) d.normalize = *v;
  if (auto v = r.integer(s, "max_resident_bytes", 0, std::numeric_limits<std::int64_t>::max())) {
    d.max_resident_bytes = *v;
  }
  if (auto v = r.choice<DataLoading>(s, "loading")) {
    if (!d.synthetic.empty()) {
      r.fail(*r.find(s, "loading"), "data.loading", "only with .npy files, not synthetic data");
    }
    d.loading = *v;
  }
  if (!d.synthetic.empty()) {
    if (auto v = r.integer(s, "samples", 1)) d.samples = static_cast<int>(*v);
    if (auto v = r.integer(s, "dim", 1)) d.dim = static_cast<int>(*v);
    return;
  }
  d.train_x = r.path(s, "train_x").value_or("");
  d.train_y = r.path(s, "train_y").value_or("");
  d.val_x = r.path(s, "val_x").value_or("");
  d.val_y = r.path(s, "val_y").value_or("");
  d.test_x = r.path(s, "test_x").value_or("");
  d.test_y = r.path(s, "test_y").value_or("");
  if (d.train_x.empty() || d.train_y.empty()) {
    throw ConfigError(
        file + ": data: give train_x and train_y (.npy files), or synthetic = \"reference\"");
  }
  struct HeldOut {
    const std::string& x;
    const std::string& y;
    const char* x_key;
    const char* y_key;
  };
  for (const HeldOut& h : {HeldOut{d.val_x, d.val_y, "val_x", "val_y"},
                           HeldOut{d.test_x, d.test_y, "test_x", "test_y"}}) {
    if (h.x.empty() == h.y.empty()) continue;
    const char* given = h.x.empty() ? h.y_key : h.x_key;
    r.fail(*r.find(s, given), std::string("data.") + given,
           std::string("give ") + h.x_key + " and " + h.y_key + " together");
  }
}

void read_checkpoint(SettingsReader& r, CheckpointSettings& c) {
  const std::string s = "checkpoint";
  c.dir = r.path(s, "dir").value_or("");
  if (auto v = r.integer(s, "every_epochs", 0)) c.every_epochs = static_cast<int>(*v);
  if (auto v = r.integer(s, "keep_last", 0)) c.keep_last = static_cast<int>(*v);
  if (auto v = r.boolean(s, "overwrite")) c.overwrite = *v;
  if (auto v = r.choice<CheckpointFormat>(s, "format")) c.format = *v;
  if (auto v = r.text(s, "prefix")) {
    const bool ok = std::all_of(v->begin(), v->end(), [](char ch) {
      return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '-';
    });
    if (!ok)
      r.fail(*r.find(s, "prefix"), "checkpoint.prefix",
             "'" + *v + "': use letters, digits, '_', '.' and '-'");
    c.prefix = *v;
  }
}

// The library's config fields (ConfigError::field()) and the keys that set them.
const std::map<std::string, std::string>& library_fields() {
  static const std::map<std::string, std::string> fields = {
      {"num_epochs", "training.num_epochs"},
      {"learning_rate", "training.learning_rate"},
      {"batch_size", "training.batch_size"},
      {"bucket_bytes", "training.bucket_bytes"},
      {"validation_every", "training.validation_every"},
      {"nonfinite", "training.nonfinite"},
      {"optimizer", "training.optimizer"},
      {"loss", "training.loss"},
      {"progress", "training.progress"},
      {"grad_comm_dtype", "training.grad_comm_dtype"},
      {"compute_dtype", "training.compute_dtype"},
      {"schedule", "training.schedule"},
      {"warmup_steps", "training.warmup_steps"},
      {"warmup_initial_learning_rate", "training.warmup_initial_learning_rate"},
      {"decay_steps", "training.decay_steps"},
      {"min_learning_rate", "training.min_learning_rate"},
      {"step_size", "training.step_size"},
      {"gamma", "training.gamma"},
      {"clip_grad_norm", "training.clip_grad_norm"},
      {"accumulation_steps", "training.accumulation_steps"},
      {"mesh_shape", "distributed.mesh_shape"},
      {"mesh_axis_names", "distributed.mesh_axis_names"},
      {"strategy", "distributed.strategy"},
      {"comm", "distributed.comm"},
      {"collective_timeout", "distributed.collective_timeout"},
      {"flight_records", "distributed.flight_records"},
      {"model widths", "model.widths"},
      {"modes1", "model.modes"},
      {"modes2", "model.modes"},
      {"width", "model.width"},
      {"layers", "model.layers"},
      {"projection", "model.projection"},
      {"activation", "model.activation"},
      {"samples", "data.samples"},
      {"dim", "data.dim"},
  };
  return fields;
}

}  // namespace

std::string RunConfig::where(const std::string& key) const {
  const auto it = origins.find(key);
  return (it == origins.end() ? source : it->second) + ": " + key;
}

std::string read_config_file(const std::string& path) {
  // A directory opens as a stream that reads nothing: it would parse as an empty config.
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    throw ConfigError(path + ": is a directory, not a config file (give the run's .toml)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open the config file: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(path + ": cannot read the config file: " + std::strerror(errno));
  return text.str();
}

RunConfig parse_run_config(const std::string& path, const std::string& text,
                           const std::vector<std::string>& overrides) {
  std::vector<Override> parsed;
  for (const auto& item : overrides) parsed.push_back(parse_override(item));
  SettingsReader reader(path, parse_toml(path, text), std::move(parsed));
  reader.check_known_keys();

  RunConfig config;
  config.source = path;
  read_training(reader, config.training);
  read_distributed(reader, config.training.distributed_config);
  read_model(reader, config.model);
  read_data(reader, config.data, path);
  read_checkpoint(reader, config.checkpoint);
  config.output.dir = reader.path("output", "dir").value_or("");
  config.origins = reader.origins();
  return config;
}

std::string locate_library_error(const RunConfig& config, const ConfigError& error) {
  const auto it = library_fields().find(error.field());
  if (it == library_fields().end()) return error.what();
  return config.where(it->second) + " " + error.detail();
}

std::string config_reference() {
  std::string out =
      "CONFIG FILE (TOML): the sections and keys below, all optional except the data.\n"
      "Relative paths in the file resolve against the file's directory; in --set, against the\n"
      "working directory. --set SECTION.KEY=VALUE takes the same keys and checks (VALUE is\n"
      "TOML; text that is not TOML is a string: --set training.optimizer=sgd).\n";
  for (const auto& section : schema()) {
    out += "\n[" + std::string(section.name) + "]\n";
    for (const auto& k : section.keys) {
      std::string line = "  " + std::string(k.key) + " = " + std::string(k.default_value);
      line.resize(std::max<std::size_t>(line.size() + 1, 34), ' ');
      out += line + std::string(k.type) + ": " + std::string(k.meaning) + "\n";
    }
  }
  return out;
}

}  // namespace meshtrain::app
