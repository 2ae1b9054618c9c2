#include <cmath>

#include "meshtrain/train/step_engine.hpp"
#include "train/device_order.hpp"
#include "train/gradient_accumulator.hpp"

namespace meshtrain {

void StepEngine::write_parameters(Model& model) {
  HostVector full("meshtrain::gathered_parameters", model.num_parameters());
  gather(local_parameters(), full);
  model.allocate_parameters();
  Kokkos::deep_copy(model.parameters(), full);
}

double sum_scalar(Kokkos::View<float, MemSpace, Unmanaged> value,
                  std::initializer_list<Communicator*> groups) {
  // Reduced where it lives (device memory for NCCL), then read once.
  for (Communicator* group : groups) {
    if (group->size() == 1) continue;
    order_collective_after_compute(*group);
    group->allreduce(value.data(), 1, DataType::Float32, ReduceOp::Sum);
  }
  float host = 0.0f;
  Kokkos::deep_copy(host, value);
  return host;
}

double squared_norm(const float* data, std::size_t n) {
  double sum = 0.0;
  Kokkos::parallel_reduce(
      "meshtrain::squared_norm", Kokkos::RangePolicy<ExecSpace>(0, n),
      KOKKOS_LAMBDA(std::size_t i, double& s) {
        const double v = data[i];
        s += v * v;
      },
      sum);
  return sum;
}

double sum_over(Communicator& group, double value, Kokkos::View<double, MemSpace> scratch) {
  if (group.size() == 1) return value;
  Kokkos::deep_copy(scratch, value);
  order_collective_after_compute(group);
  group.allreduce(scratch.data(), 1, DataType::Float64, ReduceOp::Sum);
  double total = 0.0;
  Kokkos::deep_copy(total, scratch);
  return total;
}

void scale_in_place(float* data, std::size_t n, float factor) {
  Kokkos::parallel_for(
      "meshtrain::scale_gradients", Kokkos::RangePolicy<ExecSpace>(0, n),
      KOKKOS_LAMBDA(std::size_t i) { data[i] *= factor; });
}

std::string format_state_bytes(const StateBytes& b) {
  return std::to_string(b.total()) + " (parameters " + std::to_string(b.parameters) +
         ", gradients " + std::to_string(b.gradients) + ", optimizer " +
         std::to_string(b.optimizer) + ", gathered " + std::to_string(b.gathered) + ")";
}

namespace {

class DataParallelEngine final : public StepEngine {
 public:
  DataParallelEngine(const Model& model, Communicator& group, const OptimizerConfig& optimizer,
                     std::size_t bucket_bytes, bool overlap, Progress progress,
                     std::size_t max_rows, int accumulation_steps, Dtype grad_comm_dtype)
      : model_(model),
        grads_("meshtrain::gradients", model.num_parameters() + 1),
        accumulated_(model.num_parameters() + 1, accumulation_steps),
        workspace_(model, max_rows),
        // The loss (the buffer's last slot) stays fp32 under a bf16 gradient all-reduce.
        reducer_(make_gradient_buckets(model, 1, bucket_bytes), group, overlap, progress,
                 grad_comm_dtype, 1),
        group_(group),
        eval_("meshtrain::eval_loss"),
        optimizer_(optimizer, model.num_parameters()) {
    hooks_.gradients = [this](std::size_t l) { return grads_.data() + model_.layer_offset(l); };
    inner_hooks_.gradients = hooks_.gradients;  // and no reduction
    if (accumulated_.active()) {
      // A layer's bucket may go as soon as the earlier micro-batches' sum is added to it.
      hooks_.gradients_ready = [this](std::size_t layer) {
        const std::size_t offset = model_.layer_offset(layer);
        accumulated_.add_to(grads_.data() + offset, offset, model_.layer_size(layer));
        reducer_.on_layer_grads(layer);
      };
    } else {
      hooks_.gradients_ready = [this](std::size_t layer) { reducer_.on_layer_grads(layer); };
    }
    if (overlap && progress == Progress::Poll && group.backend() == "mpi") {
      hooks_.progress = [this] { reducer_.progress(); };
    }
  }

