#pragma once
// bfloat16 (the top 16 bits of an IEEE binary32: sign, 8 exponent bits, 7 mantissa bits) as a
// plain std::uint16_t, with the two conversions that gradient communication needs. Free of
// Kokkos and MPI: the communicators (host compiler) and the training kernels (Kokkos, possibly
// nvcc device code) share these functions.
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MESHTRAIN_HOST_DEVICE __host__ __device__
#else
#define MESHTRAIN_HOST_DEVICE
#endif

namespace meshtrain {

using bfloat16_bits = std::uint16_t;

// Round to nearest, ties to even (what Intel's AVX512_BF16 VCVTNEPS2BF16, PyTorch's and JAX's
// float -> bfloat16 casts do). Finite values beyond bfloat16's largest round to +-Inf; a NaN
// stays a NaN of the same sign (made quiet; its top payload bits are kept), never an Inf;
// subnormals round like any other value (bfloat16 keeps float's exponent range).
MESHTRAIN_HOST_DEVICE inline bfloat16_bits to_bfloat16(float value) {
  std::uint32_t u = 0;
  std::memcpy(&u, &value, sizeof u);
  // Branch-free (a select), so that loops over buffers vectorise.
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (u >> 16) | 0x0040u;
  return static_cast<bfloat16_bits>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// Exact: every bfloat16 is a float.
MESHTRAIN_HOST_DEVICE inline float from_bfloat16(bfloat16_bits value) {
  const std::uint32_t u = static_cast<std::uint32_t>(value) << 16;
  float out = 0.0f;
  std::memcpy(&out, &u, sizeof out);
  return out;
}

}  // namespace meshtrain
