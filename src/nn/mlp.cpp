#include "meshtrain/nn/mlp.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
constexpr std::uint64_t kInitStream = 1;
// Flax's lecun_normal: variance_scaling(1, "fan_in", "truncated_normal"); the truncated
// normal on [-2, 2] has this standard deviation, which Flax divides out.
constexpr double kTruncatedNormalStd = 0.87962566103423978;
}  // namespace

Mlp::Mlp(std::vector<int> widths, Activation hidden, std::uint64_t seed)
    : widths_(std::move(widths)) {
  std::string listed = "[";
  for (std::size_t i = 0; i < widths_.size(); ++i)
    listed += (i ? ", " : "") + std::to_string(widths_[i]);
  listed += "]";
  if (widths_.size() < 2) {
    throw ConfigError("model widths", listed + ": need at least an input and an output");
  }
  for (int w : widths_) {
    if (w < 1) {
      throw ConfigError("model widths", listed + ": width " + std::to_string(w) + " must be >= 1");
    }
  }
  std::size_t offset = 0;
  for (std::size_t l = 0; l + 1 < widths_.size(); ++l) {
    const bool last = l + 2 == widths_.size();
    layers_.push_back({widths_[l], widths_[l + 1], last ? Activation::Identity : hidden});
    const auto in = static_cast<std::size_t>(widths_[l]);
    const auto out = static_cast<std::size_t>(widths_[l + 1]);
    const std::string prefix = "layers." + std::to_string(l) + ".";
    tensors_.push_back({prefix + "kernel", {in, out}, offset, in * out, {"", ""}});
    offset += in * out;
    tensors_.push_back({prefix + "bias", {out}, offset, out, {""}});
    offset += out;
  }
  num_parameters_ = offset;
  params_ = Vector("meshtrain::parameters", num_parameters_);

  HostVector host("meshtrain::parameters_host", num_parameters_);  // zero-filled: biases
  Random rng(derive_seed(seed, kInitStream));
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const TensorSpec& k = tensors_[2 * l];
    const double std = std::sqrt(1.0 / layers_[l].in) / kTruncatedNormalStd;
    for (std::size_t i = 0; i < k.size; ++i) {
      host(k.offset + i) = static_cast<float>(rng.truncated_normal() * std);
    }
  }
  Kokkos::deep_copy(params_, host);
}

Mlp Mlp::simple_pde_model(std::uint64_t seed) { return Mlp({4, 64, 1}, Activation::ReLU, seed); }

HostVector Mlp::parameters_on_host() const {
  HostVector host("meshtrain::parameters_host", num_parameters_);
  Kokkos::deep_copy(host, params_);
  return host;
}

void Mlp::set_parameters(const HostVector& values) {
  if (values.extent(0) != num_parameters_) {
    throw ConfigError("parameters: got " + std::to_string(values.extent(0)) +
                      " values for a model of " + std::to_string(num_parameters_));
  }
  Kokkos::deep_copy(params_, values);
}

MatrixRef Mlp::kernel(float* flat, std::size_t l) const {
  const TensorSpec& t = tensors_[2 * l];
  return MatrixRef(flat + t.offset, t.shape[0], t.shape[1]);
}

VectorRef Mlp::bias(float* flat, std::size_t l) const {
  const TensorSpec& t = tensors_[2 * l + 1];
  return VectorRef(flat + t.offset, t.size);
}

MatrixRef Mlp::layer_kernel(const float* block, std::size_t l) const {
  return MatrixRef(const_cast<float*>(block), static_cast<std::size_t>(layers_[l].in),
                   static_cast<std::size_t>(layers_[l].out));
}

VectorRef Mlp::layer_bias(const float* block, std::size_t l) const {
  return VectorRef(const_cast<float*>(block) + tensors_[2 * l].size,
                   static_cast<std::size_t>(layers_[l].out));
}

void Mlp::allocate_parameters() {
  if (params_.extent(0) != num_parameters_) {
    params_ = Vector("meshtrain::parameters", num_parameters_);
  }
}

ConstMatrixRef Mlp::forward(ConstMatrixRef x, MlpWorkspace& ws) const {
  return forward(x, ws, LayerAccess{});
}

