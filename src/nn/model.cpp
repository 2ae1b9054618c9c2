#include "meshtrain/nn/model.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "meshtrain/error.hpp"
#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/trace.hpp"

namespace meshtrain {

namespace {
constexpr std::uint64_t kInitStream = 1;
}  // namespace

Model::Model(std::vector<std::unique_ptr<Layer>> layers) : layers_(std::move(layers)) {
  lay_out();
  params_ = Vector("meshtrain::parameters", num_parameters_);
}

Model::Model(std::vector<std::unique_ptr<Layer>> layers, std::uint64_t seed)
    : Model(std::move(layers)) {
  HostVector host("meshtrain::parameters_host", num_parameters_);  // zero-filled
  Random rng(derive_seed(seed, kInitStream));
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    layers_[l]->initialize(host.data() + layer_offset_[l], rng);
  }
  Kokkos::deep_copy(params_, host);
}

Model::Model(const Model& other) { *this = other; }

Model& Model::operator=(const Model& other) {
  if (this == &other) return *this;
  copy_layers_from(other);
  params_ = other.params_;
  return *this;
}

void Model::copy_layers_from(const Model& other) {
  layers_.clear();
  for (const auto& layer : other.layers_) layers_.push_back(layer->clone());
  tensors_ = other.tensors_;
  layer_offset_ = other.layer_offset_;
  first_tensor_ = other.first_tensor_;
  num_parameters_ = other.num_parameters_;
  loss_ = other.loss_;
  compute_dtype_ = other.compute_dtype_;
}

void Model::set_compute_dtype(Dtype dtype) {
  if (dtype == Dtype::Bf16) {
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const Layer& layer = *layers_[l];
      if (layer.num_parameters() > 0 && !layer.computes_in_bf16()) {
        throw ConfigError("compute_dtype", "'bf16': layer " + std::to_string(l) + " (" +
                                               layer.describe() +
                                               ") computes in fp32 only; bf16 compute is "
                                               "supported for dense layers (MLP models)");
      }
    }
  }
  compute_dtype_ = dtype;
}

void Model::lay_out() {
  if (layers_.empty()) throw ConfigError("model: needs at least one layer");
  tensors_.clear();
  layer_offset_.clear();
  first_tensor_.clear();
  std::size_t offset = 0;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = *layers_[l];
    if (l > 0 && layer.in_features() != layers_[l - 1]->out_features()) {
      throw ConfigError("model: layer " + std::to_string(l) + " takes " +
                        std::to_string(layer.in_features()) + " features, layer " +
                        std::to_string(l - 1) + " gives " +
                        std::to_string(layers_[l - 1]->out_features()));
    }
    layer_offset_.push_back(offset);
    first_tensor_.push_back(tensors_.size());
    for (TensorSpec t : layer.tensors()) {
      t.name = "layers." + std::to_string(l) + "." + t.name;
      t.offset += offset;
      tensors_.push_back(std::move(t));
    }
    offset += layer.num_parameters();
  }
  num_parameters_ = offset;
}

std::size_t Model::layer_of_tensor(std::size_t t) const {
  const auto after = std::upper_bound(first_tensor_.begin(), first_tensor_.end(), t);
  return static_cast<std::size_t>(after - first_tensor_.begin()) - 1;
}

HostVector Model::parameters_on_host() const {
  HostVector host("meshtrain::parameters_host", num_parameters_);
  Kokkos::deep_copy(host, params_);
  return host;
}

void Model::set_parameters(const HostVector& values) {
  if (values.extent(0) != num_parameters_) {
    throw ConfigError("parameters: got " + std::to_string(values.extent(0)) +
                      " values for a model of " + std::to_string(num_parameters_));
  }
  Kokkos::deep_copy(params_, values);
}

void Model::append_fixed(std::unique_ptr<Layer> layer) {
  if (layer->num_parameters() != 0) {
    throw ConfigError("model: append_fixed takes a layer without parameters, got " +
                      layer->describe() + " with " + std::to_string(layer->num_parameters()));
  }
  layers_.push_back(std::move(layer));
  try {
    lay_out();
  } catch (...) {
    layers_.pop_back();
    lay_out();
    throw;
  }
}

void Model::allocate_parameters() {
  if (params_.extent(0) != num_parameters_) {
    params_ = Vector("meshtrain::parameters", num_parameters_);
  }
}

void Model::set_partition(std::size_t tensor, std::vector<std::string> partition) {
  const TensorSpec& t = tensors_.at(tensor);
  if (partition.size() != t.shape.size()) {
    throw ConfigError("partition of " + t.name + ": " + std::to_string(partition.size()) +
                      " entries for a " + std::to_string(t.shape.size()) + "-D tensor");
  }
  const std::size_t l = layer_of_tensor(tensor);
  layers_[l]->set_partition(tensor - first_tensor_[l], partition);
  tensors_[tensor].partition = std::move(partition);
}

void Model::set_megatron_partitioning(const std::string& axis) {
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const bool paired = l + 1 < layers_.size() || l % 2 == 1;
    const ParallelRole role = !paired      ? ParallelRole::Replicated
                              : l % 2 == 0 ? ParallelRole::Column
                                           : ParallelRole::Row;
    layers_[l]->set_parallel_role(role, axis);
    for (std::size_t t = 0; t < layers_[l]->tensors().size(); ++t) {
      tensors_[first_tensor_[l] + t].partition = layers_[l]->tensors()[t].partition;
    }
  }
}

