#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/choices.hpp"
#include "meshtrain/nn/layer.hpp"

namespace meshtrain {

class ModelWorkspace;

// A sequence of layers with every parameter in one flat Kokkos view (each layer's tensors
// one after another, in layer order), so that a whole-model collective or optimizer step is
// one call on one buffer. One forward and one backward pass serve every strategy, which
// steps in through PassHooks.
class Model {
 public:
  // Parameters zero (set them with set_parameters or through parameters()).
  explicit Model(std::vector<std::unique_ptr<Layer>> layers);
  // Parameters initialised by each layer in turn from one stream derived from seed.
  Model(std::vector<std::unique_ptr<Layer>> layers, std::uint64_t seed);
  // A copy shares the parameter storage (as a Kokkos view does); clone() does not.
  Model(const Model& other);
  Model& operator=(const Model& other);
  Model(Model&&) noexcept = default;
  Model& operator=(Model&&) noexcept = default;

  std::size_t num_layers() const { return layers_.size(); }
  const Layer& layer(std::size_t l) const { return *layers_[l]; }
  int in_features() const { return static_cast<int>(layers_.front()->in_features()); }
  int out_features() const { return static_cast<int>(layers_.back()->out_features()); }

  // Every layer's tensors, named "layers.<l>.<name>", offsets into the flat buffer.
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  std::size_t num_parameters() const { return num_parameters_; }
  std::size_t layer_offset(std::size_t l) const { return layer_offset_[l]; }
  std::size_t layer_size(std::size_t l) const { return layers_[l]->num_parameters(); }
  // Index in tensors() of layer l's first tensor, and the layer a tensor belongs to.
  std::size_t first_tensor(std::size_t l) const { return first_tensor_[l]; }
  std::size_t layer_of_tensor(std::size_t t) const;

  Vector parameters() const { return params_; }
  HostVector parameters_on_host() const;
  void set_parameters(const HostVector& values);
  // Frees the local parameter buffer (a sharded strategy keeps only its shard) and
  // allocates it again (to gather the trained model into).
  void release_parameters() { params_ = Vector(); }
  void allocate_parameters();

  // Appends a layer without parameters (a fixed output transform, such as a data decoder):
  // the flat buffer and every tensor stay as they are. Throws ConfigError for a layer with
  // parameters or one whose input does not fit the last layer's output.
  void append_fixed(std::unique_ptr<Layer> layer);

  void set_partition(std::size_t tensor, std::vector<std::string> partition);
  // Megatron-style specs: layers (0, 1), (2, 3), ... become column-parallel / row-parallel
  // pairs over `axis`; with an odd layer count the last layer stays replicated.
  void set_megatron_partitioning(const std::string& axis = "model");

  // The loss forward_loss computes (MSE unless set), and its scale for a global batch of
  // `rows` rows: 1 / (rows * outputs) for MSE, 1 / rows for the relative L2 error.
  void set_loss(Loss loss) { loss_ = loss; }
  Loss loss() const { return loss_; }

  // How the layers' gemms compute (see GemmPrecision): fp32 (the default) or bf16 operands
  // with fp32 accumulation. Workspaces made afterwards follow it. ConfigError("compute_dtype")
  // when a layer with parameters cannot compute in bf16.
  void set_compute_dtype(Dtype dtype);
  Dtype compute_dtype() const { return compute_dtype_; }
  float loss_scale(int rows) const;

  // Forward pass over x (n x in) into the workspace; returns the output rows (n x out).
  ConstMatrixRef forward(ConstMatrixRef x, ModelWorkspace& ws, const PassHooks& hooks = {}) const;
  // Forward, then the loss against y over this rank's rows (mse_loss_grad or
  // relative_l2_loss_grad): loss_out() and the workspace's output gradient dL/dpred, ready
  // for backward(x, ws, hooks). Written on the device, without a host synchronisation.
  // Returns pred.
  ConstMatrixRef forward_loss(ConstMatrixRef x, ConstMatrixRef y, float scale,
                    Kokkos::View<float, MemSpace, Unmanaged> loss_out, ModelWorkspace& ws,
                    const PassHooks& hooks = {}) const;
  // Backward pass after forward_loss(x, ...), from the workspace's output gradient, layers
  // last to first; hooks.gradients is required.
  void backward(ConstMatrixRef x, ModelWorkspace& ws, const PassHooks& hooks) const;
  // The same from a given dL/d(output) dout (n x out), which is overwritten.
  void backward(ConstMatrixRef x, ModelWorkspace& ws, MatrixRef dout,
                const PassHooks& hooks) const;
  // The same, writing every gradient into grads (a flat buffer of num_parameters()).
  void backward(ConstMatrixRef x, ModelWorkspace& ws, MatrixRef dout, float* grads) const;

  // Fresh copy with its own parameter storage.
  Model clone() const;

 protected:
  Model() = default;
  void copy_layers_from(const Model& other);

 private:
  void lay_out();
  const float* gather(const PassHooks& hooks, std::size_t l) const;

  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<TensorSpec> tensors_;
  std::vector<std::size_t> layer_offset_;
  std::vector<std::size_t> first_tensor_;
  std::size_t num_parameters_ = 0;
  Loss loss_ = Loss::Mse;
  Dtype compute_dtype_ = Dtype::Fp32;
  Vector params_;
};

// Activation, gradient and layer scratch buffers for batches of up to max_rows rows,
// allocated once so that no training step allocates.
class ModelWorkspace {
 public:
  ModelWorkspace(const Model& model, std::size_t max_rows);
  std::size_t max_rows() const { return max_rows_; }

 private:
  friend class Model;
  std::size_t max_rows_;
  std::vector<Matrix> activations_;  // output of each layer
  Matrix output_grad_;               // dL/d(output), written by forward_loss
  Matrix grad_a_;                    // ping-pong buffers for dL/d(activation)
  Matrix grad_b_;
  Vector scratch_;                   // every layer's scratch, one after another
  std::vector<std::size_t> scratch_offset_;
  Vector gemm_scratch_;              // bf16 compute: the rounded operands of one gemm
  GemmPrecision gemm_;
};

}  // namespace meshtrain
