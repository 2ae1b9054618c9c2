#pragma once
// The `meshtrain train` run description: a TOML file plus --set overrides, validated into
// the library's configs. Every error names where the value came from:
//   run.toml:12: training.batch_size: expected an integer, got string
//   --set: training.learning_rate: -1 must be greater than 0
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "meshtrain/choices.hpp"  // Activation, Loss, ModelType
#include "meshtrain/error.hpp"
#include "meshtrain/train/training_config.hpp"

namespace meshtrain::app {

struct ModelSettings {
  ModelType type = ModelType::Mlp;
  std::vector<int> widths{4, 64, 1};  // mlp: {in, hidden..., out}
  Activation activation = Activation::ReLU;  // mlp
  // fno: modes per axis, channels, Fourier layers, projection channels; the grid and the
  // channels in and out come from the data's shape (N, s1, s2, C).
  int modes = 12;
  int width = 32;
  int layers = 4;
  int projection = 128;
};

struct DataSettings {
  std::string synthetic;                       // "reference", or empty for .npy files
  int samples = 256;                           // synthetic only
  int dim = 4;                                 // synthetic only
  std::string train_x, train_y, val_x, val_y;  // resolved paths; val_* may be empty
  std::string test_x, test_y;                  // may be empty
  Normalization normalize = Normalization::None;
  DataLoading loading = DataLoading::Memory;
  // The bytes of data one rank may hold (sets, batch buffers, permutation); 0: no limit.
  std::int64_t max_resident_bytes = 0;
};

struct CheckpointSettings {
  std::string dir;       // empty: no checkpoints
  int every_epochs = 1;  // 0: only at the end and on preemption
  int keep_last = 3;     // 0: keep every checkpoint
  std::string prefix = "ckpt";
  // Another run's checkpoints (same prefix) in dir: moved aside to DIR/replaced-TIME/ when
  // true; otherwise a run that does not continue them is refused.
  bool overwrite = false;
  CheckpointFormat format = CheckpointFormat::Sharded;
};

struct OutputSettings {
  std::string dir;  // empty: no metrics files
};

struct RunConfig {
  std::string source;  // the config file, as given on the command line
  TrainingConfig training;
  ModelSettings model;
  DataSettings data;
  CheckpointSettings checkpoint;
  OutputSettings output;
  // "section.key" -> "run.toml:12" or "--set", for every key given.
  std::map<std::string, std::string> origins;

  // "run.toml:12: training.batch_size" where the key was given, else "run.toml:
  // training.batch_size".
  std::string where(const std::string& key) const;
};

// The text of the config file at path; ConfigError when it cannot be read.
std::string read_config_file(const std::string& path);

// Parses text (read from path, which errors name and relative paths resolve against) and
// applies overrides ("section.key=VALUE", VALUE parsed as TOML, or taken as a string when it
// is not valid TOML). Throws ConfigError for malformed TOML, unknown sections or keys, wrong
// types, out-of-range values and conflicting keys. Deterministic: every rank that parses the
// same text raises the same error.
RunConfig parse_run_config(const std::string& path, const std::string& text,
                           const std::vector<std::string>& overrides);

// The library validates a config against the job (mesh against the rank count, batch size
// against the data axis) and throws ConfigError(FIELD, "VALUE: why"); this is its message with
// the key that set the field in the field's place: "run.toml:12: training.batch_size VALUE:
// why". The message of an error about no known field is returned unchanged.
std::string locate_library_error(const RunConfig& config, const ConfigError& error);

// Every section and key with its type, default and meaning, for `meshtrain train --help`.
std::string config_reference();

}  // namespace meshtrain::app
