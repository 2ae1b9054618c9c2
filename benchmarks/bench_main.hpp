#pragma once
// A Google Benchmark main for MPI jobs: every rank runs every benchmark with the same fixed
// iteration count (Google Benchmark's adaptive count would differ between ranks and
// deadlock the collectives), and only rank 0 reports.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <cstring>
#include <vector>

#include "meshtrain/runtime/distributed_manager.hpp"

namespace meshtrain::bench {

class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

inline int run_benchmarks(int argc, char** argv) {
  meshtrain::DistributedManager manager(&argc, &argv);
  std::vector<char*> args(argv, argv + argc);
  if (manager.rank() != 0) {
    // Only rank 0 writes --benchmark_out files.
    std::erase_if(args, [](char* a) { return std::strncmp(a, "--benchmark_out", 15) == 0; });
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (manager.rank() == 0) {
    benchmark::AddCustomContext("mpi_ranks", std::to_string(manager.size()));
    benchmark::AddCustomContext("kokkos_backend", manager.backend_name());
    benchmark::RunSpecifiedBenchmarks();
  } else {
    NullReporter null;
    benchmark::RunSpecifiedBenchmarks(&null);
  }
  benchmark::Shutdown();
  return 0;
}

}  // namespace meshtrain::bench
