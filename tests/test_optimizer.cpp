// Optimizer steps against hand-written double-precision references with optax's semantics.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "meshtrain/error.hpp"
#include "meshtrain/optim/optimizer.hpp"

namespace {

using namespace meshtrain;

Vector to_device(const std::vector<double>& values) {
  Vector v("test::vector", values.size());
  auto h = Kokkos::create_mirror_view(v);
  for (std::size_t i = 0; i < values.size(); ++i) h(i) = static_cast<float>(values[i]);
  Kokkos::deep_copy(v, h);
  return v;
}

std::vector<double> to_host(const Vector& v) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  std::vector<double> out(h.extent(0));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = h(i);
  return out;
}

// Rounds to float and back, so a reference starts from exactly the device's values.
std::vector<double> as_float(std::vector<double> v) {
  for (auto& x : v) x = static_cast<float>(x);
  return v;
}

// optax.adam / optax.adamw in double:
//   mu = b1 mu + (1 - b1) g;  nu = b2 nu + (1 - b2) g^2
//   u = (mu / (1 - b1^t)) / (sqrt(nu / (1 - b2^t)) + eps) + wd p;  p -= lr u
struct ReferenceAdam {
  double b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.0;
  std::vector<double> mu, nu;
  int t = 0;
  void step(std::vector<double>& p, const std::vector<double>& g, double lr) {
    if (mu.empty()) {
      mu.assign(p.size(), 0.0);
      nu.assign(p.size(), 0.0);
    }
    ++t;
    for (std::size_t i = 0; i < p.size(); ++i) {
      mu[i] = b1 * mu[i] + (1.0 - b1) * g[i];
      nu[i] = b2 * nu[i] + (1.0 - b2) * g[i] * g[i];
      const double mhat = mu[i] / (1.0 - std::pow(b1, t));
      const double vhat = nu[i] / (1.0 - std::pow(b2, t));
      p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p[i]);
    }
  }
};

void expect_relative(const std::vector<double>& actual, const std::vector<double>& expected,
                     double rel, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    EXPECT_NEAR(actual[i], expected[i], rel * std::abs(expected[i]) + 1e-30) << what << "[" << i << "]";
  }
}

const std::vector<double> kParams = {1.0, -0.5, 0.25, 2.0, -3.0, 0.75};
const std::vector<std::vector<double>> kGrads = {
    {0.1, -0.2, 0.3, -1.5, 0.0, 2.5},
    {0.05, 0.4, -0.3, -1.0, 0.0, 1e-3},
    {-0.2, 0.1, 0.6, 0.5, 0.0, -4.0},
};

TEST(Adam, ParametersMatchDoubleReferenceOverThreeSteps) {
  const double lr = 1e-2;
  Optimizer opt(OptimizerConfig::from_name("adam"), kParams.size());
  Vector params = to_device(kParams);
  std::vector<double> ref = as_float(kParams);
  ReferenceAdam adam;
  for (const auto& g : kGrads) {
    opt.step(params, to_device(g), lr);
    adam.step(ref, as_float(g), lr);
  }
  EXPECT_EQ(opt.steps(), 3);
  expect_relative(to_host(params), ref, 1e-6, "params");
  // A zero gradient leaves its parameter exactly where it was.
  EXPECT_EQ(to_host(params)[4], -3.0);
}

TEST(Adam, UpdatesMatchDoubleReferenceAtLargeLearningRate) {
  // lr = 1 makes the update dominate the parameters, so the comparison sees the update itself
  // rather than the rounding of p.
  const double lr = 1.0;
  const std::vector<double> zeros(kParams.size(), 0.0);
  Optimizer opt(OptimizerConfig::from_name("adam"), kParams.size());
  Vector params = to_device(zeros);
  std::vector<double> ref = zeros;
  ReferenceAdam adam;
  for (const auto& g : kGrads) {
    opt.step(params, to_device(g), lr);
    adam.step(ref, as_float(g), lr);
  }
  const auto got = to_host(params);
  for (std::size_t i = 0; i < got.size(); ++i) {
    // Each |update| is at most ~lr; 1e-5 relative per step covers float32 rounding of the
    // moment and bias-correction arithmetic plus the float32 (1 - b2) discrepancy described
    // at Adam.MomentsMatchDoubleReference.
    EXPECT_NEAR(got[i], ref[i], 1e-5 * lr * static_cast<double>(kGrads.size())) << i;
  }
}

