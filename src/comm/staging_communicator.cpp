#include "comm/staging_communicator.hpp"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>

#include "meshtrain/build_config.hpp"
#include "meshtrain/error.hpp"

#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif
#if MESHTRAIN_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace meshtrain {

// ---------------------------------------------------------------------------------------
// CUDA's device memory.

#if MESHTRAIN_HAS_CUDA
namespace {

void check_cuda(cudaError_t code, const std::string& call) {
  if (code != cudaSuccess) {
    throw CommError(call + " failed: " + cudaGetErrorName(code) + " (" +
                    cudaGetErrorString(code) + ")");
  }
}

class CudaDeviceMemory final : public DeviceMemory {
 public:
  bool is_device(const void* p) const override {
    if (p == nullptr) return false;
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
      (void)cudaGetLastError();  // not a pointer CUDA knows: host memory
      return false;
    }
    return attributes.type == cudaMemoryTypeDevice;
  }
  void* allocate_host(std::size_t bytes) override {
    void* p = nullptr;
    check_cuda(cudaMallocHost(&p, bytes),
               "cudaMallocHost(" + std::to_string(bytes) + " bytes) for MPI staging");
    return p;
  }
  void free_host(void* p) override { (void)cudaFreeHost(p); }
  void to_host(void* host, const void* device, std::size_t bytes) override {
    check_cuda(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost),
               "cudaMemcpy(device to host, " + std::to_string(bytes) + " bytes)");
  }
  void to_device(void* device, const void* host, std::size_t bytes) override {
    check_cuda(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice),
               "cudaMemcpy(host to device, " + std::to_string(bytes) + " bytes)");
  }
};

}  // namespace

std::shared_ptr<DeviceMemory> cuda_device_memory() { return std::make_shared<CudaDeviceMemory>(); }
#else
std::shared_ptr<DeviceMemory> cuda_device_memory() { return nullptr; }
#endif

// ---------------------------------------------------------------------------------------
// Whether MPI takes device pointers.

CudaAwareness mpi_cuda_awareness() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1 ? CudaAwareness::Yes : CudaAwareness::No;
#elif defined(MPIX_CUDA_AWARE_SUPPORT)
  return CudaAwareness::No;  // the library was built without CUDA support
#else
  return CudaAwareness::Unknown;
#endif
}

std::string_view name_of(CudaAwareness awareness) {
  switch (awareness) {
    case CudaAwareness::Yes: return "CUDA-aware";
    case CudaAwareness::No: return "not CUDA-aware";
    case CudaAwareness::Unknown: return "of unknown CUDA support";
  }
  return "?";
}

std::string_view name_of(DeviceBufferPath path) {
  return path == DeviceBufferPath::Direct ? "direct" : "stage";
}

namespace {
constexpr const char* kVariable = "MESHTRAIN_MPI_DEVICE_BUFFERS";
}

DeviceBufferPath resolve_device_buffer_path(std::string_view requested, CudaAwareness awareness) {
  if (requested == "auto") {
    return awareness == CudaAwareness::Yes ? DeviceBufferPath::Direct : DeviceBufferPath::Stage;
  }
  if (requested == "stage") return DeviceBufferPath::Stage;
  if (requested == "direct") {
    if (awareness == CudaAwareness::No) {
      throw ConfigError(kVariable, "'direct': this MPI library is not CUDA-aware "
                                   "(MPIX_Query_cuda_support says so), so it must never be "
                                   "given device memory; use 'stage' or 'auto'");
    }
    return DeviceBufferPath::Direct;
  }
  throw ConfigError(kVariable,
                    "'" + std::string(requested) + "': unknown (choose auto, stage or direct)");
}

DeviceBufferPath device_buffer_path_from_environment(CudaAwareness awareness) {
  const char* value = std::getenv(kVariable);
  return resolve_device_buffer_path(value != nullptr ? value : "auto", awareness);
}

