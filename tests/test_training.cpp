// Global-batch semantics: an N-rank run computes what a 1-rank run computes, and every rank
// ends with the same parameters. Each test trains once over the world and once over
// MPI_COMM_SELF (the 1-rank reference) on every rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "meshtrain/comm/bfloat16.hpp"
#include "meshtrain/comm/counting_communicator.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/data/dataset.hpp"
#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/nn/fno.hpp"
#include "meshtrain/train/trainer.hpp"
#include "step_watch.hpp"
#include "test_support.hpp"

using namespace meshtrain;
using meshtrain::testing::config_error;
using meshtrain::testing::config_error_object;
using meshtrain::testing::groups_over;
using meshtrain::testing::contains;
using meshtrain::testing::error_of;
using meshtrain::testing::starts_with;
using meshtrain::testing::world_size;

namespace {

std::vector<float> host_params(const Model& model) {
  HostVector p = model.parameters_on_host();
  return std::vector<float>(p.data(), p.data() + p.extent(0));
}

// Largest |a - b| relative to the largest |a| over the vector (parameters near zero make a
// per-element relative error meaningless).
double max_relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 0.0, diff = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(a[i])));
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return diff / scale;
}

struct Case {
  int samples;
  int batch;
  int epochs;
  std::vector<int> widths;
  Loss loss = Loss::Mse;
};

// The reference data, or with several outputs targets that differ per column.
ReferenceData case_data(const Case& c, std::uint64_t seed) {
  ReferenceData data = make_reference_data(c.samples, c.widths.front(), seed);
  const auto outputs = static_cast<std::size_t>(c.widths.back());
  if (outputs == 1) return data;
  HostMatrix y("y", data.x.extent(0), outputs);
  for (std::size_t i = 0; i < y.extent(0); ++i) {
    for (std::size_t j = 0; j < outputs; ++j) {
      y(i, j) = data.y(i, 0) * static_cast<float>(j + 1) + data.x(i, j % data.x.extent(1));
    }
  }
  data.y = y;
  return data;
}

// base: the settings under test (schedule, clipping, accumulation, ...).
void expect_world_equals_single(const Case& c, const DistributedConfig& dist,
                                const TrainingConfig& base = {}) {
  TrainingConfig config = base;
  config.num_epochs = c.epochs;
  config.batch_size = c.batch;
  config.seed = 3;
  config.loss = c.loss;
  config.distributed_config = dist;
  const ReferenceData data = case_data(c, config.seed);

  Trainer distributed(Mlp(c.widths, Activation::ReLU, config.seed), config);
  const FitResult n_ranks = distributed.fit(data.x, data.y);

  TrainingConfig single_config = config;
  single_config.distributed_config = DistributedConfig{};
  Trainer single(Mlp(c.widths, Activation::ReLU, config.seed), single_config,
                 groups_over(MPI_COMM_SELF, single_config));
  const FitResult one_rank = single.fit(data.x, data.y);

  const auto pn = host_params(n_ranks.model);
  const auto p1 = host_params(one_rank.model);
  EXPECT_LE(max_relative_difference(pn, p1), 1e-5) << "parameters, samples " << c.samples;
  EXPECT_NEAR(n_ranks.metrics.final_loss, one_rank.metrics.final_loss,
              1e-5 * one_rank.metrics.final_loss);
  EXPECT_NEAR(n_ranks.metrics.initial_loss, one_rank.metrics.initial_loss,
              1e-5 * one_rank.metrics.initial_loss);
  ASSERT_EQ(n_ranks.metrics.epoch_losses.size(), static_cast<std::size_t>(c.epochs));
  EXPECT_EQ(n_ranks.metrics.steps, one_rank.metrics.steps);

  // Bit-identical parameters on every rank of the distributed run.
  MpiCommunicator world(MPI_COMM_WORLD);
  std::vector<float> root = pn;
  world.broadcast(std::span<float>(root), 0);
  EXPECT_EQ(std::memcmp(root.data(), pn.data(), pn.size() * sizeof(float)), 0)
      << "parameters differ from rank 0's on rank " << world.rank();
}

}  // namespace

TEST(Training, ReferenceRunMatchesOneRank) {
  expect_world_equals_single({256, 32, 20, {4, 64, 1}}, DistributedConfig{});
}

TEST(Training, PartialLastBatchAndUnevenShards) {
  // 250 = 7 * 32 + 26: the last batch is partial; 32 and 26 split unevenly over 3 or 4 ranks.
  expect_world_equals_single({250, 32, 3, {4, 16, 16, 1}}, DistributedConfig{});
}

TEST(Training, LastBatchSmallerThanTheRankCount) {
  // 33 = 32 + 1: in the last batch every rank but one holds zero rows.
  expect_world_equals_single({33, 32, 4, {4, 8, 1}}, DistributedConfig{});
}

TEST(Training, DataAxisOfATwoDimensionalMesh) {
  const int n = world_size();
  for (int data = 1; data <= n; ++data) {
    if (n % data != 0) continue;
    expect_world_equals_single({64, 16, 2, {4, 8, 1}},
                               DistributedConfig{{data, n / data}, {"data", "replica"},
                                                 Strategy::Data});
  }
}

TEST(Training, RelativeL2UnderEveryStrategyMatchesOneRank) {
  // Uneven shards and a partial last batch: each sample's error counts once, with weight
  // 1 / global batch, whichever rank holds it.
  const Case c{90, 32, 3, {4, 12, 12, 3}, Loss::RelativeL2};  // 12: split by 1-4 ranks
  const int n = world_size();
  expect_world_equals_single(c, DistributedConfig{});
  expect_world_equals_single(c, DistributedConfig{{n}, {"data"}, Strategy::Fsdp});
  expect_world_equals_single(c, DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data});
}

TEST(Training, RelativeL2RefusesAZeroTarget) {
  TrainingConfig config;
  config.loss = Loss::RelativeL2;
  const ReferenceData data = make_reference_data(16, 4, 0);
  data.y(5, 0) = 0.0f;
  Trainer trainer(Mlp::simple_pde_model(0), config);
  const ConfigError e = config_error_object([&] { trainer.prepare(data.x, data.y); });
  EXPECT_EQ(e.field(), "loss");
  EXPECT_EQ(e.detail(),
            "relative_l2: training target 5 is all zeros, and its relative error is undefined");
}

TEST(Training, ReferenceRunLearns) {
  TrainingConfig config;
  const ReferenceData data = make_reference_data(256, 4, config.seed);
  Trainer trainer(Mlp::simple_pde_model(config.seed), config);
  const FitResult result = trainer.fit(data.x, data.y);
  const TrainingMetrics& m = result.metrics;
  EXPECT_EQ(m.steps, 160);
  EXPECT_GT(m.initial_loss, 10.0);
  EXPECT_LT(m.initial_loss, 40.0);
  EXPECT_LT(m.final_loss, m.initial_loss / 4);
  for (std::size_t e = 1; e < m.epoch_losses.size(); ++e) {
    EXPECT_LT(m.epoch_losses[e], m.epoch_losses[e - 1]) << "epoch " << e;
  }
  EXPECT_GT(m.wall_seconds, 0.0);
  EXPECT_GT(m.samples_per_second, 0.0);
}

TEST(Training, StartsFromRankZerosParameters) {
  // Each rank initialises with a different seed; rank 0's parameters must win.
  MpiCommunicator world(MPI_COMM_WORLD);
  TrainingConfig config;
  config.num_epochs = 1;
  const ReferenceData data = make_reference_data(64, 4, 0);
  Trainer mixed(Mlp::simple_pde_model(100 + world.rank()), config);
  const FitResult a = mixed.fit(data.x, data.y);
  Trainer reference(Mlp::simple_pde_model(100), config);
  const FitResult b = reference.fit(data.x, data.y);
  EXPECT_EQ(host_params(a.model), host_params(b.model));
}

TEST(Training, BadConfigsAreConfigErrorsOnEveryRank) {
  const int n = world_size();
  TrainingConfig config;
  config.batch_size = n - 1;  // fewer samples per batch than shards (0 when n == 1)
  EXPECT_THROW(Trainer(Mlp::simple_pde_model(0), config), ConfigError);
  config = TrainingConfig{};
  config.learning_rate = -1;
  EXPECT_THROW(Trainer(Mlp::simple_pde_model(0), config), ConfigError);
  config = TrainingConfig{};
  config.distributed_config.mesh_shape = {n + 1};
  EXPECT_THROW(Trainer(Mlp::simple_pde_model(0), config), ConfigError);
  config = TrainingConfig{};
  config.progress = static_cast<Progress>(7);  // not in the table
  EXPECT_TRUE(starts_with(config_error([&] { Trainer(Mlp::simple_pde_model(0), config); }),
                          "progress 7"));

  Trainer trainer(Mlp::simple_pde_model(0), TrainingConfig{});
  const ReferenceData wrong = make_reference_data(16, 3, 0);  // 3 features for a 4-input model
  EXPECT_THROW(trainer.fit(wrong.x, wrong.y), ConfigError);
  MpiCommunicator(MPI_COMM_WORLD).barrier();
}

namespace {
// 24: split by 1 to 4 ranks under tensor parallelism.
void expect_steps_stay_on_the_device(const TrainingConfig& config) {
  meshtrain::testing::StepWatch watch;  // before the trainer: it learns the device buffers
  const ReferenceData data = make_reference_data(100, 4, 0);
  Trainer trainer(Mlp({4, 24, 24, 1}, Activation::ReLU, 0), config);
  trainer.prepare(data.x, data.y);
  // Not an ASSERT: every rank goes on to the steps' collectives.
  EXPECT_TRUE(watch.sees_an_allocation_and_a_transfer());
  // Full and partial batches.
  watch.begin();
  for (std::size_t b = 0; b < 2 * trainer.batches_per_epoch(); ++b) {
    trainer.step(b % trainer.batches_per_epoch());
  }
  watch.end();
  const std::string what = std::string(name_of(config.distributed_config.strategy)) + ", " +
                           std::to_string(config.accumulation_steps) + " micro-batches";
  EXPECT_EQ(watch.allocations(), 0) << what;
  EXPECT_TRUE(watch.transfers().empty()) << what << ": host transfers in a step:"
                                         << watch.transfer_list();
}
}  // namespace

