#pragma once
// Wall-clock seconds for timers in the library: a monotonic clock, so that a timer never
// runs backwards when the system time is adjusted. Differences of two readings are
// durations; the origin means nothing.
#include <chrono>

namespace meshtrain {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Adds the seconds between its construction and its destruction to `total`.
class ScopedTimer {
 public:
  explicit ScopedTimer(double& total) : total_(total), start_(now_seconds()) {}
  ~ScopedTimer() { total_ += now_seconds() - start_; }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  double& total_;
  double start_;
};

}  // namespace meshtrain
