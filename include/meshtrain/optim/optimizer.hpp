#pragma once
#include <cstdint>
#include <string_view>

#include "meshtrain/choices.hpp"
#include "meshtrain/nn/types.hpp"

namespace meshtrain {

// Optimizers with optax's defaults and semantics:
//   sgd   : p -= lr * (momentum buffer or g)
//   adam  : optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8), bias-corrected, eps outside the sqrt
//   adamw : adam plus decoupled weight decay (optax default 1e-4) applied as lr * wd * p
struct OptimizerConfig {
  OptimizerType type = OptimizerType::Adam;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // adamw: negative means optax's default, 1e-4
  double momentum = 0.0;      // sgd

  static OptimizerConfig of(OptimizerType type);  // with that optimizer's defaults
  static OptimizerConfig from_name(std::string_view name);  // ConfigError if unknown
};

// One fused Kokkos kernel over the flat parameter buffer per step; state (moments) is
// allocated once, in the same memory as the parameters.
class Optimizer {
 public:
  Optimizer(OptimizerConfig config, std::size_t num_parameters);

  // params -= update(grads); grads holds at least params.extent(0) elements.
  void step(VectorRef params, ConstVectorRef grads, double learning_rate);

  std::int64_t steps() const { return step_; }
  void set_steps(std::int64_t steps) { step_ = steps; }  // resuming from a checkpoint
  const OptimizerConfig& config() const { return config_; }
  Vector first_moment() const { return mu_; }
  Vector second_moment() const { return nu_; }

 private:
  OptimizerConfig config_;
  std::int64_t step_ = 0;
  Vector mu_;
  Vector nu_;
};

}  // namespace meshtrain
