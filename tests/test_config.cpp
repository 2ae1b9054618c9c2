// Configuration validation, shard plans, reference data and the random number generator.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "meshtrain/data/dataset.hpp"
#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/mesh/distributed_config.hpp"
#include "meshtrain/runtime/shard_plan.hpp"
#include "meshtrain/train/training_config.hpp"
#include "test_support.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::testing;

DistributedConfig mesh(std::vector<int> shape, std::vector<std::string> names,
                       std::string strategy = "data") {
  DistributedConfig c;
  c.mesh_shape = std::move(shape);
  c.mesh_axis_names = std::move(names);
  c.strategy = std::move(strategy);
  return c;
}

// ---------------------------------------------------------------------------------------
// format_shape / format_axis_names

TEST(Format, ShapesPrintLikePythonTuples) {
  EXPECT_EQ(format_shape({2}), "(2,)");
  EXPECT_EQ(format_shape({2, 2}), "(2, 2)");
  EXPECT_EQ(format_shape({1, 2, 3}), "(1, 2, 3)");
  EXPECT_EQ(format_shape({}), "()");
  EXPECT_EQ(format_shape({-1}), "(-1,)");
}

TEST(Format, AxisNamesPrintLikePythonTuples) {
  EXPECT_EQ(format_axis_names({"data"}), "('data',)");
  EXPECT_EQ(format_axis_names({"data", "fsdp"}), "('data', 'fsdp')");
  EXPECT_EQ(format_axis_names({}), "()");
}

// ---------------------------------------------------------------------------------------
// DistributedConfig

TEST(DistributedConfig, DefaultResolvesToOneDataAxisOverTheWorld) {
  const DistributedConfig c;
  for (int world : {1, 2, 3, 8}) {
    const DistributedConfig r = c.resolved(world);
    EXPECT_EQ(r.mesh_shape, std::vector<int>{world});
    EXPECT_EQ(r.mesh_axis_names, std::vector<std::string>{"data"});
    EXPECT_EQ(r.strategy, "data");
    EXPECT_EQ(r.num_devices(), world);
    EXPECT_NO_THROW(c.validate(world));
  }
}

TEST(DistributedConfig, ResolvedKeepsExplicitValues) {
  const DistributedConfig c = mesh({2, 2}, {"data", "fsdp"}, "fsdp");
  EXPECT_EQ(c.resolved(4), c);
  // A 2-D shape gets no default names (there is no sensible one).
  const DistributedConfig r = mesh({2, 2}, {}).resolved(4);
  EXPECT_TRUE(r.mesh_axis_names.empty());
  // Names alone: the shape defaults to the world.
  const DistributedConfig n = mesh({}, {"fsdp"}, "fsdp").resolved(3);
  EXPECT_EQ(n.mesh_shape, std::vector<int>{3});
  EXPECT_EQ(n.mesh_axis_names, std::vector<std::string>{"fsdp"});
}

TEST(DistributedConfig, ValidConfigs) {
  EXPECT_NO_THROW(mesh({2}, {"data"}).validate(2));
  EXPECT_NO_THROW(mesh({2, 2}, {"data", "fsdp"}).validate(4));
  EXPECT_NO_THROW(mesh({2, 2}, {"data", "fsdp"}, "fsdp").validate(4));
  EXPECT_NO_THROW(mesh({4}, {"fsdp"}, "fsdp").validate(4));
  EXPECT_NO_THROW(mesh({4}, {"data"}, "fsdp").validate(4));
  EXPECT_NO_THROW(mesh({1, 3}, {"model", "data"}).validate(3));
  EXPECT_EQ(mesh({2, 3, 2}, {"a", "b", "c"}).num_devices(), 12);
}