TEST(Training, AStepAllocatesNothingAndMovesOnlyScalarsToTheHost) {
  TrainingConfig config;
  config.bucket_bytes = 4;  // one bucket per layer, so the overlap path is exercised
  {
    const ReferenceData data = make_reference_data(100, 4, 0);
    Trainer trainer(Mlp({4, 24, 24, 1}, Activation::ReLU, 0), config);
    trainer.prepare(data.x, data.y);
    ASSERT_EQ(trainer.reducer().buckets().size(), 3u);
    // The process's first reduction makes Kokkos allocate its scratch once: here, so that
    // the test does not depend on others having run before it.
    trainer.step(0);
  }
  expect_steps_stay_on_the_device(config);
  // Clipping and accumulation under each strategy.
  const int n = world_size();
  config.clip_grad_norm = 0.1;
  config.accumulation_steps = 3;
  config.schedule = Schedule::WarmupCosine;
  expect_steps_stay_on_the_device(config);
  config.distributed_config = DistributedConfig{{n}, {"data"}, Strategy::Fsdp};
  expect_steps_stay_on_the_device(config);
  config.distributed_config = DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data};
  expect_steps_stay_on_the_device(config);
  // Shuffled rows, bf16 gradient communication (its widening kernel counts non-finite
  // values) and bf16 compute; data parallel, the strategy that takes them.
  config.distributed_config = DistributedConfig{{n}, {"data"}, Strategy::Data};
  config.clip_grad_norm = 0.0;
  config.shuffle = true;
  config.grad_comm_dtype = Dtype::Bf16;
  config.compute_dtype = Dtype::Bf16;
  expect_steps_stay_on_the_device(config);
}

TEST(Training, BucketsAndOverlapDoNotChangeTheResult) {
  const ReferenceData data = make_reference_data(96, 4, 5);
  std::vector<std::vector<float>> results;
  for (std::size_t bucket_bytes : {std::size_t{4}, std::size_t{1024}, std::size_t{1} << 30}) {
    for (const char* mode : {"off", "poll", "thread", "auto"}) {
      TrainingConfig config;
      config.num_epochs = 2;
      config.bucket_bytes = bucket_bytes;
      config.overlap_communication = std::string(mode) != "off";
      if (config.overlap_communication) config.progress = parse_progress(mode);
      Trainer trainer(Mlp({4, 16, 16, 1}, Activation::ReLU, 5), config);
      const FitResult result = trainer.fit(data.x, data.y);
      results.push_back(host_params(result.model));
      const std::string reported = result.metrics.gradient_progress;
      if (std::string(mode) == "off") {
        EXPECT_EQ(reported, "");
      } else if (std::string(mode) == "auto") {
        EXPECT_TRUE(reported == "poll" || reported == "thread") << reported;
      } else {
        EXPECT_EQ(reported, mode);
      }
    }
  }
  // Summation order per element is the same whatever the bucketing and however the
  // all-reduces progress: bit-identical.
  for (const auto& r : results) EXPECT_EQ(r, results.front());
}

// Buckets big enough for the ring all-reduce (poll) against MPI_Allreduce (off, thread): the
// same sums, in another order from three ranks on.
TEST(Training, RingSizedBucketsAgreeAcrossProgressModes) {
  const ReferenceData data = make_reference_data(64, 4, 3);
  std::vector<std::vector<float>> results;
  for (const char* mode : {"off", "poll", "thread"}) {
    TrainingConfig config;
    config.num_epochs = 2;
    config.bucket_bytes = MpiCommunicator::kRingMinBytes;  // 128 x 128 kernels: one bucket each
    config.overlap_communication = std::string(mode) != "off";
    config.progress = config.overlap_communication ? parse_progress(mode) : Progress::Auto;
    Trainer trainer(Mlp({4, 128, 128, 1}, Activation::ReLU, 3), config);
    results.push_back(host_params(trainer.fit(data.x, data.y).model));
  }
  for (std::size_t m = 1; m < results.size(); ++m) {
    if (world_size() <= 2) {
      EXPECT_EQ(results[m], results[0]) << "mode " << m;  // a + b == b + a
    } else {
      ASSERT_EQ(results[m].size(), results[0].size());
      for (std::size_t i = 0; i < results[0].size(); ++i) {
        ASSERT_NEAR(results[m][i], results[0][i], 1e-5f * (1.0f + std::fabs(results[0][i])))
            << "mode " << m << " parameter " << i;
      }
    }
  }
}

namespace {
// Wraps a communicator; every all-reduce of `fail_count` elements throws CommError on this
// rank (before any MPI call, so the other ranks are not left waiting on it).
class FailingAllreduce final : public Communicator {
 public:
  FailingAllreduce(Communicator& inner, std::size_t fail_count)
      : inner_(inner), fail_count_(fail_count) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string_view backend() const override { return inner_.backend(); }
  void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) override {
    if (count == fail_count_) throw CommError("injected all-reduce failure");
    inner_.allreduce(buf, count, type, op);
  }
  std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                        ReduceOp op) override {
    if (count == fail_count_) throw CommError("injected all-reduce failure");
    return inner_.allreduce_async(buf, count, type, op);
  }
  void reduce_scatter(const void* s, void* r, std::size_t c, DataType t, ReduceOp op) override {
    inner_.reduce_scatter(s, r, c, t, op);
  }
  void all_gather(const void* s, void* r, std::size_t c, DataType t) override {
    inner_.all_gather(s, r, c, t);
  }
  void broadcast(void* buf, std::size_t count, DataType type, int root) override {
    inner_.broadcast(buf, count, type, root);
  }
  void scatterv(const void* s, std::span<const int> counts, std::span<const int> displs, void* r,
                int recv_count, DataType t, int root) override {
    inner_.scatterv(s, counts, displs, r, recv_count, t, root);
  }
  void barrier() override { inner_.barrier(); }

 private:
  Communicator& inner_;
  std::size_t fail_count_;
};

std::vector<float> reduce_with(Communicator& comm, const Mlp& model, Progress progress,
                               bool overlap) {
  const std::size_t p = model.num_parameters();
  std::vector<float> grads(p + 1);
  for (std::size_t i = 0; i < grads.size(); ++i) {
    grads[i] = static_cast<float>(i % 7) + 0.5f * static_cast<float>(comm.rank());
  }
  GradientReducer reducer(make_gradient_buckets(model, 1, 64 * sizeof(float)), comm, overlap,
                          progress);
  for (int step = 0; step < 2; ++step) {  // the same reducer serves step after step
    std::vector<float> g = grads;
    reducer.begin_step(g.data());
    for (std::size_t l = model.layers().size(); l-- > 0;) {
      reducer.on_layer_grads(l);
      reducer.progress();
    }
    reducer.finish();
    if (step == 1) return g;
  }
  return {};
}
}  // namespace

TEST(GradientReducer, EveryProgressModeSumsEveryBucket) {
  MpiCommunicator world(MPI_COMM_WORLD);
  const Mlp model({4, 16, 16, 1}, Activation::ReLU, 0);
  const int n = world.size();
  const std::vector<float> off = reduce_with(world, model, Progress::Poll, false);
  ASSERT_EQ(off.size(), model.num_parameters() + 1);
  for (std::size_t i = 0; i < off.size(); ++i) {
    const float want = static_cast<float>(n * static_cast<int>(i % 7)) + 0.25f * n * (n - 1);
    ASSERT_EQ(off[i], want) << "element " << i;
  }
  EXPECT_EQ(reduce_with(world, model, Progress::Poll, true), off);
  EXPECT_EQ(reduce_with(world, model, Progress::Thread, true), off);
}

TEST(GradientReducer, TakesAResolvedProgressOnly) {
  MpiCommunicator world(MPI_COMM_WORLD);
  const Mlp model({4, 16, 1}, Activation::ReLU, 0);
  // Auto is the config's choice; the Trainer decides it before building a reducer.
  for (bool overlap : {true, false}) {
    EXPECT_THROW(GradientReducer(make_gradient_buckets(model, 1, 64), world, overlap,
                                 Progress::Auto),
                 std::logic_error);
  }
}

TEST(GradientReducer, AFailureInTheCommunicationThreadReachesFinish) {
  MpiCommunicator world(MPI_COMM_WORLD);
  const Mlp model({4, 16, 16, 1}, Activation::ReLU, 0);
  const auto buckets = make_gradient_buckets(model, 1, 64 * sizeof(float));
  ASSERT_GE(buckets.size(), 2u);
  // The last bucket fails on every rank, so no rank waits for another in it.
  FailingAllreduce failing(world, buckets.back().end - buckets.back().begin);
  std::vector<float> grads(model.num_parameters() + 1, 1.0f);
  GradientReducer reducer(buckets, failing, true, Progress::Thread);
  reducer.begin_step(grads.data());
  for (std::size_t l = model.layers().size(); l-- > 0;) reducer.on_layer_grads(l);
  const std::string message = error_of<CommError>([&] { reducer.finish(); });
  EXPECT_TRUE(contains(message, "injected all-reduce failure")) << message;
  // Earlier buckets were reduced; the reducer is destroyed cleanly afterwards.
  EXPECT_EQ(grads.front(), 1.0f);  // in the failed (last) bucket: untouched
  EXPECT_EQ(grads.back(), static_cast<float>(world.size()));
}

TEST(GradientBuckets, CoverTheBufferInBackwardOrderWithWholeLayers) {
  const Mlp model({4, 64, 64, 1}, Activation::ReLU, 0);
  const std::size_t p = model.num_parameters();
  for (std::size_t bucket_bytes : {std::size_t{4}, std::size_t{300 * 4}, std::size_t{1} << 20}) {
    const auto buckets = make_gradient_buckets(model, 1, bucket_bytes);
    ASSERT_FALSE(buckets.empty());
    EXPECT_EQ(buckets.front().end, p + 1);  // the loss slot travels in the first bucket
    EXPECT_EQ(buckets.back().begin, 0u);
    for (std::size_t i = 1; i < buckets.size(); ++i) {
      EXPECT_EQ(buckets[i].end, buckets[i - 1].begin);
      EXPECT_LT(buckets[i].ready_after_layer, buckets[i - 1].ready_after_layer);
    }
    for (const auto& b : buckets) {
      // Every bucket starts at a layer's kernel.
      EXPECT_EQ(b.begin, model.tensors()[2 * b.ready_after_layer].offset);
    }
  }
  EXPECT_EQ(make_gradient_buckets(model, 1, 4).size(), 3u);        // one per layer
  EXPECT_EQ(make_gradient_buckets(model, 1, 1u << 20).size(), 1u);  // one for all
}

