// One data-parallel training step (forward, loss, backward, gradient all-reduce, Adam) at the
// rank count the binary is launched with:
//   launch/mpirun.sh -np 2 build/bin/bench_step
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "bench_main.hpp"
#include "meshtrain/comm/counting_communicator.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/data/dataset.hpp"
#include "meshtrain/data/npy.hpp"
#include "meshtrain/data/row_source.hpp"
#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/optim/optimizer.hpp"
#include "meshtrain/train/trainer.hpp"

namespace {

using namespace meshtrain;


// interleave_peak: before every step, one 1024^3 sgemm on every rank at once, timed apart
// from the step (Google Benchmark's timer is paused), so that the step and the peak it is
// compared with see the same machine: on a shared VM the speed drifts by tens of percent
// between benchmarks a minute apart.
void train_step(benchmark::State& state, std::vector<int> widths, int batch,
                DistributedConfig dist = {}, TrainingConfig config = {},
                bool interleave_peak = false) {
  config.batch_size = batch;
  config.distributed_config = dist;
  const ReferenceData data = make_reference_data(batch * 4, widths.front(), 0);
  Trainer trainer(Mlp(widths, Activation::ReLU, 0), config);
  trainer.prepare(data.x, data.y);
  std::optional<bench::SgemmProbe> probe;
  if (interleave_peak) probe.emplace();
  std::size_t b = 0;
  double step_seconds = 0.0, peak_seconds = 0.0;
  const GradientReducer* reducer = config.distributed_config.strategy == Strategy::Data &&
                                           !trainer.mesh().has_axis("model")
                                       ? &trainer.reducer()
                                       : nullptr;
  for (auto _ : state) {
    if (probe) {
      state.PauseTiming();
      MPI_Barrier(MPI_COMM_WORLD);
      peak_seconds += probe->seconds();
      MPI_Barrier(MPI_COMM_WORLD);
      state.ResumeTiming();
    }
    const double t0 = MPI_Wtime();
    trainer.step(b);
    ExecSpace().fence();
    step_seconds += MPI_Wtime() - t0;
    b = (b + 1) % trainer.batches_per_epoch();
  }
  // Forward and backward of a dense layer: 6 flops per parameter per sample, spread over
  // every rank of the mesh.
  const double flops = 6.0 * static_cast<double>(trainer.model().num_parameters()) * batch;
  const double peak_gflops =
      probe ? bench::SgemmProbe::kFlops * static_cast<double>(state.iterations()) / peak_seconds * 1e-9
            : 0.0;  // 0: the run's separate sgemm peak
  bench::report_gflops(state, flops, step_seconds, trainer.mesh().size(), peak_gflops);
  if (reducer) {
    // Rank 0's time blocked on the gradient all-reduce: all of it with overlap off, what
    // backward did not hide with it on.
    state.counters["comm_blocked_ms/step"] =
        reducer->blocked_seconds() * 1e3 / static_cast<double>(state.iterations());
    state.SetLabel(reducer->overlap() ? "overlap on, progress " + name_of(reducer->progress_mode())
                                      : "overlap off");
  }
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

// Sharded loading: a 1024 -> 256 -> 1 MLP, global batch 256, shuffled, from 16 MiB of
// inputs in 4 .npy shards that rank 0 writes to the temporary directory (so the page cache
// holds them: a disk that keeps up). Reports the time each step waited for its rows (what the
// prefetch thread had not read while the previous step computed) against the step; the
// in-memory variant is the same run from memory. The first step of each pass over the
// batches has nothing read ahead.
void data_wait(benchmark::State& state, bool sharded) {
  constexpr int kSamples = 4096, kInputs = 1024, kBatch = 256;
  TrainingConfig config;
  config.batch_size = kBatch;
  config.shuffle = true;
  const ReferenceData data = make_reference_data(kSamples, kInputs, 0);
  MpiCommunicator world(MPI_COMM_WORLD);
  std::int64_t pid = world.rank() == 0 ? ::getpid() : 0;
  world.broadcast(std::span<std::int64_t>(&pid, 1), 0);
  const std::string root = "/tmp/meshtrain-bench-data-" + std::to_string(pid);
  if (world.rank() == 0 && sharded) {
    std::filesystem::create_directories(root + "/x");
    for (int s = 0; s < 4; ++s) {
      const std::size_t rows = kSamples / 4;
      write_npy(root + "/x/part-" + std::to_string(s) + ".npy", {rows, std::size_t{kInputs}},
                data.x.data() + s * rows * kInputs);
    }
    write_npy(root + "/y.npy", {std::size_t{kSamples}, 1}, data.y.data());
  }
  world.barrier();
  Trainer trainer(Mlp({kInputs, 256, 1}, Activation::ReLU, 0), config);
  if (sharded) {
    trainer.prepare(std::make_shared<NpyRowSource>(NpyShards::open(root + "/x"),
                                                   NpyShards::open(root + "/y.npy")));
  } else {
    trainer.prepare(data.x, data.y);
  }
  std::size_t b = 0;
  double step_seconds = 0.0;
  const double waited_before = trainer.data_wait_seconds();
  for (auto _ : state) {
    const double t0 = MPI_Wtime();
    trainer.step(b);
    ExecSpace().fence();
    step_seconds += MPI_Wtime() - t0;
    b = (b + 1) % trainer.batches_per_epoch();
  }
  const double steps = static_cast<double>(state.iterations());
  const double waited = trainer.data_wait_seconds() - waited_before;
  state.counters["step_ms"] = step_seconds * 1e3 / steps;
  state.counters["data_wait_us/step"] = waited * 1e6 / steps;
  state.counters["data_wait_%"] = 100.0 * waited / step_seconds;
  state.counters["rows_MB/s/rank"] =
      static_cast<double>(kBatch) / trainer.mesh().size() * (kInputs + 1) * 4 * steps / step_seconds * 1e-6;
  state.counters["data_KiB/rank"] = static_cast<double>(trainer.data_bytes().total()) / 1024;
  world.barrier();
  if (world.rank() == 0 && sharded) std::filesystem::remove_all(root);
}

void BM_DataWait_Sharded(benchmark::State& state) { data_wait(state, true); }
void BM_DataWait_InMemory(benchmark::State& state) { data_wait(state, false); }

void BM_TrainStep_Reference(benchmark::State& state) { train_step(state, {4, 64, 1}, 32); }
const std::vector<int> kBigMlp{4, 1024, 1024, 1024, 1};
void BM_TrainStep_MLP1024x3(benchmark::State& state) {
  train_step(state, kBigMlp, 1024, {}, {}, true);
}
// The same with the gradient all-reduce after backward, and with each way of overlapping it.
void BM_TrainStep_MLP1024x3_OverlapOff(benchmark::State& state) {
  TrainingConfig config;
  config.overlap_communication = false;
  train_step(state, kBigMlp, 1024, {}, config, true);
}
void BM_TrainStep_MLP1024x3_Poll(benchmark::State& state) {
  TrainingConfig config;
  config.progress = Progress::Poll;
  train_step(state, kBigMlp, 1024, {}, config, true);
}
void BM_TrainStep_MLP1024x3_Thread(benchmark::State& state) {
  TrainingConfig config;
  config.progress = Progress::Thread;
  train_step(state, kBigMlp, 1024, {}, config, true);
}
// The same model and batch under each strategy: state bytes per rank and step time.
void BM_Strategy_FSDP(benchmark::State& state) {
  train_step(state, kBigMlp, 1024, DistributedConfig{{}, {}, Strategy::Fsdp});
}
void BM_Strategy_TensorParallel(benchmark::State& state) {
  train_step(state, kBigMlp, 1024,
             DistributedConfig{{1, world_size()}, {"data", "model"}, Strategy::Data});
}

// Where a step of the big MLP goes, phase by phase, each fenced and timed on its own (so
// nothing overlaps): forward with the loss, backward (gradients only, no communication),
// one blocking all-reduce of the whole gradient buffer, and Adam. Each rank computes on
// global_batch / ranks rows, as in data parallel training; counters are rank 0's ms/step.
void BM_StepPhases_MLP1024x3(benchmark::State& state) {
  const int ranks = world_size();
  const std::size_t rows = static_cast<std::size_t>(1024 / ranks);
  Mlp model(kBigMlp, Activation::ReLU, 0);
  const ReferenceData data = make_reference_data(rows, 4, 0);
  Matrix x("x", rows, 4), y("y", rows, 1);
  Kokkos::deep_copy(x, data.x);
  Kokkos::deep_copy(y, data.y);
  ModelWorkspace ws(model, rows);
  const std::size_t p = model.num_parameters();
  Vector grads("grads", p + 1);
  Kokkos::View<float, MemSpace> loss("loss");
  Optimizer adam(OptimizerConfig::of(OptimizerType::Adam), p);
  MpiCommunicator comm(MPI_COMM_WORLD);
  double t_forward = 0, t_backward = 0, t_skew = 0, t_reduce = 0, t_adam = 0;
  auto timed = [](double& total, auto&& f) {
    const double t0 = MPI_Wtime();
    f();
    ExecSpace().fence();
    total += MPI_Wtime() - t0;
  };
  PassHooks hooks;
  hooks.gradients = [&](std::size_t l) { return grads.data() + model.layer_offset(l); };
  for (auto _ : state) {
    timed(t_forward, [&] { model.forward_loss(x, y, model.loss_scale(1024), loss, ws); });
    timed(t_backward, [&] { model.backward(x, ws, hooks); });
    timed(t_skew, [&] { MPI_Barrier(MPI_COMM_WORLD); });
    timed(t_reduce, [&] { comm.allreduce(grads.data(), p + 1, DataType::Float32, ReduceOp::Sum); });
    timed(t_adam, [&] {
      Vector params = model.parameters();
      adam.step(VectorRef(params.data(), p), ConstVectorRef(grads.data(), p), 1e-6);
    });
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["forward_ms"] = t_forward / n * 1e3;
  state.counters["backward_ms"] = t_backward / n * 1e3;
  state.counters["skew_ms"] = t_skew / n * 1e3;
  state.counters["allreduce_ms"] = t_reduce / n * 1e3;
  state.counters["adam_ms"] = t_adam / n * 1e3;
  bench::report_gflops(state, 6.0 * static_cast<double>(p) * static_cast<double>(rows),
                       t_forward + t_backward);
  state.counters["ranks"] = ranks;
}

// Bytes each rank hands to the collectives of one optimizer step (CountingCommunicator),
// with k micro-batches per step (gradient accumulation; k = 1: none), for data parallelism
// and FSDP on the 4->256->256->256->1 MLP, global batch 256. The gradient's bytes per step
// do not change with k (the inner micro-batches communicate no gradient); FSDP gathers the
// parameters once per micro-batch, so its all-gather bytes grow k-fold.
//   launch/mpirun.sh -np 2 build/bin/bench_step --benchmark_filter=Accumulation
void accumulation_traffic(benchmark::State& state, Strategy strategy) {
  const int k = static_cast<int>(state.range(0));
  const int batch = 256;
  const int ranks = world_size();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const ShardPlan shards = make_shard_plan(batch, ranks);
  const ShardPlan micro = make_shard_plan(shards.counts[rank], k);
  const ReferenceData data = make_reference_data(shards.counts[rank], 4, 1);
  Matrix x("x", data.x.extent(0), 4), y("y", data.y.extent(0), 1);
  Kokkos::deep_copy(x, data.x);
  Kokkos::deep_copy(y, data.y);
  auto group = std::make_shared<CountingCommunicator>(std::make_shared<MpiCommunicator>(MPI_COMM_WORLD));
  MpiCommunicator self(MPI_COMM_SELF);
  Mlp model({4, 256, 256, 256, 1}, Activation::ReLU, 0);
  const OptimizerConfig adam = OptimizerConfig::of(OptimizerType::Adam);
  const auto rows_per_micro = static_cast<std::size_t>(micro.counts.front());
  std::unique_ptr<StepEngine> engine =
      strategy == Strategy::Data
          ? make_data_parallel_engine(model, *group, adam, 4u << 20, true, Progress::Poll,
                                      rows_per_micro, k)
          : make_fsdp_engine(model, *group, self, adam, rows_per_micro, k);
  for (auto _ : state) {
    for (int m = 0; m < k; ++m) {
      const auto from = static_cast<std::size_t>(micro.offsets[m]);
      const auto to = from + static_cast<std::size_t>(micro.counts[m]);
      engine->compute_gradients(rows(x, from, to), rows(y, from, to), batch, MicroBatch{m, k});
    }
    engine->apply_gradients(1e-4);
  }
  const double steps = static_cast<double>(state.iterations());
  double gradient_bytes = 0.0, gather_bytes = 0.0, calls = 0.0;
  for (const auto& [kind, tally] : group->tallies()) {
    (kind == "all_gather" ? gather_bytes : gradient_bytes) += static_cast<double>(tally.bytes);
    calls += static_cast<double>(tally.calls);
  }
  // All-reduces and reduce-scatters: the gradient (and the loss riding with it).
  state.counters["gradient_bytes/step"] = gradient_bytes / steps;
  state.counters["gather_bytes/step"] = gather_bytes / steps;
  state.counters["collectives/step"] = calls / steps;
  state.counters["micro_batches"] = k;
  state.counters["ranks"] = ranks;
  state.counters["state_MiB/rank"] =
      static_cast<double>(engine->state_bytes().total()) / (1 << 20);
}
void BM_Accumulation_Data(benchmark::State& state) { accumulation_traffic(state, Strategy::Data); }
void BM_Accumulation_FSDP(benchmark::State& state) { accumulation_traffic(state, Strategy::Fsdp); }

// The gradient all-reduce in fp32 (range(0) = 0) or bf16 (1), on the 4->1024->1024->1024->1
// MLP (2,105,345 parameters), global batch 1024 split over the ranks, Adam. range(1) = 1: one
// whole data-parallel step through the engine (forward, backward with the all-reduce
// overlapped, progress poll, then Adam), counted by a CountingCommunicator; range(1) = 0: the
// gradient reducer alone on the gradient buffer (overlap off: bf16 narrowing, the blocking
// all-reduces, widening), i.e. what the all-reduce costs apart from compute.
//   launch/mpirun.sh -np 2 build/bin/bench_step --benchmark_filter=GradComm
void BM_GradComm_MLP1024x3(benchmark::State& state) {
  const Dtype wire = state.range(0) == 0 ? Dtype::Fp32 : Dtype::Bf16;
  const bool whole_step = state.range(1) != 0;
  const int ranks = world_size();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const ShardPlan shards = make_shard_plan(1024, ranks);
  const ReferenceData data = make_reference_data(shards.counts[rank], 4, 1);
  Matrix x("x", data.x.extent(0), 4), y("y", data.y.extent(0), 1);
  Kokkos::deep_copy(x, data.x);
  Kokkos::deep_copy(y, data.y);
  auto group =
      std::make_shared<CountingCommunicator>(std::make_shared<MpiCommunicator>(MPI_COMM_WORLD));
  Mlp model(kBigMlp, Activation::ReLU, 0);
  const std::size_t p = model.num_parameters();
  const auto rows_here = static_cast<std::size_t>(shards.counts.front());
  auto engine = make_data_parallel_engine(model, *group, OptimizerConfig::of(OptimizerType::Adam),
                                          4u << 20, true, Progress::Poll, rows_here, 1, wire);
  Vector grads("grads", p + 1);
  Kokkos::deep_copy(grads, 1e-3f);
  GradientReducer reducer(make_gradient_buckets(model, 1, 4u << 20), *group, false,
                          Progress::Poll, wire, 1);
  double seconds = 0.0;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    if (whole_step) {
      engine->compute_gradients(rows(x, 0, x.extent(0)), rows(y, 0, y.extent(0)), 1024,
                                MicroBatch{0, 1});
      engine->apply_gradients(1e-6);
    } else {
      reducer.begin_step(grads.data());
      reducer.finish();
    }
    ExecSpace().fence();
    seconds += MPI_Wtime() - t0;
  }
  const double steps = static_cast<double>(state.iterations());
  double bytes = 0.0, calls = 0.0;
  for (const auto& [kind, tally] : group->tallies()) {
    bytes += static_cast<double>(tally.bytes);
    calls += static_cast<double>(tally.calls);
  }
  state.counters["ms/step"] = seconds / steps * 1e3;
  state.counters["gradient_bytes/step"] = bytes / steps;
  state.counters["collectives/step"] = calls / steps;
  state.counters["ranks"] = ranks;
  state.SetLabel(name_of(wire) + (whole_step ? ", whole step" : ", all-reduce alone"));
}

// The floor under a step: one in-place all-reduce of the reference gradient (385 + 1 floats).
void BM_Allreduce385(benchmark::State& state) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  std::vector<float> buf(386, 1.0f);
  for (auto _ : state) comm.allreduce(buf.data(), buf.size(), DataType::Float32, ReduceOp::Sum);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * buf.size() * sizeof(float)));
}