TEST(DistributedConfig, ProductMismatch) {
  std::string m = config_error([] { mesh({2, 2}, {"data", "fsdp"}).validate(3); });
  EXPECT_TRUE(starts_with(m, "mesh_shape (2, 2)")) << m;
  EXPECT_TRUE(contains(m, "4")) << m;
  EXPECT_TRUE(contains(m, "3")) << m;

  m = config_error([] { mesh({2}, {"data"}).validate(1); });
  EXPECT_TRUE(starts_with(m, "mesh_shape (2,)")) << m;

  m = config_error([] { mesh({65536, 65536, 4}, {"a", "b", "data"}).validate(4); });
  EXPECT_TRUE(starts_with(m, "mesh_shape (65536, 65536, 4)")) << m;
}

TEST(DistributedConfig, ZeroAndNegativeDimensions) {
  std::string m = config_error([] { mesh({0}, {"data"}).validate(1); });
  EXPECT_TRUE(starts_with(m, "mesh_shape (0,)")) << m;
  m = config_error([] { mesh({-2}, {"data"}).validate(2); });
  EXPECT_TRUE(starts_with(m, "mesh_shape (-2,)")) << m;
  // Two negatives whose product matches the world are still rejected.
  m = config_error([] { mesh({-2, -1}, {"data", "fsdp"}).validate(2); });
  EXPECT_TRUE(starts_with(m, "mesh_shape (-2, -1)")) << m;
  m = config_error([] { mesh({2, 0}, {"data", "fsdp"}).validate(2); });
  EXPECT_TRUE(starts_with(m, "mesh_shape (2, 0)")) << m;
}

TEST(DistributedConfig, AxisNameCountMismatch) {
  std::string m = config_error([] { mesh({2}, {"data", "fsdp"}).validate(2); });
  EXPECT_TRUE(starts_with(m, "mesh_axis_names ('data', 'fsdp')")) << m;
  EXPECT_TRUE(contains(m, "(2,)")) << m;
  m = config_error([] { mesh({2, 2}, {}).validate(4); });
  EXPECT_TRUE(starts_with(m, "mesh_axis_names ()")) << m;
  m = config_error([] { mesh({2, 2}, {"data"}).validate(4); });
  EXPECT_TRUE(starts_with(m, "mesh_axis_names ('data',)")) << m;
}

TEST(DistributedConfig, DuplicateAndEmptyAxisNames) {
  std::string m = config_error([] { mesh({1, 2}, {"data", "data"}).validate(2); });
  EXPECT_TRUE(starts_with(m, "mesh_axis_names ('data', 'data')")) << m;
  EXPECT_TRUE(contains(m, "'data' appears twice")) << m;
  m = config_error([] { mesh({2, 1}, {"data", ""}).validate(2); });
  EXPECT_TRUE(starts_with(m, "mesh_axis_names ('data', '')")) << m;
  EXPECT_TRUE(contains(m, "empty")) << m;
}

TEST(DistributedConfig, UnknownStrategy) {
  const std::string m = config_error([] { mesh({2}, {"data"}, "tensor").validate(2); });
  EXPECT_TRUE(starts_with(m, "strategy 'tensor'")) << m;
  EXPECT_TRUE(contains(config_error([] { mesh({2}, {"data"}, "").validate(2); }), "strategy ''"));
  EXPECT_TRUE(contains(config_error([] { mesh({2}, {"data"}, "Data").validate(2); }), "'Data'"));
}

TEST(DistributedConfig, DataStrategyNeedsDataAxis) {
  const std::string m = config_error([] { mesh({2}, {"fsdp"}, "data").validate(2); });
  EXPECT_TRUE(starts_with(m, "mesh_axis_names ('fsdp',)")) << m;
  EXPECT_TRUE(contains(m, "'data'")) << m;
  EXPECT_THROW(mesh({2, 2}, {"model", "fsdp"}).validate(4), ConfigError);
}

