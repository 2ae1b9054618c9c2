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

#include "meshtrain/choices.hpp"
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
                       Strategy strategy = Strategy::Data) {
  DistributedConfig c;
  c.mesh_shape = std::move(shape);
  c.mesh_axis_names = std::move(names);
  c.strategy = strategy;
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
    EXPECT_EQ(r.strategy, Strategy::Data);
    EXPECT_EQ(r.num_devices(), world);
    EXPECT_NO_THROW(c.validate(world));
  }
}

TEST(DistributedConfig, ResolvedKeepsExplicitValues) {
  const DistributedConfig c = mesh({2, 2}, {"data", "fsdp"}, Strategy::Fsdp);
  EXPECT_EQ(c.resolved(4), c);
  // A 2-D shape gets no default names (there is no sensible one).
  const DistributedConfig r = mesh({2, 2}, {}).resolved(4);
  EXPECT_TRUE(r.mesh_axis_names.empty());
  // Names alone: the shape defaults to the world.
  const DistributedConfig n = mesh({}, {"fsdp"}, Strategy::Fsdp).resolved(3);
  EXPECT_EQ(n.mesh_shape, std::vector<int>{3});
  EXPECT_EQ(n.mesh_axis_names, std::vector<std::string>{"fsdp"});
}

TEST(DistributedConfig, ValidConfigs) {
  EXPECT_NO_THROW(mesh({2}, {"data"}).validate(2));
  EXPECT_NO_THROW(mesh({2, 2}, {"data", "fsdp"}).validate(4));
  EXPECT_NO_THROW(mesh({2, 2}, {"data", "fsdp"}, Strategy::Fsdp).validate(4));
  EXPECT_NO_THROW(mesh({4}, {"fsdp"}, Strategy::Fsdp).validate(4));
  EXPECT_NO_THROW(mesh({4}, {"data"}, Strategy::Fsdp).validate(4));
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
  // A name is parsed before it reaches the config; only a cast integer is not a strategy.
  std::string m = config_error([] { parse_strategy("tensor"); });
  EXPECT_EQ(m, "strategy 'tensor': unknown (choose data or fsdp)");
  EXPECT_TRUE(contains(config_error([] { parse_strategy(""); }), "strategy ''"));
  EXPECT_TRUE(contains(config_error([] { parse_strategy("Data"); }), "'Data'"));
  const ConfigError e =
      config_error_object([] { mesh({2}, {"data"}, static_cast<Strategy>(7)).validate(2); });
  EXPECT_EQ(e.field(), "strategy");
  EXPECT_EQ(e.detail(), "7: unknown (choose data or fsdp)");
  const ConfigError comm = config_error_object([] {
    DistributedConfig c;
    c.comm = static_cast<CommBackend>(-1);
    c.validate(1);
  });
  EXPECT_EQ(comm.field(), "comm");
}

TEST(DistributedConfig, ErrorsCarryTheirField) {
  EXPECT_EQ(config_error_object([] { mesh({3}, {"data"}).validate(2); }).field(), "mesh_shape");
  EXPECT_EQ(config_error_object([] { mesh({1, 2}, {"data", "data"}).validate(2); }).field(),
            "mesh_axis_names");
  EXPECT_EQ(config_error_object([] {
              DistributedConfig c;
              c.collective_timeout_seconds = -1;
              c.validate(1);
            }).field(),
            "collective_timeout");
}

TEST(DistributedConfig, DataStrategyNeedsDataAxis) {
  const std::string m = config_error([] { mesh({2}, {"fsdp"}, Strategy::Data).validate(2); });
  EXPECT_TRUE(starts_with(m, "mesh_axis_names ('fsdp',)")) << m;
  EXPECT_TRUE(contains(m, "'data'")) << m;
  EXPECT_THROW(mesh({2, 2}, {"model", "fsdp"}).validate(4), ConfigError);
}

