#include "meshtrain/optim/optimizer.hpp"

#include <cmath>

#include "compat/kokkos_compat.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
// Elements per work item of the fused update: many on host backends (a vectorisable loop),
// one where each element gets its own thread.
constexpr std::size_t kHostChunk =
    Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible ? 512 : 1;
}  // namespace

OptimizerConfig OptimizerConfig::of(OptimizerType type) {
  OptimizerConfig c;
  c.type = type;
  if (type == OptimizerType::AdamW) c.weight_decay = 1e-4;
  return c;
}

OptimizerConfig OptimizerConfig::from_name(std::string_view name) {
  return of(parse_choice<OptimizerType>("optimizer", name));
}

Optimizer::Optimizer(OptimizerConfig config, std::size_t num_parameters)
    : config_(std::move(config)) {
  check_choice("optimizer", config_.type);
  const bool sgd = config_.type == OptimizerType::Sgd;
  if (!sgd || config_.momentum != 0.0) mu_ = Vector("meshtrain::adam_mu", num_parameters);
  if (!sgd) nu_ = Vector("meshtrain::adam_nu", num_parameters);
}

void Optimizer::step(VectorRef params, ConstVectorRef grads, double learning_rate) {
  ++step_;
  const std::size_t n = params.extent(0);
  auto mu = mu_;
  auto nu = nu_;
  if (config_.type == OptimizerType::Sgd) {
    const float lr = static_cast<float>(learning_rate);
    if (config_.momentum == 0.0) {
      Kokkos::parallel_for(
          "meshtrain::sgd", Kokkos::RangePolicy<ExecSpace>(0, n),
          KOKKOS_LAMBDA(std::size_t i) { params(i) -= lr * grads(i); });
    } else {
      const float m = static_cast<float>(config_.momentum);
      Kokkos::parallel_for(
          "meshtrain::sgd_momentum", Kokkos::RangePolicy<ExecSpace>(0, n),
          KOKKOS_LAMBDA(std::size_t i) {
            mu(i) = m * mu(i) + grads(i);
            params(i) -= lr * mu(i);
          });
    }
    return;
  }
  // Bias corrections in double on the host, as optax computes them in float32 from
  // b**t; the difference is below float resolution for any realistic step count.
  const double t = static_cast<double>(step_);
  const float b1 = static_cast<float>(config_.beta1);
  const float b2 = static_cast<float>(config_.beta2);
  // 1 - b in double: 1.0f - 0.999f is 1.3e-5 off 0.001 in float.
  const float one_minus_b1 = static_cast<float>(1.0 - config_.beta1);
  const float one_minus_b2 = static_cast<float>(1.0 - config_.beta2);
  const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(config_.beta1, t)));
  const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(config_.beta2, t)));
  const float eps = static_cast<float>(config_.eps);
  const float lr = static_cast<float>(learning_rate);
  const double wd_config = config_.type == OptimizerType::AdamW && config_.weight_decay < 0 ? 1e-4
                                                                               : config_.weight_decay;
  const float wd = static_cast<float>(wd_config);
  // Each work item updates a chunk of elements through restrict-qualified pointers: on host
  // backends the compiler can then vectorise the inner loop (through the views it cannot
  // rule out aliasing); on devices a chunk is one element.
  constexpr std::size_t chunk = kHostChunk;
  float* __restrict p = params.data();
  const float* __restrict gr = grads.data();
  float* __restrict m1 = mu.data();
  float* __restrict m2 = nu.data();
  Kokkos::parallel_for(
      "meshtrain::adam", Kokkos::RangePolicy<ExecSpace>(0, (n + chunk - 1) / chunk),
      KOKKOS_LAMBDA(std::size_t c) {
        const std::size_t end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
        for (std::size_t i = c * chunk; i < end; ++i) {
          const float g = gr[i];
          const float m = b1 * m1[i] + one_minus_b1 * g;
          const float v = b2 * m2[i] + one_minus_b2 * g * g;
          m1[i] = m;
          m2[i] = v;
          const float update = (m * c1) / (compat::math::sqrt(v * c2) + eps) + wd * p[i];
          p[i] -= lr * update;
        }
      });
}

}  // namespace meshtrain
