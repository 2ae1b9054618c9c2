#include "meshtrain/train/gradient_reducer.hpp"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <stdexcept>

#include "meshtrain/clock.hpp"
#include "meshtrain/comm/bfloat16.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/error.hpp"
#include "train/device_order.hpp"

namespace meshtrain {

// Free functions (not members of the private State) so that CUDA accepts their lambdas.
void round_to_bfloat16(const float* from, bfloat16_bits* into, std::size_t begin,
                       std::size_t end) {
  Kokkos::parallel_for(
      "meshtrain::gradients_to_bf16", Kokkos::RangePolicy<ExecSpace>(begin, end),
      KOKKOS_LAMBDA(std::size_t i) { into[i] = to_bfloat16(from[i]); });
}

void widen_from_bfloat16(const bfloat16_bits* from, float* into, std::size_t begin,
                         std::size_t end) {
  Kokkos::parallel_for(
      "meshtrain::gradients_from_bf16", Kokkos::RangePolicy<ExecSpace>(begin, end),
      KOKKOS_LAMBDA(std::size_t i) { into[i] = from_bfloat16(from[i]); });
}

// Widens [0, narrow_end) back into `into` and counts the NaN and Inf elements of the whole
// buffer [0, total) (the widened values and the fp32 tail) into `count`, on the device: the
// non-finite check rides on the pass that writes the gradients anyway.
void widen_counting_nonfinite(const bfloat16_bits* from, float* into, std::size_t narrow_end,
                              std::size_t total, Kokkos::View<int, MemSpace> count) {
  Kokkos::parallel_reduce(
      "meshtrain::gradients_from_bf16", Kokkos::RangePolicy<ExecSpace>(0, total),
      KOKKOS_LAMBDA(std::size_t i, int& bad) {
        float v;
        if (i < narrow_end) {
          v = from_bfloat16(from[i]);
          into[i] = v;
        } else {
          v = into[i];
        }
        if (!(v - v == 0.0f)) ++bad;  // NaN or Inf
      },
      count);
}

std::vector<GradientBucket> make_gradient_buckets(const Model& model, std::size_t extra,
                                                  std::size_t bucket_bytes) {
  const auto& tensors = model.tensors();
  const std::size_t limit = std::max<std::size_t>(bucket_bytes / sizeof(float), 1);
  std::vector<GradientBucket> buckets;
  // Walk the tensors from the last (produced first by backward) to the first.
  std::size_t end = model.num_parameters() + extra;
  for (std::size_t t = tensors.size(); t-- > 0;) {
    const std::size_t begin = tensors[t].offset;
    const std::size_t ready_after = model.layer_of_tensor(t);
    const bool layer_start = t == model.first_tensor(ready_after);
    // Close a bucket at a layer boundary once it is big enough, so that a layer's tensors
    // travel together.
    if (layer_start && end - begin >= limit) {
      buckets.push_back({begin, end, ready_after});
      end = begin;
    }
  }
  if (end > 0) buckets.push_back({0, end, 0});
  return buckets;
}

struct GradientReducer::State {
  State(std::vector<GradientBucket> all, Communicator& group, bool overlapped, Progress mode,
        Dtype wire_type, std::size_t fp32_tail)
      : buckets(std::move(all)), comm(group), overlap(overlapped), progress(mode),
        wire(wire_type) {
    for (const auto& b : buckets) total = std::max(total, b.end);
    narrow_end = total - std::min(fp32_tail, total);
    if (wire == Dtype::Bf16) {
      wire_buffer = Kokkos::View<bfloat16_bits*, MemSpace>(
          Kokkos::view_alloc(Kokkos::WithoutInitializing, "meshtrain::bf16_gradients"),
          narrow_end);
      nonfinite = Kokkos::View<int, MemSpace>("meshtrain::bf16_nonfinite");
    }
  }

  void post(std::size_t index);
  void reduce(std::size_t index);
  void narrow(std::size_t index);  // bf16: the bucket's fp32 gradients into wire_buffer
  void widen();                    // bf16: every reduced bucket back into the gradients
  // The bucket's part that travels in bf16 ([begin, mid)) and in fp32 ([mid, end)).
  std::size_t split(const GradientBucket& b) const {
    return wire == Dtype::Bf16 ? std::clamp(narrow_end, b.begin, b.end) : b.begin;
  }
  void poll();
  void run_thread();