// FSDP (ZeRO-3) and hybrid sharding give the data-parallel run's losses and parameters.
TEST(Fsdp, OneDimensionalMeshShardsOverData) {
  expect_world_equals_single({256, 32, 5, {4, 64, 1}}, DistributedConfig{{}, {}, Strategy::Fsdp});
}

TEST(Fsdp, LayerSizesThatDoNotDivideByTheShardCount) {
  // Layers of 35, 40 and 6 parameters: padded chunks on 2, 3 and 4 shards.
  expect_world_equals_single({90, 20, 3, {4, 7, 5, 1}}, DistributedConfig{{}, {}, Strategy::Fsdp});
}

TEST(Fsdp, HybridShardingOnEveryTwoDimensionalMesh) {
  const int n = world_size();
  for (int data = 1; data <= n; ++data) {
    if (n % data != 0) continue;
    expect_world_equals_single({64, 16, 2, {4, 9, 1}},
                               DistributedConfig{{data, n / data}, {"data", "fsdp"},
                                                 Strategy::Fsdp});
  }
}

TEST(Fsdp, HoldsAShardOfTheState) {
  const int n = world_size();
  const ReferenceData data = make_reference_data(64, 4, 0);
  TrainingConfig config;
  Trainer dp(Mlp({4, 256, 256, 1}, Activation::ReLU, 0), config);
  dp.prepare(data.x, data.y);
  config.distributed_config.strategy = Strategy::Fsdp;
  Trainer fsdp(Mlp({4, 256, 256, 1}, Activation::ReLU, 0), config);
  fsdp.prepare(data.x, data.y);
  const StateBytes full = dp.state_bytes();
  const StateBytes shard = fsdp.state_bytes();
  const std::size_t p = dp.model().num_parameters();
  EXPECT_EQ(full.parameters, p * sizeof(float));
  EXPECT_EQ(full.optimizer, 2 * p * sizeof(float));
  EXPECT_EQ(full.gathered, 0u);
  // Each of parameters, gradients and moments: 1/n of the model, up to per-layer padding.
  const std::size_t layers = 3;
  EXPECT_LE(shard.parameters, (p / n + layers) * sizeof(float));
  EXPECT_GE(shard.parameters * n, p * sizeof(float));
  EXPECT_EQ(shard.optimizer, 2 * shard.parameters);
  // Plus the largest layer, gathered, and its full gradient.
  const std::size_t widest = (256 * 256 + 256 + n - 1) / n * n;
  EXPECT_EQ(shard.gathered, 2 * widest * sizeof(float));
  EXPECT_THROW(fsdp.reducer(), std::logic_error);
}

TEST(Fsdp, RefitAndBenchmarkStyleStepsKeepTheParameters) {
  // prepare() after a sharded run must start from the trained parameters, not from zeros.
  const ReferenceData data = make_reference_data(64, 4, 2);
  TrainingConfig config;
  config.num_epochs = 2;
  config.distributed_config.strategy = Strategy::Fsdp;
  Trainer fsdp(Mlp({4, 16, 1}, Activation::ReLU, 2), config);
  fsdp.fit(data.x, data.y);
  const FitResult twice = fsdp.fit(data.x, data.y);

  config.distributed_config.strategy = Strategy::Data;
  config.num_epochs = 4;
  Trainer dp(Mlp({4, 16, 1}, Activation::ReLU, 2), config);
  const FitResult once = dp.fit(data.x, data.y);
  // Adam restarts its moments at each fit, so compare against a DP run that does the same.
  TrainingConfig two_epochs;
  two_epochs.num_epochs = 2;
  Trainer dp_twice(Mlp({4, 16, 1}, Activation::ReLU, 2), two_epochs);
  dp_twice.fit(data.x, data.y);
  const FitResult reference = dp_twice.fit(data.x, data.y);
  EXPECT_LE(max_relative_difference(host_params(twice.model), host_params(reference.model)), 1e-5);
  EXPECT_NE(host_params(twice.model), host_params(once.model));
}

// Tensor parallelism over "model" (Megatron pairs), alone and with data parallelism.
TEST(TensorParallel, EveryMeshWithAModelAxisMatchesOneRank) {
  const int n = world_size();
  for (int data = 1; data <= n; ++data) {
    if (n % data != 0) continue;
    // Widths of 12 divide by every model-axis size used here (1 to 4); an odd layer count
    // leaves the last layer replicated.
    expect_world_equals_single({48, 12, 2, {4, 12, 12, 12, 1}},
                               DistributedConfig{{data, n / data}, {"data", "model"},
                                                 Strategy::Data});
    expect_world_equals_single({48, 12, 2, {4, 12, 12, 1}},
                               DistributedConfig{{data, n / data}, {"data", "model"},
                                                 Strategy::Data});
  }
}

TEST(TensorParallel, HoldsASliceOfEachSplitLayer) {
  const int n = world_size();
  const ReferenceData data = make_reference_data(16, 4, 0);
  TrainingConfig config;
  config.distributed_config = DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data};
  Trainer tp(Mlp({4, 24, 1}, Activation::ReLU, 0), config);
  tp.prepare(data.x, data.y);
  // Layer 0 (4x24 + 24) split by columns, layer 1 (24x1) by rows, its bias (1) replicated.
  const std::size_t local = (4 * 24 + 24) / n + 24 / n + 1;
  EXPECT_EQ(tp.state_bytes().parameters, local * sizeof(float));
}

namespace {
// Tensor parallelism over every rank runs the model's one pass on each rank's shards; its
// loss and gradient (gathered into the full layout) are those of the whole model on one rank.
void expect_tensor_parallel_equals_one_rank(Activation activation) {
  const int n = world_size();
  // Two column/row pairs and a replicated output layer; 12 divides over 1 to 4 ranks.
  const Mlp reference({3, 12, 12, 12, 12, 2}, activation, 8);
  Mlp sharded = reference.clone();
  prepare_tensor_parallel(sharded, {1, n}, n);
  const std::size_t rows = 10;
  Random rng(9);
  HostMatrix hx("x", rows, 3), hy("y", rows, 2);
  for (std::size_t i = 0; i < hx.size(); ++i) hx.data()[i] = static_cast<float>(rng.normal());
  for (std::size_t i = 0; i < hy.size(); ++i) hy.data()[i] = static_cast<float>(rng.normal());
  Matrix x("x", rows, 3), y("y", rows, 2);
  Kokkos::deep_copy(x, hx);
  Kokkos::deep_copy(y, hy);

  MpiCommunicator world(MPI_COMM_WORLD), self(MPI_COMM_SELF);
  const OptimizerConfig sgd = OptimizerConfig::from_name("sgd");
  auto tp = make_tensor_parallel_engine(sharded, world, self, sgd, rows);
  auto one = make_data_parallel_engine(reference, self, sgd, 1 << 20, false, Progress::Poll, rows);
  tp->compute_gradients(x, y, static_cast<int>(rows));
  one->compute_gradients(x, y, static_cast<int>(rows));

  Vector local("local_gradients", tp->gradients().extent(0));
  Kokkos::deep_copy(local, tp->gradients());
  HostVector full("tp_gradients", reference.num_parameters());
  tp->gather(local, full);
  auto expected = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), one->gradients());
  EXPECT_LE(max_relative_difference(std::vector<float>(full.data(), full.data() + full.size()),
                                    std::vector<float>(expected.data(),
                                                       expected.data() + expected.size())),
            1e-5);
  float tp_loss = 0.0f, one_loss = 0.0f;
  Kokkos::deep_copy(tp_loss, tp->loss());
  Kokkos::deep_copy(one_loss, one->loss());
  EXPECT_NEAR(tp_loss, one_loss, 1e-5 * one_loss);
  const float scale = reference.loss_scale(static_cast<int>(rows));
  EXPECT_NEAR(tp->evaluate(x, y, scale), one->evaluate(x, y, scale), 1e-5 * one_loss);
}
}  // namespace

TEST(TensorParallel, OnePassGradientEqualsOneRank) {
  expect_tensor_parallel_equals_one_rank(Activation::Tanh);
}

// GELU keeps its pre-activation in the shard's scratch, after the row-parallel sum.
TEST(TensorParallel, GeluOnePassGradientEqualsOneRank) {
  expect_tensor_parallel_equals_one_rank(Activation::Gelu);
}

TEST(TensorParallel, BadMeshesAndSpecsAreConfigErrors) {
  const int n = world_size();
  TrainingConfig config;
  config.distributed_config = DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data};
  if (n > 1) {
    // 7 hidden units cannot be split over 2, 3 or 4 ranks.
    EXPECT_THROW(Trainer(Mlp({4, 7, 1}, Activation::ReLU, 0), config), ConfigError);
  }
  Mlp unpaired({4, 12, 12, 1}, Activation::ReLU, 0);
  unpaired.set_partition(0, {"", "model"});  // column-parallel without a row-parallel partner
  EXPECT_THROW(Trainer(unpaired, config), ConfigError);
  config.distributed_config.strategy = Strategy::Fsdp;
  EXPECT_THROW(Trainer(Mlp({4, 12, 1}, Activation::ReLU, 0), config), ConfigError);
  MpiCommunicator(MPI_COMM_WORLD).barrier();
}

// ---- Learning-rate schedules: the same rate on every rank, from the step count.

namespace {
TrainingConfig warmup_cosine() {
  TrainingConfig config;
  config.learning_rate = 0.01;
  config.schedule = Schedule::WarmupCosine;
  config.warmup_steps = 3;
  config.min_learning_rate = 1e-4;
  return config;
}
}  // namespace

TEST(Schedule, EveryStrategyMatchesOneRank) {
  const int n = world_size();
  TrainingConfig step;
  step.schedule = Schedule::Step;
  step.step_size = 1;
  step.gamma = 0.5;
  for (const TrainingConfig& base : {warmup_cosine(), step}) {
    const Case c{48, 12, 3, {4, 12, 12, 1}};
    expect_world_equals_single(c, DistributedConfig{}, base);
    expect_world_equals_single(c, DistributedConfig{{n}, {"data"}, Strategy::Fsdp}, base);
    expect_world_equals_single(c, DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data},
                               base);
  }
}