// LIBRARY BUG (src/optim/optimizer.cpp, Optimizer::step): the moment coefficients are
// formed in float as (1.0f - b1) and (1.0f - b2) from b1 = float(0.9), b2 = float(0.999).
// 1.0f - float(0.999) = 0.00099998713, 1.3e-5 relative below 0.001, so nu (and through it
// every Adam update, by ~6.5e-6 relative) deviates from optax far beyond float resolution.
// Fix: compute the coefficients in double on the host,
//   const float one_minus_b1 = static_cast<float>(1.0 - config_.beta1);
//   const float one_minus_b2 = static_cast<float>(1.0 - config_.beta2);
// and use them in the kernel. This test fails until then.
TEST(Adam, MomentsMatchDoubleReference) {
  Optimizer opt(OptimizerConfig::from_name("adam"), kParams.size());
  ASSERT_EQ(opt.first_moment().extent(0), kParams.size());
  ASSERT_EQ(opt.second_moment().extent(0), kParams.size());
  Vector params = to_device(kParams);
  std::vector<double> ref = as_float(kParams);
  ReferenceAdam adam;
  for (const auto& g : kGrads) {
    opt.step(params, to_device(g), 1e-3);
    adam.step(ref, as_float(g), 1e-3);
    expect_relative(to_host(opt.first_moment()), adam.mu, 1e-6, "mu at step " + std::to_string(adam.t));
    expect_relative(to_host(opt.second_moment()), adam.nu, 1e-6, "nu at step " + std::to_string(adam.t));
  }
}

// LIBRARY BUG: same root cause as MomentsMatchDoubleReference; the first update's magnitude
// is lr * (1 + 6.5e-6) instead of lr to float precision. Fails until that is fixed.
TEST(Adam, FirstStepMagnitudeIsLearningRate) {
  // Bias correction makes the first Adam step sign(g) * lr for any non-zero g when eps is
  // negligible against |g|.
  OptimizerConfig config = OptimizerConfig::from_name("adam");
  config.eps = 1e-30;
  const std::vector<double> g = {1e-4, -0.3, 7.0, -250.0, 0.5};
  const double lr = 0.5;
  Optimizer opt(config, g.size());
  Vector params("params", g.size());  // zeros
  opt.step(params, to_device(g), lr);
  const auto p = to_host(params);
  for (std::size_t i = 0; i < g.size(); ++i) {
    EXPECT_NEAR(p[i], g[i] > 0 ? -lr : lr, 2e-6 * lr) << "g = " << g[i];
  }
}

TEST(Adam, EpsIsAddedOutsideTheSqrt) {
  // With |g| comparable to eps the first step is lr * g / (|g| + eps) (optax); eps inside the
  // sqrt would give lr * g / sqrt(g^2 + eps) instead (0.5 vs 0.707 for g = eps).
  const std::vector<double> g = {1e-8, -1e-7, 1e-6, 3e-8};
  const double lr = 1.0;
  Optimizer opt(OptimizerConfig::from_name("adam"), g.size());
  Vector params("params", g.size());  // zeros
  opt.step(params, to_device(g), lr);
  std::vector<double> ref(g.size(), 0.0);
  ReferenceAdam adam;
  adam.step(ref, as_float(g), lr);
  const auto p = to_host(params);
  EXPECT_NEAR(ref[0], -0.5, 1e-6);
  // 2e-5: float32 rounding plus the (1 - b2) discrepancy described at MomentsMatchDoubleReference.
  expect_relative(p, ref, 2e-5, "first step");
}

TEST(Adam, DefaultsAreOptaxDefaults) {
  const OptimizerConfig c = OptimizerConfig::from_name("adam");
  EXPECT_EQ(c.type, OptimizerType::Adam);
  EXPECT_EQ(c.beta1, 0.9);
  EXPECT_EQ(c.beta2, 0.999);
  EXPECT_EQ(c.eps, 1e-8);
  EXPECT_EQ(c.weight_decay, 0.0);
  const OptimizerConfig w = OptimizerConfig::from_name("adamw");
  EXPECT_EQ(w.type, OptimizerType::AdamW);
  EXPECT_EQ(w.weight_decay, 1e-4);
}

TEST(AdamW, ZeroGradientAppliesOnlyDecoupledDecay) {
  const std::vector<double> p0 = {1.0, -2.0, 0.5, 4.0};
  const std::vector<double> zeros(p0.size(), 0.0);
  const double lr = 0.5;

  Optimizer adamw(OptimizerConfig::from_name("adamw"), p0.size());
  Vector pw = to_device(p0);
  adamw.step(pw, to_device(zeros), lr);
  const auto got = to_host(pw);
  for (std::size_t i = 0; i < p0.size(); ++i) {
    EXPECT_NEAR(got[i], p0[i] * (1.0 - lr * 1e-4), 1e-7 * std::abs(p0[i])) << i;
    EXPECT_NE(got[i], p0[i]) << i;
  }

  // Plain Adam leaves the parameters untouched.
  Optimizer adam(OptimizerConfig::from_name("adam"), p0.size());
  Vector pa = to_device(p0);
  adam.step(pa, to_device(zeros), lr);
  const auto same = to_host(pa);
  for (std::size_t i = 0; i < p0.size(); ++i) EXPECT_EQ(same[i], p0[i]) << i;
}

TEST(AdamW, NegativeWeightDecayMeansOptaxDefault) {
  OptimizerConfig config = OptimizerConfig::from_name("adamw");
  config.weight_decay = -1.0;
  Optimizer opt(config, 2);
  Vector p = to_device({3.0, -1.0});
  opt.step(p, to_device({0.0, 0.0}), 1.0);
  const auto got = to_host(p);
  EXPECT_NEAR(got[0], 3.0 * (1.0 - 1e-4), 1e-7 * 3.0);
  EXPECT_NEAR(got[1], -1.0 * (1.0 - 1e-4), 1e-7);
}