  std::vector<GradientBucket> buckets;
  Communicator& comm;
  bool overlap;
  Progress progress;
  Dtype wire;
  std::size_t total = 0;       // the buffer's length (the buckets' union)
  std::size_t narrow_end = 0;  // [narrow_end, total) stays fp32
  Kokkos::View<bfloat16_bits*, MemSpace> wire_buffer;
  Kokkos::View<int, MemSpace> nonfinite;  // bf16: counted by widen()
  float* grads = nullptr;
  std::size_t next = 0;  // buckets posted this step
  // Poll
  std::size_t done = 0;  // in_flight[0, done) have completed
  std::vector<std::unique_ptr<Work>> in_flight;
  // Thread: buckets [reduced, handed) are queued for the thread, in order.
  std::thread thread;
  std::mutex mutex;
  std::condition_variable cv;
  std::size_t handed = 0;
  std::size_t reduced = 0;
  bool stop = false;
  std::exception_ptr error;
  double blocked_seconds = 0.0;
};

GradientReducer::GradientReducer(std::vector<GradientBucket> buckets, Communicator& comm,
                                 bool overlap, Progress progress, Dtype wire,
                                 std::size_t fp32_tail)
    : state_(std::make_unique<State>(std::move(buckets), comm, overlap, progress, wire,
                                     fp32_tail)) {
  State& s = *state_;
  // Auto is the config's choice; the caller decides it (alike on every rank) before building one.
  if (s.progress == Progress::Auto) {
    throw std::logic_error("GradientReducer: progress auto must be resolved to poll or thread");
  }
  check_choice("grad_comm_dtype", s.wire);
  if (!s.overlap) s.progress = Progress::Poll;
  if (s.progress == Progress::Thread) {
    if (!s.comm.callable_from_another_thread()) {
      throw ConfigError("progress", "'thread': the gradient communicator cannot be called "
                                    "from a communication thread (MPI initialised below the "
                                    "SERIALIZED thread level); use progress poll");
    }
    s.thread = std::thread([&s] { s.run_thread(); });
  }
  s.in_flight.reserve(2 * s.buckets.size());  // bf16: a bucket's fp32 tail goes apart
}

GradientReducer::~GradientReducer() {
  State& s = *state_;
  if (s.thread.joinable()) {
    {
      std::lock_guard lock(s.mutex);
      s.stop = true;
    }
    s.cv.notify_all();
    s.thread.join();
  }
}

const std::vector<GradientBucket>& GradientReducer::buckets() const { return state_->buckets; }
bool GradientReducer::overlap() const { return state_->overlap; }
Progress GradientReducer::progress_mode() const { return state_->progress; }
Dtype GradientReducer::wire_dtype() const { return state_->wire; }
double GradientReducer::blocked_seconds() const { return state_->blocked_seconds; }
void GradientReducer::reset_timers() { state_->blocked_seconds = 0.0; }

void GradientReducer::State::narrow(std::size_t index) {
  const GradientBucket& b = buckets[index];
  const std::size_t mid = split(b);
  if (mid > b.begin) round_to_bfloat16(grads, wire_buffer.data(), b.begin, mid);
}

void GradientReducer::State::widen() {
  widen_counting_nonfinite(wire_buffer.data(), grads, narrow_end, total, nonfinite);
  ExecSpace().fence();
}

int GradientReducer::nonfinite_count() const {
  if (state_->wire != Dtype::Bf16) return -1;
  int count = 0;
  Kokkos::deep_copy(count, state_->nonfinite);
  return count;
}

std::size_t GradientReducer::buffer_size() const { return state_->total; }

// Blocking. With bf16 the bucket has been narrowed (and fenced) by the caller's thread.
void GradientReducer::State::reduce(std::size_t index) {
  const GradientBucket& b = buckets[index];
  CollectiveSite site("data_parallel.gradients");
  const std::size_t mid = split(b);
  if (mid > b.begin) {
    comm.allreduce(wire_buffer.data() + b.begin, mid - b.begin, DataType::BFloat16,
                   ReduceOp::Sum);
  }
  if (b.end > mid) comm.allreduce(grads + mid, b.end - mid, DataType::Float32, ReduceOp::Sum);
}

void GradientReducer::State::run_thread() {
  std::unique_lock lock(mutex);
  for (;;) {
    cv.wait(lock, [this] { return stop || (reduced < handed && !error); });
    if (stop) return;
    const std::size_t index = reduced;
    lock.unlock();
    std::exception_ptr failure;
    try {
      reduce(index);
    } catch (...) {
      failure = std::current_exception();
    }
    lock.lock();
    if (failure) {
      error = failure;
    } else {
      ++reduced;
    }
    cv.notify_all();
  }
}

void GradientReducer::begin_step(float* grads) {
  State& s = *state_;
  s.grads = grads;
  s.next = 0;
  s.done = 0;
  s.in_flight.clear();
  std::lock_guard lock(s.mutex);
  s.handed = 0;
  s.reduced = 0;
}

// Hands bucket `index` (written, and the communication ordered after that) to the
// communication.
void GradientReducer::State::post(std::size_t index) {
  if (wire == Dtype::Bf16) {
    narrow(index);
    order_collective_after_compute(comm);
  }
  if (progress == Progress::Thread) {
    {
      std::lock_guard lock(mutex);
      handed = index + 1;  // buckets are handed over in order
    }
    cv.notify_all();
    return;
  }
  const GradientBucket& b = buckets[index];
  CollectiveSite site("data_parallel.gradients");
  const std::size_t mid = split(b);
  if (mid > b.begin) {
    in_flight.push_back(comm.allreduce_async(wire_buffer.data() + b.begin, mid - b.begin,
                                             DataType::BFloat16, ReduceOp::Sum));
  }
  if (b.end > mid) {
    in_flight.push_back(
        comm.allreduce_async(grads + mid, b.end - mid, DataType::Float32, ReduceOp::Sum));
  }
}

void GradientReducer::State::poll() {
  if (progress != Progress::Poll) return;
  // MPI advances non-blocking collectives only inside MPI calls.
  while (done < in_flight.size() && in_flight[done]->test()) ++done;
  for (std::size_t i = done + 1; i < in_flight.size(); ++i) in_flight[i]->test();
}

void GradientReducer::progress() { state_->poll(); }

void GradientReducer::on_layer_grads(std::size_t layer) {
  State& s = *state_;
  if (!s.overlap) return;
  s.poll();
  if (s.next == s.buckets.size() || s.buckets[s.next].ready_after_layer < layer) return;
  // The bucket's gradients must be written before it is sent: a fence, or on CUDA with NCCL
  // an event that the communicator's stream waits for (no host wait per layer). With bf16,
  // post() orders after its narrowing kernel, which comes after them.
  if (s.wire != Dtype::Bf16) order_collective_after_compute(s.comm);
  while (s.next < s.buckets.size() && s.buckets[s.next].ready_after_layer >= layer) {
    s.post(s.next++);
  }
}

void GradientReducer::finish() {
  State& s = *state_;
  const double start = now_seconds();
  if (!s.overlap) {
    if (s.wire == Dtype::Bf16) {
      for (std::size_t i = 0; i < s.buckets.size(); ++i) s.narrow(i);
    }
    order_collective_after_compute(s.comm);
    for (std::size_t i = 0; i < s.buckets.size(); ++i) s.reduce(i);
  } else {
    if (s.next < s.buckets.size() && s.wire != Dtype::Bf16) order_collective_after_compute(s.comm);
    while (s.next < s.buckets.size()) s.post(s.next++);
    if (s.progress == Progress::Thread) {
      std::unique_lock lock(s.mutex);
      s.cv.wait(lock, [&s] { return s.reduced == s.buckets.size() || s.error; });
      if (s.error) {
        std::exception_ptr error = s.error;
        s.error = nullptr;
        s.handed = s.reduced;  // the rest of this step is abandoned
        std::rethrow_exception(error);
      }
    } else {
      for (auto& work : s.in_flight) work->wait();
    }
  }
  s.blocked_seconds += now_seconds() - start;
  if (s.wire == Dtype::Bf16) s.widen();
}

}  // namespace meshtrain
