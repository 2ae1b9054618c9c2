#include "meshtrain/comm/backend.hpp"

#include "meshtrain/build_config.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"

#if MESHTRAIN_HAS_CUDA
#include <cuda_runtime.h>
#endif
#if MESHTRAIN_HAS_NCCL
#include "meshtrain/comm/nccl_communicator.hpp"
#endif

namespace meshtrain {

bool nccl_built() { return MESHTRAIN_HAS_NCCL != 0; }

void bind_cuda_device([[maybe_unused]] int device) {
#if MESHTRAIN_HAS_CUDA
  const cudaError_t code = cudaSetDevice(device);
  if (code != cudaSuccess) {
    throw CommError("cudaSetDevice(" + std::to_string(device) + ") failed: " +
                    cudaGetErrorString(code));
  }
#endif
}

int visible_gpu_count() {
#if MESHTRAIN_HAS_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

CommBackend resolve_comm_backend(CommBackend requested, int visible_gpus, bool nccl_is_built) {
  switch (requested) {
    case CommBackend::Auto:
      return visible_gpus > 0 && nccl_is_built ? CommBackend::Nccl : CommBackend::Mpi;
    case CommBackend::Mpi: return CommBackend::Mpi;
    case CommBackend::Nccl:
      if (!nccl_is_built) {
        throw ConfigError("comm",
                          "'nccl': this build of meshtrain has no NCCL (configure with "
                          "-DMESHTRAIN_ENABLE_NCCL=ON)");
      }
      if (visible_gpus < 1) throw ConfigError("comm", "'nccl': no GPU is visible on this node");
      return CommBackend::Nccl;
  }
  return CommBackend::Mpi;
}

std::unique_ptr<Communicator> make_communicator(CommBackend resolved, MPI_Comm comm) {
  switch (resolved) {
    case CommBackend::Mpi: return std::make_unique<MpiCommunicator>(comm);
    case CommBackend::Nccl:
#if MESHTRAIN_HAS_NCCL
      return std::make_unique<NcclCommunicator>(comm);
#else
      throw ConfigError("comm",
                        "'nccl': this build of meshtrain has no NCCL (configure with "
                        "-DMESHTRAIN_ENABLE_NCCL=ON)");
#endif
    case CommBackend::Auto: break;
  }
  throw ConfigError("make_communicator: resolve the backend first (got '" + name_of(resolved) +
                    "')");
}

}  // namespace meshtrain
