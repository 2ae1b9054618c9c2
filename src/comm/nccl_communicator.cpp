#include "meshtrain/comm/nccl_communicator.hpp"

#include "comm/cuda_event_timer.hpp"

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "comm/nccl_check.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

namespace impl {

namespace {
std::string cuda_error_text(cudaError_t code) {
  return "code " + std::to_string(static_cast<int>(code)) + " (" + cudaGetErrorName(code) +
         "): " + cudaGetErrorString(code);
}

std::string nccl_error_text(ncclResult_t code) {
  std::string text = "code " + std::to_string(static_cast<int>(code)) + " (" +
                     nccl_result_name(code) + "): " + ncclGetErrorString(code);
  // NCCL keeps a more specific message for the calling thread's last failure.
  const char* detail = ncclGetLastError(nullptr);
  if (detail != nullptr && *detail != '\0') text += std::string(" [NCCL: ") + detail + "]";
  return text;
}
}  // namespace

void check_cuda(cudaError_t code, const char* call, int rank) {
  if (code == cudaSuccess) return;
  (void)cudaGetLastError();  // reported here; do not leave it for the caller's next check
  throw CommError(std::string(call) + " failed on rank " + std::to_string(rank) + " with " +
                  cuda_error_text(code));
}

void check_nccl(ncclResult_t code, const char* call, int rank) {
  if (code == ncclSuccess) return;
  throw CommError(std::string(call) + " failed on rank " + std::to_string(rank) + " with " +
                  nccl_error_text(code));
}

const char* nccl_result_name(ncclResult_t code) {
  switch (code) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError";
    case ncclSystemError: return "ncclSystemError";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError";
    case ncclInProgress: return "ncclInProgress";
    default: return "unknown ncclResult_t";
  }
}

ncclDataType_t nccl_data_type(DataType type) {
  switch (type) {
    case DataType::Float32: return ncclFloat32;
    case DataType::Float64: return ncclFloat64;
    case DataType::Int32: return ncclInt32;
    case DataType::Int64: return ncclInt64;
    case DataType::BFloat16:
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 19, 0) || defined(__CUDA_BF16_TYPES_EXIST__)
      return ncclBfloat16;  // NCCL reduces it in float and rounds per step
#else
      throw CommError("bfloat16 collectives need NCCL 2.10 or later built with CUDA bf16 types");
#endif
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_reduce_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Average: return ncclAvg;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

}  // namespace impl

using impl::check_cuda;
using impl::check_nccl;
using impl::nccl_data_type;
using impl::nccl_reduce_op;

std::chrono::milliseconds resolve_nccl_timeout(std::chrono::milliseconds requested,
                                               const char* env_value) {
  if (env_value == nullptr || *env_value == '\0') {
    if (requested.count() <= 0) {
      throw ConfigError("NCCL timeout " + std::to_string(requested.count()) +
                        " ms: must be positive");
    }
    return requested;
  }
  const std::string_view text(env_value);
  long long milliseconds = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), milliseconds);
  if (error != std::errc() || end != text.data() + text.size() || milliseconds <= 0) {
    throw ConfigError(std::string(kNcclTimeoutEnv) + "='" + std::string(text) +
                      "': expected a positive whole number of milliseconds");
  }
  return std::chrono::milliseconds(milliseconds);
}

