#pragma once
#include <Kokkos_Core.hpp>

namespace meshtrain {

// Every tensor lives in the default execution space's memory; activations are row-major
// (batch x features), kernels are (in x out) as Flax stores them.
using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
using Unmanaged = Kokkos::MemoryTraits<Kokkos::Unmanaged>;

using Vector = Kokkos::View<float*, MemSpace>;
using Matrix = Kokkos::View<float**, Kokkos::LayoutRight, MemSpace>;
using VectorRef = Kokkos::View<float*, MemSpace, Unmanaged>;
using MatrixRef = Kokkos::View<float**, Kokkos::LayoutRight, MemSpace, Unmanaged>;
using ConstVectorRef = Kokkos::View<const float*, MemSpace, Unmanaged>;
using ConstMatrixRef = Kokkos::View<const float**, Kokkos::LayoutRight, MemSpace, Unmanaged>;

using HostMatrix = Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace>;
using HostVector = Kokkos::View<float*, Kokkos::HostSpace>;

// Rows [begin, end) of a row-major matrix, as an unmanaged view (no allocation, no refcount).
template <class View>
inline auto rows(const View& m, std::size_t begin, std::size_t end) {
  using Ref = Kokkos::View<typename View::value_type**, Kokkos::LayoutRight,
                           typename View::memory_space, Unmanaged>;
  return Ref(m.data() + begin * m.extent(1), end - begin, m.extent(1));
}

}  // namespace meshtrain
