#pragma once
// MPI with device buffers. A CUDA-aware MPI takes device pointers directly; any other MPI
// must never see one: StagingCommunicator copies every device buffer of a collective through
// a pinned host buffer (in before the call, out after it completes, for non-blocking
// all-reduces when the handle completes), and passes host buffers on unchanged. With a
// CUDA-aware MPI (path Direct) it passes device buffers on where MpiCommunicator does no
// arithmetic of its own (moving data, and blocking sums, maxima and minima, which MPI
// computes), and still stages the rest: MpiCommunicator divides averages, sums bf16 in a
// user-defined MPI_Op and adds its ring's blocks with host loops. Which
// pointers are device memory, and how to copy them, is DeviceMemory's (CUDA in GPU builds; a
// test double elsewhere), so that the logic runs and is tested on machines without a GPU.
#include <cstddef>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "meshtrain/comm/communicator.hpp"

namespace meshtrain {

// What the staging decorator needs to know about device memory.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  // Whether p points into memory that the host cannot read (device memory).
  virtual bool is_device(const void* p) const = 0;
  // Page-locked host memory for staging.
  virtual void* allocate_host(std::size_t bytes) = 0;
  virtual void free_host(void* p) = 0;
  // Blocking copies; the device's earlier work on the buffer is complete when they start.
  virtual void to_host(void* host, const void* device, std::size_t bytes) = 0;
  virtual void to_device(void* device, const void* host, std::size_t bytes) = 0;
};

// CUDA's device memory (cudaPointerGetAttributes, cudaMallocHost, cudaMemcpy); null in a
// build without CUDA.
std::shared_ptr<DeviceMemory> cuda_device_memory();

// Whether the MPI library takes device pointers: Open MPI's MPIX_Query_cuda_support (and its
// compile-time MPIX_CUDA_AWARE_SUPPORT); Unknown for a library that does not say.
enum class CudaAwareness { Yes, No, Unknown };
CudaAwareness mpi_cuda_awareness();
std::string_view name_of(CudaAwareness awareness);

// How MPI collectives get device buffers: directly, or staged through host memory.
enum class DeviceBufferPath { Direct, Stage };
std::string_view name_of(DeviceBufferPath path);
// The path for MESHTRAIN_MPI_DEVICE_BUFFERS = requested ("auto": direct exactly when the
// library says it is CUDA-aware; "stage"; "direct": trusted when the library does not say,
// refused with a ConfigError naming the variable when it says it is not CUDA-aware).
DeviceBufferPath resolve_device_buffer_path(std::string_view requested, CudaAwareness awareness);
// The same for the environment's value ("auto" when unset).
DeviceBufferPath device_buffer_path_from_environment(CudaAwareness awareness);

class StagingCommunicator final : public Communicator {
 public:
  StagingCommunicator(std::shared_ptr<Communicator> inner, std::shared_ptr<DeviceMemory> memory,
                      DeviceBufferPath path = DeviceBufferPath::Stage);
  ~StagingCommunicator() override;

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }
  bool callable_from_another_thread() const override {
    return inner_->callable_from_another_thread();
  }
  DeviceTimer* device_timer() override { return inner_->device_timer(); }

  void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) override;
  std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                        ReduceOp op) override;
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override;
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override;
  void broadcast(void* buf, std::size_t count, DataType type, int root) override;
  void scatterv(const void* send, std::span<const int> counts, std::span<const int> displs,
                void* recv, int recv_count, DataType type, int root) override;
  void barrier() override { inner_->barrier(); }

  using Communicator::allreduce;
  using Communicator::broadcast;

  // Host staging buffers allocated so far (they are reused: a run's steps allocate none
  // after its first).
  std::size_t staging_buffers() const;

  // A staging buffer, taken from the pool for one collective and given back after it.
  class Lease;

 private:
  Lease lease(std::size_t bytes);
  // Whether buffer p must be staged: device memory, unless MPI may take it for this call
  // (computes_on_host: MpiCommunicator does arithmetic on the buffer itself).
  bool stage(const void* p, bool computes_on_host = false) const;
  // A collective's send and receive buffers, each passed on as given or staged (send copied
  // to the host before `call`, receive copied back after it).
  struct Source {
    const void* given;
    std::size_t bytes;
    bool staged;
  };
  struct Target {
    void* given;
    std::size_t bytes;
    bool staged;
  };
  template <class Call>
  void exchange(Source in, Target out, Call&& call);
  void give_back(void* buffer);

  struct Buffer {
    void* data = nullptr;
    std::size_t bytes = 0;
    bool in_use = false;
  };
  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<DeviceMemory> memory_;
  DeviceBufferPath path_;
  mutable std::mutex mutex_;  // the pool; non-blocking handles may complete on another thread
  std::vector<Buffer> pool_;
};

}  // namespace meshtrain