TEST(Schedule, TheRateOfEachStepIsTheSchedulesAndIsReported) {
  // A 1-rank run with the schedule against the same steps taken through the engine, each
  // with the rate the schedule gives its step: the same bits.
  TrainingConfig config = warmup_cosine();
  config.optimizer = OptimizerType::Sgd;
  config.num_epochs = 3;
  config.batch_size = 8;
  const ReferenceData data = make_reference_data(24, 4, 6);
  std::vector<double> reported;
  Trainer scheduled(Mlp({4, 8, 1}, Activation::ReLU, 6), config,
                    groups_over(MPI_COMM_SELF, config));
  scheduled.set_epoch_callback([&](const EpochReport& r) { reported.push_back(r.learning_rate); });
  const FitResult a = scheduled.fit(data.x, data.y);

  const LearningRateSchedule schedule(config, 3);  // 3 batches an epoch, 9 steps
  EXPECT_EQ(reported, (std::vector<double>{schedule(2), schedule(5), schedule(8)}));
  EXPECT_EQ(schedule(0), 0.0);  // optax: the first step's rate is the warmup's initial one
  EXPECT_EQ(schedule(3), 0.01);
  EXPECT_EQ(scheduled.learning_rate_at(8), schedule(8));

  const Mlp model({4, 8, 1}, Activation::ReLU, 6);
  MpiCommunicator self(MPI_COMM_SELF);
  auto engine = make_data_parallel_engine(model, self, OptimizerConfig::of(OptimizerType::Sgd),
                                          config.bucket_bytes, false, Progress::Poll, 8);
  Matrix x("x", 24, 4), y("y", 24, 1);
  Kokkos::deep_copy(x, data.x);
  Kokkos::deep_copy(y, data.y);
  for (std::size_t t = 0; t < 9; ++t) {
    const std::size_t begin = 8 * (t % 3);
    engine->step(rows(x, begin, begin + 8), rows(y, begin, begin + 8), 8,
                 schedule(static_cast<std::int64_t>(t)));
  }
  EXPECT_EQ(host_params(a.model), host_params(model));
  // And not what the constant rate gives.
  config = TrainingConfig{};
  config.optimizer = OptimizerType::Sgd;
  config.learning_rate = 0.01;
  config.num_epochs = 3;
  config.batch_size = 8;
  Trainer constant(Mlp({4, 8, 1}, Activation::ReLU, 6), config, groups_over(MPI_COMM_SELF, config));
  EXPECT_NE(host_params(constant.fit(data.x, data.y).model), host_params(model));
}

// ---- Gradient clipping by global norm.

TEST(Clipping, EveryStrategyAndMeshMatchesOneRank) {
  // A norm of 0.5 clips every step of these runs (their gradient norms are 1 to 30).
  const int n = world_size();
  TrainingConfig clipped;
  clipped.clip_grad_norm = 0.5;
  clipped.learning_rate = 0.01;
  const Case c{48, 12, 3, {4, 12, 12, 1}};
  expect_world_equals_single(c, DistributedConfig{}, clipped);
  {  // the premise: every epoch's last step was clipped
    TrainingConfig probe = clipped;
    probe.num_epochs = c.epochs;
    probe.batch_size = c.batch;
    probe.seed = 3;
    const ReferenceData data = case_data(c, probe.seed);
    Trainer trainer(Mlp(c.widths, Activation::ReLU, probe.seed), probe);
    trainer.set_epoch_callback([&](const EpochReport& r) { EXPECT_GT(r.gradient_norm, 1.0); });
    trainer.fit(data.x, data.y);
  }
  for (int data = 1; data <= n; ++data) {
    if (n % data != 0) continue;
    expect_world_equals_single(
        c, DistributedConfig{{data, n / data}, {"data", "fsdp"}, Strategy::Fsdp}, clipped);
    expect_world_equals_single(
        c, DistributedConfig{{data, n / data}, {"data", "model"}, Strategy::Data}, clipped);
  }
  // An odd layer count: the last layer replicated over the model axis, counted once.
  expect_world_equals_single({48, 12, 2, {4, 12, 12, 12, 1}},
                             DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data},
                             clipped);
}

TEST(Clipping, ScalesToTheLimitAndReportsTheNormBeforeIt) {
  const ReferenceData data = make_reference_data(36, 4, 2);
  TrainingConfig config;
  config.num_epochs = 2;
  config.batch_size = 12;
  config.optimizer = OptimizerType::Sgd;
  std::vector<double> norms;
  Trainer plain(Mlp({4, 8, 1}, Activation::ReLU, 2), config);
  plain.set_epoch_callback([&](const EpochReport& r) { norms.push_back(r.gradient_norm); });
  const FitResult unclipped = plain.fit(data.x, data.y);
  ASSERT_EQ(norms.size(), 2u);
  EXPECT_TRUE(std::isnan(norms[0]));  // not computed without clipping
  norms.clear();
  config.clip_grad_norm = 1e6;  // never reached: the same run, bit for bit
  Trainer loose(Mlp({4, 8, 1}, Activation::ReLU, 2), config);
  loose.set_epoch_callback([&](const EpochReport& r) { norms.push_back(r.gradient_norm); });
  EXPECT_EQ(host_params(loose.fit(data.x, data.y).model), host_params(unclipped.model));
  ASSERT_EQ(norms.size(), 2u);
  EXPECT_GT(norms[1], 0.0);
  config.clip_grad_norm = norms[1] / 2;  // reached
  Trainer tight(Mlp({4, 8, 1}, Activation::ReLU, 2), config);
  EXPECT_NE(host_params(tight.fit(data.x, data.y).model), host_params(unclipped.model));
}

namespace {
std::vector<float> to_host(ConstVectorRef v) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  return std::vector<float>(h.data(), h.data() + h.extent(0));
}
}  // namespace

// The norm itself: each engine's, over whatever each rank holds, against the host's norm of
// the 1-rank gradient; and scaling by f scales it by f.
TEST(GradientNorm, EachElementCountedOnceUnderEveryStrategy) {
  const int n = world_size(), r = meshtrain::testing::world_rank();
  const Mlp reference({3, 12, 12, 12, 12, 2}, Activation::Tanh, 8);
  const int rows = 10;
  const ReferenceData data = make_reference_data(rows, 3, 9);
  HostMatrix hy("y", rows, 2);
  for (int i = 0; i < rows; ++i) hy(i, 0) = hy(i, 1) = data.y(i, 0);
  Matrix x("x", rows, 3), y("y", rows, 2);
  Kokkos::deep_copy(x, data.x);
  Kokkos::deep_copy(y, hy);
  MpiCommunicator world(MPI_COMM_WORLD), self(MPI_COMM_SELF);
  const OptimizerConfig sgd = OptimizerConfig::of(OptimizerType::Sgd);

  auto one = make_data_parallel_engine(reference, self, sgd, 1 << 20, false, Progress::Poll, rows);
  one->compute_gradients(x, y, rows);
  double sum = 0.0;
  for (float g : to_host(one->gradients())) sum += static_cast<double>(g) * g;
  const double expected = std::sqrt(sum);
  EXPECT_NEAR(one->gradient_norm(), expected, 1e-9 * expected);

  // This rank's rows of the batch, split over every rank.
  const ShardPlan plan = make_shard_plan(rows, n);
  const auto begin = static_cast<std::size_t>(plan.offsets[r]);
  const auto end = begin + static_cast<std::size_t>(plan.counts[r]);
  const auto mine_x = meshtrain::rows(x, begin, end);
  const auto mine_y = meshtrain::rows(y, begin, end);
  auto check = [&](StepEngine& engine, const char* what) {
    const double norm = engine.gradient_norm();
    EXPECT_NEAR(norm, expected, 1e-5 * expected) << what;
    engine.scale_gradients(0.25f);
    EXPECT_NEAR(engine.gradient_norm(), 0.25 * norm, 1e-6 * norm) << what;
  };
  const Mlp dp_model = reference.clone();
  auto dp = make_data_parallel_engine(dp_model, world, sgd, 1 << 20, false, Progress::Poll, rows);
  dp->compute_gradients(mine_x, mine_y, rows);
  check(*dp, "data parallel");

  Mlp fsdp_model = reference.clone();
  auto fsdp = make_fsdp_engine(fsdp_model, world, self, sgd, rows);
  fsdp->compute_gradients(mine_x, mine_y, rows);
  check(*fsdp, "fsdp");

  if (n % 2 == 0) {  // hybrid: shards of 2 ranks, replicated over n / 2
    MPI_Comm shard_comm, replica_comm;
    MPI_Comm_split(MPI_COMM_WORLD, r / 2, r, &shard_comm);
    MPI_Comm_split(MPI_COMM_WORLD, r % 2, r, &replica_comm);
    {
      MpiCommunicator shards(shard_comm), replicas(replica_comm);
      Mlp hybrid_model = reference.clone();
      auto hybrid = make_fsdp_engine(hybrid_model, shards, replicas, sgd, rows);
      hybrid->compute_gradients(mine_x, mine_y, rows);
      check(*hybrid, "hybrid fsdp");
    }
    MPI_Comm_free(&shard_comm);
    MPI_Comm_free(&replica_comm);
  }

  Mlp tp_model = reference.clone();  // two split pairs and a replicated output layer
  prepare_tensor_parallel(tp_model, {1, n}, n);
  auto tp = make_tensor_parallel_engine(tp_model, world, self, sgd, rows);
  tp->compute_gradients(x, y, rows);
  check(*tp, "tensor parallel");
}

// ---- Gradient accumulation: k micro-batches of B / k are one batch of B.

namespace {
TrainingConfig accumulating(int steps) {
  TrainingConfig config;
  config.accumulation_steps = steps;
  return config;
}
}  // namespace

TEST(Accumulation, NRanksEqualOneRankUnderEveryStrategy) {
  const int n = world_size();
  // 50 = 2 x 24 + 2: micro-batches of 8 (k = 3), and a last batch of 2 rows whose third
  // micro-batch is empty.
  const Case c{50, 24, 3, {4, 12, 12, 1}};
  expect_world_equals_single(c, DistributedConfig{}, accumulating(3));
  for (int data = 1; data <= n; ++data) {
    if (n % data != 0) continue;
    expect_world_equals_single(
        c, DistributedConfig{{data, n / data}, {"data", "fsdp"}, Strategy::Fsdp}, accumulating(3));
  }
  expect_world_equals_single(c, DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data},
                             accumulating(3));
}

