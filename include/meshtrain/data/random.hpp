#pragma once
// Deterministic random numbers that do not depend on the standard library's implementation:
// std::mt19937_64 is fully specified by the standard, the normal transform is ours
// (std::normal_distribution's algorithm is implementation-defined).
#include <cstdint>
#include <random>

namespace meshtrain {

class Random {
 public:
  explicit Random(std::uint64_t seed) : engine_(seed) {}
  double uniform();   // [0, 1), 53 bits
  double normal();    // N(0, 1), Box-Muller
  // N(0, 1) conditioned on [-2, 2] by rejection, as jax.random.truncated_normal(-2, 2).
  double truncated_normal();

 private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// A seed for a named stream (parameter init, data, shuffling) derived from one user seed.
std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream);

}  // namespace meshtrain
