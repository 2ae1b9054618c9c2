#include "meshtrain/train/training_config.hpp"

#include <cmath>
#include <sstream>

#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
std::string format_double(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}
}  // namespace

void TrainingConfig::validate(int data_axis_size) const {
  if (num_epochs < 1) {
    throw ConfigError("num_epochs", std::to_string(num_epochs) + ": must be at least 1");
  }
  if (batch_size < 1) {
    throw ConfigError("batch_size", std::to_string(batch_size) + ": must be at least 1");
  }
  if (batch_size < data_axis_size) {
    throw ConfigError("batch_size", std::to_string(batch_size) + ": smaller than the " +
                                        std::to_string(data_axis_size) +
                                        " shards of the 'data' axis; every rank needs at least "
                                        "one sample");
  }
  if (!std::isfinite(learning_rate) || learning_rate <= 0.0) {
    throw ConfigError("learning_rate",
                      format_double(learning_rate) + ": must be a finite number greater than 0");
  }
  if (bucket_bytes < sizeof(float)) {
    throw ConfigError("bucket_bytes", std::to_string(bucket_bytes) + ": must be at least 4");
  }
  if (validation_every < 0) {
    throw ConfigError("validation_every", std::to_string(validation_every) +
                                              ": must be 0 (never) or a number of epochs");
  }
  // The choices are enums: only a value cast from an integer can be outside their tables.
  check_choice("optimizer", optimizer);
  check_choice("loss", loss);
  check_choice("progress", progress);
  check_choice("nonfinite", nonfinite);
}

}  // namespace meshtrain
