// The memory a run needs, estimated before anything is allocated: the parameter counts
// against the models the library builds, the sharding, the saturation of absurd sizes and
// the message against an injected amount of available memory.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "meshtrain/nn/fno.hpp"
#include "meshtrain/nn/mlp.hpp"
#include "meshtrain/train/memory_estimate.hpp"

namespace {

using namespace meshtrain;

TEST(MemoryEstimate, MlpStateMatchesTheModelItDescribes) {
  const std::vector<int> widths{4, 64, 32, 1};
  const Mlp model(widths, Activation::ReLU, 0);
  const std::uint64_t p = model.num_parameters();
  MemoryLayout layout;
  layout.rows = 16;
  layout.samples = 100;
  layout.features = 5;
  const MemoryEstimate adam = estimate_mlp_memory(widths, OptimizerType::Adam, layout);
  EXPECT_EQ(adam.parameters, p * 4);
  EXPECT_EQ(adam.gradients, (p + 1) * 4);
  EXPECT_EQ(adam.optimizer, 2 * p * 4);
  EXPECT_EQ(adam.data, 100u * 5 * 4);
  EXPECT_GT(adam.activations, 16u * (64 + 32 + 1) * 4);
  EXPECT_EQ(adam.total(), adam.parameters + adam.gradients + adam.optimizer + adam.activations + adam.data);
  EXPECT_EQ(estimate_mlp_memory(widths, OptimizerType::Sgd, layout).optimizer, 0u);  // optax sgd: no momentum

  // Sharded over 4: a quarter of the state, plus the largest layer gathered with its gradient.
  layout.shards = 4;
  const MemoryEstimate sharded = estimate_mlp_memory(widths, OptimizerType::Adam, layout);
  const std::uint64_t largest = 64 * 32 + 32;
  EXPECT_EQ(sharded.parameters, ((p + 3) / 4 + largest) * 4);
  EXPECT_EQ(sharded.optimizer, 2 * ((p + 3) / 4) * 4);
}

TEST(MemoryEstimate, FnoParametersMatchTheModel) {
  FnoConfig c;
  c.s1 = c.s2 = 16;
  c.modes1 = c.modes2 = 4;
  c.width = 8;
  c.layers = 2;
  c.projection = 16;
  const Model model = make_fno2d(c);
  const MemoryEstimate e = estimate_fno_memory(c, OptimizerType::Adam, MemoryLayout{});
  EXPECT_EQ(e.parameters, model.num_parameters() * 4);
}

TEST(MemoryEstimate, AbsurdSizesSaturateAndAreReported) {
  const std::vector<int> huge{4, 2000000000, 2000000000, 2000000000, 1};
  MemoryLayout layout;
  layout.rows = 1000000;
  const MemoryEstimate e = estimate_mlp_memory(huge, OptimizerType::Adam, layout);
  EXPECT_EQ(e.total(), std::numeric_limits<std::uint64_t>::max());
  const auto message =
      memory_shortfall(e, AvailableMemory{std::uint64_t{8} << 30, host_memory_per_rank(2).what});
  ASSERT_TRUE(message.has_value());
  EXPECT_NE(message->find("training needs about "), std::string::npos) << *message;
  EXPECT_NE(message->find(", more than the 8.0 GiB of memory available to each of this node's 2 rank(s)"),
            std::string::npos)
      << *message;

  const std::vector<int> small{4, 64, 1};
  const MemoryEstimate fits = estimate_mlp_memory(small, OptimizerType::Adam, MemoryLayout{});
  EXPECT_FALSE(memory_shortfall(fits, {fits.total(), "free"}).has_value());
  EXPECT_TRUE(memory_shortfall(fits, {fits.total() - 1, "free"}).has_value());
  EXPECT_FALSE(memory_shortfall(e, {0, "unknown"}).has_value());  // nothing to check against
  EXPECT_EQ(fits.largest(), MemoryEstimate::Part::State);
  MemoryLayout big_batch;
  big_batch.rows = 1000000;
  EXPECT_EQ(estimate_mlp_memory(small, OptimizerType::Adam, big_batch).largest(), MemoryEstimate::Part::Activations);
  MemoryLayout big_data;
  big_data.samples = 1000000;
  big_data.features = 5;
  EXPECT_EQ(estimate_mlp_memory(small, OptimizerType::Adam, big_data).largest(), MemoryEstimate::Part::Data);
  EXPECT_GT(host_memory_per_rank(1).bytes, 0u);
  EXPECT_LE(host_memory_per_rank(4).bytes, host_memory_per_rank(1).bytes / 4 + 1);
}

// The training state is checked against the memory it will live in: the host's share per
// rank on the host back ends, the free memory of the rank's own GPU on CUDA (where the host's
// memory divided by the ranks would refuse runs that fit and pass runs that do not).
TEST(MemoryEstimate, AvailableMemoryIsWhereTheTensorsLive) {
  const AvailableMemory available = available_memory_per_rank(3);
  if (Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) {
    EXPECT_EQ(available.what, host_memory_per_rank(3).what);
    EXPECT_GT(available.bytes, 0u);
  } else {
    EXPECT_TRUE(available.what.starts_with("free on this rank's GPU (device ")) << available.what;
    EXPECT_GT(available.bytes, 0u);  // the suite runs on a GPU
    EXPECT_LT(available.bytes, std::uint64_t{1} << 40);
  }
}

}  // namespace
