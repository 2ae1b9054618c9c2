#pragma once
#include <cstdint>

#include "meshtrain/nn/types.hpp"

namespace meshtrain {

// The reference tutorial's data: x ~ N(0, 1) of shape (samples, dim), y = sum(x^2) per row,
// shape (samples, 1). Deterministic in the seed, identical on every rank.
struct ReferenceData {
  HostMatrix x;
  HostMatrix y;
};
ReferenceData make_reference_data(int samples, int dim, std::uint64_t seed);

}  // namespace meshtrain
