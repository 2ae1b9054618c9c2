#include "meshtrain/train/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <sstream>
#include <string>

#include "meshtrain/error.hpp"

namespace meshtrain {

LearningRateSchedule::LearningRateSchedule(const TrainingConfig& config,
                                           std::int64_t steps_per_epoch)
    : kind_(config.schedule),
      peak_(config.learning_rate),
      init_(config.warmup_initial_learning_rate),
      end_(config.min_learning_rate),
      warmup_steps_(config.warmup_steps),
      decay_steps_(config.decay_steps > 0 ? config.decay_steps
                                          : config.num_epochs * steps_per_epoch),
      steps_per_epoch_(std::max<std::int64_t>(steps_per_epoch, 1)),
      step_size_(config.step_size),
      gamma_(config.gamma) {
  if (kind_ == Schedule::WarmupCosine && decay_steps_ <= warmup_steps_) {
    throw ConfigError("warmup_steps", std::to_string(warmup_steps_) +
                                          ": not fewer than the schedule's " +
                                          std::to_string(decay_steps_) +
                                          " optimizer steps (the run's epochs x batches per "
                                          "epoch, unless decay steps are given): the cosine "
                                          "decay would never start");
  }
}

double LearningRateSchedule::warmup(std::int64_t step) const {
  // optax.linear_schedule(init, peak, warmup_steps): a polynomial of power 1, in its form.
  const double frac = 1.0 - static_cast<double>(std::min(step, warmup_steps_)) /
                                static_cast<double>(warmup_steps_);
  return (init_ - peak_) * frac + peak_;
}

double LearningRateSchedule::operator()(std::int64_t step) const {
  switch (kind_) {
    case Schedule::Constant:
      return peak_;
    case Schedule::WarmupConstant:
      return step < warmup_steps_ ? warmup(step) : peak_;
    case Schedule::Step:
      return peak_ * std::pow(gamma_, static_cast<double>(step / steps_per_epoch_ / step_size_));
    case Schedule::WarmupCosine: {
      if (step < warmup_steps_) return warmup(step);
      // optax.cosine_decay_schedule(peak, decay_steps - warmup_steps, alpha = end / peak),
      // joined after the warmup.
      const auto length = static_cast<double>(decay_steps_ - warmup_steps_);
      const double s = std::min(static_cast<double>(step - warmup_steps_), length);
      const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * s / length));
      const double alpha = peak_ == 0.0 ? 0.0 : end_ / peak_;
      return peak_ * ((1.0 - alpha) * cosine + alpha);
    }
  }
  return peak_;
}

namespace {
std::string describe_schedule(const TrainingConfig& c) {
  std::ostringstream out;
  const std::string warmup = "warmup " + std::to_string(c.warmup_steps) + " steps from ";
  switch (c.schedule) {
    case Schedule::Constant:
      return "";
    case Schedule::WarmupConstant:
      out << warmup << c.warmup_initial_learning_rate;
      break;
    case Schedule::WarmupCosine:
      out << warmup << c.warmup_initial_learning_rate << ", cosine to " << c.min_learning_rate
          << (c.decay_steps > 0 ? " at step " + std::to_string(c.decay_steps)
                                : std::string(" at the run's end"));
      break;
    case Schedule::Step:
      out << "x" << c.gamma << " every " << c.step_size << " epoch(s)";
      break;
  }
  return name_of(c.schedule) + " (" + out.str() + ")";
}
}  // namespace

std::string describe_step_settings(const TrainingConfig& c) {
  std::ostringstream out;
  if (c.schedule != Schedule::Constant) out << ", " << describe_schedule(c);
  if (c.clip_grad_norm > 0.0) out << ", clip grad norm " << c.clip_grad_norm;
  if (c.accumulation_steps > 1) out << ", " << c.accumulation_steps << " micro-batches per step";
  if (c.grad_comm_dtype != Dtype::Fp32) {
    out << ", gradient all-reduce in " << name_of(c.grad_comm_dtype);
  }
  if (c.compute_dtype != Dtype::Fp32) out << ", gemms in " << name_of(c.compute_dtype);
  return out.str();
}

}  // namespace meshtrain
