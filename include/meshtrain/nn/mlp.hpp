#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "meshtrain/nn/dense.hpp"
#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/nn/model.hpp"
#include "meshtrain/nn/types.hpp"

namespace meshtrain {

struct DenseSpec {
  int in = 0;
  int out = 0;
  Activation activation = Activation::Identity;
};

// A multi-layer perceptron: a Model of Dense layers with the activation fused into each,
// the last layer linear. Parameters: kernel then bias per layer, "layers.<l>.kernel" and
// "layers.<l>.bias".
class Mlp : public Model {
 public:
  // widths = {in, hidden..., out}; hidden layers use `hidden`, the output layer is linear.
  // Kernels are initialised LeCun-normal as Flax does, biases zero, from `seed`.
  Mlp(std::vector<int> widths, Activation hidden, std::uint64_t seed);

  // The reference tutorial's SimplePDEModel: Linear(4->64), ReLU, Linear(64->1).
  static Mlp simple_pde_model(std::uint64_t seed);

  const std::vector<int>& widths() const { return widths_; }
  const std::vector<DenseSpec>& layers() const { return dense_; }

  // Views of layer l's tensors inside any flat buffer laid out like the parameters
  // (the parameters themselves, the gradients, optimizer moments).
  MatrixRef kernel(float* flat, std::size_t l) const;
  VectorRef bias(float* flat, std::size_t l) const;

  // Fresh copy with its own parameter storage.
  Mlp clone() const;

 private:
  Mlp(std::vector<int> widths, std::vector<DenseSpec> dense, std::uint64_t seed);
  Mlp(Model model, std::vector<int> widths, std::vector<DenseSpec> dense);

  std::vector<int> widths_;
  std::vector<DenseSpec> dense_;
};

}  // namespace meshtrain
