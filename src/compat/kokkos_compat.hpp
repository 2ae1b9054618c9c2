#pragma once
// The differences between the Kokkos versions meshtrain builds against, in one place:
// Debian's Kokkos 3.4 (Serial) and Kokkos 4 (OpenMP, CUDA). Everything else in the project
// is written once for both.
#include <Kokkos_Core.hpp>

namespace meshtrain::compat {

// Mathematical functions usable in kernels (tanh, sqrt, exp, erf, ...): Kokkos 3.4 has them in
// Kokkos::Experimental, Kokkos 4 in Kokkos (the Experimental names are gone).
#if KOKKOS_VERSION >= 40000
namespace math = ::Kokkos;
#else
namespace math = ::Kokkos::Experimental;
#endif

// Kokkos::initialize for one rank that owns device `device_id` (ignored without a GPU backend).
// Kokkos 3.4 takes InitArguments (one thread: the Serial build runs one rank per core), Kokkos 4
// InitializationSettings, which leave the host thread count to OMP_NUM_THREADS (or
// KOKKOS_NUM_THREADS / --kokkos-num-threads).
inline void initialize_kokkos(int device_id) {
#if KOKKOS_VERSION >= 40000
  Kokkos::InitializationSettings settings;
  settings.set_device_id(device_id);
  settings.set_disable_warnings(true);
  Kokkos::initialize(settings);
#else
  Kokkos::InitArguments args;
  args.num_threads = 1;
  args.device_id = device_id;
  args.disable_warnings = true;
  Kokkos::initialize(args);
#endif
}

}  // namespace meshtrain::compat