// The same through the flight recorder's decorator (what the runtime puts on every group): the
// difference is the recorder's cost per collective.
void BM_Allreduce385_Recorded(benchmark::State& state) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  auto recorder = std::make_shared<FlightRecorder>(2048, rank, size);
  const int group = recorder->add_group("world", 0, size, rank);
  FlightRecordingCommunicator comm(std::make_shared<MpiCommunicator>(MPI_COMM_WORLD), recorder,
                                   group);
  std::vector<float> buf(386, 1.0f);
  for (auto _ : state) comm.allreduce(buf.data(), buf.size(), DataType::Float32, ReduceOp::Sum);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * buf.size() * sizeof(float)));
}

#if defined(KOKKOS_ENABLE_CUDA)
// CUDA graphs for the reference step (issue 13 item 6; CUDA builds only). The 385-parameter
// reference model's step is a few dozen tiny kernels and gemms, so launch overhead, not work,
// sets its time. These two benchmarks time the step's device work at one rank (forward with
// the loss, backward, Adam: what a one-rank data-parallel step launches, without the trainer's
// host-side bookkeeping and its one flag collective) eagerly, and captured once with the CUDA
// API's stream capture on Kokkos' execution space stream and replayed (cudaGraphLaunch), each
// step waited for (cudaStreamSynchronize / fence) as BM_TrainStep_Reference waits for its own.
//
// The graph's check, before timing: one replay must give the parameters that the same step
// taken eagerly gives, bit for bit (counter matches_eager). Replays repeat the captured step's
// scalars: Adam's bias corrections (from the host's step count) and the learning rate are
// kernel arguments, so a training loop built on replays would need them in device memory.
struct ReferenceStepWork {
  static constexpr int kBatch = 32;
  Mlp model{{4, 64, 1}, Activation::ReLU, 0};
  Matrix x{"graph_x", kBatch, 4}, y{"graph_y", kBatch, 1};
  ModelWorkspace ws{model, kBatch};
  Vector grads{"graph_grads", model.num_parameters() + 1};
  Kokkos::View<float, MemSpace> loss{"graph_loss"};
  Optimizer adam{OptimizerConfig::of(OptimizerType::Adam), model.num_parameters()};
  PassHooks hooks;