namespace {

using Clock = std::chrono::steady_clock;

int world_rank() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// Makes the communicator's device current for one call and restores the caller's after it.
class DeviceScope {
 public:
  DeviceScope(int device, int rank) : device_(device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice", rank);
    if (previous_ != device_) check_cuda(cudaSetDevice(device_), "cudaSetDevice", rank);
  }
  ~DeviceScope() {
    if (previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

}  // namespace

struct NcclCommunicator::State {
  // One collective in flight: the event recorded after it on the communicator's stream.
  struct Collective {
    cudaEvent_t done = nullptr;
    const char* name = "";
    std::uint64_t sequence = 0;
    Clock::time_point deadline;
  };

  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t inputs_ready = nullptr;
  cudaEvent_t compute_ready = nullptr;  // order_after_stream's
  std::vector<cudaEvent_t> idle_events;  // reused, so that a step creates none
  std::int32_t* barrier_word = nullptr;  // one device int, always zero
  int device = 0;
  int world_rank = -1;
  std::chrono::milliseconds timeout{kDefaultNcclTimeout};
  std::uint64_t started = 0;
  std::string abort_reason;  // set once the communicator is aborted

  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  ~State() {
    int previous = -1;
    if (cudaGetDevice(&previous) == cudaSuccess && previous != device) cudaSetDevice(device);
    if (comm != nullptr) {
      // ncclCommDestroy waits for the communicator's queued work; when a collective never
      // completed, abort instead so that a destructor cannot hang.
      const bool idle = stream == nullptr || cudaStreamQuery(stream) == cudaSuccess;
      if (idle) {
        ncclCommDestroy(comm);
      } else {
        ncclCommAbort(comm);
      }
    }
    for (cudaEvent_t event : idle_events) cudaEventDestroy(event);
    if (inputs_ready != nullptr) cudaEventDestroy(inputs_ready);
    if (compute_ready != nullptr) cudaEventDestroy(compute_ready);
    if (barrier_word != nullptr) cudaFree(barrier_word);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (previous >= 0 && previous != device) cudaSetDevice(previous);
    (void)cudaGetLastError();
  }

  std::string describe(const Collective& collective) const {
    return std::string("NCCL ") + collective.name + " #" + std::to_string(collective.sequence) +
           " on rank " + std::to_string(world_rank);
  }

  void require_usable(const char* name) const {
    if (!abort_reason.empty()) {
      throw CommError(std::string("NCCL ") + name + " on rank " + std::to_string(world_rank) +
                      ": the communicator was aborted earlier (" + abort_reason + ")");
    }
  }

  [[noreturn]] void abort_and_throw(const std::string& reason) {
    if (comm != nullptr) {
      ncclCommAbort(comm);
      comm = nullptr;
    }
    abort_reason = reason;
    throw CommError(reason + "; the NCCL communicator was aborted");
  }

  cudaEvent_t acquire_event() {
    if (!idle_events.empty()) {
      cudaEvent_t event = idle_events.back();
      idle_events.pop_back();
      return event;
    }
    cudaEvent_t event = nullptr;
    check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags",
               world_rank);
    return event;
  }

  void release_event(cudaEvent_t event) { idle_events.push_back(event); }

  // Enqueues one collective on the communicator's stream; enqueue makes the NCCL call(s).
  template <class Enqueue>
  Collective launch(const char* name, Enqueue&& enqueue) {
    require_usable(name);
    // The caller's buffers may still be being written by work on the legacy default stream
    // (a kernel, or a cudaMemcpy from pageable memory, which returns before the copy lands).
    // Our stream is non-blocking, so it waits for that work explicitly.
    check_cuda(cudaEventRecord(inputs_ready, cudaStreamLegacy), "cudaEventRecord", world_rank);
    check_cuda(cudaStreamWaitEvent(stream, inputs_ready, 0), "cudaStreamWaitEvent", world_rank);
    Collective collective;
    collective.name = name;
    collective.sequence = ++started;
    enqueue();
    collective.done = acquire_event();
    const cudaError_t recorded = cudaEventRecord(collective.done, stream);
    if (recorded != cudaSuccess) release_event(collective.done);
    check_cuda(recorded, "cudaEventRecord", world_rank);
    collective.deadline = Clock::now() + timeout;
    return collective;
  }

  // True once the collective has completed; throws (after aborting) on an asynchronous NCCL
  // error, a CUDA error, or a passed deadline.
  bool poll(const Collective& collective) {
    require_usable(collective.name);
    const cudaError_t status = cudaEventQuery(collective.done);
    if (status == cudaSuccess) return true;
    if (status != cudaErrorNotReady) {
      (void)cudaGetLastError();
      abort_and_throw(describe(collective) + " failed: cudaEventQuery returned " +
                      impl::cuda_error_text(status));
    }
    ncclResult_t async_error = ncclSuccess;
    const ncclResult_t queried = ncclCommGetAsyncError(comm, &async_error);
    if (queried != ncclSuccess) {
      abort_and_throw(describe(collective) + ": ncclCommGetAsyncError failed with " +
                      impl::nccl_error_text(queried));
    }
    if (async_error != ncclSuccess && async_error != ncclInProgress) {
      abort_and_throw(describe(collective) + " failed with " + impl::nccl_error_text(async_error));
    }
    if (Clock::now() >= collective.deadline) {
      abort_and_throw(describe(collective) + " did not complete within " +
                      std::to_string(timeout.count()) + " ms (set " + kNcclTimeoutEnv +
                      " to change the limit)");
    }
    return false;
  }

  void wait(const Collective& collective) {
    // Yield first (small collectives finish in microseconds), then sleep between polls so
    // that a long wait does not take a whole core.
    const auto spin_until = Clock::now() + std::chrono::milliseconds(10);
    while (!poll(collective)) {
      if (Clock::now() < spin_until) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  }

  void wait_and_release(const Collective& collective) {
    try {
      wait(collective);
    } catch (...) {
      release_event(collective.done);
      throw;
    }
    release_event(collective.done);
  }

  template <class Enqueue>
  void run(const char* name, Enqueue&& enqueue) {
    wait_and_release(launch(name, std::forward<Enqueue>(enqueue)));
  }
};

namespace {

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclCommunicator::State> state,
           NcclCommunicator::State::Collective collective)
      : state_(std::move(state)), collective_(collective) {}

  ~NcclWork() override {
    // A handle dropped without wait() still waits, as MpiWork does; a destructor must not
    // throw, so a failure is reported and swallowed.
    if (finished_) return;
    try {
      wait();
    } catch (const std::exception& error) {
      std::fprintf(stderr, "meshtrain: %s (while dropping an NCCL work handle)\n", error.what());
    }
  }
  NcclWork(const NcclWork&) = delete;
  NcclWork& operator=(const NcclWork&) = delete;

  void wait() override {
    if (finished_) return;
    finished_ = true;  // a failed wait aborts the communicator: never wait twice
    DeviceScope scope(state_->device, state_->world_rank);
    state_->wait_and_release(collective_);
  }

  bool test() override {
    if (finished_) return true;
    DeviceScope scope(state_->device, state_->world_rank);
    bool complete = false;
    try {
      complete = state_->poll(collective_);
    } catch (...) {
      finished_ = true;
      state_->release_event(collective_.done);
      throw;
    }
    if (complete) {
      finished_ = true;
      state_->release_event(collective_.done);
    }
    return complete;
  }

 private:
  std::shared_ptr<NcclCommunicator::State> state_;
  NcclCommunicator::State::Collective collective_;
  bool finished_ = false;
};

}  // namespace

NcclCommunicator::NcclCommunicator(MPI_Comm comm, std::chrono::milliseconds timeout)
    : state_(std::make_shared<State>()) {
  State& state = *state_;
  state.world_rank = world_rank();
  check_mpi(MPI_Comm_rank(comm, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm, &size_), "MPI_Comm_size");

  // Everything that can fail on one rank alone happens first, and the ranks agree on the
  // outcome before any NCCL bootstrap: a rank without a usable GPU must not leave the others
  // waiting inside ncclCommInitRank.
  std::exception_ptr local_failure;
  try {
    state.timeout = resolve_nccl_timeout(timeout, std::getenv(kNcclTimeoutEnv));
    check_cuda(cudaGetDevice(&state.device), "cudaGetDevice", state.world_rank);
    device_ = state.device;
    check_cuda(cudaStreamCreateWithFlags(&state.stream, cudaStreamNonBlocking),
               "cudaStreamCreateWithFlags", state.world_rank);
    check_cuda(cudaEventCreateWithFlags(&state.inputs_ready, cudaEventDisableTiming),
               "cudaEventCreateWithFlags", state.world_rank);
    check_cuda(cudaEventCreateWithFlags(&state.compute_ready, cudaEventDisableTiming),
               "cudaEventCreateWithFlags", state.world_rank);
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&state.barrier_word), sizeof(std::int32_t)),
               "cudaMalloc", state.world_rank);
    check_cuda(cudaMemset(state.barrier_word, 0, sizeof(std::int32_t)), "cudaMemset",
               state.world_rank);
  } catch (...) {
    local_failure = std::current_exception();
  }
  int local_ok = local_failure ? 0 : 1;
  int all_ok = 0;
  check_mpi(MPI_Allreduce(&local_ok, &all_ok, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
  if (local_failure) std::rethrow_exception(local_failure);
  if (!all_ok) {
    throw CommError("NcclCommunicator on rank " + std::to_string(state.world_rank) +
                    ": another rank could not set up its GPU (see its message); no NCCL "
                    "communicator was created");
  }

  // Rank 0 creates the id; its status travels with it, so that a failure there ends every
  // rank instead of leaving them waiting in ncclCommInitRank.
  struct {
    int status;
    ncclUniqueId id;
  } bootstrap{};
  if (rank_ == 0) bootstrap.status = static_cast<int>(ncclGetUniqueId(&bootstrap.id));
  check_mpi(MPI_Bcast(&bootstrap, sizeof(bootstrap), MPI_BYTE, 0, comm), "MPI_Bcast(ncclUniqueId)");
  check_nccl(static_cast<ncclResult_t>(bootstrap.status),
             rank_ == 0 ? "ncclGetUniqueId" : "ncclGetUniqueId (on rank 0 of the communicator)",
             state.world_rank);
  check_nccl(ncclCommInitRank(&state.comm, size_, bootstrap.id, rank_), "ncclCommInitRank",
             state.world_rank);
}

NcclCommunicator::~NcclCommunicator() = default;

DeviceTimer* NcclCommunicator::device_timer() {
  if (!timer_) timer_ = std::make_unique<CudaEventTimer>(state_->stream);
  return timer_.get();
}

std::chrono::milliseconds NcclCommunicator::timeout() const { return state_->timeout; }

std::uint64_t NcclCommunicator::collectives_started() const { return state_->started; }

bool NcclCommunicator::order_after_stream(void* cuda_stream) {
  // Touches only the stream and its own event (CUDA calls are thread-safe), so the gradient
  // reducer's main thread may call it while its communication thread runs a collective; an
  // aborted communicator's next collective still throws.
  State& state = *state_;
  DeviceScope scope(state.device, state.world_rank);
  check_cuda(cudaEventRecord(state.compute_ready, static_cast<cudaStream_t>(cuda_stream)),
             "cudaEventRecord", state.world_rank);
  check_cuda(cudaStreamWaitEvent(state.stream, state.compute_ready, 0), "cudaStreamWaitEvent",
             state.world_rank);
  return true;
}

void NcclCommunicator::allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) {
  State& state = *state_;
  DeviceScope scope(state.device, state.world_rank);
  state.run("allreduce", [&] {
    check_nccl(ncclAllReduce(buf, buf, count, nccl_data_type(type), nccl_reduce_op(op), state.comm,
                             state.stream),
               "ncclAllReduce", state.world_rank);
  });
}

