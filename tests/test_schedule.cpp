// Learning-rate schedules against values computed by hand from optax's and PyTorch's
// definitions, and the checks of their settings.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

#include "meshtrain/error.hpp"
#include "meshtrain/train/schedule.hpp"
#include "test_support.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::testing;

void expect_rates(const LearningRateSchedule& schedule,
                  const std::vector<std::pair<std::int64_t, double>>& expected) {
  for (const auto& [step, rate] : expected) {
    EXPECT_NEAR(schedule(step), rate, 1e-12 * std::abs(rate) + 1e-15) << "step " << step;
  }
}

TEST(Schedule, ConstantIsTheLearningRateExactly) {
  TrainingConfig c;
  c.learning_rate = 3e-4;
  const LearningRateSchedule schedule(c, 7);
  for (std::int64_t step : {0, 1, 139, 140, 100000}) EXPECT_EQ(schedule(step), 3e-4);
}

TEST(Schedule, WarmupCosineAsOptax) {
  // optax.warmup_cosine_decay_schedule(init_value=0.1, peak_value=1, warmup_steps=4,
  // decay_steps=12, end_value=0.2): alpha = 0.2, cosine over 12 - 4 = 8 steps.
  TrainingConfig c;
  c.learning_rate = 1.0;
  c.schedule = Schedule::WarmupCosine;
  c.warmup_initial_learning_rate = 0.1;
  c.warmup_steps = 4;
  c.decay_steps = 12;
  c.min_learning_rate = 0.2;
  c.validate(1);
  const double h = std::sqrt(2.0) / 2;
  expect_rates(LearningRateSchedule(c, 5),
               {{0, 0.1},
                {1, 0.325},  // 0.1 + 0.9 / 4
                {2, 0.55},
                {3, 0.775},
                {4, 1.0},                      // cos(0)
                {6, 0.2 + 0.4 * (1 + h)},      // cos(pi / 4)
                {8, 0.6},                      // cos(pi / 2)
                {10, 0.2 + 0.4 * (1 - h)},     // cos(3 pi / 4)
                {12, 0.2},                     // cos(pi): the floor
                {13, 0.2},
                {1000, 0.2}});
}

TEST(Schedule, WarmupCosineOverTheWholeRunByDefault) {
  // decay_steps 0: 3 epochs of 10 steps; no warmup, end 0: 0.5 (1 + cos(pi t / 30)).
  TrainingConfig c;
  c.learning_rate = 0.01;
  c.num_epochs = 3;
  c.schedule = Schedule::WarmupCosine;
  const LearningRateSchedule schedule(c, 10);
  EXPECT_EQ(schedule.decay_steps(), 30);
  expect_rates(schedule, {{0, 0.01}, {10, 0.0075}, {15, 0.005}, {20, 0.0025}, {29, 0.01 * 0.5 *
                          (1 + std::cos(std::numbers::pi * 29 / 30))}, {30, 0.0}});
}

TEST(Schedule, WarmupConstant) {
  TrainingConfig c;
  c.learning_rate = 2.0;
  c.schedule = Schedule::WarmupConstant;
  c.warmup_steps = 4;
  expect_rates(LearningRateSchedule(c, 3), {{0, 0.0}, {1, 0.5}, {2, 1.0}, {3, 1.5}, {4, 2.0},
                                            {5, 2.0}, {1000, 2.0}});
  c.warmup_steps = 0;  // no warmup: constant
  expect_rates(LearningRateSchedule(c, 3), {{0, 2.0}, {9, 2.0}});
}

TEST(Schedule, StepDecaysEveryStepSizeEpochs) {
  // PyTorch's StepLR(step_size=2, gamma=0.5) stepped once per epoch of 10 optimizer steps.
  TrainingConfig c;
  c.learning_rate = 0.01;
  c.schedule = Schedule::Step;
  c.step_size = 2;
  c.gamma = 0.5;
  c.validate(1);
  expect_rates(LearningRateSchedule(c, 10), {{0, 0.01}, {19, 0.01}, {20, 0.005}, {39, 0.005},
                                             {40, 0.0025}, {59, 0.0025}, {60, 0.00125}});
}

TEST(Schedule, CosineThatWouldNeverStartIsRefused) {
  TrainingConfig c;
  c.num_epochs = 2;
  c.schedule = Schedule::WarmupCosine;
  c.warmup_steps = 20;
  const ConfigError e = config_error_object([&] { LearningRateSchedule(c, 10); });
  EXPECT_EQ(e.field(), "warmup_steps");
  EXPECT_EQ(e.detail(),
            "20: not fewer than the schedule's 20 optimizer steps (the run's epochs x batches "
            "per epoch, unless decay steps are given): the cosine decay would never start");
  EXPECT_NO_THROW(LearningRateSchedule(c, 11));
}

