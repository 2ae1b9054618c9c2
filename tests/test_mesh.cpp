// DeviceMesh and DistributedManager at whatever rank count the test is launched with.
#include <gtest/gtest.h>

#include <vector>

#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/data/dataset.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/mesh/device_mesh.hpp"
#include "meshtrain/runtime/distributed_manager.hpp"
#include "meshtrain/train/trainer.hpp"
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
  DeviceMesh mesh(DistributedConfig{}, world_size(), world_rank());
  EXPECT_EQ(mesh.shape(), std::vector<int>{world_size()});
  EXPECT_EQ(mesh.axis_names(), std::vector<std::string>{"data"});
  EXPECT_EQ(mesh.coords(), std::vector<int>{world_rank()});
  EXPECT_EQ(mesh.axis_group("data"), 0);
  EXPECT_THROW(mesh.axis_index("model"), ConfigError);
}

TEST(DeviceMesh, RowMajorCoordinatesAndAxisGroups) {
  // A 2 x 3 x 2 mesh, every rank of it computed here: no communication involved.
  const DistributedConfig config{{2, 3, 2}, {"data", "fsdp", "model"}, Strategy::Data};
  std::vector<std::vector<int>> coords;
  for (int r = 0; r < 12; ++r) coords.push_back(DeviceMesh(config, 12, r).coords());
  EXPECT_EQ(coords[0], (std::vector<int>{0, 0, 0}));
  EXPECT_EQ(coords[1], (std::vector<int>{0, 0, 1}));  // the last axis varies fastest
  EXPECT_EQ(coords[7], (std::vector<int>{1, 0, 1}));
  for (const char* axis : {"data", "fsdp", "model"}) {
    for (int a = 0; a < 12; ++a) {
      for (int b = 0; b < 12; ++b) {
        const DeviceMesh ma(config, 12, a), mb(config, 12, b);
        // Same group exactly when every other coordinate agrees.
        bool others_agree = true;
        for (int d = 0; d < 3; ++d) {
          if (d != ma.axis_index(axis) && ma.coords()[d] != mb.coords()[d]) others_agree = false;
        }
        EXPECT_EQ(ma.axis_group(axis) == mb.axis_group(axis), others_agree) << axis << a << b;
      }
    }
  }
}

TEST(DeviceMesh, BadConfigThrows) {
  const int n = world_size();
  EXPECT_THROW(DeviceMesh(DistributedConfig{{n + 1}, {"data"}, Strategy::Data}, n, 0), ConfigError);
  EXPECT_THROW(DeviceMesh(DistributedConfig{{n, 1}, {"data"}, Strategy::Data}, n, 0), ConfigError);
  // Not a strategy: only an integer cast to the enum can be.
  EXPECT_THROW(DeviceMesh(DistributedConfig{{n}, {"data"}, static_cast<Strategy>(7)}, n, 0),
               ConfigError);
}

TEST(ProcessGroups, AxisGroupsOfEvery2DMesh) {
  const int n = world_size();
  for (const auto& shape : two_d_shapes(n)) {
    // fsdp over a (data, fsdp) mesh: shard over 'fsdp', replicas over 'data'.
    const auto groups = DistributedManager::current().process_groups(
        DistributedConfig{shape, {"data", "fsdp"}, Strategy::Fsdp});
    const DeviceMesh& mesh = groups->mesh();
    const int r = world_rank();
    EXPECT_EQ(mesh.coords()[0], r / shape[1]);
    EXPECT_EQ(mesh.coords()[1], r % shape[1]);
    Communicator& data = groups->replica();
    Communicator& fsdp = groups->shard();
    EXPECT_EQ(data.size(), shape[0]);
    EXPECT_EQ(fsdp.size(), shape[1]);
    EXPECT_EQ(data.rank(), mesh.coords()[0]);
    EXPECT_EQ(fsdp.rank(), mesh.coords()[1]);
    EXPECT_EQ(groups->batch_parts(), n);
    EXPECT_EQ(groups->batch_index(), r);
    EXPECT_FALSE(groups->has_data());
    EXPECT_THROW(groups->data(), std::logic_error);
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

TEST(ProcessGroups, RolesFollowTheStrategy) {
  const int n = world_size();
  DistributedManager& dm = DistributedManager::current();
  const auto data = dm.process_groups(DistributedConfig{});
  EXPECT_EQ(data->data().size(), n);
  EXPECT_FALSE(data->has_shard());
  EXPECT_FALSE(data->has_model());
  EXPECT_EQ(data->batch_parts(), n);
  EXPECT_EQ(data->world().size(), n);
  EXPECT_EQ(data->backend(), CommBackend::Mpi);

  const auto fsdp = dm.process_groups(DistributedConfig{{n}, {"data"}, Strategy::Fsdp});
  EXPECT_EQ(fsdp->shard().size(), n);
  EXPECT_EQ(fsdp->replica().size(), 1);  // nothing is replicated on a 1-D mesh

  const auto tensor = dm.process_groups(DistributedConfig{{1, n}, {"data", "model"}, Strategy::Data});
  EXPECT_EQ(tensor->model().size(), n);
  EXPECT_EQ(tensor->data().size(), 1);
  EXPECT_EQ(tensor->batch_parts(), 1);  // every rank of the model axis computes the same rows
  EXPECT_EQ(tensor->batch_index(), 0);
}

TEST(ProcessGroups, OneMeshAndOneSetOfCommunicatorsPerRun) {
  DistributedManager manager(nullptr, nullptr);  // a fresh runtime, current for this test
  const int meshes = DeviceMesh::alive();
  const int assemblies = ProcessGroups::alive();
  const int communicators = MpiCommunicator::alive();
  TrainingConfig config;
  config.num_epochs = 2;
  const auto groups = manager.process_groups(config.distributed_config);
  EXPECT_EQ(MpiCommunicator::alive(), communicators + 1);  // 'data'; world is the manager's

  // The Trainer takes the run's groups from the runtime and builds none of its own, not even
  // while it trains.
  Trainer trainer(Mlp::simple_pde_model(0), config);
  EXPECT_EQ(&trainer.groups(), groups.get());
  EXPECT_EQ(&trainer.mesh(), &manager.mesh());
  const ReferenceData data = make_reference_data(64, 4, 0);
  trainer.fit(data.x, data.y);
  EXPECT_EQ(DeviceMesh::alive(), meshes + 1);
  EXPECT_EQ(ProcessGroups::alive(), assemblies + 1);
  EXPECT_EQ(MpiCommunicator::alive(), communicators + 1);
  EXPECT_EQ(manager.process_groups(groups->config()).get(), groups.get());
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
  EXPECT_EQ(manager.world().size(), world_size());
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

TEST(DistributedManager, BadConfigThrowsOnEveryRankWithoutHanging) {
  const int n = world_size();
  DistributedManager& dm = DistributedManager::current();
  EXPECT_THROW(dm.process_groups(DistributedConfig{{n + 1}, {"data"}, Strategy::Data}), ConfigError);
  EXPECT_THROW(dm.process_groups(DistributedConfig{{n}, {"model"}, Strategy::Fsdp}), ConfigError);
  // Still in step: a collective after the failures completes.
  dm.world().barrier();
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
