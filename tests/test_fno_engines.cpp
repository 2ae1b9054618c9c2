// The FNO under the strategies' step engines: each rank computes on its rows of a global
// batch, and the N-rank gradient and loss (data parallel, and FSDP gathered into the full
// layout) are those of one rank over the whole batch.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/data/random.hpp"
#include "meshtrain/nn/fno.hpp"
#include "meshtrain/train/step_engine.hpp"
#include "test_support.hpp"

using namespace meshtrain;
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

std::int64_t g_allocations = 0;
void count_allocation(const Kokkos_Profiling_SpaceHandle, const char*, const void*,
                      const std::uint64_t) {
  ++g_allocations;
}

// The FFTs are planned and every spectrum lives in scratch allocated with the workspace:
// steps allocate nothing, a batch smaller than the first included.
TEST(FnoEngines, NoKokkosAllocationInsideAStep) {
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

  g_allocations = 0;
  Kokkos::Tools::Experimental::set_allocate_data_callback(count_allocation);
  { Vector probe("probe", 8); }
  const std::int64_t probe_count = g_allocations;
  g_allocations = 0;
  for (StepEngine* engine : {dp.get(), fsdp.get()}) {
    engine->step(all.x, all.y, full_batch, 1e-3);
    engine->step(part.x, part.y, part_batch, 1e-3);
  }
  const std::int64_t step_count = g_allocations;
  Kokkos::Tools::Experimental::set_allocate_data_callback(nullptr);
  EXPECT_EQ(probe_count, 1);
  EXPECT_EQ(step_count, 0);
}

}  // namespace
