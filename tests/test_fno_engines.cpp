// The FNO under the strategies' step engines: each rank computes on its rows of a global
// batch, and the N-rank gradient and loss (data parallel, and FSDP gathered into the full
// layout) are those of one rank over the whole batch.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <csignal>
#include <cmath>
#include <cstdint>
#include <vector>

#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/data/random.hpp"
#include "meshtrain/nn/fno.hpp"
#include "meshtrain/nn/normalize.hpp"
#include "meshtrain/train/step_engine.hpp"
#include "meshtrain/train/trainer.hpp"
#include "step_watch.hpp"
#include "test_support.hpp"

using namespace meshtrain;
using meshtrain::testing::groups_over;
using meshtrain::testing::world_rank;
using meshtrain::testing::world_size;

namespace {

std::vector<float> to_vector(ConstVectorRef v) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  return std::vector<float>(h.data(), h.data() + h.extent(0));
}

// Largest |a - b| relative to the largest |b|.
double max_relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 0.0, diff = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return diff / scale;
}

struct Batch {
  Matrix x;
  Matrix y;
};

// Rows [begin, end) of the global batch every rank draws from the same seed.
Batch rows_of(const Model& model, std::size_t global, std::size_t begin, std::size_t end) {
  const auto in = static_cast<std::size_t>(model.in_features());
  const auto out = static_cast<std::size_t>(model.out_features());
  HostMatrix hx("x", global, in), hy("y", global, out);
  Random rng(17);
  for (std::size_t i = 0; i < hx.size(); ++i) hx.data()[i] = static_cast<float>(rng.normal());
  for (std::size_t i = 0; i < hy.size(); ++i) hy.data()[i] = static_cast<float>(rng.normal());
  Batch b{Matrix("x", end - begin, in), Matrix("y", end - begin, out)};
  Kokkos::deep_copy(b.x, rows(hx, begin, end));
  Kokkos::deep_copy(b.y, rows(hy, begin, end));
  return b;
}

TEST(FnoEngines, DataParallelAndFsdpGradientsEqualOneRank) {
  const FnoConfig config{.s1 = 8, .s2 = 6, .in_channels = 1, .out_channels = 2, .modes1 = 3,
                         .modes2 = 3, .width = 4, .layers = 2, .projection = 8, .seed = 21};
  const Model reference = make_fno2d(config);
  const auto n = static_cast<std::size_t>(world_size());
  const auto r = static_cast<std::size_t>(world_rank());
  // 7 rows over 1 to 4 ranks: uneven shards, weighted by their true size.
  const std::size_t global = 7;
  const std::size_t begin = global * r / n, end = global * (r + 1) / n;
  const Batch mine = rows_of(reference, global, begin, end);
  const Batch all = rows_of(reference, global, 0, global);

  MpiCommunicator world(MPI_COMM_WORLD), self(MPI_COMM_SELF);
  const OptimizerConfig sgd = OptimizerConfig::from_name("sgd");
  auto one = make_data_parallel_engine(reference, self, sgd, 1 << 20, false, Progress::Poll,
                                       global);
  one->compute_gradients(all.x, all.y, static_cast<int>(global));
  const std::vector<float> expected = to_vector(one->gradients());
  float one_loss = 0.0f;
  Kokkos::deep_copy(one_loss, one->loss());

  auto dp = make_data_parallel_engine(reference, world, sgd, 4096, true, Progress::Poll, global);
  dp->compute_gradients(mine.x, mine.y, static_cast<int>(global));
  EXPECT_LE(max_relative_difference(to_vector(dp->gradients()), expected), 1e-5);
  float dp_loss = 0.0f;
  Kokkos::deep_copy(dp_loss, dp->loss());
  EXPECT_NEAR(dp_loss, one_loss, 1e-5 * one_loss);

  Model sharded = reference.clone();
  auto fsdp = make_fsdp_engine(sharded, world, self, sgd, global);
  fsdp->compute_gradients(mine.x, mine.y, static_cast<int>(global));
  Vector local("local_gradients", fsdp->gradients().extent(0));
  Kokkos::deep_copy(local, fsdp->gradients());
  HostVector full("fsdp_gradients", reference.num_parameters());
  fsdp->gather(local, full);
  EXPECT_LE(max_relative_difference(std::vector<float>(full.data(), full.data() + full.size()),
                                    expected),
            1e-5);
  float fsdp_loss = 0.0f;
  Kokkos::deep_copy(fsdp_loss, fsdp->loss());
  EXPECT_NEAR(fsdp_loss, one_loss, 1e-5 * one_loss);
}

// An FNO with a decoder (as data.normalize appends), for whole training runs.
Model decoded_fno() {
  const FnoConfig config{.s1 = 8, .s2 = 6, .in_channels = 1, .out_channels = 1, .modes1 = 3,
                         .modes2 = 3, .width = 4, .layers = 2, .projection = 8, .seed = 5};
  Model model = make_fno2d(config);
  std::vector<float> scale(48), shift(48);
  for (std::size_t f = 0; f < 48; ++f) {
    scale[f] = 0.5f + 0.01f * static_cast<float>(f);
    shift[f] = 1.0f + 0.1f * static_cast<float>(f % 7);
  }
  model.append_fixed(std::make_unique<FeatureAffine>(scale, shift));
  model.set_loss(Loss::RelativeL2);
  return model;
}

