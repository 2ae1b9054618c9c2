#pragma once
#include <cstddef>
#include <memory>
#include <vector>

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

// Sums the gradient buffer over a communicator, bucket by bucket. With overlap on, each
// bucket's non-blocking all-reduce starts as soon as backward has produced it
// (on_layer_grads), and outstanding ones are polled at every later layer so that MPI makes
// progress during backward; finish() waits for all of them. With overlap off, finish()
// reduces every bucket with a blocking all-reduce after backward.
class GradientReducer {
 public:
  GradientReducer(std::vector<GradientBucket> buckets, Communicator& comm, bool overlap);

  void begin_step(float* grads);
  void on_layer_grads(std::size_t layer);  // posts the buckets that layer completes
  void finish();                           // every bucket reduced on return

  const std::vector<GradientBucket>& buckets() const { return buckets_; }
  bool overlap() const { return overlap_; }
  // Seconds this rank spent blocked in communication (waits and blocking all-reduces), the
  // communication that backward did not hide. With overlap off it is all of it.
  double blocked_seconds() const { return blocked_seconds_; }
  void reset_timers() { blocked_seconds_ = 0.0; }

 private:
  void post(std::size_t index);

  std::vector<GradientBucket> buckets_;
  Communicator& comm_;
  bool overlap_;
  float* grads_ = nullptr;
  std::size_t next_ = 0;
  std::vector<std::unique_ptr<Work>> in_flight_;
  double blocked_seconds_ = 0.0;
};

}  // namespace meshtrain
