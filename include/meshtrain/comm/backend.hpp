#pragma once
// Choosing the communication backend at run time. Always compiled: a build without CUDA or
// NCCL still parses "nccl" and says why it cannot use it.
#include <mpi.h>

#include <memory>
#include <string>

#include "meshtrain/choices.hpp"  // CommBackend, parse_comm_backend, name_of
#include "meshtrain/comm/communicator.hpp"

namespace meshtrain {

// Whether this build of meshtrain contains the NCCL communicator.
bool nccl_built();

// CUDA devices this process can see: 0 when built without CUDA or when the CUDA runtime
// reports an error (no driver, no device).
int visible_gpu_count();

// Makes `device` the calling thread's current CUDA device (a no-op in a build without CUDA).
// Throws CommError naming the device and the CUDA error.
void bind_cuda_device(int device);

// The backend to use. Auto means NCCL when a GPU is visible and NCCL was built, else MPI.
// Asking for NCCL without a visible GPU, or in a build without NCCL, throws ConfigError.
CommBackend resolve_comm_backend(CommBackend requested, int visible_gpus, bool nccl_is_built);

// A communicator of the resolved backend (Mpi or Nccl, never Auto) over comm. Collective
// over comm. A Nccl communicator binds to the CUDA device current on the calling thread.
std::unique_ptr<Communicator> make_communicator(CommBackend resolved, MPI_Comm comm);

}  // namespace meshtrain