// ---------------------------------------------------------------------------------------
// The pool of staging buffers.

class StagingCommunicator::Lease {
 public:
  Lease() = default;
  Lease(StagingCommunicator* owner, void* data) : owner_(owner), data_(data) {}
  Lease(Lease&& other) noexcept
      : owner_(std::exchange(other.owner_, nullptr)), data_(std::exchange(other.data_, nullptr)) {}
  Lease& operator=(Lease&&) = delete;
  Lease(const Lease&) = delete;
  ~Lease() { release(); }

  char* data() const { return static_cast<char*>(data_); }
  void release() {
    if (owner_ != nullptr) owner_->give_back(data_);
    owner_ = nullptr;
  }
  // For a collective that never completed: its buffer may still be written by MPI, so it is
  // never handed out again.
  void abandon() { owner_ = nullptr; }

 private:
  StagingCommunicator* owner_ = nullptr;
  void* data_ = nullptr;
};

StagingCommunicator::StagingCommunicator(std::shared_ptr<Communicator> inner,
                                         std::shared_ptr<DeviceMemory> memory,
                                         DeviceBufferPath path)
    : inner_(std::move(inner)), memory_(std::move(memory)), path_(path) {}

bool StagingCommunicator::stage(const void* p, bool computes_on_host) const {
  if (path_ == DeviceBufferPath::Direct && !computes_on_host) return false;
  return memory_->is_device(p);
}

StagingCommunicator::~StagingCommunicator() {
  for (Buffer& buffer : pool_) memory_->free_host(buffer.data);
}

std::size_t StagingCommunicator::staging_buffers() const {
  std::lock_guard lock(mutex_);
  return pool_.size();
}

StagingCommunicator::Lease StagingCommunicator::lease(std::size_t bytes) {
  std::lock_guard lock(mutex_);
  Buffer* best = nullptr;  // the smallest free buffer that is large enough
  for (Buffer& buffer : pool_) {
    if (!buffer.in_use && buffer.bytes >= bytes && (best == nullptr || buffer.bytes < best->bytes)) {
      best = &buffer;
    }
  }
  if (best == nullptr) {
    pool_.push_back({memory_->allocate_host(std::max<std::size_t>(bytes, 1)), bytes, false});
    best = &pool_.back();
  }
  best->in_use = true;
  return Lease(this, best->data);
}

void StagingCommunicator::give_back(void* data) {
  std::lock_guard lock(mutex_);
  for (Buffer& buffer : pool_) {
    if (buffer.data == data) buffer.in_use = false;
  }
}

// ---------------------------------------------------------------------------------------
// The collectives.

namespace {

constexpr std::size_t kAlign = 64;

// Whether MpiCommunicator computes part of a reduction with host code: it divides averages
// itself, and bf16 sums run in a user-defined MPI_Op (MPI calls it on the buffers it holds).
bool computes_on_host(DataType type, ReduceOp op) {
  return op == ReduceOp::Average || type == DataType::BFloat16;
}
std::size_t aligned(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

}  // namespace

template <class Call>
void StagingCommunicator::exchange(Source in, Target out, Call&& call) {
  if (!in.staged && !out.staged) return call(in.given, out.given);
  const std::size_t out_offset = in.staged ? aligned(in.bytes) : 0;
  Lease staging = lease(out_offset + (out.staged ? out.bytes : 0));
  if (in.staged) memory_->to_host(staging.data(), in.given, in.bytes);
  call(in.staged ? staging.data() : in.given, out.staged ? staging.data() + out_offset : out.given);
  if (out.staged) memory_->to_device(out.given, staging.data() + out_offset, out.bytes);
}

void StagingCommunicator::allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) {
  const std::size_t bytes = count * size_of(type);
  if (!stage(buf, computes_on_host(type, op))) return inner_->allreduce(buf, count, type, op);
  Lease staging = lease(bytes);
  memory_->to_host(staging.data(), buf, bytes);
  inner_->allreduce(staging.data(), count, type, op);
  memory_->to_device(buf, staging.data(), bytes);
}

