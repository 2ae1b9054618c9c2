// One data-parallel training step of the Fourier Neural Operator of the Darcy target (s = 32,
// modes 12, width 32, 4 Fourier layers, projection 128: 2,368,001 parameters; global batch
// 20, relative L2 loss, AdamW) at the rank count the binary is launched with, and where the
// step's time goes: the FFTs (Fft2d's "meshtrain::fft" regions), the gemms (Kokkos Kernels'
// "KokkosBlas::gemm" regions: the 1x1 layers and the spectral products) and everything else
// (GELU, gathers, the loss, Adam, the gradient all-reduce), measured with Kokkos Tools
// region callbacks on rank 0 while the step runs.
//   launch/mpirun.sh -np 2 build/bin/bench_fno
#include <chrono>
#include <cstring>
#include <string>

#include "bench_main.hpp"
#include "meshtrain/data/random.hpp"
#include "meshtrain/nn/fno.hpp"
#include "meshtrain/train/trainer.hpp"

namespace {

using namespace meshtrain;
using Clock = std::chrono::steady_clock;

// Seconds inside the FFT and gemm regions (outermost region only; they do not nest).
struct RegionTimes {
  double fft = 0.0;
  double gemm = 0.0;
  int depth = 0;
  double* open = nullptr;  // the total the outermost open region adds to, if any
  Clock::time_point start;
};
RegionTimes g_regions;

void push_region(const char* name) {
  if (g_regions.depth++ > 0) return;
  // Classified now: the name is a temporary of Kokkos' and gone by the pop.
  g_regions.open = std::strncmp(name, "meshtrain::fft", 14) == 0     ? &g_regions.fft
                   : std::strncmp(name, "KokkosBlas::gemm", 16) == 0 ? &g_regions.gemm
                                                                     : nullptr;
  g_regions.start = Clock::now();
}

void pop_region() {
  if (--g_regions.depth > 0) return;
  if (g_regions.open) {
    *g_regions.open += std::chrono::duration<double>(Clock::now() - g_regions.start).count();
  }
}

void BM_FnoStep(benchmark::State& state) {
  const int s = 32, batch = 20;
  FnoConfig fno;
  fno.s1 = fno.s2 = s;
  TrainingConfig config;
  config.batch_size = batch;
  config.optimizer = OptimizerType::AdamW;
  config.loss = Loss::RelativeL2;
  Model model = make_fno2d(fno);
  model.set_loss(config.loss);
  const std::size_t samples = 4 * batch;
  HostMatrix x("x", samples, s * s), y("y", samples, s * s);
  Random rng(1);
  for (std::size_t i = 0; i < samples * s * s; ++i) {
    x.data()[i] = static_cast<float>(rng.normal());
    y.data()[i] = static_cast<float>(1.0 + rng.uniform());
  }
  Trainer trainer(std::move(model), config);
  trainer.prepare(x, y);
  trainer.step(0);  // warm up (first touches)
  ExecSpace().fence();
  Kokkos::Tools::Experimental::set_push_region_callback(push_region);
  Kokkos::Tools::Experimental::set_pop_region_callback(pop_region);
  g_regions = RegionTimes{};
  std::size_t b = 0;
  double step_seconds = 0.0;
  for (auto _ : state) {
    const double t0 = MPI_Wtime();
    trainer.step(b);
    ExecSpace().fence();
    step_seconds += MPI_Wtime() - t0;
    b = (b + 1) % trainer.batches_per_epoch();
  }
  Kokkos::Tools::Experimental::set_push_region_callback(nullptr);
  Kokkos::Tools::Experimental::set_pop_region_callback(nullptr);
  const double n = static_cast<double>(state.iterations());
  state.counters["params"] = static_cast<double>(trainer.model().num_parameters());
  state.counters["ranks"] = trainer.mesh().size();
  state.counters["global_batch"] = batch;
  state.counters["step_ms"] = step_seconds / n * 1e3;
  state.counters["samples/s"] = batch * n / step_seconds;
  state.counters["fft_%"] = 100.0 * g_regions.fft / step_seconds;
  state.counters["gemm_%"] = 100.0 * g_regions.gemm / step_seconds;
  state.counters["rest_%"] = 100.0 * (step_seconds - g_regions.fft - g_regions.gemm) / step_seconds;
}

BENCHMARK(BM_FnoStep)->Iterations(30)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) { return meshtrain::bench::run_benchmarks(argc, argv); }
