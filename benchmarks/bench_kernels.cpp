// Kernels and collectives, run on every rank of the job at once (so that per-core figures
// include the contention of a full node):
//   launch/mpirun.sh -np 2 build/bin/bench_kernels
// Reported by rank 0: sgemm peak (GFLOP/s), Linear forward/backward (GFLOP/s and fraction of
// the sgemm peak measured in the same run), Adam (GB/s), all-reduce 4 B .. 64 MiB through the
// project communicator, raw MPI_Allreduce and the non-blocking path (time, algbw, busbw as
// nccl-tests defines them).
#include <cstdint>
#include <string>

#include "bench_main.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/optim/optimizer.hpp"

namespace {

using namespace meshtrain;

Matrix filled(const std::string& name, std::size_t r, std::size_t c, float v) {
  Matrix m(name, r, c);
  Kokkos::deep_copy(m, v);
  return m;
}

// Linear 1024 -> 1024 on `rows` rows with bias and ReLU fused: forward is one gemm.
void BM_LinearForward(benchmark::State& state) {
  const auto rows = static_cast<std::size_t>(state.range(0));
  const std::size_t in = 1024, out = 1024;
  Matrix x = filled("x", rows, in, 0.1f), w = filled("w", in, out, 0.01f), y("y", rows, out);
  Vector b("b", out);
  const double start = MPI_Wtime();
  for (auto _ : state) {
    linear_forward(x, w, b, y, Activation::ReLU);
    ExecSpace().fence();
  }
  bench::report_gflops(state, 2.0 * rows * in * out, MPI_Wtime() - start);
}

// Backward: dW = x^T dz and dx = dz W^T (two gemms), db, and the ReLU mask.
void BM_LinearBackward(benchmark::State& state) {
  const auto rows = static_cast<std::size_t>(state.range(0));
  const std::size_t in = 1024, out = 1024;
  Matrix x = filled("x", rows, in, 0.1f), w = filled("w", in, out, 0.01f);
  Matrix y = filled("y", rows, out, 1.0f), dz = filled("dz", rows, out, 0.01f);
  Matrix dw("dw", in, out), dx("dx", rows, in);
  Vector db("db", out);
  const double start = MPI_Wtime();
  for (auto _ : state) {
    activation_backward(y, dz, Activation::ReLU);
    linear_backward(x, w, dz, dw, db, dx);
    ExecSpace().fence();
  }
  bench::report_gflops(state, 4.0 * rows * in * out, MPI_Wtime() - start);
}

void BM_Adam(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  Vector params("p", n), grads("g", n);
  Kokkos::deep_copy(grads, 1e-3f);
  Optimizer adam(OptimizerConfig::of(OptimizerType::Adam), n);
  for (auto _ : state) {
    adam.step(params, grads, 1e-3);
    ExecSpace().fence();
  }
  // Reads p, g, m, v and writes p, m, v: 7 floats per parameter.
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 7 * sizeof(float)));
}

void set_bandwidth(benchmark::State& state, std::size_t bytes, int ranks) {
  const double algbw = static_cast<double>(bytes) * state.iterations();
  state.counters["algbw"] = benchmark::Counter(algbw, benchmark::Counter::kIsRate,
                                               benchmark::Counter::kIs1024);
  state.counters["busbw"] = benchmark::Counter(algbw * 2.0 * (ranks - 1) / ranks,
                                               benchmark::Counter::kIsRate,
                                               benchmark::Counter::kIs1024);
  state.counters["bytes"] = static_cast<double>(bytes);
  state.counters["ranks"] = ranks;
}

void BM_AllreduceProject(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  MpiCommunicator comm(MPI_COMM_WORLD);
  Vector buf("buf", bytes / sizeof(float));
  for (auto _ : state) comm.allreduce(buf.data(), buf.extent(0), DataType::Float32, ReduceOp::Sum);
  set_bandwidth(state, bytes, comm.size());
}

void BM_AllreduceRawMpi(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  int ranks = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  Vector buf("buf", bytes / sizeof(float));
  for (auto _ : state) {
    MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(buf.extent(0)), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
  }
  set_bandwidth(state, bytes, ranks);
}

// The non-blocking all-reduce that progress=poll overlaps with backward, started and waited
// at once: what it costs when nothing hides it, against the blocking one above (MPI_Iallreduce
// runs Open MPI's libnbc schedules, MPI_Allreduce its tuned algorithms).
void BM_AllreduceNonBlocking(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  MpiCommunicator comm(MPI_COMM_WORLD);
  Vector buf("buf", bytes / sizeof(float));
  for (auto _ : state) {
    comm.allreduce_async(buf.data(), buf.extent(0), DataType::Float32, ReduceOp::Sum)->wait();
  }
  set_bandwidth(state, bytes, comm.size());
}

// Fixed iteration counts: every rank must run the same number of collectives.
std::int64_t iterations_for(std::int64_t bytes) {
  if (bytes <= (1 << 16)) return 2000;
  if (bytes <= (1 << 22)) return 100;
  return 10;
}

void register_allreduce(const char* name, void (*fn)(benchmark::State&)) {
  for (std::int64_t bytes = 4; bytes <= (64LL << 20); bytes *= 8) {
    benchmark::RegisterBenchmark(name, fn)->Arg(bytes)->Iterations(iterations_for(bytes))
        ->UseRealTime()->Unit(benchmark::kMicrosecond);
  }
  benchmark::RegisterBenchmark(name, fn)->Arg(8 << 20)->Iterations(100)->Repetitions(3)
      ->UseRealTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK(bench::sgemm_peak)->Name("BM_SgemmPeak")->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LinearForward)->Arg(512)->Arg(1024)->Iterations(30)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LinearBackward)->Arg(512)->Arg(1024)->Iterations(20)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Adam)->Arg(385)->Arg(2105345)->Iterations(200)->Unit(benchmark::kMicrosecond)->UseRealTime();

[[maybe_unused]] const bool registered = [] {
  register_allreduce("BM_AllreduceProject", BM_AllreduceProject);
  register_allreduce("BM_AllreduceRawMpi", BM_AllreduceRawMpi);
  register_allreduce("BM_AllreduceNonBlocking", BM_AllreduceNonBlocking);
  return true;
}();

}  // namespace

int main(int argc, char** argv) { return meshtrain::bench::run_benchmarks(argc, argv); }
