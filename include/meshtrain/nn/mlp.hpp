#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/nn/types.hpp"

namespace meshtrain {

// One tensor inside the flat parameter buffer.
struct TensorSpec {
  std::string name;                 // "layers.0.kernel", "layers.0.bias", ...
  std::vector<std::size_t> shape;   // kernel (in, out), bias (out)
  std::size_t offset = 0;           // first element in the flat buffer
  std::size_t size = 0;             // elements
  // Which mesh axis each dimension is split over ("" = replicated), the analogue of Flax's
  // nnx.with_partitioning. Tensor parallelism reads it: a kernel ("", "model") is
  // column-parallel (its bias ("model")), a kernel ("model", "") row-parallel (its bias
  // replicated). FSDP shards each layer's flat block whatever the spec says.
  std::vector<std::string> partition;
};

struct DenseSpec {
  int in = 0;
  int out = 0;
  Activation activation = Activation::Identity;
};

class MlpWorkspace;

// Where a pass reads and writes each layer's parameters, for strategies that do not keep the
// whole model in one local buffer (FSDP gathers a layer at a time). Each pointer addresses one
// layer's block: kernel (in x out, row-major) followed by bias (out), layer_size(l) floats.
struct LayerAccess {
  std::function<const float*(std::size_t layer)> parameters;  // empty: the model's own
  std::function<float*(std::size_t layer)> gradients;         // backward's destination
  std::function<void(std::size_t layer)> gradients_ready;     // optional
  // Optional: called between backward's kernels, so that communication that only advances
  // when polled (MPI's non-blocking collectives) moves on while backward computes.
  std::function<void()> progress;
};

// A multi-layer perceptron: Dense layers with the activation fused into each, the last
// layer linear. All parameters live in one flat Kokkos view (kernel then bias per layer),
// so a whole-model collective or optimizer step is one call on one buffer; every tensor
// is a view into it.
class Mlp {
 public:
  // widths = {in, hidden..., out}; hidden layers use `hidden`, the output layer is linear.
  // Kernels are initialised LeCun-normal as Flax does (truncated to +-2 sigma, then
  // std = sqrt(1 / fan_in) / 0.87962566103423978), biases zero, from `seed`.
  Mlp(std::vector<int> widths, Activation hidden, std::uint64_t seed);

  // The reference tutorial's SimplePDEModel: Linear(4->64), ReLU, Linear(64->1).
  static Mlp simple_pde_model(std::uint64_t seed);

  std::size_t num_parameters() const { return num_parameters_; }
  const std::vector<int>& widths() const { return widths_; }
  const std::vector<DenseSpec>& layers() const { return layers_; }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  int in_features() const { return widths_.front(); }
  int out_features() const { return widths_.back(); }

  Vector parameters() const { return params_; }
  HostVector parameters_on_host() const;
  void set_parameters(const HostVector& values);

  // Views of layer l's tensors inside any flat buffer laid out like the parameters
  // (the parameters themselves, the gradients, optimizer moments).
  MatrixRef kernel(float* flat, std::size_t l) const;
  VectorRef bias(float* flat, std::size_t l) const;

  std::size_t layer_offset(std::size_t l) const { return tensors_[2 * l].offset; }
  std::size_t layer_size(std::size_t l) const {
    return tensors_[2 * l].size + tensors_[2 * l + 1].size;
  }

  // Forward pass over x (n x in) into the workspace; returns the output rows (n x out).
  ConstMatrixRef forward(ConstMatrixRef x, MlpWorkspace& ws) const;
  ConstMatrixRef forward(ConstMatrixRef x, MlpWorkspace& ws, const LayerAccess& access) const;
  // Backward pass after forward(x, ws); dout (n x out) is overwritten. Writes every gradient
  // into grads (a flat buffer of num_parameters() elements). Layers run last to first;
  // on_layer_grads(l), if given, is called as soon as layer l's kernel and bias gradients
  // are written (before the input gradient for the layer below is computed).
  void backward(ConstMatrixRef x, MlpWorkspace& ws, MatrixRef dout, float* grads,
                const std::function<void(std::size_t)>& on_layer_grads = {}) const;
  void backward(ConstMatrixRef x, MlpWorkspace& ws, MatrixRef dout,
                const LayerAccess& access) const;

  // Frees the local parameter buffer (a sharded strategy keeps only its shard) and
  // allocates it again (to gather the trained model into).
  void release_parameters() { params_ = Vector(); }
  void allocate_parameters();

  // Megatron-style specs: layers (0, 1), (2, 3), ... become column-parallel / row-parallel
  // pairs over `axis`; with an odd layer count the last layer stays replicated.
  void set_megatron_partitioning(const std::string& axis = "model");
  void set_partition(std::size_t tensor, std::vector<std::string> partition);

  // Fresh copy with its own parameter storage.
  Mlp clone() const;

 private:
  Mlp() = default;
  MatrixRef layer_kernel(const float* block, std::size_t l) const;
  VectorRef layer_bias(const float* block, std::size_t l) const;

  std::vector<int> widths_;
  std::vector<DenseSpec> layers_;
  std::vector<TensorSpec> tensors_;
  std::size_t num_parameters_ = 0;
  Vector params_;
};

// Activation buffers for batches of up to max_rows rows, allocated once so that no
// training step allocates.
class MlpWorkspace {
 public:
  MlpWorkspace(const Mlp& model, std::size_t max_rows);
  std::size_t max_rows() const { return max_rows_; }

 private:
  friend class Mlp;
  std::size_t max_rows_;
  std::vector<Matrix> activations_;  // output of each layer
  Matrix grad_a_;                    // ping-pong buffers for dL/d(activation)
  Matrix grad_b_;
};

}  // namespace meshtrain