TEST(AdamW, MatchesDoubleReferenceWithStrongDecay) {
  OptimizerConfig config = OptimizerConfig::from_name("adamw");
  config.weight_decay = 0.1;
  const double lr = 1e-2;
  Optimizer opt(config, kParams.size());
  Vector params = to_device(kParams);
  std::vector<double> ref = as_float(kParams);
  ReferenceAdam adam;
  adam.wd = 0.1;
  for (const auto& g : kGrads) {
    opt.step(params, to_device(g), lr);
    adam.step(ref, as_float(g), lr);
  }
  expect_relative(to_host(params), ref, 1e-6, "params");
  // The decay is visible: the zero-gradient parameter moved towards zero.
  const double p4 = to_host(params)[4];
  EXPECT_NEAR(p4, -3.0 * std::pow(1.0 - lr * 0.1, 3), 1e-6);
}

TEST(Sgd, PlainStepIsLrTimesGradient) {
  Optimizer opt(OptimizerConfig::from_name("sgd"), kParams.size());
  EXPECT_EQ(opt.first_moment().extent(0), 0u);
  EXPECT_EQ(opt.second_moment().extent(0), 0u);
  Vector params = to_device(kParams);
  std::vector<double> ref = as_float(kParams);
  const double lr = 0.1;
  for (const auto& g : kGrads) {
    opt.step(params, to_device(g), lr);
    for (std::size_t i = 0; i < ref.size(); ++i) ref[i] -= lr * static_cast<float>(g[i]);
  }
  EXPECT_EQ(opt.steps(), 3);
  const auto got = to_host(params);
  for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], 1e-6 * std::abs(ref[i]) + 1e-7) << i;
}

TEST(Sgd, MomentumMatchesOptaxTrace) {
  OptimizerConfig config = OptimizerConfig::from_name("sgd");
  config.momentum = 0.9;
  Optimizer opt(config, kParams.size());
  ASSERT_EQ(opt.first_moment().extent(0), kParams.size());
  EXPECT_EQ(opt.second_moment().extent(0), 0u);
  Vector params = to_device(kParams);
  std::vector<double> ref = as_float(kParams);
  std::vector<double> trace(kParams.size(), 0.0);
  const double lr = 0.1;
  for (const auto& g : kGrads) {
    opt.step(params, to_device(g), lr);
    for (std::size_t i = 0; i < ref.size(); ++i) {
      trace[i] = static_cast<float>(g[i]) + 0.9 * trace[i];  // optax.trace, nesterov=False
      ref[i] -= lr * trace[i];
    }
  }
  const auto got = to_host(params);
  for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], 1e-6 * std::abs(ref[i]) + 1e-7) << i;
  expect_relative(to_host(opt.first_moment()), trace, 1e-6, "trace");
  // Momentum differs from plain SGD after the first step.
  std::vector<double> plain = as_float(kParams);
  for (const auto& g : kGrads) {
    for (std::size_t i = 0; i < plain.size(); ++i) plain[i] -= lr * static_cast<float>(g[i]);
  }
  EXPECT_GT(std::abs(got[5] - plain[5]), 0.1);
}

TEST(Optimizer, UnknownNameIsConfigError) {
  try {
    OptimizerConfig::from_name("rmsprop");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("optimizer 'rmsprop'", 0), 0u) << e.what();
  }
  // Only a cast integer is outside the table.
  OptimizerConfig config;
  config.type = static_cast<OptimizerType>(3);
  EXPECT_THROW(Optimizer(config, 4), ConfigError);
  config.type = static_cast<OptimizerType>(-1);
  EXPECT_THROW(Optimizer(config, 4), ConfigError);
}

TEST(Optimizer, ConfigOfEachType) {
  EXPECT_EQ(OptimizerConfig::of(OptimizerType::Adam).type, OptimizerType::Adam);
  EXPECT_EQ(OptimizerConfig::of(OptimizerType::Adam).weight_decay, 0.0);
  EXPECT_EQ(OptimizerConfig::of(OptimizerType::AdamW).weight_decay, 1e-4);
  EXPECT_EQ(OptimizerConfig::of(OptimizerType::Sgd).momentum, 0.0);
  for (const auto& c : choices<OptimizerType>()) {
    EXPECT_EQ(OptimizerConfig::from_name(c.name).type, c.value);
    EXPECT_EQ(OptimizerConfig::from_name(c.name).weight_decay,
              OptimizerConfig::of(c.value).weight_decay);
  }
}

TEST(Optimizer, StepsOnlyTheGivenParameters) {
  // grads may be longer than params; elements past params.extent(0) are ignored.
  Optimizer opt(OptimizerConfig::from_name("sgd"), 3);
  Vector storage = to_device({1.0, 2.0, 3.0, 4.0});
  VectorRef first3(storage.data(), 3);
  opt.step(first3, to_device({1.0, 1.0, 1.0, 1.0, 1.0}), 0.5);
  const auto got = to_host(storage);
  EXPECT_EQ(got, (std::vector<double>{0.5, 1.5, 2.5, 4.0}));
}

}  // namespace
