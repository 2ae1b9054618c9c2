#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/choices.hpp"
#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/nn/model.hpp"

namespace meshtrain {

// A contiguous range of the flat gradient buffer, made of whole tensors, reduced by one
// all-reduce. Ready once backward has finished layer `ready_after_layer`.
struct GradientBucket {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::size_t ready_after_layer = 0;
};

// Kokkos kernels over [begin, end) of device buffers (asynchronous: fence before reading):
// into[i] = bfloat16 of from[i] (round to nearest even, NaN kept), and back (exact).
void round_to_bfloat16(const float* from, std::uint16_t* into, std::size_t begin,
                       std::size_t end);
void widen_from_bfloat16(const std::uint16_t* from, float* into, std::size_t begin,
                         std::size_t end);

// Cuts a flat buffer laid out like the model's parameters, plus `extra` trailing slots (the
// loss), into buckets of about bucket_bytes, in the order backward produces them: the last
// layer's tensors (and the extra slots) first. Every rank computes the same buckets.
std::vector<GradientBucket> make_gradient_buckets(const Model& model, std::size_t extra,
                                                  std::size_t bucket_bytes);

// How overlapped all-reduces advance (Progress::Poll or Thread) is described with the enum in
// meshtrain/choices.hpp; a GradientReducer takes one of those two, never Auto.

// Sums the gradient buffer over a communicator, bucket by bucket. With overlap on, each
// bucket's all-reduce starts as soon as backward has produced it (on_layer_grads) and
// advances as `progress` says; finish() waits for all of them. With overlap off, finish()
// reduces every bucket with a blocking all-reduce after backward. The caller need not fence
// before on_layer_grads or finish: a bucket is sent after the kernels queued before it (a
// fence, or on CUDA with a stream-ordered communicator such as NCCL an event that its stream
// waits for, so that the host never waits per layer; see train/device_order.hpp).
//
// With wire = Dtype::Bf16 each bucket is rounded to bfloat16 (a Kokkos kernel, round to
// nearest even) into a buffer allocated once at construction, all-reduced as DataType::BFloat16
// and, once every bucket is in, widened back to fp32 in place (one kernel): half the bytes on
// the wire, the buffer's sum rounded to bf16 (once per combine of two ranks' values, see
// comm/communicator.hpp). The buffer's last `fp32_tail` elements (the loss riding with the
// gradient) are all-reduced in fp32 on their own, so the reported loss is not rounded. At one
// rank the round trip still rounds the gradient to bf16, as every rank count does.
class GradientReducer {
 public:
  GradientReducer(std::vector<GradientBucket> buckets, Communicator& comm, bool overlap,
                  Progress progress = Progress::Poll, Dtype wire = Dtype::Fp32,
                  std::size_t fp32_tail = 0);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  void begin_step(float* grads);
  void on_layer_grads(std::size_t layer);  // posts the buckets that layer completes
  void progress();                         // Poll: tests what is in flight (never blocks)
  void finish();                           // every bucket reduced on return

  const std::vector<GradientBucket>& buckets() const;
  bool overlap() const;
  Progress progress_mode() const;
  Dtype wire_dtype() const;
  // The buffer's length (the buckets' union).
  std::size_t buffer_size() const;
  // With wire Dtype::Bf16: how many elements of the whole buffer (the widened gradients and
  // the fp32 tail) were NaN or Inf after the last finish(), counted by the widening kernel
  // (no pass of its own; one int read from the device). -1 with an fp32 wire.
  int nonfinite_count() const;
  // Seconds this rank spent blocked in communication (waits and blocking all-reduces), the
  // communication that backward did not hide. With overlap off it is all of it.
  double blocked_seconds() const;
  void reset_timers();

 private:
  // The buckets in flight and, with Progress::Thread, the communication thread and what it
  // shares with the caller: kept out of this header so that users need no threading headers.
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace meshtrain
