// Choosing the communication backend: parsing, resolution against the GPUs and the build,
// the error texts, and the communicator it makes.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "meshtrain/build_config.hpp"
#include "meshtrain/comm/backend.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/nn/types.hpp"
#include "meshtrain/runtime/distributed_manager.hpp"
#include "test_support.hpp"

using namespace meshtrain;
using namespace meshtrain::testing;

namespace {

const std::string kNoGpu = "comm 'nccl': no GPU is visible on this node";
const std::string kNoNccl =
    "comm 'nccl': this build of meshtrain has no NCCL (configure with -DMESHTRAIN_ENABLE_NCCL=ON)";

}  // namespace

TEST(CommBackend, ParsesEveryName) {
  EXPECT_EQ(parse_comm_backend("auto"), CommBackend::Auto);
  EXPECT_EQ(parse_comm_backend("mpi"), CommBackend::Mpi);
  EXPECT_EQ(parse_comm_backend("nccl"), CommBackend::Nccl);
  for (CommBackend backend : {CommBackend::Auto, CommBackend::Mpi, CommBackend::Nccl}) {
    EXPECT_EQ(parse_comm_backend(name_of(backend)), backend) << name_of(backend);
  }
}

TEST(CommBackend, UnknownNameIsAConfigErrorListingTheChoices) {
  EXPECT_EQ(config_error([] { parse_comm_backend("xyz"); }),
            "comm 'xyz': unknown (choose auto, mpi or nccl)");
  EXPECT_EQ(config_error([] { parse_comm_backend(""); }),
            "comm '': unknown (choose auto, mpi or nccl)");
  // Names are exact, as the other flags' choices are.
  EXPECT_EQ(config_error([] { parse_comm_backend("NCCL"); }),
            "comm 'NCCL': unknown (choose auto, mpi or nccl)");
}

TEST(CommBackend, ResolvesEveryCombination) {
  struct Case {
    CommBackend requested;
    int gpus;
    bool nccl;
    CommBackend expected;  // when error is empty
    std::string error;
  };
  const std::vector<Case> cases = {
      {CommBackend::Auto, 0, false, CommBackend::Mpi, ""},
      {CommBackend::Auto, 0, true, CommBackend::Mpi, ""},
      {CommBackend::Auto, 1, false, CommBackend::Mpi, ""},
      {CommBackend::Auto, 1, true, CommBackend::Nccl, ""},
      {CommBackend::Auto, 8, true, CommBackend::Nccl, ""},
      {CommBackend::Mpi, 0, false, CommBackend::Mpi, ""},
      {CommBackend::Mpi, 0, true, CommBackend::Mpi, ""},
      {CommBackend::Mpi, 1, false, CommBackend::Mpi, ""},
      {CommBackend::Mpi, 1, true, CommBackend::Mpi, ""},
      {CommBackend::Nccl, 1, true, CommBackend::Nccl, ""},
      {CommBackend::Nccl, 8, true, CommBackend::Nccl, ""},
      {CommBackend::Nccl, 0, true, CommBackend::Mpi, kNoGpu},
      {CommBackend::Nccl, 1, false, CommBackend::Mpi, kNoNccl},
      // Both missing: the build is the more fundamental reason.
      {CommBackend::Nccl, 0, false, CommBackend::Mpi, kNoNccl},
  };
  for (const Case& c : cases) {
    const std::string label = name_of(c.requested) + " with " + std::to_string(c.gpus) +
                              " GPU(s), NCCL " + (c.nccl ? "built" : "not built");
    if (c.error.empty()) {
      EXPECT_EQ(resolve_comm_backend(c.requested, c.gpus, c.nccl), c.expected) << label;
    } else {
      EXPECT_EQ(config_error([&] { resolve_comm_backend(c.requested, c.gpus, c.nccl); }),
                c.error)
          << label;
    }
  }
}

