// DeviceMesh and DistributedManager at whatever rank count the test is launched with.
#include <gtest/gtest.h>

#include <vector>

#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/mesh/device_mesh.hpp"
#include "meshtrain/runtime/distributed_manager.hpp"
#include "test_support.hpp"

using namespace meshtrain;
using meshtrain::testing::world_rank;
using meshtrain::testing::world_size;

namespace {
// Every 2-D factorisation of the world size.
std::vector<std::vector<int>> two_d_shapes(int n) {
  std::vector<std::vector<int>> shapes;
  for (int a = 1; a <= n; ++a) {
    if (n % a == 0) shapes.push_back({a, n / a});
  }
  return shapes;
}
}  // namespace

TEST(DeviceMesh, DefaultIsOneDataAxisOverAllRanks) {
  DeviceMesh mesh(MPI_COMM_WORLD, DistributedConfig{});
  EXPECT_EQ(mesh.shape(), std::vector<int>{world_size()});
  EXPECT_EQ(mesh.axis_names(), std::vector<std::string>{"data"});
  EXPECT_EQ(mesh.coords(), std::vector<int>{world_rank()});
  EXPECT_EQ(mesh.axis_comm("data").size(), world_size());
  EXPECT_EQ(mesh.axis_comm("data").rank(), world_rank());
  EXPECT_THROW(mesh.axis_index("model"), ConfigError);
}

TEST(DeviceMesh, TwoDimensionalCoordinatesAndAxisCommunicators) {
  const int n = world_size();
  for (const auto& shape : two_d_shapes(n)) {
    DistributedConfig config{shape, {"data", "fsdp"}, Strategy::Data};
    DeviceMesh mesh(MPI_COMM_WORLD, config);
    const int r = world_rank();
    // Row-major: the last axis varies fastest.
    EXPECT_EQ(mesh.coords()[0], r / shape[1]);
    EXPECT_EQ(mesh.coords()[1], r % shape[1]);
    Communicator& data = mesh.axis_comm("data");
    Communicator& fsdp = mesh.axis_comm("fsdp");
    EXPECT_EQ(data.size(), shape[0]);
    EXPECT_EQ(fsdp.size(), shape[1]);
    EXPECT_EQ(data.rank(), mesh.coords()[0]);
    EXPECT_EQ(fsdp.rank(), mesh.coords()[1]);
    // Along "data" the other coordinate is constant and the world ranks step by shape[1].
    std::vector<int> info{mesh.coords()[1], r};
    std::vector<int> all(2 * data.size());
    data.all_gather(info.data(), all.data(), 2, DataType::Int32);
    for (int q = 0; q < data.size(); ++q) {
      EXPECT_EQ(all[2 * q], mesh.coords()[1]);
      EXPECT_EQ(all[2 * q + 1], q * shape[1] + mesh.coords()[1]);
    }
  }
}

TEST(DeviceMesh, BadConfigThrowsOnEveryRankWithoutHanging) {
  const int n = world_size();
  EXPECT_THROW(DeviceMesh(MPI_COMM_WORLD, DistributedConfig{{n + 1}, {"data"}, Strategy::Data}),
               ConfigError);
  EXPECT_THROW(DeviceMesh(MPI_COMM_WORLD, DistributedConfig{{n, 1}, {"data"}, Strategy::Data}),
               ConfigError);
  // Not a strategy: only an integer cast to the enum can be.
  EXPECT_THROW(
      DeviceMesh(MPI_COMM_WORLD, DistributedConfig{{n}, {"data"}, static_cast<Strategy>(7)}),
      ConfigError);
  // Still in step: a collective after the failures completes.
  MpiCommunicator world(MPI_COMM_WORLD);
  world.barrier();
}

TEST(DistributedManager, AdoptsTheRunningMpiAndKokkos) {
  DistributedManager manager(nullptr, nullptr);
  EXPECT_EQ(manager.rank(), world_rank());
  EXPECT_EQ(manager.size(), world_size());
  EXPECT_GE(manager.local_rank(), 0);
  EXPECT_LT(manager.local_rank(), manager.local_size());
  EXPECT_LE(manager.local_size(), manager.size());
  EXPECT_FALSE(manager.has_mesh());
  EXPECT_THROW(manager.mesh(), std::logic_error);
  EXPECT_EQ(&DistributedManager::current(), &manager);
  EXPECT_FALSE(manager.backend_name().empty());
  const DeviceMesh& mesh = manager.create_mesh(DistributedConfig{});
  EXPECT_EQ(mesh.size(), world_size());
  const ShardPlan plan = manager.shard_batch(32);
  EXPECT_EQ(plan, make_shard_plan(32, world_size()));
}

TEST(DistributedManager, ShardBatchFollowsTheDataAxisOfA2DMesh) {
  const int n = world_size();
  for (const auto& shape : two_d_shapes(n)) {
    DistributedManager manager(nullptr, nullptr,
                               DistributedConfig{shape, {"fsdp", "data"}, Strategy::Data});
    EXPECT_EQ(manager.shard_batch(7), make_shard_plan(7, shape[1]));
  }
}

TEST(DeviceBinding, LocalRankToDevice) {
  EXPECT_EQ(device_for_local_rank(0, 4, 0), 0);  // host execution: no device to bind
  EXPECT_EQ(device_for_local_rank(3, 4, 0), 0);
  EXPECT_EQ(device_for_local_rank(2, 4, 4), 2);
  EXPECT_EQ(device_for_local_rank(0, 1, 8), 0);
  try {
    device_for_local_rank(0, 5, 4);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("5"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("4"), std::string::npos) << e.what();
  }
}

TEST(DeviceBinding, OneGpuPerTaskFromTheLauncher) {
  // srun --gpus-per-task=1 shows each rank only its own GPU, through CUDA_VISIBLE_DEVICES.
  ::setenv("CUDA_VISIBLE_DEVICES", "3", 1);
  EXPECT_EQ(device_for_local_rank(2, 4, 1), 0);
  ::unsetenv("CUDA_VISIBLE_DEVICES");
  EXPECT_THROW(device_for_local_rank(2, 4, 1), ConfigError);  // four ranks sharing one GPU
}
