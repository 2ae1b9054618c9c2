#include "meshtrain/train/gradient_reducer.hpp"

#include <mpi.h>

#include <algorithm>

namespace meshtrain {

std::vector<GradientBucket> make_gradient_buckets(const Mlp& model, std::size_t extra,
                                                  std::size_t bucket_bytes) {
  const auto& tensors = model.tensors();
  const std::size_t limit = std::max<std::size_t>(bucket_bytes / sizeof(float), 1);
  std::vector<GradientBucket> buckets;
  // Walk the tensors from the last (produced first by backward) to the first.
  std::size_t end = model.num_parameters() + extra;
  std::size_t begin = end;
  std::size_t ready_after = model.layers().size() - 1;
  for (std::size_t t = tensors.size(); t-- > 0;) {
    begin = tensors[t].offset;
    ready_after = t / 2;  // tensors are (kernel, bias) per layer
    const bool layer_start = t % 2 == 0;
    // Close a bucket at a layer boundary once it is big enough, so that a layer's kernel
    // and bias travel together.
    if (layer_start && end - begin >= limit) {
      buckets.push_back({begin, end, ready_after});
      end = begin;
    }
  }
  if (end > 0) buckets.push_back({0, end, 0});
  return buckets;
}

GradientReducer::GradientReducer(std::vector<GradientBucket> buckets, Communicator& comm,
                                 bool overlap)
    : buckets_(std::move(buckets)), comm_(comm), overlap_(overlap) {
  in_flight_.reserve(buckets_.size());
}

void GradientReducer::begin_step(float* grads) {
  grads_ = grads;
  next_ = 0;
  in_flight_.clear();
}

void GradientReducer::post(std::size_t index) {
  const GradientBucket& b = buckets_[index];
  in_flight_.push_back(
      comm_.allreduce_async(grads_ + b.begin, b.end - b.begin, DataType::Float32, ReduceOp::Sum));
}

void GradientReducer::on_layer_grads(std::size_t layer) {
  if (!overlap_) return;
  // Progress what is already in flight (MPI advances non-blocking collectives only inside
  // MPI calls), then start every bucket this layer completed.
  for (auto& work : in_flight_) work->test();
  ExecSpace().fence();
  while (next_ < buckets_.size() && buckets_[next_].ready_after_layer >= layer) post(next_++);
}

void GradientReducer::finish() {
  const double start = MPI_Wtime();
  if (overlap_) {
    while (next_ < buckets_.size()) post(next_++);
    for (auto& work : in_flight_) work->wait();
  } else {
    for (const GradientBucket& b : buckets_) {
      comm_.allreduce(grads_ + b.begin, b.end - b.begin, DataType::Float32, ReduceOp::Sum);
    }
  }
  blocked_seconds_ += MPI_Wtime() - start;
}

}  // namespace meshtrain
