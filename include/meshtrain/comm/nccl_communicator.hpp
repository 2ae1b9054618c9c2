#pragma once
// Collectives over NCCL on device memory. Only built when meshtrain_build_config says
// MESHTRAIN_HAS_NCCL; pick a backend at run time through meshtrain/comm/backend.hpp.
//
// This header includes no CUDA or NCCL header: the handles live in NcclCommunicator::State.
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <memory>

#include "meshtrain/comm/communicator.hpp"

namespace meshtrain {

// How long one collective may take before the communicator is aborted.
inline constexpr std::chrono::milliseconds kDefaultNcclTimeout{10 * 60 * 1000};

// The environment variable that overrides every NcclCommunicator's timeout.
inline constexpr const char* kNcclTimeoutEnv = "MESHTRAIN_NCCL_TIMEOUT_MS";

// The timeout to use: env_value (the text of MESHTRAIN_NCCL_TIMEOUT_MS, or null when unset)
// when it is set and non-empty, else requested. Throws ConfigError unless the text is a
// positive whole number of milliseconds.
std::chrono::milliseconds resolve_nccl_timeout(std::chrono::milliseconds requested,
                                               const char* env_value);

// An NCCL communicator over the ranks of an MPI communicator, on the CUDA device that is
// current when it is constructed (one device per rank). Rank 0 creates the NCCL unique id
// and broadcasts it over comm; every rank then calls ncclCommInitRank. The construction is
// collective over comm.
//
// Buffers are device pointers. Each collective runs on the communicator's own non-blocking
// stream after the work already queued on the legacy default stream; the blocking calls
// return once the result is in the buffer. While waiting, the communicator polls NCCL's
// asynchronous error: an error, or a collective that takes longer than the timeout, aborts
// the communicator (ncclCommAbort) and throws CommError naming the collective, its sequence
// number and the rank. An aborted communicator throws on every later call.
//
// Not thread-safe: use one communicator from one thread at a time.
class CudaEventTimer;

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(MPI_Comm comm, std::chrono::milliseconds timeout = kDefaultNcclTimeout);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "nccl"; }
  int device() const { return device_; }
  std::chrono::milliseconds timeout() const;
  // How many collectives this communicator has started.
  std::uint64_t collectives_started() const;

  // Records an event on `cuda_stream` and makes the communicator's stream wait for it: the
  // next collectives start after the work queued there so far, and the host does not wait.
  // Unlike the collectives, it may be called while another thread runs one.
  bool order_after_stream(void* cuda_stream) override;

  void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) override;
  std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                        ReduceOp op) override;
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override;
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override;
  void broadcast(void* buf, std::size_t count, DataType type, int root) override;
  void scatterv(const void* send, std::span<const int> counts, std::span<const int> displs,
                void* recv, int recv_count, DataType type, int root) override;
  // A one-element all-reduce on the device, waited for: bounded by the timeout, unlike
  // MPI_Barrier.
  void barrier() override;
  // CUDA events on the communicator's stream around each collective the caller marks (the
  // flight recorder does): made on first use.
  DeviceTimer* device_timer() override;

  using Communicator::allreduce;
  using Communicator::broadcast;

  // The NCCL and CUDA handles; shared with the Work handles in flight so that either may
  // outlive the other.
  struct State;

 private:
  std::shared_ptr<State> state_;
  std::unique_ptr<CudaEventTimer> timer_;  // after state_: destroyed before its stream
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
};

}  // namespace meshtrain
