#include <algorithm>
#include <string>

#include "meshtrain/error.hpp"
#include "meshtrain/clock.hpp"
#include "meshtrain/train/step_engine.hpp"

namespace meshtrain {

namespace {

enum class Split { Column, Row, Replicated };

// One layer as this rank holds it.
struct LocalLayer {
  Split split = Split::Replicated;
  std::size_t in = 0, out = 0;            // local kernel shape
  std::size_t full_in = 0, full_out = 0;  // the layer's shape
  std::size_t offset = 0;                 // kernel's first element in the local flat buffer
  Activation activation = Activation::Identity;
  std::size_t kernel_size() const { return in * out; }
  std::size_t size() const { return in * out + out; }
};

Split split_of(const TensorSpec& kernel, const std::string& axis) {
  if (kernel.partition == std::vector<std::string>{"", axis}) return Split::Column;
  if (kernel.partition == std::vector<std::string>{axis, ""}) return Split::Row;
  return Split::Replicated;
}

class TensorParallelEngine final : public StepEngine {
 public:
  TensorParallelEngine(Mlp& model, Communicator& model_group, Communicator& data_group,
                       const OptimizerConfig& optimizer, std::size_t max_rows)
      : model_(model), shards_(model_group), data_(data_group) {
    const auto m = static_cast<std::size_t>(shards_.size());
    std::size_t offset = 0;
    std::size_t widest = 1;
    for (std::size_t l = 0; l < model.layers().size(); ++l) {
      const DenseSpec& d = model.layers()[l];
      LocalLayer layer;
      layer.split = split_of(model.tensors()[2 * l], "model");
      layer.full_in = static_cast<std::size_t>(d.in);
      layer.full_out = static_cast<std::size_t>(d.out);
      layer.in = layer.full_in;
      layer.out = layer.full_out;
      layer.activation = d.activation;
      const std::size_t split_width = layer.split == Split::Column ? layer.full_out : layer.full_in;
      if (layer.split != Split::Replicated && split_width % m != 0) {
        throw ConfigError("mesh_shape: the 'model' axis of size " + std::to_string(m) +
                          " does not divide width " + std::to_string(split_width) + " of layer " +
                          std::to_string(l) + ", which tensor parallelism splits");
      }
      if (layer.split == Split::Column) layer.out /= m;
      if (layer.split == Split::Row) layer.in /= m;
      layer.offset = offset;
      offset += layer.size();
      widest = std::max({widest, layer.in, layer.out, layer.full_in, layer.full_out});
      layers_.push_back(layer);
      activations_.emplace_back("meshtrain::tp_activation", max_rows, layer.out);
    }
    local_parameters_ = offset;
    params_ = Vector("meshtrain::tp_parameters", offset);
    grads_ = Vector("meshtrain::tp_gradients", offset + 1);
    grad_a_ = Matrix("meshtrain::tp_grad_a", max_rows, widest);
    grad_b_ = Matrix("meshtrain::tp_grad_b", max_rows, widest);
    optimizer_ = std::make_unique<Optimizer>(optimizer, offset);
    scatter(model.parameters_on_host(), params_);
    model.release_parameters();  // each rank keeps only its slices
  }

  // Forward through this rank's slices; the output is replicated over the model axis.
  ConstMatrixRef forward(ConstMatrixRef x) {
    const std::size_t n = x.extent(0);
    float* p = params_.data();
    ConstMatrixRef input = x;
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const LocalLayer& layer = layers_[l];
      MatrixRef out = rows(activations_[l], 0, n);
      if (layer.split == Split::Row) {
        // Partial products over this rank's input features, summed before bias and activation.
        matmul(input, kernel(p, layer), out);
        ExecSpace().fence();
        all_reduce_model(out.data(), n * layer.out);
        bias_activation(out, bias(p, layer), layer.activation);
      } else {
        linear_forward(input, kernel(p, layer), bias(p, layer), out, layer.activation);
      }
      input = out;
    }
    return input;
  }

  double evaluate(ConstMatrixRef x, ConstMatrixRef y, float scale) override {
    ConstMatrixRef pred = forward(x);
    MatrixRef scratch(const_cast<float*>(pred.data()), pred.extent(0), pred.extent(1));
    mse_loss_grad(pred, y, scale, scratch, loss());
    return sum_scalar(loss(), {&data_});
  }

  void compute_gradients(ConstMatrixRef x, ConstMatrixRef y, int global_batch) override {
    const std::size_t n = x.extent(0);
    float* p = params_.data();
    float* g = grads_.data();
    ConstMatrixRef input = forward(x);
    MatrixRef dz(const_cast<float*>(input.data()), n, input.extent(1));
    const float scale =
        1.0f / (static_cast<float>(global_batch) * static_cast<float>(model_.out_features()));
    mse_loss_grad(input, y, scale, dz, loss());

    float* spare = grad_a_.data();
    float* other = grad_b_.data();
    for (std::size_t l = layers_.size(); l-- > 0;) {
      const LocalLayer& layer = layers_[l];
      activation_backward(rows(activations_[l], 0, n), dz, layer.activation);
      ConstMatrixRef below = l == 0 ? x : ConstMatrixRef(rows(activations_[l - 1], 0, n));
      linear_backward(below, kernel(p, layer), dz, kernel(g, layer), bias(g, layer), MatrixRef());
      if (l > 0) {
        MatrixRef dx(spare, n, layer.in);
        linear_backward_input(dz, kernel(p, layer), dx);
        // A column-parallel layer's input gradient is a partial sum over its output slices.
        if (layer.split == Split::Column) {
          ExecSpace().fence();
          all_reduce_model(dx.data(), n * layer.in);
        }
        dz = dx;
        std::swap(spare, other);
      }
    }
    ExecSpace().fence();
    const double start = now_seconds();
    data_.allreduce(g, local_parameters_ + 1, DataType::Float32, ReduceOp::Sum);
    blocked_ += now_seconds() - start;
  }

