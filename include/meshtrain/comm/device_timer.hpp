#pragma once
// When the collectives a communicator enqueues on a device stream (NCCL's) ran on the device.
// A collective's host call returns once it is enqueued, so host clocks say nothing about when
// it started or finished; the flight recorder marks each one with a DeviceTimer (CUDA events
// on the communicator's stream) and learns the device times later without blocking, so that
// after a hang a collective that never completed on the device is the one left open.
#include <cstdint>
#include <functional>

namespace meshtrain {

class DeviceTimer {
 public:
  virtual ~DeviceTimer() = default;
  // Around enqueuing one collective, on the thread that enqueues it: before() returns the
  // handle that after() and poll() name it by.
  virtual std::uint64_t before() = 0;
  virtual void after(std::uint64_t handle) = 0;
  // Calls done(handle, start_ns, end_ns) for each marked collective that has completed on
  // the device since the last call, oldest first, with its device start and end in
  // FlightRecorder::now_ns()'s clock (the host's steady clock); never blocks.
  virtual void poll(const std::function<void(std::uint64_t, std::int64_t, std::int64_t)>& done) = 0;
};

}  // namespace meshtrain