float Model::loss_scale(int rows) const {
  if (loss_ == Loss::RelativeL2) return 1.0f / static_cast<float>(rows);
  return 1.0f / (static_cast<float>(rows) * static_cast<float>(out_features()));
}

const float* Model::gather(const PassHooks& hooks, std::size_t l) const {
  return hooks.gather ? hooks.gather(l) : params_.data() + layer_offset_[l];
}

ConstMatrixRef Model::forward(ConstMatrixRef x, ModelWorkspace& ws,
                              const PassHooks& hooks) const {
  const std::size_t n = x.extent(0);
  if (n > ws.max_rows_) {
    throw std::logic_error("Model::forward: " + std::to_string(n) +
                           " rows exceed the workspace's " + std::to_string(ws.max_rows_));
  }
  ConstMatrixRef input = x;
  for (std::size_t l = 0; l < layers_.size(); ++l) {
    const float* p = gather(hooks, l);
    MatrixRef y = rows(ws.activations_[l], 0, n);
    TraceSpan span("forward", "layer", static_cast<std::int64_t>(l));
    layers_[l]->forward({hooks, l, ws.scratch_.data() + ws.scratch_offset_[l], ws.gemm_}, input,
                        p, y);
    if (hooks.release) hooks.release(l);
    input = y;
  }
  return input;
}

ConstMatrixRef Model::forward_loss(ConstMatrixRef x, ConstMatrixRef y, float scale,
                                   Kokkos::View<float, MemSpace, Unmanaged> loss_out,
                                   ModelWorkspace& ws, const PassHooks& hooks) const {
  const ConstMatrixRef pred = forward(x, ws, hooks);
  const MatrixRef dpred = rows(ws.output_grad_, 0, x.extent(0));
  if (loss_ == Loss::RelativeL2) {
    relative_l2_loss_grad(pred, y, scale, dpred, loss_out);
  } else {
    mse_loss_grad(pred, y, scale, dpred, loss_out);
  }
  return pred;
}

void Model::backward(ConstMatrixRef x, ModelWorkspace& ws, const PassHooks& hooks) const {
  backward(x, ws, rows(ws.output_grad_, 0, x.extent(0)), hooks);
}

void Model::backward(ConstMatrixRef x, ModelWorkspace& ws, MatrixRef dout, float* grads) const {
  PassHooks hooks;
  hooks.gradients = [this, grads](std::size_t l) { return grads + layer_offset_[l]; };
  backward(x, ws, dout, hooks);
}

void Model::backward(ConstMatrixRef x, ModelWorkspace& ws, MatrixRef dout,
                     const PassHooks& hooks) const {
  const std::size_t n = x.extent(0);
  MatrixRef dy = dout;
  float* spare = ws.grad_a_.data();
  float* other = ws.grad_b_.data();
  for (std::size_t l = layers_.size(); l-- > 0;) {
    const Layer& layer = *layers_[l];
    const LayerPass pass{hooks, l, ws.scratch_.data() + ws.scratch_offset_[l], ws.gemm_};
    TraceSpan span("backward", "layer", static_cast<std::int64_t>(l));
    const float* p = gather(hooks, l);
    float* g = hooks.gradients(l);
    const ConstMatrixRef input = l == 0 ? x : ConstMatrixRef(rows(ws.activations_[l - 1], 0, n));
    layer.backward_parameters(pass, input, rows(ws.activations_[l], 0, n), dy, p, g);
    if (hooks.gradients_ready) hooks.gradients_ready(l);
    // The first layer's input gradient is nobody's.
    MatrixRef dx;
    if (l > 0) {
      dx = MatrixRef(spare, n, layer.in_features());
      layer.backward_input(pass, dy, p, dx);
    }
    if (hooks.release) hooks.release(l);
    dy = dx;
    std::swap(spare, other);
  }
}

Model Model::clone() const {
  Model copy;
  copy.copy_layers_from(*this);
  copy.params_ = Vector("meshtrain::parameters", num_parameters_);
  Kokkos::deep_copy(copy.params_, params_);
  return copy;
}

ModelWorkspace::ModelWorkspace(const Model& model, std::size_t max_rows) : max_rows_(max_rows) {
  std::size_t widest = 1;
  std::size_t scratch = 0;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    const Layer& layer = model.layer(l);
    activations_.emplace_back("meshtrain::activation", max_rows, layer.out_features());
    widest = std::max({widest, layer.in_features(), layer.out_features()});
    scratch_offset_.push_back(scratch);
    scratch += layer.scratch_size(max_rows);
  }
  output_grad_ = Matrix("meshtrain::output_grad", max_rows, model.layer(model.num_layers() - 1)
                                                               .out_features());
  if (model.compute_dtype() == Dtype::Bf16) {
    std::size_t gemm = 0;
    for (std::size_t l = 0; l < model.num_layers(); ++l) {
      gemm = std::max(gemm, model.layer(l).gemm_scratch_size(max_rows));
    }
    gemm_scratch_ = Vector("meshtrain::gemm_scratch", gemm);
    gemm_ = {Dtype::Bf16, gemm_scratch_.data()};
  }
  grad_a_ = Matrix("meshtrain::grad_a", max_rows, widest);
  grad_b_ = Matrix("meshtrain::grad_b", max_rows, widest);
  scratch_ = Vector("meshtrain::layer_scratch", scratch);
}

}  // namespace meshtrain