TEST(DistributedConfig, FsdpStrategyNeedsFsdpOrDataAxis) {
  const std::string m = config_error([] { mesh({2, 2}, {"model", "pipe"}, "fsdp").validate(4); });
  EXPECT_TRUE(starts_with(m, "mesh_axis_names ('model', 'pipe')")) << m;
  EXPECT_TRUE(contains(m, "'fsdp'")) << m;
}

// ---------------------------------------------------------------------------------------
// TrainingConfig

TEST(TrainingConfig, DefaultsAreValid) {
  const TrainingConfig c;
  EXPECT_EQ(c.num_epochs, 20);
  EXPECT_EQ(c.batch_size, 32);
  EXPECT_EQ(c.learning_rate, 1e-3);
  EXPECT_EQ(c.optimizer, "adam");
  for (int d : {1, 2, 3, 32}) EXPECT_NO_THROW(c.validate(d)) << d;
  for (const char* name : {"adam", "adamw", "sgd"}) {
    TrainingConfig o;
    o.optimizer = name;
    EXPECT_NO_THROW(o.validate(1)) << name;
  }
}

TEST(TrainingConfig, RejectsBadEpochsAndBatch) {
  TrainingConfig c;
  c.num_epochs = 0;
  std::string m = config_error([&] { c.validate(1); });
  EXPECT_TRUE(starts_with(m, "num_epochs 0")) << m;
  c.num_epochs = -3;
  m = config_error([&] { c.validate(1); });
  EXPECT_TRUE(starts_with(m, "num_epochs -3")) << m;

  c = TrainingConfig{};
  c.batch_size = 0;
  m = config_error([&] { c.validate(1); });
  EXPECT_TRUE(starts_with(m, "batch_size 0")) << m;

  c.batch_size = 3;
  EXPECT_NO_THROW(c.validate(3));
  m = config_error([&] { c.validate(4); });
  EXPECT_TRUE(starts_with(m, "batch_size 3")) << m;
  EXPECT_TRUE(contains(m, "4")) << m;
}

TEST(TrainingConfig, RejectsBadLearningRate) {
  const std::vector<std::pair<double, std::string>> cases = {
      {0.0, "learning_rate 0"},
      {-1e-3, "learning_rate -0.001"},
      {std::numeric_limits<double>::quiet_NaN(), "learning_rate nan"},
      {std::numeric_limits<double>::infinity(), "learning_rate inf"},
      {-std::numeric_limits<double>::infinity(), "learning_rate -inf"},
  };
  for (const auto& [lr, prefix] : cases) {
    TrainingConfig c;
    c.learning_rate = lr;
    const std::string m = config_error([&] { c.validate(1); });
    EXPECT_TRUE(starts_with(m, prefix)) << m;
  }
  TrainingConfig tiny;
  tiny.learning_rate = 1e-300;
  EXPECT_NO_THROW(tiny.validate(1));
}

TEST(TrainingConfig, RejectsUnknownOptimizer) {
  TrainingConfig c;
  c.optimizer = "lamb";
  const std::string m = config_error([&] { c.validate(1); });
  EXPECT_TRUE(starts_with(m, "optimizer 'lamb'")) << m;
}

// ---------------------------------------------------------------------------------------
// make_shard_plan

TEST(ShardPlan, ThirtyTwoOverThree) {
  const ShardPlan p = make_shard_plan(32, 3);
  EXPECT_EQ(p.global_batch, 32);
  EXPECT_EQ(p.parts(), 3);
  EXPECT_EQ(p.counts, (std::vector<int>{11, 11, 10}));
  EXPECT_EQ(p.offsets, (std::vector<int>{0, 11, 22}));
}

TEST(ShardPlan, ThirtyTwoOverTwo) {
  const ShardPlan p = make_shard_plan(32, 2);
  EXPECT_EQ(p.counts, (std::vector<int>{16, 16}));
  EXPECT_EQ(p.offsets, (std::vector<int>{0, 16}));
}