  void compute_gradients(ConstMatrixRef x, ConstMatrixRef y, int global_batch,
                         MicroBatch micro) override {
    model_.forward_loss(x, y, model_.loss_scale(global_batch), loss(), workspace_);
    const std::size_t p = model_.num_parameters();  // the loss in slot p
    if (!micro.last()) {
      model_.backward(x, workspace_, inner_hooks_);
      accumulated_.keep(grads_.data(), 0, p + 1, micro.first());
      return;
    }
    if (micro.count > 1) accumulated_.add_to(grads_.data() + p, p, 1);
    reducer_.begin_step(grads_.data());
    model_.backward(x, workspace_, hooks_);
    reducer_.finish();  // orders its collectives after backward's kernels
  }

  void apply_gradients(double lr) override {
    const std::size_t p = model_.num_parameters();
    Vector params = model_.parameters();
    optimizer_.step(VectorRef(params.data(), p), ConstVectorRef(grads_.data(), p), lr);
  }

  ConstVectorRef gradients() const override {
    return ConstVectorRef(grads_.data(), model_.num_parameters());
  }
  // Every rank holds the whole summed gradient: no communication.
  double gradient_norm() override {
    return std::sqrt(squared_norm(grads_.data(), model_.num_parameters()));
  }
  void scale_gradients(float factor) override {
    scale_in_place(grads_.data(), model_.num_parameters(), factor);
  }
  double evaluate(ConstMatrixRef x, ConstMatrixRef y, float scale) override {
    const Kokkos::View<float, MemSpace, Unmanaged> out(eval_.data());
    model_.forward_loss(x, y, scale, out, workspace_);
    return sum_scalar(out, {&group_});
  }
  Vector local_parameters() const override { return model_.parameters(); }
  // Every rank holds the whole model; the ranks of the group each save an even slice.
  std::vector<HeldRun> held_runs() const override {
    return split_for_writing(0, model_.num_parameters(), group_.rank(), group_.size());
  }
  Optimizer& optimizer() override { return optimizer_; }
  void gather(const Vector& local, HostVector& full) override { Kokkos::deep_copy(full, local); }
  void scatter(const HostVector& full, const Vector& local) override {
    Kokkos::deep_copy(local, full);
  }

  Kokkos::View<float, MemSpace, Unmanaged> loss() const override {
    // The loss rides in the gradient buffer's last slot: one all-reduce carries both.
    return Kokkos::View<float, MemSpace, Unmanaged>(grads_.data() + model_.num_parameters());
  }

  void write_parameters(Model&) override {}  // the model's own buffer is the trained model

  StateBytes state_bytes() const override {
    const std::size_t p = model_.num_parameters();
    const std::size_t moments = optimizer_.first_moment().extent(0) +
                                optimizer_.second_moment().extent(0);
    const std::size_t wire = reducer_.wire_dtype() == Dtype::Bf16 ? p * 2 : 0;  // bf16 copy
    return {p * sizeof(float), (p + 1) * sizeof(float) + accumulated_.bytes() + wire,
            moments * sizeof(float), 0};
  }

  double blocked_seconds() const override { return reducer_.blocked_seconds(); }
  void reset_timers() override { reducer_.reset_timers(); }
  const GradientReducer* reducer() const override { return &reducer_; }

 private:
  const Model& model_;
  Vector grads_;
  GradientAccumulator accumulated_;
  ModelWorkspace workspace_;
  GradientReducer reducer_;
  Communicator& group_;
  Kokkos::View<float, MemSpace> eval_;
  Optimizer optimizer_;
  PassHooks hooks_;
  PassHooks inner_hooks_;  // micro-batches before a step's last: no communication
};

}  // namespace

std::unique_ptr<StepEngine> make_data_parallel_engine(const Model& model,
                                                      Communicator& batch_group,
                                                      const OptimizerConfig& optimizer,
                                                      std::size_t bucket_bytes, bool overlap,
                                                      Progress progress, std::size_t max_rows,
                                                      int accumulation_steps,
                                                      Dtype grad_comm_dtype) {
  return std::make_unique<DataParallelEngine>(model, batch_group, optimizer, bucket_bytes, overlap,
                                              progress, max_rows, accumulation_steps,
                                              grad_comm_dtype);
}

}  // namespace meshtrain
