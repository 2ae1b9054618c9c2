#include "meshtrain/train/training_config.hpp"

#include <cmath>
#include <sstream>

#include "meshtrain/error.hpp"
#include "meshtrain/optim/optimizer.hpp"

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
    throw ConfigError("num_epochs " + std::to_string(num_epochs) + ": must be at least 1");
  }
  if (batch_size < 1) {
    throw ConfigError("batch_size " + std::to_string(batch_size) + ": must be at least 1");
  }
  if (batch_size < data_axis_size) {
    throw ConfigError("batch_size " + std::to_string(batch_size) + ": smaller than the " +
                      std::to_string(data_axis_size) +
                      " shards of the 'data' axis; every rank needs at least one sample");
  }
  if (!std::isfinite(learning_rate) || learning_rate <= 0.0) {
    throw ConfigError("learning_rate " + format_double(learning_rate) +
                      ": must be a finite number greater than 0");
  }
  if (bucket_bytes < sizeof(float)) {
    throw ConfigError("bucket_bytes " + std::to_string(bucket_bytes) + ": must be at least 4");
  }
  if (validation_every < 0) {
    throw ConfigError("validation_every " + std::to_string(validation_every) +
                      ": must be 0 (never) or a number of epochs");
  }
  if (progress != "auto" && progress != "poll" && progress != "thread") {
    throw ConfigError("progress '" + progress + "': choose auto, poll or thread");
  }
  if (nonfinite != "abort" && nonfinite != "skip") {
    throw ConfigError("nonfinite '" + nonfinite + "': choose abort or skip");
  }
  OptimizerConfig::from_name(optimizer);
}

}  // namespace meshtrain