namespace {

// A staged non-blocking all-reduce: the result goes back to the device when it completes.
class StagedWork final : public Work {
 public:
  StagedWork(std::unique_ptr<Work> inner, StagingCommunicator::Lease staging, void* device,
             std::size_t bytes, DeviceMemory& memory)
      : inner_(std::move(inner)),
        staging_(std::move(staging)),
        device_(device),
        bytes_(bytes),
        memory_(memory) {}
  ~StagedWork() override {
    if (!done_) staging_.abandon();
  }
  void wait() override {
    if (done_) return;
    inner_->wait();
    finish();
  }
  bool test() override {
    if (!done_ && inner_->test()) finish();
    return done_;
  }

 private:
  void finish() {
    memory_.to_device(device_, staging_.data(), bytes_);
    staging_.release();
    done_ = true;
  }
  std::unique_ptr<Work> inner_;
  StagingCommunicator::Lease staging_;
  void* device_;
  std::size_t bytes_;
  DeviceMemory& memory_;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<Work> StagingCommunicator::allreduce_async(void* buf, std::size_t count,
                                                           DataType type, ReduceOp op) {
  const std::size_t bytes = count * size_of(type);
  if (!stage(buf, true)) return inner_->allreduce_async(buf, count, type, op);
  Lease staging = lease(bytes);
  memory_->to_host(staging.data(), buf, bytes);
  std::unique_ptr<Work> work = inner_->allreduce_async(staging.data(), count, type, op);
  return std::make_unique<StagedWork>(std::move(work), std::move(staging), buf, bytes, *memory_);
}

void StagingCommunicator::reduce_scatter(const void* send, void* recv, std::size_t count,
                                         DataType type, ReduceOp op) {
  const std::size_t block = count * size_of(type);
  exchange({send, block * static_cast<std::size_t>(size()), stage(send, computes_on_host(type, op))},
           {recv, block, stage(recv, computes_on_host(type, op))}, [&](const void* s, void* r) {
             inner_->reduce_scatter(s, r, count, type, op);
           });
}

void StagingCommunicator::all_gather(const void* send, void* recv, std::size_t count,
                                     DataType type) {
  const std::size_t block = count * size_of(type);
  exchange({send, block, stage(send)}, {recv, block * static_cast<std::size_t>(size()), stage(recv)},
           [&](const void* s, void* r) { inner_->all_gather(s, r, count, type); });
}

void StagingCommunicator::broadcast(void* buf, std::size_t count, DataType type, int root) {
  const std::size_t bytes = count * size_of(type);
  if (!stage(buf)) return inner_->broadcast(buf, count, type, root);
  Lease staging = lease(bytes);
  if (rank() == root) memory_->to_host(staging.data(), buf, bytes);
  inner_->broadcast(staging.data(), count, type, root);
  if (rank() != root) memory_->to_device(buf, staging.data(), bytes);
}

void StagingCommunicator::scatterv(const void* send, std::span<const int> counts,
                                   std::span<const int> displs, void* recv, int recv_count,
                                   DataType type, int root) {
  const std::size_t element = size_of(type);
  std::size_t send_elements = 0;  // the extent of the root's send buffer that is read
  if (rank() == root) {
    for (std::size_t r = 0; r < counts.size() && r < displs.size(); ++r) {
      if (counts[r] > 0) {
        send_elements = std::max(send_elements, static_cast<std::size_t>(displs[r] + counts[r]));
      }
    }
  }
  exchange({send, send_elements * element, rank() == root && stage(send)},
           {recv, static_cast<std::size_t>(recv_count) * element, stage(recv)},
           [&](const void* s, void* r) {
             inner_->scatterv(s, counts, displs, r, recv_count, type, root);
           });
}

}  // namespace meshtrain
