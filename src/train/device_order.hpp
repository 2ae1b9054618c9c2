#pragma once
// Ordering a collective after the device work that wrote its buffers.
#include <type_traits>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/nn/types.hpp"

namespace meshtrain {

// Before a collective on `group` whose buffers kernels on ExecSpace have just written (or still
// read, when the collective overwrites them): on CUDA, a communicator with its own stream
// (NCCL) is ordered after the execution space instance's stream with an event, and the host
// goes on launching; every other communicator (MPI, staged or not, which reads or copies the
// buffers from the host), and every host backend, gets a fence as before. Serial and OpenMP
// builds fence exactly where they always did.
inline void order_collective_after_compute(Communicator& group) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    if (group.order_after_stream(static_cast<void*>(ExecSpace().cuda_stream()))) return;
  }
#else
  (void)group;
#endif
  ExecSpace().fence();
}

}  // namespace meshtrain
