#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "meshtrain/clock.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/mesh/distributed_config.hpp"
#include "meshtrain/train/step_engine.hpp"
#include "train/device_order.hpp"
#include "train/gradient_accumulator.hpp"

namespace meshtrain {

namespace {

const std::string kAxis = "model";

ParallelRole role_of(const Model& model, std::size_t l) {
  return l < model.num_layers() ? model.layer(l).parallel_role(kAxis) : ParallelRole::Replicated;
}

// This rank's model: every layer replaced by its shard over the model axis.
Model shard_model(const Model& model, int parts) {
  std::vector<std::unique_ptr<Layer>> layers;
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    layers.push_back(model.layer(l).shard(kAxis, parts));
  }
  Model local(std::move(layers));
  local.set_loss(model.loss());  // the loss is taken on the full (replicated) output
  local.set_compute_dtype(model.compute_dtype());
  return local;
}

class TensorParallelEngine final : public StepEngine {
 public:
  TensorParallelEngine(Model& model, Communicator& model_group, Communicator& data_group,
                       const OptimizerConfig& optimizer, std::size_t max_rows,
                       int accumulation_steps)
      : model_(model),
        shards_(model_group),
        data_(data_group),
        local_(shard_model(model, model_group.size())),
        workspace_(local_, max_rows),
        grads_("meshtrain::tp_gradients", local_.num_parameters() + 1),
        accumulated_(local_.num_parameters() + 1, accumulation_steps),
        optimizer_(optimizer, local_.num_parameters()) {
    hooks_.gradients = [this](std::size_t l) { return grads_.data() + local_.layer_offset(l); };
    hooks_.reduce_output = [this](std::size_t, MatrixRef partial) { all_reduce_model(partial); };
    hooks_.reduce_input_gradient = [this](std::size_t, MatrixRef partial) {
      all_reduce_model(partial);
    };
    for (const TensorSpec& tensor : model.tensors()) {
      split_.push_back(std::find(tensor.partition.begin(), tensor.partition.end(), kAxis) !=
                       tensor.partition.end());
    }
    if (split_.size() != local_.tensors().size()) {
      throw std::logic_error("tensor parallelism: a shard has another number of tensors");
    }
    scatter(model.parameters_on_host(), local_.parameters());
    model.release_parameters();  // each rank keeps only its slices
  }

  double evaluate(ConstMatrixRef x, ConstMatrixRef y, float scale) override {
    local_.forward_loss(x, y, scale, loss(), workspace_, hooks_);
    return sum_scalar(loss(), {&data_});
  }

  // Every micro-batch sums its activations over the model axis; the gradient is summed over
  // the data axis once per step.
  void compute_gradients(ConstMatrixRef x, ConstMatrixRef y, int global_batch,
                         MicroBatch micro) override {
    local_.forward_loss(x, y, model_.loss_scale(global_batch), loss(), workspace_, hooks_);
    local_.backward(x, workspace_, hooks_);
    const std::size_t n = local_.num_parameters() + 1;  // the loss in the last slot
    if (!micro.last()) {
      accumulated_.keep(grads_.data(), 0, n, micro.first());
      return;
    }
    if (micro.count > 1) accumulated_.add_to(grads_.data(), 0, n);
    order_collective_after_compute(data_);
    const double start = now_seconds();
    data_.allreduce(grads_.data(), local_.num_parameters() + 1, DataType::Float32,
                    ReduceOp::Sum);
    blocked_ += now_seconds() - start;
  }

  void apply_gradients(double lr) override {
    const std::size_t p = local_.num_parameters();
    optimizer_.step(VectorRef(local_.parameters().data(), p), ConstVectorRef(grads_.data(), p),
                    lr);
  }
  ConstVectorRef gradients() const override {
    return ConstVectorRef(grads_.data(), local_.num_parameters());
  }
  // A tensor split over the model axis holds a different slice on each of its ranks (summed
  // over the axis); a replicated one holds the same values on every rank (counted once).
  double gradient_norm() override {
    double split = 0.0, replicated = 0.0;
    const auto& tensors = local_.tensors();
    for (std::size_t t = 0; t < tensors.size(); ++t) {
      const double s = squared_norm(grads_.data() + tensors[t].offset, tensors[t].size);
      (split_[t] ? split : replicated) += s;
    }
    return std::sqrt(sum_over(shards_, split, norm_scratch_) + replicated);
  }
  void scale_gradients(float factor) override {
    scale_in_place(grads_.data(), local_.num_parameters(), factor);
  }
  Vector local_parameters() const override { return local_.parameters(); }
  // Each layer's slices as the layer lays them out; the data group's first rank saves them,
  // and what the model group replicates is saved by its first rank.
  std::vector<HeldRun> held_runs() const override {
    std::vector<HeldRun> runs;
    for (std::size_t l = 0; l < local_.num_layers(); ++l) {
      for (const ShardRun& r : model_.layer(l).shard_runs(kAxis, shards_.size(), shards_.rank())) {
        const bool write = data_.rank() == 0 && (!r.replicated || shards_.rank() == 0);
        runs.push_back({model_.layer_offset(l) + r.full, local_.layer_offset(l) + r.local, r.length, write});
      }
    }
    return runs;
  }
  Optimizer& optimizer() override { return optimizer_; }

