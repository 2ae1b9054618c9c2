#pragma once
// DeviceTimer (device_timer.hpp) over CUDA events on one stream: a pair of timing events
// around each collective, read back with cudaEventQuery (never blocking) and placed on the
// host's steady clock through a reference event whose host time is known.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <deque>
#include <vector>

#include "meshtrain/comm/device_timer.hpp"

namespace meshtrain {

class CudaEventTimer final : public DeviceTimer {
 public:
  explicit CudaEventTimer(cudaStream_t stream);
  ~CudaEventTimer() override;
  CudaEventTimer(const CudaEventTimer&) = delete;
  CudaEventTimer& operator=(const CudaEventTimer&) = delete;

  std::uint64_t before() override;
  void after(std::uint64_t handle) override;
  void poll(const std::function<void(std::uint64_t, std::int64_t, std::int64_t)>& done) override;

 private:
  struct Pair {
    cudaEvent_t start = nullptr;
    cudaEvent_t end = nullptr;
  };
  struct InFlight {
    std::uint64_t handle;
    std::size_t pair;
  };
  // Records the reference event and waits for it (the stream must be idle for this to be
  // quick: at construction, and when nothing is in flight).
  void calibrate();
  std::int64_t host_ns(cudaEvent_t event) const;

  cudaStream_t stream_;
  bool ok_ = true;  // false after a CUDA error: the timer stops timing
  cudaEvent_t reference_ = nullptr;
  std::int64_t reference_ns_ = 0;
  std::vector<Pair> pairs_;
  std::vector<std::size_t> free_;
  std::deque<InFlight> in_flight_;
  std::vector<std::uint64_t> untimed_;  // marked while the timer was not working
  std::uint64_t next_ = 0;
  std::size_t current_ = 0;  // the pair before() started
};

}  // namespace meshtrain