  void apply_gradients(double lr) override {
    optimizer_->step(VectorRef(params_.data(), local_parameters_),
                     ConstVectorRef(grads_.data(), local_parameters_), lr);
  }
  ConstVectorRef gradients() const override {
    return ConstVectorRef(grads_.data(), local_parameters_);
  }
  Vector local_parameters() const override { return params_; }
  Optimizer& optimizer() override { return *optimizer_; }

  Kokkos::View<float, MemSpace, Unmanaged> loss() const override {
    return Kokkos::View<float, MemSpace, Unmanaged>(grads_.data() + local_parameters_);
  }

  void gather(const Vector& local_view, HostVector& full) override {
    const Mlp& model = model_;
    auto local = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), local_view);
    const auto m = static_cast<std::size_t>(shards_.size());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const LocalLayer& layer = layers_[l];
      float* k = full.data() + model.layer_offset(l);
      float* b = k + layer.full_in * layer.full_out;
      const float* lk = local.data() + layer.offset;
      const float* lb = lk + layer.kernel_size();
      if (layer.split == Split::Replicated) {
        std::copy(lk, lk + layer.size(), k);
        continue;
      }
      // Every rank's local kernel then bias, in rank order, gathered where the tensors live
      // (device memory for NCCL) and read once.
      Vector on_device("meshtrain::tp_gather", layer.size() * m);
      ExecSpace().fence();
      shards_.all_gather(local_view.data() + layer.offset, on_device.data(), layer.size(),
                         DataType::Float32);
      auto gathered = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), on_device);
      for (std::size_t r = 0; r < m; ++r) {
        const float* rk = gathered.data() + r * layer.size();
        const float* rb = rk + layer.kernel_size();
        for (std::size_t i = 0; i < layer.in; ++i) {
          for (std::size_t j = 0; j < layer.out; ++j) {
            const std::size_t fi = layer.split == Split::Row ? r * layer.in + i : i;
            const std::size_t fj = layer.split == Split::Column ? r * layer.out + j : j;
            k[fi * layer.full_out + fj] = rk[i * layer.out + j];
          }
        }
        if (layer.split == Split::Column) std::copy(rb, rb + layer.out, b + r * layer.out);
      }
      if (layer.split == Split::Row) std::copy(lb, lb + layer.out, b);
    }
  }

  StateBytes state_bytes() const override {
    const std::size_t bytes = local_parameters_ * sizeof(float);
    return {bytes, bytes + sizeof(float), 2 * bytes, 0};
  }

  double blocked_seconds() const override { return blocked_; }
  void reset_timers() override { blocked_ = 0.0; }

 private:
  static MatrixRef kernel(float* flat, const LocalLayer& layer) {
    return MatrixRef(flat + layer.offset, layer.in, layer.out);
  }
  static VectorRef bias(float* flat, const LocalLayer& layer) {
    return VectorRef(flat + layer.offset + layer.kernel_size(), layer.out);
  }

  void all_reduce_model(float* data, std::size_t count) {
    const double start = now_seconds();
    shards_.allreduce(data, count, DataType::Float32, ReduceOp::Sum);
    blocked_ += now_seconds() - start;
  }

  // This rank's slices of a buffer in the full model's layout.
  void scatter(const HostVector& full, const Vector& local_view) override {
    const Mlp& model = model_;
    auto local = Kokkos::create_mirror_view(local_view);
    const auto r = static_cast<std::size_t>(shards_.rank());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const LocalLayer& layer = layers_[l];
      const float* k = full.data() + model.layer_offset(l);
      const float* b = k + layer.full_in * layer.full_out;
      float* lk = local.data() + layer.offset;
      float* lb = lk + layer.kernel_size();
      for (std::size_t i = 0; i < layer.in; ++i) {
        for (std::size_t j = 0; j < layer.out; ++j) {
          const std::size_t fi = layer.split == Split::Row ? r * layer.in + i : i;
          const std::size_t fj = layer.split == Split::Column ? r * layer.out + j : j;
          lk[i * layer.out + j] = k[fi * layer.full_out + fj];
        }
      }
      const std::size_t bias_from = layer.split == Split::Column ? r * layer.out : 0;
      std::copy(b + bias_from, b + bias_from + layer.out, lb);
    }
    Kokkos::deep_copy(local_view, local);
  }

  const Mlp& model_;
  Communicator& shards_;
  Communicator& data_;
  std::vector<LocalLayer> layers_;
  std::size_t local_parameters_ = 0;
  Vector params_;
  Vector grads_;  // local parameters + 1: the loss rides in the last slot
  std::vector<Matrix> activations_;
  Matrix grad_a_;
  Matrix grad_b_;
  std::unique_ptr<Optimizer> optimizer_;
  double blocked_ = 0.0;
};

}  // namespace

std::unique_ptr<StepEngine> make_tensor_parallel_engine(Mlp& model,
                                                        Communicator& model_group,
                                                        Communicator& data_group,
                                                        const OptimizerConfig& optimizer,
                                                        std::size_t max_rows) {
  return std::make_unique<TensorParallelEngine>(model, model_group, data_group, optimizer,
                                                max_rows);
}

}  // namespace meshtrain