std::unique_ptr<Work> NcclCommunicator::allreduce_async(void* buf, std::size_t count, DataType type,
                                                        ReduceOp op) {
  State& state = *state_;
  DeviceScope scope(state.device, state.world_rank);
  State::Collective collective = state.launch("allreduce_async", [&] {
    check_nccl(ncclAllReduce(buf, buf, count, nccl_data_type(type), nccl_reduce_op(op), state.comm,
                             state.stream),
               "ncclAllReduce", state.world_rank);
  });
  return std::make_unique<NcclWork>(state_, collective);
}

void NcclCommunicator::reduce_scatter(const void* send, void* recv, std::size_t count,
                                      DataType type, ReduceOp op) {
  State& state = *state_;
  DeviceScope scope(state.device, state.world_rank);
  state.run("reduce_scatter", [&] {
    check_nccl(ncclReduceScatter(send, recv, count, nccl_data_type(type), nccl_reduce_op(op),
                                 state.comm, state.stream),
               "ncclReduceScatter", state.world_rank);
  });
}

void NcclCommunicator::all_gather(const void* send, void* recv, std::size_t count, DataType type) {
  State& state = *state_;
  DeviceScope scope(state.device, state.world_rank);
  state.run("all_gather", [&] {
    check_nccl(ncclAllGather(send, recv, count, nccl_data_type(type), state.comm, state.stream),
               "ncclAllGather", state.world_rank);
  });
}