std::vector<float> parameters_of(const Model& model) {
  const HostVector p = model.parameters_on_host();
  return std::vector<float>(p.data(), p.data() + p.extent(0));
}

// Whole runs (2 epochs of 14 samples in global batches of 6: uneven shards, a partial batch,
// shuffled, AdamW, a cosine schedule): N ranks under data parallelism, FSDP and hybrid
// data x fsdp meshes train what one rank trains; a run stopped after a step of its second
// epoch and resumed in a fresh trainer ends bit-identical to the uninterrupted one.
TEST(FnoTraining, EveryStrategyMatchesOneRankAndResumesBitIdentically) {
  const int n = world_size();
  HostMatrix x("x", 14, 48), y("y", 14, 48);
  Random rng(8);
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.normal());
  // A target the model can learn (pointwise in the input): the loss must come down.
  for (std::size_t i = 0; i < y.size(); ++i) y.data()[i] = 2.0f + 0.5f * x.data()[i];
  std::vector<DistributedConfig> meshes{DistributedConfig{},
                                        DistributedConfig{{}, {}, Strategy::Fsdp},
                                        DistributedConfig{{1, n}, {"data", "fsdp"}, Strategy::Fsdp}};
  if (n == 4) meshes.push_back(DistributedConfig{{2, 2}, {"data", "fsdp"}, Strategy::Fsdp});
  for (const DistributedConfig& dist : meshes) {
    TrainingConfig config;
    config.num_epochs = 2;
    config.batch_size = 6;
    config.shuffle = true;
    config.optimizer = OptimizerType::AdamW;
    config.loss = Loss::RelativeL2;
    config.schedule = Schedule::WarmupCosine;
    config.learning_rate = 1e-2;
    config.distributed_config = dist;
    const std::string what = name_of(dist.strategy) + " " + format_shape(dist.mesh_shape);

    Trainer straight(decoded_fno(), config);
    const FitResult full = straight.fit(x, y);
    TrainingConfig one_config = config;
    one_config.distributed_config = DistributedConfig{};
    Trainer one(decoded_fno(), one_config, groups_over(MPI_COMM_SELF, one_config));
    const FitResult single = one.fit(x, y);
    EXPECT_LE(max_relative_difference(parameters_of(full.model), parameters_of(single.model)),
              1e-5)
        << what;
    EXPECT_NEAR(full.metrics.final_loss, single.metrics.final_loss,
                1e-5 * single.metrics.final_loss)
        << what;
    EXPECT_LT(single.metrics.final_loss, single.metrics.initial_loss) << what;

    volatile std::sig_atomic_t flag = 0;
    Trainer first(decoded_fno(), config);
    first.set_stop_flag(&flag);
    first.set_epoch_callback([&](const EpochReport& r) {
      if (r.epoch == 0) flag = 1;
    });
    EXPECT_TRUE(first.fit(x, y).metrics.stopped) << what;
    const TrainingState state = first.state();
    Trainer second(decoded_fno(), config);
    second.prepare(x, y);
    second.restore(state);
    EXPECT_EQ(parameters_of(second.fit().model), parameters_of(full.model)) << what;
  }
}

// The FFTs are planned and every spectrum lives in scratch allocated with the workspace:
// steps allocate nothing, a batch smaller than the first included, and move nothing but
// scalars to the host.
TEST(FnoEngines, AStepAllocatesNothingAndMovesOnlyScalarsToTheHost) {
  meshtrain::testing::StepWatch watch;  // before the engines: it learns the device buffers
  const FnoConfig config{.s1 = 8, .s2 = 8, .in_channels = 1, .out_channels = 1, .modes1 = 3,
                         .modes2 = 3, .width = 4, .layers = 2, .projection = 8, .seed = 2};
  const Model reference = make_fno2d(config);
  const std::size_t global = 6;
  const Batch all = rows_of(reference, global, 0, global);
  const Batch part = rows_of(reference, global, 0, 4);
  // Every rank holds the same rows: global batches of that many rows per rank.
  const int full_batch = static_cast<int>(global) * world_size();
  const int part_batch = 4 * world_size();
  MpiCommunicator world(MPI_COMM_WORLD), self(MPI_COMM_SELF);
  const OptimizerConfig adam = OptimizerConfig::from_name("adam");
  auto dp = make_data_parallel_engine(reference, world, adam, 4096, true, Progress::Poll, global);
  Model sharded = reference.clone();
  auto fsdp = make_fsdp_engine(sharded, world, self, adam, global);
  dp->step(all.x, all.y, full_batch, 1e-3);
  fsdp->step(all.x, all.y, full_batch, 1e-3);

  EXPECT_TRUE(watch.sees_an_allocation_and_a_transfer());  // every rank goes on to the steps
  watch.begin();
  for (StepEngine* engine : {dp.get(), fsdp.get()}) {
    engine->step(all.x, all.y, full_batch, 1e-3);
    engine->step(part.x, part.y, part_batch, 1e-3);
  }
  watch.end();
  EXPECT_EQ(watch.allocations(), 0);
  EXPECT_TRUE(watch.transfers().empty()) << "host transfers in a step:" << watch.transfer_list();
}

}  // namespace
