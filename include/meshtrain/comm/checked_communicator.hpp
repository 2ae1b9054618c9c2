#pragma once
// A Communicator decorator that makes hangs and mismatched collectives visible instead of
// silent (the spirit of PyTorch's NCCL watchdog and TORCH_DISTRIBUTED_DEBUG=DETAIL):
//  - every collective gets a sequence number; a watchdog thread aborts the job when this rank
//    has been blocked in one for longer than the timeout, naming the rank, the communicator,
//    the collective and its sequence number;
//  - in debug mode the ranks first compare (kind, element type, count, sequence number)
//    with a small all-gather on a private communicator, and a mismatch is a CommError that
//    names what each rank called, instead of a hang or silent corruption.
#include <mpi.h>

#include <chrono>
#include <memory>
#include <string>

#include "meshtrain/comm/communicator.hpp"

namespace meshtrain {

struct CollectiveChecks {
  std::chrono::milliseconds timeout{0};  // 0: no watchdog
  bool debug = false;                    // compare every collective across ranks first
  // From MESHTRAIN_COLLECTIVE_TIMEOUT (seconds) and MESHTRAIN_DEBUG_COLLECTIVES=1 when set
  // (ConfigError for a malformed value), else `defaults`.
  static CollectiveChecks from_environment(CollectiveChecks defaults);
};

class CheckedCommunicator final : public Communicator {
 public:
  // `comm` is the MPI communicator that `inner` runs over (used for the debug comparison).
  CheckedCommunicator(std::shared_ptr<Communicator> inner, MPI_Comm comm, std::string name,
                      CollectiveChecks checks);
  ~CheckedCommunicator() override;

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }
  bool callable_from_another_thread() const override {
    return inner_->callable_from_another_thread();
  }
  DeviceTimer* device_timer() override { return inner_->device_timer(); }
  bool order_after_stream(void* cuda_stream) override {
    return inner_->order_after_stream(cuda_stream);
  }
  std::uint64_t sequence() const;  // collectives started so far

  void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) override;
  std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                        ReduceOp op) override;
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override;
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override;
  void broadcast(void* buf, std::size_t count, DataType type, int root) override;
  void scatterv(const void* send, std::span<const int> counts, std::span<const int> displs,
                void* recv, int recv_count, DataType type, int root) override;
  void barrier() override;

  using Communicator::allreduce;
  using Communicator::broadcast;

  struct Tracker;  // shared with the watchdog thread and with in-flight Work handles

 private:
  std::uint64_t begin(const char* kind, std::size_t count, DataType type);

  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<Tracker> tracker_;
  MPI_Comm debug_comm_ = MPI_COMM_NULL;
  CollectiveChecks checks_;
};

}  // namespace meshtrain
