#include <algorithm>
#include <cmath>

#include "meshtrain/clock.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/train/step_engine.hpp"
#include "train/device_order.hpp"
#include "train/gradient_accumulator.hpp"

namespace meshtrain {

namespace {

class FsdpEngine final : public StepEngine {
 public:
  FsdpEngine(Model& model, Communicator& shard_group, Communicator& replica_group,
             const OptimizerConfig& optimizer, std::size_t max_rows, int accumulation_steps)
      : model_(model),
        shards_(shard_group),
        replicas_(replica_group),
        workspace_(model, max_rows),
        accumulated_(model.num_parameters() + 1, accumulation_steps) {
    const auto parts = static_cast<std::size_t>(shards_.size());
    std::size_t offset = 0;
    std::size_t widest = 0;
    for (std::size_t l = 0; l < model.num_layers(); ++l) {
      const std::size_t chunk = (model.layer_size(l) + parts - 1) / parts;
      chunk_.push_back(chunk);
      shard_offset_.push_back(offset);
      offset += chunk;
      widest = std::max(widest, chunk * parts);
    }
    param_shard_ = Vector("meshtrain::fsdp_parameters", offset);
    grad_shard_ = Vector("meshtrain::fsdp_gradients", offset);
    gathered_ = Vector("meshtrain::fsdp_gathered_layer", widest);
    layer_grad_ = Vector("meshtrain::fsdp_layer_gradient", widest);
    loss_ = Kokkos::View<float, MemSpace>("meshtrain::fsdp_loss");
    optimizer_ = std::make_unique<Optimizer>(optimizer, offset);
    hooks_.gather = [this](std::size_t l) { return gather_layer(l); };
    hooks_.gradients = [this](std::size_t) { return layer_grad_.data(); };
    if (accumulated_.active()) {
      // The earlier micro-batches' sum of the layer joins it before the one reduce-scatter.
      hooks_.gradients_ready = [this](std::size_t l) {
        accumulated_.add_to(layer_grad_.data(), model_.layer_offset(l), model_.layer_size(l));
        reduce_layer_gradient(l);
      };
    } else {
      hooks_.gradients_ready = [this](std::size_t l) { reduce_layer_gradient(l); };
    }
    inner_hooks_.gather = hooks_.gather;
    inner_hooks_.gradients = hooks_.gradients;
    inner_hooks_.gradients_ready = [this](std::size_t l) {
      accumulated_.keep(layer_grad_.data(), model_.layer_offset(l), model_.layer_size(l),
                        micro_.first());
    };

    scatter(model.parameters_on_host(), param_shard_);
    ExecSpace().fence();
    model.release_parameters();
  }

  void compute_gradients(ConstMatrixRef x, ConstMatrixRef y, int global_batch,
                         MicroBatch micro) override {
    model_.forward_loss(x, y, model_.loss_scale(global_batch), loss(), workspace_, hooks_);
    const std::size_t p = model_.num_parameters();  // the loss in slot p of the sum
    if (!micro.last()) {  // gathers the parameters, communicates no gradient
      micro_ = micro;
      model_.backward(x, workspace_, inner_hooks_);
      accumulated_.keep(loss_.data(), p, 1, micro.first());
      return;
    }
    if (micro.count > 1) accumulated_.add_to(loss_.data(), p, 1);
    model_.backward(x, workspace_, hooks_);

    order_collective_after_compute(shards_);
    const double start = now_seconds();
    shards_.allreduce(loss_.data(), 1, DataType::Float32, ReduceOp::Sum);
    if (replicas_.size() > 1) replicas_.allreduce(loss_.data(), 1, DataType::Float32, ReduceOp::Sum);
    blocked_ += now_seconds() - start;
  }

  void apply_gradients(double lr) override { optimizer_->step(param_shard_, grad_shard_, lr); }
  ConstVectorRef gradients() const override { return grad_shard_; }
  // Each element lives in exactly one shard of the shard group (the padding is zero); the
  // replica group holds copies of the same shards, so it is not summed over.
  double gradient_norm() override {
    const double mine = squared_norm(grad_shard_.data(), grad_shard_.extent(0));
    return std::sqrt(sum_over(shards_, mine, norm_scratch_));
  }
  void scale_gradients(float factor) override {
    scale_in_place(grad_shard_.data(), grad_shard_.extent(0), factor);
  }
  double evaluate(ConstMatrixRef x, ConstMatrixRef y, float scale) override {
    model_.forward_loss(x, y, scale, loss(), workspace_, hooks_);
    return sum_scalar(loss(), {&shards_, &replicas_});
  }
  Vector local_parameters() const override { return param_shard_; }
  // Each layer's chunk (its padding aside); the replica group's first rank saves it.
  std::vector<HeldRun> held_runs() const override {
    std::vector<HeldRun> runs;
    const auto rank = static_cast<std::size_t>(shards_.rank());
    for (std::size_t l = 0; l < chunk_.size(); ++l) {
      const std::size_t begin = std::min(rank * chunk_[l], model_.layer_size(l));
      const std::size_t end = std::min(begin + chunk_[l], model_.layer_size(l));
      if (end > begin) {
        runs.push_back({model_.layer_offset(l) + begin, shard_offset_[l], end - begin, replicas_.rank() == 0});
      }
    }
    return runs;
  }
  Optimizer& optimizer() override { return *optimizer_; }

