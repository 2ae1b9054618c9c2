#pragma once
// Learning-rate schedules as optax and PyTorch define them, computed from the count of
// optimizer steps before the current one (optax's `count`: 0 for the first update), so that a
// run resumed from a checkpoint, which stores that count, continues with the same rates.
//   constant         learning_rate
//   warmup_cosine    optax.warmup_cosine_decay_schedule(init_value=warmup_initial_learning_rate,
//                    peak_value=learning_rate, warmup_steps, decay_steps, end_value=min_learning_rate):
//                    t < W: init + (peak - init) t / W; then, with s = min(t - W, D - W),
//                    peak ((1 - a) (1 + cos(pi s / (D - W))) / 2 + a), a = end / peak
//   warmup_constant  the same warmup, then learning_rate (optax.linear_schedule)
//   step             learning_rate * gamma^floor(epoch / step_size), epoch = t / steps per
//                    epoch (PyTorch's StepLR stepped once per epoch)
// Free of Kokkos and MPI.
#include <cstdint>
#include <string>

#include "meshtrain/train/training_config.hpp"

namespace meshtrain {

class LearningRateSchedule {
 public:
  // config was validated; steps_per_epoch optimizer steps make an epoch, num_epochs of them
  // the run. Throws ConfigError("warmup_steps", ...) when warmup_cosine's decay would never
  // start (its length, decay_steps or the run's, not longer than the warmup).
  LearningRateSchedule(const TrainingConfig& config, std::int64_t steps_per_epoch);

  // The rate of the optimizer step that follows `step` earlier ones (step >= 0).
  double operator()(std::int64_t step) const;

  // Optimizer steps of warmup_cosine's whole schedule, warmup included (decay_steps, or the
  // run's length when it is 0).
  std::int64_t decay_steps() const { return decay_steps_; }

 private:
  double warmup(std::int64_t step) const;

  Schedule kind_;
  double peak_;
  double init_;
  double end_;
  std::int64_t warmup_steps_;
  std::int64_t decay_steps_;
  std::int64_t steps_per_epoch_;
  int step_size_;
  double gamma_;
};

// What the programs' headers print after the learning rate: each of the schedule, clipping
// and accumulation that is on, each after ", ", e.g. ", warmup_cosine (warmup 100 steps from
// 0, cosine to 1e-05 at the run's end), clip grad norm 1, 4 micro-batches per step" (and the
// bf16 settings: ", gradient all-reduce in bf16", ", gemms in bf16"). Empty for the defaults.
std::string describe_step_settings(const TrainingConfig& config);

}  // namespace meshtrain