void NcclCommunicator::broadcast(void* buf, std::size_t count, DataType type, int root) {
  State& state = *state_;
  DeviceScope scope(state.device, state.world_rank);
  state.run("broadcast", [&] {
    check_nccl(ncclBroadcast(buf, buf, count, nccl_data_type(type), root, state.comm, state.stream),
               "ncclBroadcast", state.world_rank);
  });
}

void NcclCommunicator::scatterv(const void* send, std::span<const int> counts,
                                std::span<const int> displs, void* recv, int recv_count,
                                DataType type, int root) {
  State& state = *state_;
  const std::size_t element_size = size_of(type);
  if (rank_ == root && (counts.size() < static_cast<std::size_t>(size_) ||
                        displs.size() < static_cast<std::size_t>(size_))) {
    throw CommError("NCCL scatterv on rank " + std::to_string(state.world_rank) +
                    ": the root needs one count and one displacement per rank (" +
                    std::to_string(size_) + "), got " + std::to_string(counts.size()) + " and " +
                    std::to_string(displs.size()));
  }
  DeviceScope scope(state.device, state.world_rank);
  state.run("scatterv", [&] {
    const ncclDataType_t nccl_type = nccl_data_type(type);
    if (rank_ != root) {
      check_nccl(ncclRecv(recv, static_cast<std::size_t>(recv_count), nccl_type, root, state.comm,
                          state.stream),
                 "ncclRecv", state.world_rank);
      return;
    }
    const auto block = [&](int q) {
      return static_cast<const char*>(send) + static_cast<std::size_t>(displs[q]) * element_size;
    };
    // The root's own block is a device copy, queued before the group's sends on the same
    // stream.
    if (counts[root] > 0) {
      check_cuda(
          cudaMemcpyAsync(recv, block(root), static_cast<std::size_t>(counts[root]) * element_size,
                          cudaMemcpyDeviceToDevice, state.stream),
          "cudaMemcpyAsync", state.world_rank);
    }
    // The group must be closed even when one send fails, or NCCL stays inside it.
    check_nccl(ncclGroupStart(), "ncclGroupStart", state.world_rank);
    ncclResult_t first_failure = ncclSuccess;
    for (int q = 0; q < size_ && first_failure == ncclSuccess; ++q) {
      if (q == root) continue;
      first_failure = ncclSend(block(q), static_cast<std::size_t>(counts[q]), nccl_type, q,
                               state.comm, state.stream);
    }
    const ncclResult_t group_end = ncclGroupEnd();
    check_nccl(first_failure, "ncclSend", state.world_rank);
    check_nccl(group_end, "ncclGroupEnd", state.world_rank);
  });
}

void NcclCommunicator::barrier() {
  State& state = *state_;
  DeviceScope scope(state.device, state.world_rank);
  state.run("barrier", [&] {
    check_nccl(ncclAllReduce(state.barrier_word, state.barrier_word, 1, ncclInt32, ncclSum,
                             state.comm, state.stream),
               "ncclAllReduce", state.world_rank);
  });
}

}  // namespace meshtrain