  Kokkos::View<float, MemSpace, Unmanaged> loss() const override {
    return Kokkos::View<float, MemSpace, Unmanaged>(grads_.data() + local_.num_parameters());
  }

  void gather(const Vector& local_view, HostVector& full) override {
    auto local = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), local_view);
    const int m = shards_.size();
    for (std::size_t l = 0; l < local_.num_layers(); ++l) {
      const Layer& layer = model_.layer(l);
      float* block = full.data() + model_.layer_offset(l);
      const std::size_t offset = local_.layer_offset(l);
      const std::size_t size = local_.layer_size(l);
      if (layer.parallel_role(kAxis) == ParallelRole::Replicated) {
        std::copy(local.data() + offset, local.data() + offset + size, block);
        continue;
      }
      // Every rank's block in rank order, gathered where the tensors live (device memory
      // for NCCL) and read once.
      Vector on_device("meshtrain::tp_gather", size * static_cast<std::size_t>(m));
      ExecSpace().fence();
      shards_.all_gather(local_view.data() + offset, on_device.data(), size, DataType::Float32);
      auto gathered = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), on_device);
      layer.join_shards(gathered.data(), block, kAxis, m, shards_.rank());
    }
  }

  // This rank's slices of a buffer in the full model's layout.
  void scatter(const HostVector& full, const Vector& local_view) override {
    auto local = Kokkos::create_mirror_view(local_view);
    for (std::size_t l = 0; l < local_.num_layers(); ++l) {
      model_.layer(l).take_shard(full.data() + model_.layer_offset(l),
                                 local.data() + local_.layer_offset(l), kAxis, shards_.size(),
                                 shards_.rank());
    }
    Kokkos::deep_copy(local_view, local);
  }

  StateBytes state_bytes() const override {
    const std::size_t bytes = local_.num_parameters() * sizeof(float);
    return {bytes, bytes + sizeof(float) + accumulated_.bytes(), 2 * bytes, 0};
  }

  double blocked_seconds() const override { return blocked_; }
  void reset_timers() override { blocked_ = 0.0; }

 private:
  // A partial sum over the model axis, summed in place once the kernels that wrote it are
  // done.
  void all_reduce_model(MatrixRef partial) {
    order_collective_after_compute(shards_);
    const double start = now_seconds();
    shards_.allreduce(partial.data(), partial.size(), DataType::Float32, ReduceOp::Sum);
    blocked_ += now_seconds() - start;
  }

  const Model& model_;  // the full model's layout (its parameters released)
  Communicator& shards_;
  Communicator& data_;
  Model local_;
  ModelWorkspace workspace_;
  Vector grads_;  // local parameters + 1: the loss rides in the last slot
  GradientAccumulator accumulated_;
  Optimizer optimizer_;
  PassHooks hooks_;
  std::vector<bool> split_;  // per tensor: split over the model axis
  Kokkos::View<double, MemSpace> norm_scratch_{"meshtrain::tp_norm"};
  double blocked_ = 0.0;
};

}  // namespace

void prepare_tensor_parallel(Model& model, const std::vector<int>& mesh_shape,
                             int model_axis_size) {
  // A model that says nothing about its partitioning gets Megatron's column/row pairs.
  const bool unspecified = std::all_of(
      model.tensors().begin(), model.tensors().end(), [](const TensorSpec& t) {
        return std::all_of(t.partition.begin(), t.partition.end(),
                           [](const std::string& axis) { return axis.empty(); });
      });
  if (unspecified) model.set_megatron_partitioning(kAxis);
  const auto m = static_cast<std::size_t>(model_axis_size);
  for (std::size_t l = 0; l < model.num_layers(); ++l) {
    // A column-parallel layer's output is sliced: only a row-parallel layer can consume it.
    const bool column = role_of(model, l) == ParallelRole::Column;
    const bool row = role_of(model, l) == ParallelRole::Row;
    if (column != (role_of(model, l + 1) == ParallelRole::Row) ||
        (row && !(l > 0 && role_of(model, l - 1) == ParallelRole::Column))) {
      // Only a layer with parameters has a role, so it has a first tensor to name.
      throw ConfigError("partition of " + model.tensors()[model.first_tensor(l)].name +
                        ": column-parallel ('', 'model') and row-parallel ('model', '') "
                        "kernels must come in consecutive pairs");
    }
    for (std::size_t t = 0; t < model.layer(l).tensors().size(); ++t) {
      const TensorSpec& tensor = model.tensors()[model.first_tensor(l) + t];
      for (std::size_t dim = 0; dim < tensor.shape.size(); ++dim) {
        if (tensor.partition[dim] == kAxis && tensor.shape[dim] % m != 0) {
          throw ConfigError("mesh_shape", format_shape(mesh_shape) +
                                              ": the 'model' axis of size " + std::to_string(m) +
                            " does not divide width " + std::to_string(tensor.shape[dim]) +
                            " of layer " + std::to_string(l) +
                            ", which tensor parallelism splits");
        }
      }
    }
  }
}

std::unique_ptr<StepEngine> make_tensor_parallel_engine(Model& model, Communicator& model_group,
                                                        Communicator& data_group,
                                                        const OptimizerConfig& optimizer,
                                                        std::size_t max_rows,
                                                        int accumulation_steps) {
  return std::make_unique<TensorParallelEngine>(model, model_group, data_group, optimizer,
                                                max_rows, accumulation_steps);
}

}  // namespace meshtrain
