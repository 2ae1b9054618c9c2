#include "train/gradient_accumulator.hpp"

#include <stdexcept>

namespace meshtrain {

GradientAccumulator::GradientAccumulator(std::size_t size, int micro_batches) {
  if (micro_batches > 1) sum_ = Vector("meshtrain::accumulated_gradients", size);
}

void GradientAccumulator::keep(const float* g, std::size_t offset, std::size_t n, bool first) {
  if (!active()) {
    throw std::logic_error("GradientAccumulator: a micro-batch of an engine built for one per step");
  }
  float* sum = sum_.data() + offset;
  if (first) {
    Kokkos::parallel_for(
        "meshtrain::accumulate_first", Kokkos::RangePolicy<ExecSpace>(0, n),
        KOKKOS_LAMBDA(std::size_t i) { sum[i] = g[i]; });
  } else {
    Kokkos::parallel_for(
        "meshtrain::accumulate", Kokkos::RangePolicy<ExecSpace>(0, n),
        KOKKOS_LAMBDA(std::size_t i) { sum[i] += g[i]; });
  }
}

void GradientAccumulator::add_to(float* g, std::size_t offset, std::size_t n) const {
  const float* sum = sum_.data() + offset;
  Kokkos::parallel_for(
      "meshtrain::add_accumulated", Kokkos::RangePolicy<ExecSpace>(0, n),
      KOKKOS_LAMBDA(std::size_t i) { g[i] += sum[i]; });
}

}  // namespace meshtrain