TEST(Schedule, Descriptions) {
  TrainingConfig c;
  EXPECT_EQ(describe_step_settings(c), "");
  c.schedule = Schedule::WarmupCosine;
  c.warmup_steps = 100;
  c.min_learning_rate = 1e-5;
  EXPECT_EQ(describe_step_settings(c),
            ", warmup_cosine (warmup 100 steps from 0, cosine to 1e-05 at the run's end)");
  c.decay_steps = 2000;
  c.clip_grad_norm = 1.5;
  c.accumulation_steps = 4;
  EXPECT_EQ(describe_step_settings(c),
            ", warmup_cosine (warmup 100 steps from 0, cosine to 1e-05 at step 2000), clip grad "
            "norm 1.5, 4 micro-batches per step");
  c = TrainingConfig{};
  c.schedule = Schedule::Step;
  c.step_size = 100;
  c.gamma = 0.5;
  EXPECT_EQ(describe_step_settings(c), ", step (x0.5 every 100 epoch(s))");
  c.schedule = Schedule::WarmupConstant;
  c.warmup_steps = 10;
  EXPECT_EQ(describe_step_settings(c), ", warmup_constant (warmup 10 steps from 0)");
  c = TrainingConfig{};
  c.grad_comm_dtype = Dtype::Bf16;
  c.compute_dtype = Dtype::Bf16;
  EXPECT_EQ(describe_step_settings(c), ", gradient all-reduce in bf16, gemms in bf16");
}

TEST(Schedule, SettingsAreChecked) {
  const auto error = [](auto change) {
    TrainingConfig c;
    change(c);
    return config_error([&] { c.validate(1); });
  };
  // Keys the schedule does not read.
  EXPECT_EQ(error([](TrainingConfig& c) { c.warmup_steps = 10; }),
            "warmup_steps 10: only with schedule warmup_cosine or warmup_constant (this run's "
            "is constant)");
  EXPECT_EQ(error([](TrainingConfig& c) { c.warmup_initial_learning_rate = 0.5; }),
            "warmup_initial_learning_rate 0.5: only with schedule warmup_cosine or "
            "warmup_constant (this run's is constant)");
  EXPECT_EQ(error([](TrainingConfig& c) {
              c.schedule = Schedule::WarmupConstant;
              c.min_learning_rate = 1e-5;
            }),
            "min_learning_rate 1e-05: only with schedule warmup_cosine (this run's is "
            "warmup_constant)");
  EXPECT_EQ(error([](TrainingConfig& c) { c.decay_steps = 5; }),
            "decay_steps 5: only with schedule warmup_cosine (this run's is constant)");
  EXPECT_EQ(error([](TrainingConfig& c) { c.step_size = 5; }),
            "step_size 5: only with schedule step (this run's is constant)");
  EXPECT_EQ(error([](TrainingConfig& c) { c.gamma = 0.5; }),
            "gamma 0.5: only with schedule step (this run's is constant)");
  // Values out of range.
  EXPECT_EQ(error([](TrainingConfig& c) {
              c.schedule = Schedule::WarmupCosine;
              c.warmup_steps = -1;
            }),
            "warmup_steps -1: must be at least 0");
  EXPECT_EQ(error([](TrainingConfig& c) {
              c.schedule = Schedule::WarmupCosine;
              c.warmup_steps = 10;
              c.decay_steps = 10;
            }),
            "decay_steps 10: must be 0 (the whole run) or more than the 10 warmup steps: it is "
            "the schedule's length, warmup included");
  EXPECT_EQ(error([](TrainingConfig& c) {
              c.schedule = Schedule::WarmupCosine;
              c.min_learning_rate = 0.01;
            }),
            "min_learning_rate 0.01: must be between 0 and the peak learning rate (0.001)");
  EXPECT_EQ(error([](TrainingConfig& c) {
              c.schedule = Schedule::WarmupConstant;
              c.warmup_initial_learning_rate = -1;
            }),
            "warmup_initial_learning_rate -1: must be a finite number of at least 0");
  EXPECT_EQ(error([](TrainingConfig& c) { c.schedule = Schedule::Step; }),
            "step_size 0: must be at least 1 (epochs between decays) with schedule step");
  EXPECT_EQ(error([](TrainingConfig& c) {
              c.schedule = Schedule::Step;
              c.step_size = 1;
              c.gamma = 0;
            }),
            "gamma 0: must be a finite number greater than 0");
  EXPECT_EQ(error([](TrainingConfig& c) { c.schedule = static_cast<Schedule>(9); }),
            "schedule 9: unknown (choose constant, warmup_cosine, step or warmup_constant)");
}

}  // namespace
