#include "meshtrain/train/training_config.hpp"

#include <algorithm>
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
  check_choice("schedule", schedule);
  check_choice("grad_comm_dtype", grad_comm_dtype);
  check_choice("compute_dtype", compute_dtype);
  if (grad_comm_dtype == Dtype::Bf16) {
    const auto& names = distributed_config.mesh_axis_names;
    if (distributed_config.strategy != Strategy::Data) {
      throw ConfigError("grad_comm_dtype",
                        "bf16: only with strategy data (this run's is " +
                            name_of(distributed_config.strategy) +
                            ", whose gradient reduce-scatter stays fp32)");
    }
    if (std::find(names.begin(), names.end(), "model") != names.end()) {
      throw ConfigError("grad_comm_dtype",
                        "bf16: not with a 'model' axis (tensor parallelism's all-reduces stay "
                        "fp32); use a mesh of 'data' alone");
    }
  }
  validate_schedule();
  if (accumulation_steps < 1) {
    throw ConfigError("accumulation_steps",
                      std::to_string(accumulation_steps) + ": must be at least 1");
  }
  if (batch_size / accumulation_steps < data_axis_size) {
    throw ConfigError("accumulation_steps",
                      std::to_string(accumulation_steps) + ": a micro-batch of " +
                          std::to_string(batch_size) + " / " + std::to_string(accumulation_steps) +
                          " = " + std::to_string(batch_size / accumulation_steps) +
                          " sample(s) is smaller than the " + std::to_string(data_axis_size) +
                          " shards of the 'data' axis; every rank needs at least one sample");
  }
  if (!std::isfinite(clip_grad_norm) || clip_grad_norm < 0.0) {
    throw ConfigError("clip_grad_norm", format_double(clip_grad_norm) +
                                            ": must be 0 (off) or a finite number greater than 0");
  }
}

void TrainingConfig::validate_schedule() const {
  const bool warmup = schedule == Schedule::WarmupCosine || schedule == Schedule::WarmupConstant;
  const bool cosine = schedule == Schedule::WarmupCosine;
  const bool step = schedule == Schedule::Step;
  // A key the schedule does not read, set away from its default, is a mistake to report.
  auto only_with = [&](bool used, bool is_default, const std::string& field,
                       const std::string& value, const char* schedules) {
    if (!used && !is_default) {
      throw ConfigError(field, value + ": only with schedule " + schedules + " (this run's is " +
                                   name_of(schedule) + ")");
    }
  };
  const char* warmup_schedules = "warmup_cosine or warmup_constant";
  only_with(warmup, warmup_steps == 0, "warmup_steps", std::to_string(warmup_steps),
            warmup_schedules);
  only_with(warmup, warmup_initial_learning_rate == 0.0, "warmup_initial_learning_rate",
            format_double(warmup_initial_learning_rate), warmup_schedules);
  only_with(cosine, decay_steps == 0, "decay_steps", std::to_string(decay_steps), "warmup_cosine");
  only_with(cosine, min_learning_rate == 0.0, "min_learning_rate",
            format_double(min_learning_rate), "warmup_cosine");
  only_with(step, step_size == 0, "step_size", std::to_string(step_size), "step");
  only_with(step, gamma == kDefaultGamma, "gamma", format_double(gamma), "step");

  if (warmup_steps < 0) {
    throw ConfigError("warmup_steps", std::to_string(warmup_steps) + ": must be at least 0");
  }
  if (!std::isfinite(warmup_initial_learning_rate) || warmup_initial_learning_rate < 0.0) {
    throw ConfigError("warmup_initial_learning_rate",
                      format_double(warmup_initial_learning_rate) +
                          ": must be a finite number of at least 0");
  }
  if (decay_steps < 0 || (decay_steps > 0 && decay_steps <= warmup_steps)) {
    throw ConfigError("decay_steps", std::to_string(decay_steps) +
                                         ": must be 0 (the whole run) or more than the " +
                                         std::to_string(warmup_steps) +
                                         " warmup steps: it is the schedule's length, warmup "
                                         "included");
  }
  if (!std::isfinite(min_learning_rate) || min_learning_rate < 0.0 ||
      min_learning_rate > learning_rate) {
    throw ConfigError("min_learning_rate", format_double(min_learning_rate) +
                                               ": must be between 0 and the peak learning "
                                               "rate (" +
                                               format_double(learning_rate) + ")");
  }
  if (step && step_size < 1) {
    throw ConfigError("step_size", std::to_string(step_size) +
                                       ": must be at least 1 (epochs between decays) with "
                                       "schedule step");
  }
  if (!std::isfinite(gamma) || gamma <= 0.0) {
    throw ConfigError("gamma", format_double(gamma) + ": must be a finite number greater than 0");
  }
}

}  // namespace meshtrain