TEST(Accumulation, MicroBatchesGiveWhatOneBatchGives) {
  // The same world, with and without accumulation: the same steps within float rounding.
  // 24 rows in 2, 3, 4 or 5 micro-batches (5: of 5, 5, 5, 5 and 4 rows), data and fsdp,
  // overlap on and off, shuffled, with a partial last batch.
  const int n = world_size();
  const ReferenceData data = make_reference_data(58, 4, 7);
  for (const DistributedConfig& dist :
       {DistributedConfig{}, DistributedConfig{{n}, {"data"}, Strategy::Fsdp}}) {
    for (bool overlap : {true, false}) {
      std::vector<std::vector<float>> results;
      std::vector<double> losses;
      for (int k : {1, 2, 3, 4, 5}) {
        TrainingConfig config = accumulating(k);
        config.num_epochs = 2;
        config.batch_size = 24;
        config.shuffle = true;
        config.overlap_communication = overlap;
        config.bucket_bytes = 256;  // several buckets
        config.distributed_config = dist;
        Trainer trainer(Mlp({4, 16, 16, 1}, Activation::ReLU, 7), config);
        const FitResult r = trainer.fit(data.x, data.y);
        results.push_back(host_params(r.model));
        losses.push_back(r.metrics.final_loss);
        EXPECT_EQ(r.metrics.steps, 6) << "k " << k;
      }
      for (std::size_t i = 1; i < results.size(); ++i) {
        EXPECT_LE(max_relative_difference(results[i], results[0]), 1e-5)
            << name_of(dist.strategy) << " overlap " << overlap << " k " << i + 1;
        EXPECT_NEAR(losses[i], losses[0], 1e-5 * losses[0]);
      }
    }
  }
}

namespace {
// This rank's rows [begin, end) of (x, y) in `parts` contiguous micro-batches, through
// `engine`; returns its gradient.
std::vector<float> accumulate(StepEngine& engine, ConstMatrixRef x, ConstMatrixRef y,
                              int global_batch, int parts) {
  const ShardPlan micro = make_shard_plan(static_cast<int>(x.extent(0)), parts);
  for (int m = 0; m < parts; ++m) {
    const auto begin = static_cast<std::size_t>(micro.offsets[m]);
    const auto end = begin + static_cast<std::size_t>(micro.counts[m]);
    engine.compute_gradients(rows(x, begin, end), rows(y, begin, end), global_batch,
                             MicroBatch{m, parts});
  }
  auto g = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), engine.gradients());
  return std::vector<float>(g.data(), g.data() + g.extent(0));
}

using Tallies = std::map<std::string, CountingCommunicator::Tally>;
std::uint64_t bytes_of(const Tallies& t, const std::string& kind) {
  const auto it = t.find(kind);
  return it == t.end() ? 0 : it->second.bytes;
}
std::uint64_t calls_of(const Tallies& t, const std::string& kind) {
  const auto it = t.find(kind);
  return it == t.end() ? 0 : it->second.calls;
}
}  // namespace

// What an optimizer step communicates, counted on the groups: the inner micro-batches send
// no gradient, so the gradient collectives (and their bytes) of a step are those of one
// batch; FSDP gathers the parameters for every micro-batch.
TEST(Accumulation, GradientsAreReducedOncePerOptimizerStep) {
  const int n = world_size(), r = meshtrain::testing::world_rank();
  const Mlp reference({4, 16, 16, 1}, Activation::ReLU, 4);
  const int global = 32;
  const ReferenceData data = make_reference_data(global, 4, 4);
  const ShardPlan plan = make_shard_plan(global, n);
  const auto begin = static_cast<std::size_t>(plan.offsets[r]);
  const auto end = begin + static_cast<std::size_t>(plan.counts[r]);
  Matrix x("x", global, 4), y("y", global, 1);
  Kokkos::deep_copy(x, data.x);
  Kokkos::deep_copy(y, data.y);
  const auto mine_x = rows(x, begin, end), mine_y = rows(y, begin, end);
  const OptimizerConfig sgd = OptimizerConfig::of(OptimizerType::Sgd);
  const int k = 4;

  auto counted = [] {
    return std::make_shared<CountingCommunicator>(std::make_shared<MpiCommunicator>(MPI_COMM_WORLD));
  };
  for (bool overlap : {true, false}) {
    auto one_group = counted(), k_group = counted();
    auto one = make_data_parallel_engine(reference, *one_group, sgd, 256, overlap, Progress::Poll,
                                         plan.counts[0]);
    const Mlp copy = reference.clone();
    auto acc = make_data_parallel_engine(copy, *k_group, sgd, 256, overlap, Progress::Poll,
                                         plan.counts[0], k);
    const std::vector<float> g1 = accumulate(*one, mine_x, mine_y, global, 1);
    const std::vector<float> gk = accumulate(*acc, mine_x, mine_y, global, k);
    EXPECT_LE(max_relative_difference(gk, g1), 1e-5) << "overlap " << overlap;
    const Tallies t1 = one_group->tallies(), tk = k_group->tallies();
    const std::string kind = overlap ? "allreduce_async" : "allreduce";
    EXPECT_GT(calls_of(t1, kind), 0u) << kind;
    EXPECT_EQ(calls_of(tk, kind), calls_of(t1, kind)) << kind;
    EXPECT_EQ(bytes_of(tk, kind), bytes_of(t1, kind)) << kind;
    EXPECT_EQ(tk.size(), t1.size());
    EXPECT_GT(one->state_bytes().gradients, 0u);
    EXPECT_EQ(acc->state_bytes().gradients, 2 * one->state_bytes().gradients);  // + the sum
  }

  auto one_shards = counted(), k_shards = counted();
  MpiCommunicator self(MPI_COMM_SELF);
  Mlp fsdp_one = reference.clone(), fsdp_k = reference.clone();
  auto one = make_fsdp_engine(fsdp_one, *one_shards, self, sgd, plan.counts[0]);
  auto acc = make_fsdp_engine(fsdp_k, *k_shards, self, sgd, plan.counts[0], k);
  const std::vector<float> g1 = accumulate(*one, mine_x, mine_y, global, 1);
  const std::vector<float> gk = accumulate(*acc, mine_x, mine_y, global, k);
  EXPECT_LE(max_relative_difference(gk, g1), 1e-5) << "fsdp";
  const Tallies t1 = one_shards->tallies(), tk = k_shards->tallies();
  EXPECT_EQ(calls_of(t1, "reduce_scatter"), 3u);  // one per layer
  EXPECT_EQ(calls_of(tk, "reduce_scatter"), calls_of(t1, "reduce_scatter"));
  EXPECT_EQ(bytes_of(tk, "reduce_scatter"), bytes_of(t1, "reduce_scatter"));
  EXPECT_EQ(bytes_of(tk, "allreduce"), bytes_of(t1, "allreduce"));  // the loss
  EXPECT_EQ(bytes_of(tk, "all_gather"), k * bytes_of(t1, "all_gather"));  // parameters
}

TEST(Accumulation, MicroBatchesSmallerThanTheDataAxisAreRefused) {
  const int n = world_size();
  TrainingConfig config = accumulating(0);
  const ConfigError zero = config_error_object([&] { Trainer(Mlp({4, 8, 1}, Activation::ReLU, 0), config); });
  EXPECT_EQ(zero.field(), "accumulation_steps");
  EXPECT_EQ(zero.detail(), "0: must be at least 1");
  config = accumulating(5);
  config.batch_size = 4 * n;  // micro-batches of 4 n / 5 < n samples
  const ConfigError small =
      config_error_object([&] { Trainer(Mlp({4, 8, 1}, Activation::ReLU, 0), config); });
  EXPECT_EQ(small.field(), "accumulation_steps");
  EXPECT_EQ(small.detail(), "5: a micro-batch of " + std::to_string(4 * n) + " / 5 = " +
                                std::to_string(4 * n / 5) + " sample(s) is smaller than the " +
                                std::to_string(n) + " shards of the 'data' axis; every rank "
                                "needs at least one sample");
  MpiCommunicator(MPI_COMM_WORLD).barrier();
}

// ---- Shuffling, validation, non-finite steps, stopping and resuming.

TEST(Shuffle, SamePermutationEverywhereAndNRanksEqualOneRank) {
  DistributedConfig dist;
  TrainingConfig config;
  config.num_epochs = 3;
  config.batch_size = 10;
  config.shuffle = true;
  const ReferenceData data = make_reference_data(45, 4, 1);
  Trainer world(Mlp({4, 8, 1}, Activation::ReLU, 1), config);
  const FitResult a = world.fit(data.x, data.y);
  Trainer single(Mlp({4, 8, 1}, Activation::ReLU, 1), config,
                 groups_over(MPI_COMM_SELF, config));
  const FitResult b = single.fit(data.x, data.y);
  EXPECT_LE(max_relative_difference(host_params(a.model), host_params(b.model)), 1e-5);
  config.shuffle = false;
  Trainer ordered(Mlp({4, 8, 1}, Activation::ReLU, 1), config,
                 groups_over(MPI_COMM_SELF, config));
  const FitResult c = ordered.fit(data.x, data.y);
  EXPECT_GT(max_relative_difference(host_params(b.model), host_params(c.model)), 1e-4)
      << "shuffling changed nothing";
}

