#pragma once
// Gradient accumulation inside a step engine (training.accumulation_steps): each micro-batch
// of an optimizer step but the last adds the gradient its backward wrote to a local sum,
// without communicating; the last one adds the sum to its own gradient just before the
// step's one reduction, so the engine reduces once per optimizer step (DDP's no_sync).
#include <cstddef>

#include "meshtrain/nn/types.hpp"

namespace meshtrain {

class GradientAccumulator {
 public:
  // size: the floats to accumulate (gradients laid out as the engine's buffer, and the loss
  // slot). Allocates only when an optimizer step has more than one micro-batch.
  GradientAccumulator(std::size_t size, int micro_batches);

  bool active() const { return sum_.extent(0) > 0; }
  std::size_t bytes() const { return sum_.extent(0) * sizeof(float); }

  // After an inner micro-batch's backward: sum[offset, offset + n) = g[0, n) for the step's
  // first micro-batch, sum + g for the others.
  void keep(const float* g, std::size_t offset, std::size_t n, bool first);
  // In the step's last micro-batch: g[0, n) += sum[offset, offset + n).
  void add_to(float* g, std::size_t offset, std::size_t n) const;

 private:
  Vector sum_;
};

}  // namespace meshtrain