  void gather(const Vector& local, HostVector& full) override {
    for (std::size_t l = 0; l < chunk_.size(); ++l) {
      gather_layer(l, local);
      const std::size_t n = model_.layer_size(l);
      Kokkos::deep_copy(
          Kokkos::subview(full, std::make_pair(model_.layer_offset(l), model_.layer_offset(l) + n)),
          Kokkos::subview(gathered_, std::make_pair(std::size_t{0}, n)));
    }
  }

  void scatter(const HostVector& full, const Vector& local) override {
    // This rank's chunk of every layer; the padding past a layer's end stays zero, so its
    // gradient is zero and Adam leaves it at zero.
    auto mine = Kokkos::create_mirror_view(local);
    Kokkos::deep_copy(mine, 0.0f);
    const auto rank = static_cast<std::size_t>(shards_.rank());
    for (std::size_t l = 0; l < chunk_.size(); ++l) {
      const std::size_t begin = std::min(rank * chunk_[l], model_.layer_size(l));
      const std::size_t end = std::min(begin + chunk_[l], model_.layer_size(l));
      for (std::size_t i = begin; i < end; ++i) {
        mine(shard_offset_[l] + i - begin) = full(model_.layer_offset(l) + i);
      }
    }
    Kokkos::deep_copy(local, mine);
  }

  Kokkos::View<float, MemSpace, Unmanaged> loss() const override {
    return Kokkos::View<float, MemSpace, Unmanaged>(loss_.data());
  }

  StateBytes state_bytes() const override {
    const std::size_t shard = param_shard_.extent(0) * sizeof(float);
    return {shard, shard + accumulated_.bytes(), 2 * shard,
            (gathered_.extent(0) + layer_grad_.extent(0)) * sizeof(float)};
  }

  double blocked_seconds() const override { return blocked_; }
  void reset_timers() override { blocked_ = 0.0; }

 private:
  // Layer l's full block of `local` (the parameters by default) into the gathered buffer,
  // from every rank's chunk.
  const float* gather_layer(std::size_t l) { return gather_layer(l, param_shard_); }
  const float* gather_layer(std::size_t l, const Vector& local) {
    // After the kernels that wrote `local` and that still read the gathered buffer.
    order_collective_after_compute(shards_);
    const double start = now_seconds();
    CollectiveSite site("fsdp.gather_layer");
    shards_.all_gather(local.data() + shard_offset_[l], gathered_.data(), chunk_[l],
                       DataType::Float32);
    blocked_ += now_seconds() - start;
    return gathered_.data();
  }

  // Sum layer l's gradient over the batch group, leaving this rank's chunk in grad_shard_.
  void reduce_layer_gradient(std::size_t l) {
    const std::size_t n = model_.layer_size(l);
    const std::size_t padded = chunk_[l] * static_cast<std::size_t>(shards_.size());
    if (padded > n) {
      // On the execution space: a plain deep_copy would fence the whole device.
      Kokkos::deep_copy(ExecSpace(), Kokkos::subview(layer_grad_, std::make_pair(n, padded)), 0.0f);
    }
    order_collective_after_compute(shards_);
    const double start = now_seconds();
    float* mine = grad_shard_.data() + shard_offset_[l];
    CollectiveSite site("fsdp.reduce_gradient");
    shards_.reduce_scatter(layer_grad_.data(), mine, chunk_[l], DataType::Float32, ReduceOp::Sum);
    if (replicas_.size() > 1) replicas_.allreduce(mine, chunk_[l], DataType::Float32, ReduceOp::Sum);
    blocked_ += now_seconds() - start;
  }

  Model& model_;
  Communicator& shards_;
  Communicator& replicas_;
  ModelWorkspace workspace_;
  std::vector<std::size_t> chunk_;
  std::vector<std::size_t> shard_offset_;
  Vector param_shard_;
  Vector grad_shard_;
  Vector gathered_;
  Vector layer_grad_;
  Kokkos::View<float, MemSpace> loss_;
  Kokkos::View<double, MemSpace> norm_scratch_{"meshtrain::fsdp_norm"};
  std::unique_ptr<Optimizer> optimizer_;
  GradientAccumulator accumulated_;  // accumulation: the unsharded gradient and loss
  MicroBatch micro_;
  // Each layer gathered before use into one buffer (so nothing to release), its gradient
  // reduce-scattered as soon as backward has written it (in a step's last micro-batch; the
  // inner ones add it to the sum instead).
  PassHooks hooks_;
  PassHooks inner_hooks_;
  double blocked_ = 0.0;
};

}  // namespace

std::unique_ptr<StepEngine> make_fsdp_engine(Model& model, Communicator& shard_group,
                                             Communicator& replica_group,
                                             const OptimizerConfig& optimizer,
                                             std::size_t max_rows, int accumulation_steps) {
  return std::make_unique<FsdpEngine>(model, shard_group, replica_group, optimizer, max_rows,
                                      accumulation_steps);
}

}  // namespace meshtrain