// A test set is evaluated with validation, alike on every rank count, and reported.
TEST(Validation, TestSetLossMatchesOneRankAndIsReportedPerEpoch) {
  TrainingConfig config;
  config.num_epochs = 3;
  config.validation_every = 2;
  const ReferenceData train = make_reference_data(48, 4, 1);
  const ReferenceData test = make_reference_data(23, 4, 3);  // uneven over 2, 3, 4 ranks
  std::vector<double> reported;
  Trainer world(Mlp({4, 16, 1}, Activation::ReLU, 1), config);
  world.set_test_data(test.x, test.y);
  world.set_epoch_callback([&](const EpochReport& r) { reported.push_back(r.test_loss); });
  const FitResult a = world.fit(train.x, train.y);
  Trainer single(Mlp({4, 16, 1}, Activation::ReLU, 1), config,
                 groups_over(MPI_COMM_SELF, config));
  single.set_test_data(test.x, test.y);
  const FitResult b = single.fit(train.x, train.y);
  ASSERT_EQ(a.metrics.test_losses.size(), 3u);
  ASSERT_EQ(reported.size(), 3u);
  EXPECT_TRUE(std::isnan(a.metrics.test_losses[0]));  // epochs 2 and 3 (the last) only
  EXPECT_TRUE(std::isnan(reported[0]));
  for (std::size_t e : {1u, 2u}) {
    EXPECT_GT(a.metrics.test_losses[e], 0.0);
    EXPECT_EQ(reported[e], a.metrics.test_losses[e]);
    EXPECT_NEAR(a.metrics.test_losses[e], b.metrics.test_losses[e], 1e-5 * b.metrics.test_losses[e]);
  }
  // No validation set: none evaluated.
  for (double v : a.metrics.validation_losses) EXPECT_TRUE(std::isnan(v));
}

TEST(Validation, LossMatchesOneRankAndIsReportedPerEpoch) {
  TrainingConfig config;
  config.num_epochs = 4;
  config.validation_every = 2;
  const ReferenceData train = make_reference_data(64, 4, 1);
  const ReferenceData val = make_reference_data(37, 4, 2);  // uneven over 2, 3, 4 ranks
  std::vector<int> reported;
  Trainer world(Mlp({4, 16, 1}, Activation::ReLU, 1), config);
  world.set_validation_data(val.x, val.y);
  world.set_epoch_callback([&](const EpochReport& r) { reported.push_back(r.epoch); });
  const FitResult a = world.fit(train.x, train.y);
  Trainer single(Mlp({4, 16, 1}, Activation::ReLU, 1), config,
                 groups_over(MPI_COMM_SELF, config));
  single.set_validation_data(val.x, val.y);
  const FitResult b = single.fit(train.x, train.y);
  EXPECT_EQ(reported, (std::vector<int>{0, 1, 2, 3}));
  ASSERT_EQ(a.metrics.validation_losses.size(), 4u);
  EXPECT_TRUE(std::isnan(a.metrics.validation_losses[0]));
  EXPECT_TRUE(std::isnan(a.metrics.validation_losses[2]));
  EXPECT_NEAR(a.metrics.validation_losses[1], b.metrics.validation_losses[1],
              1e-5 * b.metrics.validation_losses[1]);
  EXPECT_NEAR(a.metrics.validation_losses[3], b.metrics.validation_losses[3],
              1e-5 * b.metrics.validation_losses[3]);
  // The reported value is the mean squared error of the final model on the validation set.
  const auto p = host_params(b.model);
  double sse = 0.0;
  for (int i = 0; i < 37; ++i) {
    double out = p[4 * 16 + 16 + 16];  // output bias
    for (int h = 0; h < 16; ++h) {
      double z = p[4 * 16 + h];
      for (int j = 0; j < 4; ++j) z += val.x(i, j) * p[j * 16 + h];
      out += std::max(z, 0.0) * p[4 * 16 + 16 + h];
    }
    sse += (out - val.y(i, 0)) * (out - val.y(i, 0));
  }
  EXPECT_NEAR(b.metrics.validation_losses[3], sse / 37, 1e-4 * sse / 37);
}

namespace {
ReferenceData data_with_a_nan() {
  ReferenceData data = make_reference_data(40, 4, 0);
  data.x(13, 2) = std::numeric_limits<float>::quiet_NaN();  // poisons batch 1 of 4
  return data;
}

// data_with_a_nan trained 3 epochs with nonfinite = skip: its poisoned step skipped each
// epoch, the other steps trained, every parameter finite.
void expect_poisoned_steps_skipped(const FitResult& r) {
  EXPECT_EQ(r.metrics.skipped_steps, 3);
  EXPECT_EQ(r.metrics.steps, 12);
  for (float v : host_params(r.model)) ASSERT_TRUE(std::isfinite(v));
}

// With nonfinite = abort: fit() ends with a TrainingError naming the poisoned step, on every
// rank (collective).
void expect_abort_at_the_poisoned_step(Trainer& trainer, const ReferenceData& data) {
  try {
    trainer.fit(data.x, data.y);
    ADD_FAILURE() << "expected TrainingError";
  } catch (const TrainingError& e) {
    EXPECT_NE(std::string(e.what()).find("epoch 0, batch 1"), std::string::npos) << e.what();
  }
  MpiCommunicator(MPI_COMM_WORLD).barrier();
}
}  // namespace

TEST(NonFinite, AbortIsATrainingErrorOnEveryRank) {
  TrainingConfig config;
  config.batch_size = 10;
  const ReferenceData data = data_with_a_nan();
  Trainer trainer(Mlp({4, 8, 1}, Activation::ReLU, 0), config);
  expect_abort_at_the_poisoned_step(trainer, data);
}

TEST(NonFinite, SkipLeavesTheParametersFiniteAndCountsTheSteps) {
  TrainingConfig config;
  config.batch_size = 10;
  config.num_epochs = 3;
  config.nonfinite = NonFinite::Skip;
  const ReferenceData data = data_with_a_nan();
  Trainer trainer(Mlp({4, 8, 1}, Activation::ReLU, 0), config);
  const FitResult r = trainer.fit(data.x, data.y);
  expect_poisoned_steps_skipped(r);
  for (double l : r.metrics.epoch_losses) EXPECT_TRUE(std::isfinite(l));
}

// With clipping, the non-finite check is the clipping norm (no pass of its own): every
// strategy must still skip exactly the poisoned steps, abort on them by default, and train the
// other steps as the plain check does.
TEST(NonFinite, ClippingNormIsTheCheckUnderEveryStrategy) {
  const int n = world_size();
  const ReferenceData data = data_with_a_nan();
  const std::vector<DistributedConfig> meshes = {
      DistributedConfig{},
      DistributedConfig{{1, n}, {"data", "fsdp"}, Strategy::Fsdp},
      DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data},  // tensor parallel
  };
  for (const DistributedConfig& mesh : meshes) {
    SCOPED_TRACE(mesh.mesh_axis_names.empty() ? "data" : mesh.mesh_axis_names.back());
    TrainingConfig config;
    config.batch_size = 10;
    config.num_epochs = 3;
    config.clip_grad_norm = 0.5;
    config.distributed_config = mesh;
    config.nonfinite = NonFinite::Skip;
    Trainer skipping(Mlp({4, 12, 1}, Activation::ReLU, 0), config);
    const FitResult r = skipping.fit(data.x, data.y);
    expect_poisoned_steps_skipped(r);
    for (double l : r.metrics.epoch_losses) EXPECT_TRUE(std::isfinite(l));

    config.nonfinite = NonFinite::Abort;
    Trainer aborting(Mlp({4, 12, 1}, Activation::ReLU, 0), config);
    expect_abort_at_the_poisoned_step(aborting, data);
  }
}

// With a bf16 gradient all-reduce the check is the widening kernel's count: the poisoned
// steps are skipped, or abort, as with the plain check, with overlap on and off.
TEST(NonFinite, Bf16WideningKernelIsTheCheck) {
  const ReferenceData data = data_with_a_nan();
  for (bool overlap : {true, false}) {
    SCOPED_TRACE(overlap ? "overlap on" : "overlap off");
    TrainingConfig config;
    config.batch_size = 10;
    config.num_epochs = 3;
    config.grad_comm_dtype = Dtype::Bf16;
    config.overlap_communication = overlap;
    config.nonfinite = NonFinite::Skip;
    Trainer skipping(Mlp({4, 12, 1}, Activation::ReLU, 0), config);
    ASSERT_EQ(skipping.model().num_parameters(), 4u * 12 + 12 + 12 + 1);
    const FitResult r = skipping.fit(data.x, data.y);
    EXPECT_EQ(skipping.reducer().wire_dtype(), Dtype::Bf16);
    EXPECT_EQ(skipping.reducer().nonfinite_count(), 0);  // the last step was a clean one
    expect_poisoned_steps_skipped(r);

    config.nonfinite = NonFinite::Abort;
    Trainer aborting(Mlp({4, 12, 1}, Activation::ReLU, 0), config);
    expect_abort_at_the_poisoned_step(aborting, data);
    EXPECT_GT(aborting.reducer().nonfinite_count(), 0);  // the kernel's count stopped it
  }
}

// Without a poisoned step the clipped run is the one clipping always gave: clipping to a norm
// never reached changes nothing, bit for bit, whichever check ran.
TEST(NonFinite, ClippedRunWithoutNonFiniteStepsIsUnchanged) {
  const ReferenceData data = make_reference_data(40, 4, 1);
  TrainingConfig config;
  config.batch_size = 10;
  config.num_epochs = 2;
  config.nonfinite = NonFinite::Skip;
  Trainer plain(Mlp({4, 12, 1}, Activation::ReLU, 1), config);
  const FitResult unclipped = plain.fit(data.x, data.y);
  config.clip_grad_norm = 1e9;
  Trainer loose(Mlp({4, 12, 1}, Activation::ReLU, 1), config);
  const FitResult clipped = loose.fit(data.x, data.y);
  EXPECT_EQ(clipped.metrics.skipped_steps, 0);
  EXPECT_EQ(host_params(clipped.model), host_params(unclipped.model));
  EXPECT_EQ(clipped.metrics.epoch_losses, unclipped.metrics.epoch_losses);
}