TEST(ShardPlan, SmallBatches) {
  ShardPlan p = make_shard_plan(5, 4);
  EXPECT_EQ(p.counts, (std::vector<int>{2, 1, 1, 1}));
  EXPECT_EQ(p.offsets, (std::vector<int>{0, 2, 3, 4}));
  p = make_shard_plan(1, 4);
  EXPECT_EQ(p.counts, (std::vector<int>{1, 0, 0, 0}));
  EXPECT_EQ(p.offsets, (std::vector<int>{0, 1, 1, 1}));
  p = make_shard_plan(0, 3);
  EXPECT_EQ(p.global_batch, 0);
  EXPECT_EQ(p.counts, (std::vector<int>{0, 0, 0}));
  EXPECT_EQ(p.offsets, (std::vector<int>{0, 0, 0}));
  p = make_shard_plan(7, 1);
  EXPECT_EQ(p.counts, (std::vector<int>{7}));
  EXPECT_EQ(p.offsets, (std::vector<int>{0}));
}

TEST(ShardPlan, SweepCoversBatchContiguouslyAndEvenly) {
  for (int batch = 0; batch <= 100; ++batch) {
    for (int parts = 1; parts <= 9; ++parts) {
      const ShardPlan p = make_shard_plan(batch, parts);
      ASSERT_EQ(p.parts(), parts);
      EXPECT_EQ(std::accumulate(p.counts.begin(), p.counts.end(), 0), batch)
          << batch << " over " << parts;
      int next = 0;
      for (int r = 0; r < parts; ++r) {
        EXPECT_EQ(p.offsets[r], next) << batch << " over " << parts << " shard " << r;
        next += p.counts[r];
        // The first batch % parts shards take one extra row.
        EXPECT_EQ(p.counts[r], batch / parts + (r < batch % parts ? 1 : 0));
      }
      EXPECT_EQ(p, make_shard_plan(batch, parts));
    }
  }
}

TEST(ShardPlan, RejectsBadArguments) {
  EXPECT_THROW(make_shard_plan(32, 0), ConfigError);
  EXPECT_THROW(make_shard_plan(32, -1), ConfigError);
  EXPECT_THROW(make_shard_plan(-1, 2), ConfigError);
}

// ---------------------------------------------------------------------------------------
// make_reference_data

TEST(ReferenceData, ShapesAndTargets) {
  const ReferenceData d = make_reference_data(37, 4, 9);
  ASSERT_EQ(d.x.extent(0), 37u);
  ASSERT_EQ(d.x.extent(1), 4u);
  ASSERT_EQ(d.y.extent(0), 37u);
  ASSERT_EQ(d.y.extent(1), 1u);
  for (std::size_t i = 0; i < 37; ++i) {
    double sum = 0.0;
    float fsum = 0.0f;
    for (std::size_t j = 0; j < 4; ++j) {
      sum += static_cast<double>(d.x(i, j)) * d.x(i, j);
      fsum += d.x(i, j) * d.x(i, j);
    }
    // Accumulated in double from the float inputs, rounded once.
    EXPECT_EQ(d.y(i, 0), static_cast<float>(sum)) << i;
    EXPECT_NEAR(d.y(i, 0), fsum, 1e-6 * fsum + 1e-7) << i;
  }
}

TEST(ReferenceData, InputsAreStandardNormal) {
  const ReferenceData d = make_reference_data(8192, 4, 1);
  double sum = 0.0, sum_sq = 0.0;
  for (std::size_t i = 0; i < d.x.extent(0); ++i) {
    for (std::size_t j = 0; j < d.x.extent(1); ++j) {
      sum += d.x(i, j);
      sum_sq += static_cast<double>(d.x(i, j)) * d.x(i, j);
    }
  }
  const double n = static_cast<double>(d.x.extent(0) * d.x.extent(1));
  EXPECT_NEAR(sum / n, 0.0, 0.03);
  EXPECT_NEAR(std::sqrt(sum_sq / n - (sum / n) * (sum / n)), 1.0, 0.03);
}

