#include "meshtrain/train/trainer.hpp"

#include <algorithm>
#include <string>

#include "meshtrain/comm/backend.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

Trainer::Trainer(Mlp model, TrainingConfig config, MPI_Comm base)
    : model_(std::move(model)), config_(std::move(config)) {
  if (!Kokkos::is_initialized()) {
    throw std::logic_error("Trainer: Kokkos is not initialised; create a DistributedManager first");
  }
  mesh_ = std::make_unique<DeviceMesh>(base, config_.distributed_config);
  config_.distributed_config = mesh_->config();
  config_.validate(mesh_->axis_size("data"));
  if (config_.distributed_config.strategy != "data") {
    throw ConfigError("strategy '" + config_.distributed_config.strategy +
                      "': sharded training is not available in this version; use data");
  }
  data_comm_ = &mesh_->axis_comm("data");

  const CommBackend backend = resolve_comm_backend(
      parse_comm_backend(config_.distributed_config.comm), visible_gpu_count(), nccl_built());
  if (backend == CommBackend::Nccl &&
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) {
    throw ConfigError("comm 'nccl': this build's Kokkos (" + std::string(ExecSpace::name()) +
                      ") keeps tensors in host memory; NCCL needs a CUDA-enabled Kokkos "
                      "(configure with -DKokkos_ROOT=<its prefix>)");
  }
  gradient_comm_ = make_communicator(
      backend, static_cast<MpiCommunicator&>(*data_comm_).comm());
}

Trainer::~Trainer() = default;

const ShardPlan& Trainer::plan_for_batch(std::size_t batch) const {
  const bool partial = batch + 1 == num_batches_ && samples_ % config_.batch_size != 0;
  return partial ? last_plan_ : full_plan_;
}

void Trainer::prepare(const HostMatrix& x, const HostMatrix& y) {
  const std::size_t n = x.extent(0);
  if (n < 1) throw ConfigError("samples 0: the training data is empty");
  if (y.extent(0) != n) {
    throw ConfigError("targets: " + std::to_string(y.extent(0)) + " rows for " +
                      std::to_string(n) + " input rows");
  }
  if (x.extent(1) != static_cast<std::size_t>(model_.in_features())) {
    throw ConfigError("inputs: " + std::to_string(x.extent(1)) + " features for a model with " +
                      std::to_string(model_.in_features()) + " inputs");
  }
  if (y.extent(1) != static_cast<std::size_t>(model_.out_features())) {
    throw ConfigError("targets: " + std::to_string(y.extent(1)) +
                      " columns for a model with " + std::to_string(model_.out_features()) +
                      " outputs");
  }
  samples_ = n;
  const auto batch = static_cast<std::size_t>(config_.batch_size);
  num_batches_ = (n + batch - 1) / batch;
  full_plan_ = shard_batch(*mesh_, static_cast<int>(std::min(batch, n)));
  last_plan_ = shard_batch(*mesh_, static_cast<int>(n % batch));

  x_ = Matrix("meshtrain::x", n, x.extent(1));
  y_ = Matrix("meshtrain::y", n, y.extent(1));
  Kokkos::deep_copy(x_, x);
  Kokkos::deep_copy(y_, y);

  // Every rank starts from rank 0's parameters, whatever each was initialised with.
  Vector params = model_.parameters();
  ExecSpace().fence();
  mesh_->world().broadcast(params.data(), params.extent(0), DataType::Float32, 0);

  const std::size_t p = model_.num_parameters();
  grads_ = Vector("meshtrain::gradients", p + 1);
  const int max_rows = *std::max_element(full_plan_.counts.begin(), full_plan_.counts.end());
  workspace_ = std::make_unique<MlpWorkspace>(model_, static_cast<std::size_t>(max_rows));
  reducer_ = std::make_unique<GradientReducer>(
      make_gradient_buckets(model_, 1, config_.bucket_bytes), *gradient_comm_,
      config_.overlap_communication);
  optimizer_ = std::make_unique<Optimizer>(OptimizerConfig::from_name(config_.optimizer), p);
  loss_history_ = Vector("meshtrain::loss_history",
                         num_batches_ * static_cast<std::size_t>(config_.num_epochs));
  recorded_ = 0;
}

void Trainer::step(std::size_t batch) {
  const ShardPlan& plan = plan_for_batch(batch);
  const int shard = data_comm_->rank();
  const std::size_t begin = batch * static_cast<std::size_t>(config_.batch_size) +
                            static_cast<std::size_t>(plan.offsets[shard]);
  const std::size_t end = begin + static_cast<std::size_t>(plan.counts[shard]);
  ConstMatrixRef x = rows(x_, begin, end);
  ConstMatrixRef y = rows(y_, begin, end);

  const std::size_t p = model_.num_parameters();
  float* grads = grads_.data();
  ConstMatrixRef pred = model_.forward(x, *workspace_);
  // The output layer's activations are overwritten by dL/dpred: forward's result is dead
  // once the loss is taken.
  MatrixRef dpred(const_cast<float*>(pred.data()), pred.extent(0), pred.extent(1));
  const float scale = 1.0f / (static_cast<float>(plan.global_batch) *
                              static_cast<float>(model_.out_features()));
  mse_loss_grad(pred, y, scale, dpred, Kokkos::View<float, MemSpace, Unmanaged>(grads + p));
  reducer_->begin_step(grads);
  model_.backward(x, *workspace_, dpred, grads,
                  [this](std::size_t layer) { reducer_->on_layer_grads(layer); });
  ExecSpace().fence();
  reducer_->finish();

  if (recorded_ < static_cast<std::int64_t>(loss_history_.extent(0))) {
    auto history = loss_history_;
    auto g = grads_;
    const auto slot = recorded_;
    Kokkos::parallel_for(
        "meshtrain::record_loss", Kokkos::RangePolicy<ExecSpace>(0, 1),
        KOKKOS_LAMBDA(int) { history(slot) = g(p); });
    ++recorded_;
  }
  Vector params = model_.parameters();
  optimizer_->step(VectorRef(params.data(), p), ConstVectorRef(grads, p), config_.learning_rate);
}

FitResult Trainer::fit(const HostMatrix& x, const HostMatrix& y) {
  prepare(x, y);
  mesh_->world().barrier();
  reducer_->reset_timers();
  const double start = MPI_Wtime();
  for (int epoch = 0; epoch < config_.num_epochs; ++epoch) {
    for (std::size_t b = 0; b < num_batches_; ++b) step(b);
  }
  ExecSpace().fence();
  const double wall = MPI_Wtime() - start;

  auto history = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), loss_history_);
  TrainingMetrics metrics;
  metrics.steps = recorded_;
  metrics.wall_seconds = wall;
  metrics.communication_seconds = reducer_->blocked_seconds();
  metrics.gradient_buckets = reducer_->buckets().size();
  for (int epoch = 0; epoch < config_.num_epochs; ++epoch) {
    double sum = 0.0;
    for (std::size_t b = 0; b < num_batches_; ++b) sum += history(epoch * num_batches_ + b);
    metrics.epoch_losses.push_back(sum / static_cast<double>(num_batches_));
  }
  metrics.initial_loss = metrics.epoch_losses.front();
  metrics.final_loss = metrics.epoch_losses.back();
  if (wall > 0) {
    metrics.samples_per_second = static_cast<double>(samples_) * config_.num_epochs / wall;
    metrics.steps_per_second = static_cast<double>(metrics.steps) / wall;
  }
  return FitResult{model_.clone(), metrics};
}

}  // namespace meshtrain