namespace {
// Trains `config` once straight through, and once stopped by the flag after epoch
// `stop_after_epoch` plus one step, with the state carried to a fresh trainer (over
// `resume_comm`) that finishes the run. Returns (straight, resumed) parameters.
std::pair<std::vector<float>, std::vector<float>> straight_and_resumed(
    const TrainingConfig& config, const std::vector<int>& widths, int stop_after_epoch,
    MPI_Comm resume_comm, TrainingConfig resume_config) {
  const ReferenceData data = make_reference_data(50, widths.front(), 4);
  Trainer straight(Mlp(widths, Activation::ReLU, 4), config);
  const FitResult full = straight.fit(data.x, data.y);

  volatile std::sig_atomic_t flag = 0;
  Trainer first(Mlp(widths, Activation::ReLU, 4), config);
  first.set_stop_flag(&flag);
  first.set_epoch_callback([&](const EpochReport& r) {
    if (r.epoch == stop_after_epoch) flag = 1;
  });
  const FitResult partial = first.fit(data.x, data.y);
  EXPECT_TRUE(partial.metrics.stopped);
  const TrainingState state = first.state();
  EXPECT_EQ(state.epoch, stop_after_epoch + 1);
  EXPECT_EQ(state.batch, 1u);  // stopped mid-epoch, after one step

  Trainer second(Mlp(widths, Activation::ReLU, 99), resume_config,
                 groups_over(resume_comm, resume_config));
  second.prepare(data.x, data.y);
  second.restore(state);
  const FitResult rest = second.fit();
  EXPECT_FALSE(rest.metrics.stopped);
  EXPECT_EQ(rest.metrics.epoch_losses.size(), static_cast<std::size_t>(config.num_epochs));
  EXPECT_NEAR(rest.metrics.final_loss, full.metrics.final_loss, 1e-5 * full.metrics.final_loss);
  return {host_params(full.model), host_params(rest.model)};
}
}  // namespace

TEST(Resume, BitIdenticalToAnUninterruptedRunUnderEveryStrategy) {
  const int n = world_size();
  std::vector<DistributedConfig> meshes{
      DistributedConfig{}, DistributedConfig{{}, {}, Strategy::Fsdp},
      DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data}};
  for (const auto& dist : meshes) {
    TrainingConfig config;
    config.num_epochs = 4;
    config.batch_size = 12;
    config.shuffle = true;
    config.distributed_config = dist;
    const auto [straight, resumed] =
        straight_and_resumed(config, {4, 12, 12, 1}, 1, MPI_COMM_WORLD, config);
    EXPECT_EQ(straight, resumed) << "strategy " << name_of(dist.strategy) << " mesh "
                                 << format_shape(dist.mesh_shape);
  }
}

TEST(Resume, AScheduleContinuesFromTheStepCount) {
  for (Schedule kind : {Schedule::WarmupCosine, Schedule::Step}) {
    TrainingConfig config;
    config.num_epochs = 4;
    config.batch_size = 12;
    config.schedule = kind;
    if (kind == Schedule::Step) {
      config.step_size = 1;
      config.gamma = 0.5;
    } else {
      config.warmup_steps = 5;
    }
    const auto [straight, resumed] =
        straight_and_resumed(config, {4, 12, 12, 1}, 1, MPI_COMM_WORLD, config);
    EXPECT_EQ(straight, resumed) << name_of(kind);
  }
}

TEST(Resume, OnADifferentNumberOfRanks) {
  TrainingConfig config;
  config.num_epochs = 3;
  config.batch_size = 12;
  const auto [straight, resumed] =
      straight_and_resumed(config, {4, 8, 1}, 0, MPI_COMM_SELF, config);
  EXPECT_LE(max_relative_difference(straight, resumed), 1e-5);
}

TEST(Resume, StateThatDoesNotFitIsRefused) {
  TrainingConfig config;
  const ReferenceData data = make_reference_data(32, 4, 0);
  Trainer small(Mlp({4, 8, 1}, Activation::ReLU, 0), config);
  small.prepare(data.x, data.y);
  TrainingState state = small.state();
  Trainer big(Mlp({4, 9, 1}, Activation::ReLU, 0), config);
  big.prepare(data.x, data.y);
  EXPECT_THROW(big.restore(state), ConfigError);
  state.epoch = config.num_epochs + 1;
  EXPECT_THROW(small.restore(state), ConfigError);
}

// ---- bf16 gradient communication (training.grad_comm_dtype = "bf16").

namespace {
// The reducer's result when every rank's gradient is `value(rank, i)`, through a
// bf16-wire reducer (loss slot p in fp32), after two steps of the same reducer.
std::vector<float> reduce_bf16(Communicator& comm, const Mlp& model, Progress progress,
                               bool overlap, float (*value)(int, std::size_t)) {
  const std::size_t p = model.num_parameters();
  HostVector grads("grads", p + 1);  // the conversions are Kokkos kernels: device memory
  for (std::size_t i = 0; i < grads.extent(0); ++i) grads(i) = value(comm.rank(), i);
  Vector g("g", p + 1);
  GradientReducer reducer(make_gradient_buckets(model, 1, 64 * sizeof(float)), comm, overlap,
                          progress, Dtype::Bf16, 1);
  for (int step = 0; step < 2; ++step) {
    Kokkos::deep_copy(g, grads);
    reducer.begin_step(g.data());
    for (std::size_t l = model.layers().size(); l-- > 0;) {
      reducer.on_layer_grads(l);
      reducer.progress();
    }
    reducer.finish();
  }
  auto out = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), g);
  return std::vector<float>(out.data(), out.data() + out.extent(0));
}
float exact_in_bf16(int r, std::size_t i) {
  return static_cast<float>(i % 7) + 0.5f * static_cast<float>(r);
}
float not_bf16(int r, std::size_t i) {
  return 1.0f + 1e-3f * static_cast<float>(i % 97) + 1e-4f * static_cast<float>(r);
}

// Measured on the reference run at np 1-4 (README, "Mixed precision"): N ranks against one
// rank under bf16, parameters at most 8.5e-4 apart (relative to the largest), final losses
// 0.004 %; bf16 against fp32, epoch losses at most 0.0062 % apart. The tolerances leave a
// margin of about 6x and 16x.
constexpr double kBf16ParameterTolerance = 5e-3;
constexpr double kBf16LossTolerance = 1e-3;
// bf16 compute rounds every gemm operand (activations and weights: 8 significant bits), a
// much larger change than rounding the summed gradient; measured on the reference run: see
// the README.
constexpr double kBf16ComputeLossTolerance = 5e-3;  // measured 0.104 %: 5x margin

// b's loss curve (a bf16 run) within tolerance of a's (fp32), epoch by epoch, but not equal
// to it; prints the largest difference.
void expect_loss_curve_near(const FitResult& a, const FitResult& b, double tolerance,
                            const char* what) {
  ASSERT_EQ(a.metrics.epoch_losses.size(), b.metrics.epoch_losses.size());
  double worst = 0.0;
  for (std::size_t e = 0; e < a.metrics.epoch_losses.size(); ++e) {
    const double rel = std::abs(b.metrics.epoch_losses[e] - a.metrics.epoch_losses[e]) /
                       a.metrics.epoch_losses[e];
    worst = std::max(worst, rel);
    EXPECT_LE(rel, tolerance) << what << ", epoch " << e + 1;
  }
  EXPECT_NE(host_params(a.model), host_params(b.model)) << what << " changed nothing";
  if (meshtrain::testing::world_rank() == 0) {
    std::printf("%s vs fp32, reference run on %d rank(s): final loss %.6f vs %.6f, largest "
                "epoch-loss difference %.3g %%\n",
                what, world_size(), b.metrics.final_loss, a.metrics.final_loss, 100.0 * worst);
  }
}

TrainingConfig reference_config(Dtype wire) {
  TrainingConfig config;  // the tutorial's run: 20 epochs, batch 32, Adam 1e-3
  config.seed = 0;
  config.grad_comm_dtype = wire;
  return config;
}
}  // namespace

// Values whose sums are exact in bf16 reduce exactly as fp32 does, in every progress mode and
// with overlap off; the loss slot travels in fp32.
TEST(Bf16GradComm, ReducerSumsEveryBucketInEveryMode) {
  MpiCommunicator world(MPI_COMM_WORLD);
  const Mlp model({4, 16, 16, 1}, Activation::ReLU, 0);
  const int n = world.size();
  const std::vector<float> off = reduce_bf16(world, model, Progress::Poll, false, exact_in_bf16);
  ASSERT_EQ(off.size(), model.num_parameters() + 1);
  for (std::size_t i = 0; i < off.size(); ++i) {
    const float want = static_cast<float>(n * static_cast<int>(i % 7)) + 0.25f * n * (n - 1);
    ASSERT_EQ(off[i], want) << "element " << i;
  }
  EXPECT_EQ(reduce_bf16(world, model, Progress::Poll, true, exact_in_bf16), off);
  EXPECT_EQ(reduce_bf16(world, model, Progress::Thread, true, exact_in_bf16), off);
}

// One rank still rounds the gradient to bf16 (N ranks must equal one rank), but not the loss.
TEST(Bf16GradComm, OneRankRoundsTheGradientAndKeepsTheLossFp32) {
  MpiCommunicator self(MPI_COMM_SELF);
  const Mlp model({4, 16, 16, 1}, Activation::ReLU, 0);
  const std::size_t p = model.num_parameters();
  for (bool overlap : {false, true}) {
    const std::vector<float> g = reduce_bf16(self, model, Progress::Poll, overlap, not_bf16);
    for (std::size_t i = 0; i < p; ++i) {
      ASSERT_EQ(g[i], from_bfloat16(to_bfloat16(not_bf16(0, i)))) << "element " << i;
    }
    EXPECT_EQ(g[p], not_bf16(0, p));  // the loss: fp32, unrounded
    EXPECT_NE(from_bfloat16(to_bfloat16(not_bf16(0, p))), not_bf16(0, p));  // (it would round)
  }
}

