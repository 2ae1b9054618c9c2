#pragma once
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "meshtrain/choices.hpp"
#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/nn/mlp.hpp"

namespace meshtrain {

// A contiguous range of the flat gradient buffer, made of whole tensors, reduced by one
// all-reduce. Ready once backward has finished layer `ready_after_layer`.
struct GradientBucket {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::size_t ready_after_layer = 0;
};

// Cuts a flat buffer laid out like the model's parameters, plus `extra` trailing slots (the
// loss), into buckets of about bucket_bytes, in the order backward produces them: the last
// layer's tensors (and the extra slots) first. Every rank computes the same buckets.
std::vector<GradientBucket> make_gradient_buckets(const Mlp& model, std::size_t extra,
                                                  std::size_t bucket_bytes);

// How overlapped all-reduces advance (Progress::Poll or Thread) is described with the enum in
// meshtrain/choices.hpp; a GradientReducer takes one of those two, never Auto.

// Sums the gradient buffer over a communicator, bucket by bucket. With overlap on, each
// bucket's all-reduce starts as soon as backward has produced it (on_layer_grads) and
// advances as `progress` says; finish() waits for all of them. With overlap off, finish()
// reduces every bucket with a blocking all-reduce after backward.
class GradientReducer {
 public:
  GradientReducer(std::vector<GradientBucket> buckets, Communicator& comm, bool overlap,
                  Progress progress = Progress::Poll);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  void begin_step(float* grads);
  void on_layer_grads(std::size_t layer);  // posts the buckets that layer completes
  void progress();                         // Poll: tests what is in flight (never blocks)
  void finish();                           // every bucket reduced on return

  const std::vector<GradientBucket>& buckets() const { return buckets_; }
  bool overlap() const { return overlap_; }
  Progress progress_mode() const { return progress_; }
  // Seconds this rank spent blocked in communication (waits and blocking all-reduces), the
  // communication that backward did not hide. With overlap off it is all of it.
  double blocked_seconds() const { return blocked_seconds_; }
  void reset_timers() { blocked_seconds_ = 0.0; }

 private:
  void post(std::size_t index);
  void reduce(std::size_t index);
  void run_thread();

  std::vector<GradientBucket> buckets_;
  Communicator& comm_;
  bool overlap_;
  Progress progress_;
  float* grads_ = nullptr;
  std::size_t next_ = 0;  // buckets posted this step
  // Poll
  std::size_t done_ = 0;  // in_flight_[0, done_) have completed
  std::vector<std::unique_ptr<Work>> in_flight_;
  // Thread: buckets [reduced_, handed_) are queued for the thread, in order.
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::size_t handed_ = 0;
  std::size_t reduced_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  double blocked_seconds_ = 0.0;
};

}  // namespace meshtrain