// What the build contains, seen through what the runtime does with `comm = "nccl"`: the
// library must refuse it for the reason this build and this node give (the build before the
// node), and a build without NCCL must not have a working NCCL factory.
TEST(CommBackend, TheRuntimeUsesNcclExactlyWhenBuildAndNodeAllowIt) {
  DistributedConfig config;
  config.comm = CommBackend::Nccl;
  const bool device_memory = !Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;
  std::string expected;
  if (!nccl_built()) {
    expected = kNoNccl;
  } else if (visible_gpu_count() == 0) {
    expected = kNoGpu;
  } else if (!device_memory) {
    expected = "comm 'nccl': this build's Kokkos (" + std::string(ExecSpace::name()) +
               ") keeps tensors in host memory; NCCL needs a CUDA-enabled Kokkos "
               "(configure with -DKokkos_ROOT=<its prefix>)";
  }
  const auto assemble = [&] { DistributedManager::current().process_groups(config, MPI_COMM_SELF); };
  if (expected.empty()) {
    EXPECT_NO_THROW(assemble());
  } else {
    EXPECT_EQ(config_error(assemble), expected);
  }
  // The factory itself: refused for the build's reason without NCCL; with NCCL but no GPU it
  // gets past that and fails in CUDA.
  if (!nccl_built()) {
    EXPECT_EQ(config_error([] { make_communicator(CommBackend::Nccl, MPI_COMM_SELF); }), kNoNccl);
  } else if (visible_gpu_count() == 0) {
    EXPECT_THROW(make_communicator(CommBackend::Nccl, MPI_COMM_SELF), CommError);
  }
#if !MESHTRAIN_HAS_CUDA
  EXPECT_EQ(visible_gpu_count(), 0);
#endif
}

TEST(CommBackend, MakeCommunicatorMpiWorks) {
  auto comm = make_communicator(CommBackend::Mpi, MPI_COMM_WORLD);
  ASSERT_NE(comm, nullptr);
  EXPECT_EQ(comm->backend(), "mpi");
  int world_size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(comm->size(), world_size);
  std::vector<double> values{1.0, 2.0};
  comm->allreduce(std::span<double>(values), ReduceOp::Sum);
  EXPECT_DOUBLE_EQ(values[0], 1.0 * world_size);
  EXPECT_DOUBLE_EQ(values[1], 2.0 * world_size);
}

TEST(CommBackend, MakeCommunicatorNeedsAResolvedBackend) {
  EXPECT_NE(config_error([] { make_communicator(CommBackend::Auto, MPI_COMM_WORLD); }), "");
}

TEST(CommBackend, AutoPicksMpiWithoutAGpu) {
  if (visible_gpu_count() > 0 && nccl_built()) GTEST_SKIP() << "a GPU is visible and NCCL built";
  EXPECT_EQ(resolve_comm_backend(CommBackend::Auto, visible_gpu_count(), nccl_built()),
            CommBackend::Mpi);
}

// On a node without a GPU (or a build without NCCL) asking for NCCL must fail at once with
// one clear line, before anything could wait on a peer.
TEST(CommBackend, RequestingNcclHereFailsPromptly) {
  if (visible_gpu_count() > 0 && nccl_built()) GTEST_SKIP() << "a GPU is visible and NCCL built";
  const std::string error = config_error([] {
    const CommBackend resolved =
        resolve_comm_backend(CommBackend::Nccl, visible_gpu_count(), nccl_built());
    make_communicator(resolved, MPI_COMM_WORLD);
  });
  EXPECT_EQ(error, nccl_built() ? kNoGpu : kNoNccl);
  EXPECT_EQ(error.find('\n'), std::string::npos);
}

#if !MESHTRAIN_HAS_NCCL
TEST(CommBackend, MakeCommunicatorNcclWithoutNcclBuiltIsAConfigError) {
  EXPECT_EQ(config_error([] { make_communicator(CommBackend::Nccl, MPI_COMM_WORLD); }), kNoNccl);
}
#endif