  ReferenceStepWork() {
    const ReferenceData data = make_reference_data(kBatch, 4, 0);
    Kokkos::deep_copy(x, data.x);
    Kokkos::deep_copy(y, data.y);
    hooks.gradients = [this](std::size_t l) { return grads.data() + model.layer_offset(l); };
  }
  // Launches one step; waits for nothing.
  void launch() {
    model.forward_loss(x, y, model.loss_scale(kBatch), loss, ws);
    model.backward(x, ws, hooks);
    const std::size_t p = model.num_parameters();
    Vector params = model.parameters();
    adam.step(VectorRef(params.data(), p), ConstVectorRef(grads.data(), p), 1e-3);
  }
  std::vector<float> parameters() const {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), model.parameters());
    return std::vector<float>(host.data(), host.data() + host.extent(0));
  }
};

bool cuda_ok(benchmark::State& state, cudaError_t code, const char* call) {
  if (code == cudaSuccess) return true;
  (void)cudaGetLastError();
  state.SkipWithError((std::string(call) + " failed: " + cudaGetErrorName(code) + ": " +
                       cudaGetErrorString(code)).c_str());
  return false;
}

void BM_StepGraph_Reference_Eager(benchmark::State& state) {
  ReferenceStepWork work;
  work.launch();
  ExecSpace().fence();
  for (auto _ : state) {
    work.launch();
    ExecSpace().fence();
  }
  state.counters["steps/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_StepGraph_Reference_Replay(benchmark::State& state) {
  // The same two steps, one eagerly throughout and one captured then replayed.
  ReferenceStepWork eager, graphed;
  eager.launch();
  eager.launch();
  ExecSpace().fence();
  graphed.launch();  // the first launches (kernel attributes, cuBLAS set-up) outside the capture
  ExecSpace().fence();
  const cudaStream_t stream = ExecSpace().cuda_stream();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  // Relaxed: Kokkos may query kernel attributes while launching, which global mode forbids.
  if (!cuda_ok(state, cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed),
               "cudaStreamBeginCapture")) {
    return;
  }
  std::string launch_error;
  try {
    graphed.launch();
  } catch (const std::exception& e) {
    launch_error = e.what();
  }
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  if (!launch_error.empty()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    state.SkipWithError(("the step failed while captured: " + launch_error).c_str());
    return;
  }
  if (!cuda_ok(state, ended, "cudaStreamEndCapture (a call in the step cannot be captured)")) return;
  std::size_t nodes = 0;
  cudaGraphGetNodes(graph, nullptr, &nodes);
  if (!cuda_ok(state, cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate")) {
    cudaGraphDestroy(graph);
    return;
  }
  bool replayed = cuda_ok(state, cudaGraphLaunch(exec, stream), "cudaGraphLaunch") &&
                  cuda_ok(state, cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  const bool matches = replayed && graphed.parameters() == eager.parameters();
  if (replayed && !matches) {
    state.SkipWithError("one replay of the captured step differs from the eager step");
    replayed = false;
  }
  if (replayed) {
    for (auto _ : state) {
      if (cudaGraphLaunch(exec, stream) != cudaSuccess || cudaStreamSynchronize(stream) != cudaSuccess) {
        cuda_ok(state, cudaGetLastError(), "cudaGraphLaunch/cudaStreamSynchronize");
        break;
      }
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  state.counters["graph_nodes"] = static_cast<double>(nodes);
  state.counters["matches_eager"] = matches ? 1 : 0;
  state.counters["steps/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_StepGraph_Reference_Eager)->Iterations(20000)->Repetitions(5)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_StepGraph_Reference_Replay)->Iterations(20000)->Repetitions(5)->Unit(benchmark::kMicrosecond)->UseRealTime();
#endif  // KOKKOS_ENABLE_CUDA

BENCHMARK(bench::sgemm_peak)->Name("BM_SgemmPeak")->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_DataWait_Sharded)->Iterations(64)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_DataWait_InMemory)->Iterations(64)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStep_Reference)->Iterations(20000)->Repetitions(5)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_TrainStep_MLP1024x3)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStep_MLP1024x3_OverlapOff)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStep_MLP1024x3_Poll)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStep_MLP1024x3_Thread)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_StepPhases_MLP1024x3)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Strategy_FSDP)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Strategy_TensorParallel)->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Accumulation_Data)->Arg(1)->Arg(4)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Accumulation_FSDP)->Arg(1)->Arg(4)->Iterations(10)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_GradComm_MLP1024x3)->ArgsProduct({{0, 1}, {0, 1}})->Iterations(20)->Repetitions(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Allreduce385)->Iterations(20000)->Repetitions(5)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Allreduce385_Recorded)->Iterations(20000)->Repetitions(5)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) { return meshtrain::bench::run_benchmarks(argc, argv); }