ConstMatrixRef Mlp::forward(ConstMatrixRef x, MlpWorkspace& ws, const LayerAccess& access) const {
  const std::size_t n = x.extent(0);
  if (n > ws.max_rows_) {
    throw std::logic_error("Mlp::forward: " + std::to_string(n) + " rows exceed the workspace's " +
                           std::to_string(ws.max_rows_));
  }
  ConstMatrixRef input = x;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const float* p = access.parameters ? access.parameters(l) : params_.data() + layer_offset(l);
    MatrixRef y = rows(ws.activations_[l], 0, n);
    linear_forward(input, layer_kernel(p, l), layer_bias(p, l), y, layers_[l].activation);
    input = y;
  }
  return input;
}

void Mlp::backward(ConstMatrixRef x, MlpWorkspace& ws, MatrixRef dout, float* grads,
                   const std::function<void(std::size_t)>& on_layer_grads) const {
  LayerAccess access;
  access.gradients = [this, grads](std::size_t l) { return grads + layer_offset(l); };
  access.gradients_ready = on_layer_grads;
  backward(x, ws, dout, access);
}

void Mlp::backward(ConstMatrixRef x, MlpWorkspace& ws, MatrixRef dout,
                   const LayerAccess& access) const {
  const std::size_t n = x.extent(0);
  MatrixRef dz = dout;
  float* spare = ws.grad_a_.data();
  float* other = ws.grad_b_.data();
  for (std::size_t l = layers_.size(); l-- > 0;) {
    const DenseSpec& layer = layers_[l];
    const float* p = access.parameters ? access.parameters(l) : params_.data() + layer_offset(l);
    float* g = access.gradients(l);
    activation_backward(rows(ws.activations_[l], 0, n), dz, layer.activation);
    if (access.progress) access.progress();
    ConstMatrixRef input = l == 0 ? x : ConstMatrixRef(rows(ws.activations_[l - 1], 0, n));
    MatrixRef dx = l == 0 ? MatrixRef() : MatrixRef(spare, n, static_cast<std::size_t>(layer.in));
    linear_backward(input, layer_kernel(p, l), dz, layer_kernel(g, l), layer_bias(g, l),
                    MatrixRef());
    if (access.gradients_ready) access.gradients_ready(l);
    if (l > 0) {
      linear_backward_input(dz, layer_kernel(p, l), dx);
      if (access.progress) access.progress();
    }
    dz = dx;
    std::swap(spare, other);
  }
}

void Mlp::set_partition(std::size_t tensor, std::vector<std::string> partition) {
  if (partition.size() != tensors_.at(tensor).shape.size()) {
    throw ConfigError("partition of " + tensors_[tensor].name + ": " +
                      std::to_string(partition.size()) + " entries for a " +
                      std::to_string(tensors_[tensor].shape.size()) + "-D tensor");
  }
  tensors_[tensor].partition = std::move(partition);
}

void Mlp::set_megatron_partitioning(const std::string& axis) {
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const bool paired = l + 1 < layers_.size() || l % 2 == 1;
    if (!paired) {
      set_partition(2 * l, {"", ""});
      set_partition(2 * l + 1, {""});
    } else if (l % 2 == 0) {
      set_partition(2 * l, {"", axis});
      set_partition(2 * l + 1, {axis});
    } else {
      set_partition(2 * l, {axis, ""});
      set_partition(2 * l + 1, {""});
    }
  }
}

Mlp Mlp::clone() const {
  Mlp copy;
  copy.widths_ = widths_;
  copy.layers_ = layers_;
  copy.tensors_ = tensors_;
  copy.num_parameters_ = num_parameters_;
  copy.params_ = Vector("meshtrain::parameters", num_parameters_);
  Kokkos::deep_copy(copy.params_, params_);
  return copy;
}

MlpWorkspace::MlpWorkspace(const Mlp& model, std::size_t max_rows) : max_rows_(max_rows) {
  int widest = 1;
  for (const DenseSpec& layer : model.layers()) {
    activations_.emplace_back("meshtrain::activation", max_rows, layer.out);
    widest = std::max({widest, layer.in, layer.out});
  }
  grad_a_ = Matrix("meshtrain::grad_a", max_rows, widest);
  grad_b_ = Matrix("meshtrain::grad_b", max_rows, widest);
}

}  // namespace meshtrain
