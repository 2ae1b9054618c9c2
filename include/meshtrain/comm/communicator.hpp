#pragma once
// A narrow collective interface over contiguous buffers, in the spirit of PyTorch's c10d
// Backend: every call names its element type and count; non-blocking calls return a Work
// handle to wait on.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

namespace meshtrain {

class DeviceTimer;

// BFloat16: 2-byte elements as meshtrain/comm/bfloat16.hpp lays them out (the top half of a
// float). Its reductions (Sum, Average, Max, Min) add or compare in float and round the result
// of every combine of two ranks' values to bfloat16 (round to nearest even), so a sum over p
// ranks is rounded up to p - 1 times (the MPI ring: once per hop; NCCL: its own order).
enum class DataType { Float32, Float64, Int32, Int64, BFloat16 };
enum class ReduceOp { Sum, Average, Max, Min };

std::size_t size_of(DataType type);
std::string_view name_of(DataType type);
std::string_view name_of(ReduceOp op);

template <class T>
constexpr DataType data_type_of();
template <>
constexpr DataType data_type_of<float>() { return DataType::Float32; }
template <>
constexpr DataType data_type_of<double>() { return DataType::Float64; }
template <>
constexpr DataType data_type_of<std::int32_t>() { return DataType::Int32; }
template <>
constexpr DataType data_type_of<std::int64_t>() { return DataType::Int64; }

// A handle on a collective in flight.
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool test() = 0;  // true once complete; never blocks
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view backend() const = 0;
  // Whether a thread other than the one that created the communicator may run its
  // collectives (one thread at a time): MPI needs MPI_THREAD_SERIALIZED for that.
  virtual bool callable_from_another_thread() const { return true; }
  // The device-side timer of the collectives this communicator enqueues on a device stream
  // (device_timer.hpp), or nullptr when its calls complete on the host (MPI). Decorators
  // pass their inner communicator's on.
  virtual DeviceTimer* device_timer() { return nullptr; }

  // Ordering on the device, for a caller whose device kernels have just written (or still
  // read) a collective's buffers. A communicator whose collectives run on a CUDA stream makes
  // its later collectives wait for the work queued so far on `cuda_stream` (a cudaStream_t,
  // e.g. Kokkos' execution space instance's) without the host waiting, and returns true. The
  // default returns false: the communicator's collectives read or copy the buffers from the
  // host, so the caller must first wait for that work (a fence).
  virtual bool order_after_stream(void* cuda_stream) {
    (void)cuda_stream;
    return false;
  }

  // In place: buf holds count elements on entry and the reduction on exit.
  virtual void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                                ReduceOp op) = 0;
  // send holds count * size() elements; recv receives this rank's count-element block.
  virtual void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                              ReduceOp op) = 0;
  // send holds count elements; recv receives count * size() elements in rank order.
  virtual void all_gather(const void* send, void* recv, std::size_t count, DataType type) = 0;
  virtual void broadcast(void* buf, std::size_t count, DataType type, int root) = 0;
  // Root sends counts[r] elements starting at displs[r] to rank r; recv gets counts[rank()].
  virtual void scatterv(const void* send, std::span<const int> counts, std::span<const int> displs,
                        void* recv, int recv_count, DataType type, int root) = 0;
  virtual void barrier() = 0;

  // Typed conveniences.
  template <class T>
  void allreduce(std::span<T> buf, ReduceOp op) {
    allreduce(buf.data(), buf.size(), data_type_of<T>(), op);
  }
  template <class T>
  void broadcast(std::span<T> buf, int root) {
    broadcast(buf.data(), buf.size(), data_type_of<T>(), root);
  }
};

}  // namespace meshtrain
