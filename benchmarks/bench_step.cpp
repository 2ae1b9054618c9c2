// One data-parallel training step (forward, loss, backward, gradient all-reduce, Adam) at the
// rank count the binary is launched with:
//   launch/mpirun.sh -np 2 build/bin/bench_step
#include <algorithm>
#include <cstdint>
#include <memory>

#include "bench_main.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/data/dataset.hpp"
#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/train/trainer.hpp"

namespace {

using namespace meshtrain;


void train_step(benchmark::State& state, std::vector<int> widths, int batch,
                DistributedConfig dist = {}) {
  TrainingConfig config;
  config.batch_size = batch;
  config.distributed_config = dist;
  const ReferenceData data = make_reference_data(batch * 4, widths.front(), 0);
  Trainer trainer(Mlp(widths, Activation::ReLU, 0), config);
  trainer.prepare(data.x, data.y);
  std::size_t b = 0;
  const double start = MPI_Wtime();
  for (auto _ : state) {
    trainer.step(b);
    b = (b + 1) % trainer.batches_per_epoch();
  }
  ExecSpace().fence();
  // Forward and backward of a dense layer: 6 flops per parameter per sample, spread over
  // every rank of the mesh.
  bench::report_gflops(state, 6.0 * static_cast<double>(trainer.model().num_parameters()) * batch,
                       MPI_Wtime() - start, trainer.mesh().size());
  const StateBytes bytes = trainer.state_bytes();
  state.counters["params"] = static_cast<double>(trainer.model().num_parameters());
  state.counters["global_batch"] = batch;
  state.counters["ranks"] = trainer.mesh().size();
  state.counters["state_MiB/rank"] = static_cast<double>(bytes.total()) / (1 << 20);
  state.counters["samples/s"] = benchmark::Counter(
      static_cast<double>(batch) * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["steps/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

void BM_TrainStep_Reference(benchmark::State& state) { train_step(state, {4, 64, 1}, 32); }
const std::vector<int> kBigMlp{4, 1024, 1024, 1024, 1};
void BM_TrainStep_MLP1024x3(benchmark::State& state) { train_step(state, kBigMlp, 1024); }
// The same model and batch under each strategy: state bytes per rank and step time.
void BM_Strategy_FSDP(benchmark::State& state) {
  train_step(state, kBigMlp, 1024, DistributedConfig{{}, {}, "fsdp"});
}
void BM_Strategy_TensorParallel(benchmark::State& state) {
  train_step(state, kBigMlp, 1024, DistributedConfig{{1, world_size()}, {"data", "model"}, "data"});
}

// The floor under a step: one in-place all-reduce of the reference gradient (385 + 1 floats).
void BM_Allreduce385(benchmark::State& state) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  std::vector<float> buf(386, 1.0f);
  for (auto _ : state) comm.allreduce(buf.data(), buf.size(), DataType::Float32, ReduceOp::Sum);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * buf.size() * sizeof(float)));
}

BENCHMARK(bench::sgemm_peak)->Name("BM_SgemmPeak")->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStep_Reference)->Iterations(20000)->Repetitions(5)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_TrainStep_MLP1024x3)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Strategy_FSDP)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Strategy_TensorParallel)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Allreduce385)->Iterations(20000)->Repetitions(5)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) { return meshtrain::bench::run_benchmarks(argc, argv); }
