#include "comm/cuda_event_timer.hpp"

#include "meshtrain/comm/flight_recorder.hpp"

namespace meshtrain {

namespace {
// Float milliseconds from the reference lose precision as they grow (about 60 us at an
// hour): the reference is moved up when it is older than this and the stream is idle.
constexpr std::int64_t kRecalibrateNs = 60'000'000'000;
}  // namespace

CudaEventTimer::CudaEventTimer(cudaStream_t stream) : stream_(stream) {
  ok_ = cudaEventCreate(&reference_) == cudaSuccess;
  calibrate();
}

CudaEventTimer::~CudaEventTimer() {
  for (const Pair& p : pairs_) {
    if (p.start) cudaEventDestroy(p.start);
    if (p.end) cudaEventDestroy(p.end);
  }
  if (reference_) cudaEventDestroy(reference_);
}

void CudaEventTimer::calibrate() {
  if (!ok_) return;
  ok_ = cudaEventRecord(reference_, stream_) == cudaSuccess &&
        cudaEventSynchronize(reference_) == cudaSuccess;
  reference_ns_ = FlightRecorder::now_ns();
}

std::int64_t CudaEventTimer::host_ns(cudaEvent_t event) const {
  float ms = 0.0f;
  if (cudaEventElapsedTime(&ms, reference_, event) != cudaSuccess) return FlightRecorder::now_ns();
  return reference_ns_ + static_cast<std::int64_t>(static_cast<double>(ms) * 1e6);
}

std::uint64_t CudaEventTimer::before() {
  const std::uint64_t handle = ++next_;
  if (!ok_) return handle;
  if (free_.empty()) {
    Pair p;
    if (cudaEventCreate(&p.start) != cudaSuccess || cudaEventCreate(&p.end) != cudaSuccess) {
      ok_ = false;
      return handle;
    }
    pairs_.push_back(p);
    free_.push_back(pairs_.size() - 1);
  }
  current_ = free_.back();
  free_.pop_back();
  if (cudaEventRecord(pairs_[current_].start, stream_) != cudaSuccess) ok_ = false;
  return handle;
}

void CudaEventTimer::after(std::uint64_t handle) {
  if (ok_ && cudaEventRecord(pairs_[current_].end, stream_) != cudaSuccess) ok_ = false;
  if (!ok_) {  // not timed: reported at the next poll with the host's time
    untimed_.push_back(handle);
    return;
  }
  in_flight_.push_back({handle, current_});
}

void CudaEventTimer::poll(const std::function<void(std::uint64_t, std::int64_t, std::int64_t)>& done) {
  for (const std::uint64_t handle : untimed_) {
    const std::int64_t now = FlightRecorder::now_ns();
    done(handle, now, now);
  }
  untimed_.clear();
  while (ok_ && !in_flight_.empty()) {
    const InFlight f = in_flight_.front();
    const cudaError_t state = cudaEventQuery(pairs_[f.pair].end);
    if (state == cudaErrorNotReady) break;
    if (state != cudaSuccess) {  // the timer stops; what it held is reported untimed
      ok_ = false;
      for (const InFlight& left : in_flight_) {
        const std::int64_t now = FlightRecorder::now_ns();
        done(left.handle, now, now);
      }
      in_flight_.clear();
      break;
    }
    done(f.handle, host_ns(pairs_[f.pair].start), host_ns(pairs_[f.pair].end));
    free_.push_back(f.pair);
    in_flight_.pop_front();
  }
  if (ok_ && in_flight_.empty() && FlightRecorder::now_ns() - reference_ns_ > kRecalibrateNs) calibrate();
}

}  // namespace meshtrain
