#pragma once
// A Google Benchmark main for MPI jobs: every rank runs every benchmark with the same fixed
// iteration count (Google Benchmark's adaptive count would differ between ranks and
// deadlock the collectives), and only rank 0 reports.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/runtime/distributed_manager.hpp"

namespace meshtrain::bench {

// The per-core sgemm peak (1024^3) measured in this run, with every rank computing at once,
// so under the same contention as what is compared against it. Set by sgemm_peak (register
// that benchmark first so that it runs first); 0 until then.
inline double g_sgemm_peak_gflops = 0.0;

// The peak probe: one 1024^3 sgemm on fixed operands.
class SgemmProbe {
 public:
  static constexpr std::size_t kN = 1024;
  static constexpr double kFlops = 2.0 * kN * kN * kN;
  SgemmProbe() : a_("a", kN, kN), b_("b", kN, kN), c_("c", kN, kN) {
    Kokkos::deep_copy(a_, 0.5f);
    Kokkos::deep_copy(b_, 0.25f);
  }
  double seconds() {  // one product, fenced
    const double start = MPI_Wtime();
    matmul(a_, b_, c_);
    ExecSpace().fence();
    return MPI_Wtime() - start;
  }

 private:
  Matrix a_, b_, c_;
};

inline void sgemm_peak(benchmark::State& state) {
  SgemmProbe probe;
  double seconds = 0.0;
  for (auto _ : state) seconds += probe.seconds();
  const double gflops = SgemmProbe::kFlops * static_cast<double>(state.iterations()) / seconds * 1e-9;
  g_sgemm_peak_gflops = std::max(g_sgemm_peak_gflops, gflops);
  state.counters["GFLOP/s"] = gflops;
}

// GFLOP/s of `flops_per_iteration` over `seconds`, and its fraction of `peak_cores` times
// peak_gflops (default: the sgemm peak of this run).
inline void report_gflops(benchmark::State& state, double flops_per_iteration, double seconds,
                          double peak_cores = 1.0, double peak_gflops = 0.0) {
  if (peak_gflops <= 0) peak_gflops = g_sgemm_peak_gflops;
  const double gflops = flops_per_iteration * static_cast<double>(state.iterations()) / seconds * 1e-9;
  state.counters["GFLOP/s"] = gflops;
  if (peak_gflops > 0) {
    state.counters["peak_GFLOP/s/rank"] = peak_gflops;
    state.counters["fraction_of_peak"] = gflops / (peak_cores * peak_gflops);
  }
}

class NullReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

inline int run_benchmarks(int argc, char** argv) {
  meshtrain::DistributedManager manager(&argc, &argv);
  std::vector<char*> args(argv, argv + argc);
  for (char* a : args) {
    // Each rank would shuffle the benchmarks its own way and pair up different collectives:
    // a hang. Refuse it on every rank, said once.
    const std::string arg = a;
    if (manager.size() > 1 && arg.rfind("--benchmark_enable_random_interleaving", 0) == 0 &&
        arg != "--benchmark_enable_random_interleaving=false") {
      if (manager.rank() == 0) {
        std::fprintf(stderr, "%s: error: %s: every rank must run the benchmarks in the same "
                     "order; random interleaving works on one rank only\n", argv[0], a);
      }
      return 2;
    }
  }
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