TEST(ReferenceData, DeterministicInSeed) {
  const ReferenceData a = make_reference_data(16, 3, 42);
  const ReferenceData b = make_reference_data(16, 3, 42);
  const ReferenceData c = make_reference_data(16, 3, 43);
  int differ = 0;
  for (std::size_t i = 0; i < 16; ++i) {
    for (std::size_t j = 0; j < 3; ++j) {
      EXPECT_EQ(a.x(i, j), b.x(i, j));
      if (a.x(i, j) != c.x(i, j)) ++differ;
    }
    EXPECT_EQ(a.y(i, 0), b.y(i, 0));
  }
  EXPECT_EQ(differ, 48);
}

TEST(ReferenceData, RejectsBadSizes) {
  EXPECT_THROW(make_reference_data(0, 4, 0), ConfigError);
  EXPECT_THROW(make_reference_data(-5, 4, 0), ConfigError);
  EXPECT_THROW(make_reference_data(4, 0, 0), ConfigError);
  const std::string m = config_error([] { make_reference_data(0, 4, 0); });
  EXPECT_TRUE(starts_with(m, "samples 0")) << m;
}

// ---------------------------------------------------------------------------------------
// Random

TEST(Random, DeterministicInSeed) {
  Random a(5), b(5), c(6);
  int differ = 0;
  for (int i = 0; i < 1000; ++i) {
    const double va = a.normal();
    EXPECT_EQ(va, b.normal());
    if (va != c.normal()) ++differ;
  }
  EXPECT_EQ(differ, 1000);
  Random u1(5), u2(5);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(u1.uniform(), u2.uniform());
}

TEST(Random, UniformInUnitInterval) {
  Random r(8);
  double sum = 0.0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double u = r.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.01);
}

TEST(Random, NormalMomentsOverHundredThousandDraws) {
  Random r(123);
  const int n = 100000;
  double sum = 0.0, sum_sq = 0.0;
  int beyond_two = 0;
  for (int i = 0; i < n; ++i) {
    const double z = r.normal();
    sum += z;
    sum_sq += z * z;
    if (std::abs(z) > 2.0) ++beyond_two;
  }
  const double mean = sum / n;
  EXPECT_NEAR(mean, 0.0, 0.02);                                // standard error 0.003
  EXPECT_NEAR(std::sqrt(sum_sq / n - mean * mean), 1.0, 0.02);  // standard error 0.0022
  EXPECT_NEAR(static_cast<double>(beyond_two) / n, 0.0455, 0.005);
}

TEST(Random, TruncatedNormalStaysWithinTwoSigma) {
  Random r(321);
  const int n = 100000;
  double sum = 0.0, sum_sq = 0.0, max_abs = 0.0;
  for (int i = 0; i < n; ++i) {
    const double z = r.truncated_normal();
    ASSERT_GE(z, -2.0);
    ASSERT_LE(z, 2.0);
    sum += z;
    sum_sq += z * z;
    max_abs = std::max(max_abs, std::abs(z));
  }
  const double mean = sum / n;
  EXPECT_NEAR(mean, 0.0, 0.02);
  // The std of N(0, 1) truncated to [-2, 2], which the LeCun initialiser divides out.
  EXPECT_NEAR(std::sqrt(sum_sq / n - mean * mean), 0.87962566103423978, 0.01);
  EXPECT_GT(max_abs, 1.95);
}

TEST(Random, DerivedSeedsDiffer) {
  EXPECT_EQ(derive_seed(1, 2), derive_seed(1, 2));
  EXPECT_NE(derive_seed(1, 1), derive_seed(1, 2));
  EXPECT_NE(derive_seed(1, 1), derive_seed(2, 1));
  EXPECT_NE(derive_seed(0, 0), 0u);
}

}  // namespace
