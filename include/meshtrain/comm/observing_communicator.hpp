#pragma once
// The base of Communicator decorators that look at each collective before passing it on
// unchanged (fault injection, traffic counting): every call is forwarded to `inner` after
// before(...) has seen what it is.
#include <cstddef>
#include <memory>
#include <span>
#include <string_view>

#include "meshtrain/comm/communicator.hpp"

namespace meshtrain {

// One collective as a decorator sees it: its kind ("allreduce", "allreduce_async",
// "reduce_scatter", "all_gather", "broadcast", "scatterv", "barrier"), and the bytes of this
// rank's buffer that it reduces or distributes: count elements for an all-reduce or a
// broadcast, count * size() for a reduce-scatter (its input) and an all-gather (its output),
// the elements rank `root` sends or this rank receives for scatterv, 0 for a barrier.
struct CollectiveCall {
  std::string_view kind;
  std::size_t bytes = 0;
};

class ObservingCommunicator : public Communicator {
 public:
  explicit ObservingCommunicator(std::shared_ptr<Communicator> inner) : inner_(std::move(inner)) {}

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

  void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) override {
    before({"allreduce", count * size_of(type)});
    inner_->allreduce(buf, count, type, op);
  }
  std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                        ReduceOp op) override {
    before({"allreduce_async", count * size_of(type)});
    return inner_->allreduce_async(buf, count, type, op);
  }
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override {
    before({"reduce_scatter", count * size_of(type) * static_cast<std::size_t>(size())});
    inner_->reduce_scatter(send, recv, count, type, op);
  }
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override {
    before({"all_gather", count * size_of(type) * static_cast<std::size_t>(size())});
    inner_->all_gather(send, recv, count, type);
  }
  void broadcast(void* buf, std::size_t count, DataType type, int root) override {
    before({"broadcast", count * size_of(type)});
    inner_->broadcast(buf, count, type, root);
  }
  void scatterv(const void* send, std::span<const int> counts, std::span<const int> displs,
                void* recv, int recv_count, DataType type, int root) override {
    before({"scatterv", static_cast<std::size_t>(recv_count) * size_of(type)});
    inner_->scatterv(send, counts, displs, recv, recv_count, type, root);
  }
  void barrier() override {
    before({"barrier", 0});
    inner_->barrier();
  }

  using Communicator::allreduce;
  using Communicator::broadcast;

 protected:
  // Called on the calling thread before each collective is passed on.
  virtual void before(const CollectiveCall& call) = 0;
  Communicator& inner() const { return *inner_; }

 private:
  std::shared_ptr<Communicator> inner_;
};

}  // namespace meshtrain
