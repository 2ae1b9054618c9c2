// GoogleTest main for every meshtrain test binary: MPI, then Kokkos (through a
// DistributedManager), rank 0 alone prints, and a test that fails on any rank fails the run
// on every rank (the exit code is agreed by an all-reduce).
#include <gtest/gtest.h>
#include <mpi.h>

#include "meshtrain/runtime/distributed_manager.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  int code = 0;
  {
    meshtrain::DistributedManager manager(&argc, &argv);
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    if (manager.rank() != 0) delete listeners.Release(listeners.default_result_printer());
    code = RUN_ALL_TESTS();
    int worst = 0;
    MPI_Allreduce(&code, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (worst != 0 && code == 0 && manager.rank() == 0) {
      std::fprintf(stderr, "a test failed on another rank\n");
    }
    code = worst;
  }
  return code;
}