TEST(DistributedConfig, FsdpStrategyNeedsFsdpOrDataAxis) {
  const std::string m =
      config_error([] { mesh({2, 2}, {"model", "pipe"}, Strategy::Fsdp).validate(4); });
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
  EXPECT_EQ(c.optimizer, OptimizerType::Adam);
  EXPECT_EQ(c.progress, Progress::Auto);
  EXPECT_EQ(c.nonfinite, NonFinite::Abort);
  EXPECT_EQ(c.distributed_config.strategy, Strategy::Data);
  EXPECT_EQ(c.distributed_config.comm, CommBackend::Auto);
  for (int d : {1, 2, 3, 32}) EXPECT_NO_THROW(c.validate(d)) << d;
  for (const auto& choice : choices<OptimizerType>()) {
    TrainingConfig o;
    o.optimizer = choice.value;
    EXPECT_NO_THROW(o.validate(1)) << choice.name;
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

TEST(TrainingConfig, RejectsValuesOutsideTheChoices) {
  // Only an integer cast to the enum can be outside its table.
  TrainingConfig c;
  c.optimizer = static_cast<OptimizerType>(9);
  std::string m = config_error([&] { c.validate(1); });
  EXPECT_EQ(m, "optimizer 9: unknown (choose adam, adamw or sgd)");
  c = TrainingConfig{};
  c.progress = static_cast<Progress>(9);
  EXPECT_EQ(config_error_object([&] { c.validate(1); }).field(), "progress");
  c = TrainingConfig{};
  c.nonfinite = static_cast<NonFinite>(9);
  EXPECT_EQ(config_error_object([&] { c.validate(1); }).field(), "nonfinite");
}

TEST(TrainingConfig, ErrorsCarryTheirField) {
  // The programs name the flag or TOML key of field(); the message keeps its old text.
  const auto error = [](auto change) {
    TrainingConfig c;
    change(c);
    return config_error_object([&] { c.validate(2); });
  };
  struct Case {
    ConfigError error;
    std::string field;
    std::string what;
  };
  const std::vector<Case> cases = {
      {error([](TrainingConfig& c) { c.num_epochs = 0; }), "num_epochs",
       "num_epochs 0: must be at least 1"},
      {error([](TrainingConfig& c) { c.batch_size = 0; }), "batch_size",
       "batch_size 0: must be at least 1"},
      {error([](TrainingConfig& c) { c.batch_size = 1; }), "batch_size",
       "batch_size 1: smaller than the 2 shards of the 'data' axis; every rank needs at least "
       "one sample"},
      {error([](TrainingConfig& c) { c.learning_rate = -1; }), "learning_rate",
       "learning_rate -1: must be a finite number greater than 0"},
      {error([](TrainingConfig& c) { c.bucket_bytes = 3; }), "bucket_bytes",
       "bucket_bytes 3: must be at least 4"},
      {error([](TrainingConfig& c) { c.validation_every = -2; }), "validation_every",
       "validation_every -2: must be 0 (never) or a number of epochs"},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(c.error.field(), c.field);
    EXPECT_EQ(c.error.what(), c.what);
    EXPECT_EQ(c.field + " " + c.error.detail(), c.what);
  }
}

// ---------------------------------------------------------------------------------------
// choices.hpp: one name table per choice

template <class E>
void expect_table_round_trips(const std::string& field) {
  const auto table = choices<E>();
  ASSERT_FALSE(table.empty());
  std::vector<std::string> names;
  for (const auto& c : table) {
    names.emplace_back(c.name);
    EXPECT_EQ(parse_choice<E>(field, c.name), c.value) << c.name;
    EXPECT_EQ(name_of(c.value), c.name);
    EXPECT_EQ(parse_choice<E>(field, name_of(c.value)), c.value) << c.name;
  }
  EXPECT_EQ(choice_names<E>(), names);
  // Every value once, every name once.
  for (std::size_t i = 0; i < table.size(); ++i) {
    for (std::size_t j = i + 1; j < table.size(); ++j) {
      EXPECT_NE(table[i].value, table[j].value) << field;
      EXPECT_NE(table[i].name, table[j].name) << field;
    }
  }
  // "a, b or c" in the table's order.
  std::string list;
  for (std::size_t i = 0; i < names.size(); ++i) {
    list += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  }
  EXPECT_EQ(choice_list<E>(), list);
  // --help lists every name with its help.
  const std::string help = choice_help<E>();
  for (const auto& c : table) {
    EXPECT_TRUE(contains(help, std::string(c.name))) << help;
    if (!c.help.empty()) {
      EXPECT_TRUE(contains(help, std::string(c.help))) << help;
    }
  }
  // Unknown names (names are exact) name the field and list the choices.
  for (const std::string& bad :
       std::vector<std::string>{"", "nope", names.front() + " ", "X" + names.front()}) {
    const ConfigError e = config_error_object([&] { parse_choice<E>(field, bad); });
    EXPECT_EQ(e.field(), field);
    EXPECT_EQ(e.detail(), "'" + bad + "': unknown (choose " + list + ")");
  }
  const ConfigError e = config_error_object([&] { check_choice(field, static_cast<E>(99)); });
  EXPECT_EQ(e.field(), field);
  EXPECT_EQ(name_of(static_cast<E>(99)), "?");
  EXPECT_NO_THROW(check_choice(field, table.front().value));
}

TEST(Choices, EveryTableRoundTrips) {
  expect_table_round_trips<Strategy>("strategy");
  expect_table_round_trips<CommBackend>("comm");
  expect_table_round_trips<OptimizerType>("optimizer");
  expect_table_round_trips<Progress>("progress");
  expect_table_round_trips<NonFinite>("nonfinite");
  expect_table_round_trips<Activation>("activation");
  expect_table_round_trips<Schedule>("schedule");
}

TEST(Choices, EveryEnumeratorHasAName) {
  for (Strategy v : {Strategy::Data, Strategy::Fsdp}) EXPECT_NE(name_of(v), "?");
  for (CommBackend v : {CommBackend::Auto, CommBackend::Mpi, CommBackend::Nccl})
    EXPECT_NE(name_of(v), "?");
  for (OptimizerType v : {OptimizerType::Adam, OptimizerType::AdamW, OptimizerType::Sgd})
    EXPECT_NE(name_of(v), "?");
  for (Progress v : {Progress::Auto, Progress::Poll, Progress::Thread}) EXPECT_NE(name_of(v), "?");
  for (NonFinite v : {NonFinite::Abort, NonFinite::Skip}) EXPECT_NE(name_of(v), "?");
  for (Activation v : {Activation::Identity, Activation::ReLU, Activation::Tanh, Activation::Gelu})
    EXPECT_NE(name_of(v), "?");
  for (Schedule v : {Schedule::Constant, Schedule::WarmupCosine, Schedule::Step,
                     Schedule::WarmupConstant})
    EXPECT_NE(name_of(v), "?");
}

TEST(Choices, NamesUsersWrite) {
  // Run signatures of checkpoints and TOML files hold these names: they must not change.
  EXPECT_EQ(choice_names<Strategy>(), (std::vector<std::string>{"data", "fsdp"}));
  EXPECT_EQ(choice_names<CommBackend>(), (std::vector<std::string>{"auto", "mpi", "nccl"}));
  EXPECT_EQ(choice_names<OptimizerType>(), (std::vector<std::string>{"adam", "adamw", "sgd"}));
  EXPECT_EQ(choice_names<Progress>(), (std::vector<std::string>{"auto", "thread", "poll"}));
  EXPECT_EQ(choice_names<NonFinite>(), (std::vector<std::string>{"abort", "skip"}));
  EXPECT_EQ(choice_names<Activation>(),
            (std::vector<std::string>{"relu", "tanh", "gelu", "identity"}));
  EXPECT_EQ(choice_names<Schedule>(),
            (std::vector<std::string>{"constant", "warmup_cosine", "step", "warmup_constant"}));
  // The messages tests and users have long seen.
  EXPECT_EQ(config_error([] { parse_progress("sometimes"); }),
            "progress 'sometimes': unknown (choose auto, thread or poll)");
  EXPECT_EQ(config_error([] { parse_activation("swish"); }),
            "activation 'swish': unknown (choose relu, tanh, gelu or identity)");
  EXPECT_EQ(parse_activation("linear"), Activation::Identity);  // the old alias
  EXPECT_EQ(choice_help<CommBackend>(),
            "auto (NCCL when a GPU is visible and NCCL was built), mpi or nccl");
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