// What a step sends, counted on the data group: the gradient in half the bytes (2 per
// parameter), plus the 4-byte loss on its own; the gradients equal fp32's within bf16 rounding.
TEST(Bf16GradComm, HalvesTheGradientBytesPerStep) {
  const int n = world_size(), r = meshtrain::testing::world_rank();
  const Mlp reference({4, 64, 64, 1}, Activation::ReLU, 4);
  const std::size_t p = reference.num_parameters();
  const int global = 32;
  const ReferenceData data = make_reference_data(global, 4, 4);
  const ShardPlan plan = make_shard_plan(global, n);
  const auto begin = static_cast<std::size_t>(plan.offsets[r]);
  const auto end = begin + static_cast<std::size_t>(plan.counts[r]);
  Matrix x("x", global, 4), y("y", global, 1);
  Kokkos::deep_copy(x, data.x);
  Kokkos::deep_copy(y, data.y);
  const OptimizerConfig sgd = OptimizerConfig::of(OptimizerType::Sgd);
  for (bool overlap : {true, false}) {
    auto counted = [] {
      return std::make_shared<CountingCommunicator>(
          std::make_shared<MpiCommunicator>(MPI_COMM_WORLD));
    };
    auto fp32_group = counted(), bf16_group = counted();
    auto fp32 = make_data_parallel_engine(reference, *fp32_group, sgd, 4096, overlap,
                                          Progress::Poll, plan.counts[0]);
    const Mlp copy = reference.clone();
    auto bf16 = make_data_parallel_engine(copy, *bf16_group, sgd, 4096, overlap, Progress::Poll,
                                          plan.counts[0], 1, Dtype::Bf16);
    const auto g32 = accumulate(*fp32, rows(x, begin, end), rows(y, begin, end), global, 1);
    const auto g16 = accumulate(*bf16, rows(x, begin, end), rows(y, begin, end), global, 1);
    const std::string kind = overlap ? "allreduce_async" : "allreduce";
    const Tallies t32 = fp32_group->tallies(), t16 = bf16_group->tallies();
    EXPECT_EQ(bytes_of(t32, kind), (p + 1) * 4) << kind;
    EXPECT_EQ(bytes_of(t16, kind), p * 2 + 4) << kind;
    EXPECT_EQ(calls_of(t16, kind), calls_of(t32, kind) + 1) << kind;  // the loss apart
    EXPECT_EQ(t16.size(), 1u);
    // Per element: at most 2n * 2^-8 of the largest gradient away from fp32's (see the
    // bound in test_comm.cpp; the per-rank gradients are bounded by the largest sum's scale
    // only loosely, hence no tighter claim).
    EXPECT_LE(max_relative_difference(g32, g16), 2 * n * std::ldexp(1.0, -8)) << kind;
    EXPECT_GT(max_relative_difference(g32, g16), 0.0) << "bf16 must round";
    EXPECT_EQ(bf16->state_bytes().gradients, fp32->state_bytes().gradients + 2 * p);
    // With two micro-batches the bf16 gradient still goes once per step, in the same bytes.
    auto acc_group = counted();
    const Mlp acc_copy = reference.clone();
    auto acc = make_data_parallel_engine(acc_copy, *acc_group, sgd, 4096, overlap,
                                         Progress::Poll, plan.counts[0], 2, Dtype::Bf16);
    const auto g16k = accumulate(*acc, rows(x, begin, end), rows(y, begin, end), global, 2);
    EXPECT_EQ(acc_group->tallies().at(kind).bytes, p * 2 + 4) << kind;
    EXPECT_LE(max_relative_difference(g16, g16k), 2 * n * std::ldexp(1.0, -8)) << kind;
  }
}

// N ranks equal one rank under bf16 too, within what bf16 rounding of different partial sums
// allows (measured: see the README), and every rank ends with the same bits.
TEST(Bf16GradComm, ReferenceRunNRanksEqualOneRankWithinBf16Tolerance) {
  const TrainingConfig config = reference_config(Dtype::Bf16);
  const ReferenceData data = make_reference_data(256, 4, config.seed);
  Trainer distributed(Mlp({4, 64, 1}, Activation::ReLU, config.seed), config);
  const FitResult n_ranks = distributed.fit(data.x, data.y);
  Trainer single(Mlp({4, 64, 1}, Activation::ReLU, config.seed), config,
                 groups_over(MPI_COMM_SELF, config));
  const FitResult one_rank = single.fit(data.x, data.y);
  const auto pn = host_params(n_ranks.model), p1 = host_params(one_rank.model);
  EXPECT_LE(max_relative_difference(pn, p1), kBf16ParameterTolerance);
  if (meshtrain::testing::world_rank() == 0) {
    std::printf("bf16, reference run, %d rank(s) vs 1: parameters %.3g (relative), final loss "
                "%.3g %%\n",
                world_size(), max_relative_difference(pn, p1),
                100.0 * std::abs(n_ranks.metrics.final_loss - one_rank.metrics.final_loss) /
                    one_rank.metrics.final_loss);
  }
  EXPECT_NEAR(n_ranks.metrics.final_loss, one_rank.metrics.final_loss,
              kBf16LossTolerance * one_rank.metrics.final_loss);
  // (The initial loss is epoch 1's mean batch loss: after updates too.)
  EXPECT_NEAR(n_ranks.metrics.initial_loss, one_rank.metrics.initial_loss,
              kBf16LossTolerance * one_rank.metrics.initial_loss);
  MpiCommunicator world(MPI_COMM_WORLD);
  std::vector<float> root = pn;
  world.broadcast(std::span<float>(root), 0);
  EXPECT_EQ(std::memcmp(root.data(), pn.data(), pn.size() * sizeof(float)), 0)
      << "parameters differ from rank 0's on rank " << world.rank();
}

// The loss curve of the reference run with a bf16 gradient all-reduce stays within
// kBf16LossTolerance of fp32's, epoch by epoch (measured: see the README).
TEST(Bf16GradComm, ReferenceLossCurveStaysNearFp32) {
  const ReferenceData data = make_reference_data(256, 4, 0);
  Trainer fp32(Mlp({4, 64, 1}, Activation::ReLU, 0), reference_config(Dtype::Fp32));
  Trainer bf16(Mlp({4, 64, 1}, Activation::ReLU, 0), reference_config(Dtype::Bf16));
  const FitResult a = fp32.fit(data.x, data.y);
  const FitResult b = bf16.fit(data.x, data.y);
  expect_loss_curve_near(a, b, kBf16LossTolerance, "bf16 gradient all-reduce");
  EXPECT_LE(std::abs(b.metrics.final_loss - a.metrics.final_loss),
            kBf16LossTolerance * a.metrics.final_loss);
}

TEST(Bf16GradComm, RefusedWhereItDoesNotApply) {
  TrainingConfig config;
  config.grad_comm_dtype = Dtype::Bf16;
  config.distributed_config.strategy = Strategy::Fsdp;
  ConfigError e = config_error_object([&] { config.validate(1); });
  EXPECT_EQ(e.field(), "grad_comm_dtype");
  EXPECT_EQ(e.detail(), "bf16: only with strategy data (this run's is fsdp, whose gradient "
                        "reduce-scatter stays fp32)");
  config.distributed_config = DistributedConfig{{1, 1}, {"data", "model"}, Strategy::Data};
  e = config_error_object([&] { config.validate(1); });
  EXPECT_EQ(e.field(), "grad_comm_dtype");
  config = TrainingConfig{};
  config.grad_comm_dtype = static_cast<Dtype>(7);
  EXPECT_EQ(config_error_object([&] { config.validate(1); }).field(), "grad_comm_dtype");
}

// bf16 compute (training.compute_dtype): every strategy's N-rank run equals the 1-rank run
// as closely as fp32 runs do (each row's products are rounded the same way wherever it is
// computed; only the fp32 sums are split), every rank ends with the same bits, and the loss
// curve stays near fp32's (measured: see the README).
namespace {
TrainingConfig bf16_compute_config(DistributedConfig dist) {
  TrainingConfig config;  // the tutorial's run
  config.compute_dtype = Dtype::Bf16;
  config.distributed_config = std::move(dist);
  return config;
}
}  // namespace

TEST(Bf16Compute, EveryStrategyAtNRanksEqualsOneRank) {
  const int n = world_size();
  const ReferenceData data = make_reference_data(256, 4, 0);
  std::vector<DistributedConfig> meshes = {DistributedConfig{{n}, {"data"}, Strategy::Data},
                                           DistributedConfig{{n}, {"data"}, Strategy::Fsdp}};
  if (n % 2 == 0) meshes.push_back(DistributedConfig{{n / 2, 2}, {"data", "model"}, Strategy::Data});
  for (const DistributedConfig& dist : meshes) {
    const TrainingConfig config = bf16_compute_config(dist);
    Trainer distributed(Mlp({4, 64, 64, 1}, Activation::ReLU, 0), config);
    const FitResult a = distributed.fit(data.x, data.y);
    TrainingConfig one = bf16_compute_config(DistributedConfig{{1}, {"data"}, Strategy::Data});
    Trainer single(Mlp({4, 64, 64, 1}, Activation::ReLU, 0), one, groups_over(MPI_COMM_SELF, one));
    const FitResult b = single.fit(data.x, data.y);
    const std::string what = format_axis_names(dist.mesh_axis_names) + " " + name_of(dist.strategy);
    EXPECT_LE(max_relative_difference(host_params(a.model), host_params(b.model)), 1e-4) << what;
    EXPECT_NEAR(a.metrics.final_loss, b.metrics.final_loss, 1e-5 * b.metrics.final_loss) << what;
    MpiCommunicator world(MPI_COMM_WORLD);
    std::vector<float> mine = host_params(a.model), root = mine;
    world.broadcast(std::span<float>(root), 0);
    EXPECT_EQ(std::memcmp(root.data(), mine.data(), mine.size() * sizeof(float)), 0) << what;
  }
}

TEST(Bf16Compute, ReferenceLossCurveStaysNearFp32AndDiffers) {
  const ReferenceData data = make_reference_data(256, 4, 0);
  const DistributedConfig dist{{world_size()}, {"data"}, Strategy::Data};
  TrainingConfig fp32_config = bf16_compute_config(dist);
  fp32_config.compute_dtype = Dtype::Fp32;
  Trainer fp32(Mlp({4, 64, 1}, Activation::ReLU, 0), fp32_config);
  Trainer bf16(Mlp({4, 64, 1}, Activation::ReLU, 0), bf16_compute_config(dist));
  const FitResult a = fp32.fit(data.x, data.y);
  const FitResult b = bf16.fit(data.x, data.y);
  expect_loss_curve_near(a, b, kBf16ComputeLossTolerance, "bf16 compute");
}

TEST(Bf16Compute, ALayerThatComputesInFp32OnlyIsRefused) {
  FnoConfig small;
  small.s1 = small.s2 = 8;
  small.modes1 = small.modes2 = 2;
  small.width = 4;
  small.layers = 1;
  small.projection = 8;
  Model fno = make_fno2d(small);
  try {
    fno.set_compute_dtype(Dtype::Bf16);
    FAIL() << "an FNO was given bf16 compute";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "compute_dtype");
    EXPECT_NE(e.detail().find("computes in fp32 only"), std::string::npos) << e.detail();
  }
  Mlp mlp({4, 8, 1}, Activation::ReLU, 0);
  mlp.set_compute_dtype(Dtype::Bf16);
  EXPECT_EQ(mlp.compute_dtype(), Dtype::Bf16);
}
