#include "meshtrain/train/gradient_reducer.hpp"

#include <algorithm>
#include <stdexcept>

#include "meshtrain/clock.hpp"
#include "meshtrain/error.hpp"

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
                                 bool overlap, Progress progress)
    : buckets_(std::move(buckets)), comm_(comm), overlap_(overlap), progress_(progress) {
  // Auto is the config's choice; the caller decides it (collectively) before building one.
  if (progress_ == Progress::Auto) {
    throw std::logic_error("GradientReducer: progress auto must be resolved to poll or thread");
  }
  if (!overlap_) progress_ = Progress::Poll;
  if (progress_ == Progress::Thread) {
    if (!comm_.callable_from_another_thread()) {
      throw ConfigError("progress", "'thread': MPI was initialised below MPI_THREAD_SERIALIZED, "
                                    "which a communication thread needs; use progress poll");
    }
    thread_ = std::thread([this] { run_thread(); });
  }
  in_flight_.reserve(buckets_.size());
}

GradientReducer::~GradientReducer() {
  if (thread_.joinable()) {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
}

void GradientReducer::reduce(std::size_t index) {
  const GradientBucket& b = buckets_[index];
  comm_.allreduce(grads_ + b.begin, b.end - b.begin, DataType::Float32, ReduceOp::Sum);
}

void GradientReducer::run_thread() {
  std::unique_lock lock(mutex_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || (reduced_ < handed_ && !error_); });
    if (stop_) return;
    const std::size_t index = reduced_;
    lock.unlock();
    std::exception_ptr error;
    try {
      reduce(index);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (error) {
      error_ = error;
    } else {
      ++reduced_;
    }
    cv_.notify_all();
  }
}

void GradientReducer::begin_step(float* grads) {
  grads_ = grads;
  next_ = 0;
  done_ = 0;
  in_flight_.clear();
  std::lock_guard lock(mutex_);
  handed_ = 0;
  reduced_ = 0;
}

void GradientReducer::post(std::size_t index) {
  if (progress_ == Progress::Thread) {
    {
      std::lock_guard lock(mutex_);
      handed_ = index + 1;  // buckets are handed over in order
    }
    cv_.notify_all();
    return;
  }
  const GradientBucket& b = buckets_[index];
  in_flight_.push_back(
      comm_.allreduce_async(grads_ + b.begin, b.end - b.begin, DataType::Float32, ReduceOp::Sum));
}

void GradientReducer::progress() {
  if (progress_ != Progress::Poll) return;
  // MPI advances non-blocking collectives only inside MPI calls.
  while (done_ < in_flight_.size() && in_flight_[done_]->test()) ++done_;
  for (std::size_t i = done_ + 1; i < in_flight_.size(); ++i) in_flight_[i]->test();
}

void GradientReducer::on_layer_grads(std::size_t layer) {
  if (!overlap_) return;
  progress();
  // The bucket's gradients must be written (device kernels finished) before it is sent.
  ExecSpace().fence();
  while (next_ < buckets_.size() && buckets_[next_].ready_after_layer >= layer) post(next_++);
}

void GradientReducer::finish() {
  const double start = now_seconds();
  if (!overlap_) {
    for (std::size_t i = 0; i < buckets_.size(); ++i) reduce(i);
  } else {
    ExecSpace().fence();
    while (next_ < buckets_.size()) post(next_++);
    if (progress_ == Progress::Thread) {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [this] { return reduced_ == buckets_.size() || error_; });
      if (error_) {
        std::exception_ptr error = error_;
        error_ = nullptr;
        handed_ = reduced_;  // the rest of this step is abandoned
        std::rethrow_exception(error);
      }
    } else {
      for (auto& work : in_flight_) work->wait();
    }
  }
  blocked_seconds_ += now_seconds() - start;
}

}  // namespace meshtrain
