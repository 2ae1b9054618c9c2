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
  const DistributedConfig& dist = config_.distributed_config;
  const bool fsdp = dist.strategy == "fsdp";

  // The batch is split over "data", and under fsdp over "fsdp" too; ranks that differ only
  // in another axis hold replicas and compute the same step.
  const bool tensor_parallel = mesh_->has_axis("model");
  if (tensor_parallel && fsdp) {
    throw ConfigError("mesh_axis_names " + format_axis_names(dist.mesh_axis_names) +
                      ": strategy 'fsdp' with a 'model' axis is not supported; use strategy "
                      "data for tensor parallelism over 'model'");
  }
  const int data_size = mesh_->has_axis("data") ? mesh_->axis_size("data") : 1;
  const int data_coord = mesh_->has_axis("data") ? mesh_->axis_coord("data") : 0;
  const int fsdp_size = fsdp && mesh_->has_axis("fsdp") ? mesh_->axis_size("fsdp") : 1;
  const int fsdp_coord = fsdp && mesh_->has_axis("fsdp") ? mesh_->axis_coord("fsdp") : 0;
  batch_parts_ = data_size * fsdp_size;
  batch_index_ = data_coord * fsdp_size + fsdp_coord;
  config_.validate(batch_parts_);

  const CommBackend backend = resolve_comm_backend(parse_comm_backend(dist.comm),
                                                   visible_gpu_count(), nccl_built());
  if (backend == CommBackend::Nccl &&
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) {
    throw ConfigError("comm 'nccl': this build's Kokkos (" + std::string(ExecSpace::name()) +
                      ") keeps tensors in host memory; NCCL needs a CUDA-enabled Kokkos "
                      "(configure with -DKokkos_ROOT=<its prefix>)");
  }
  backend_name_ = name_of(backend);
  auto make = [&](MPI_Comm comm) {
    comms_.push_back(make_communicator(backend, comm));
    return comms_.back().get();
  };
  auto mpi_of = [&](const std::string& axis) {
    return static_cast<MpiCommunicator&>(mesh_->axis_comm(axis)).comm();
  };
  if (tensor_parallel) {
    model_group_ = make(mpi_of("model"));
    batch_group_ = make(mpi_of("data"));
    // A model that says nothing about its partitioning gets Megatron's column/row pairs.
    const bool unspecified = std::all_of(
        model_.tensors().begin(), model_.tensors().end(), [](const TensorSpec& t) {
          return std::all_of(t.partition.begin(), t.partition.end(),
                             [](const std::string& axis) { return axis.empty(); });
        });
    if (unspecified) model_.set_megatron_partitioning("model");
    const int m = mesh_->axis_size("model");
    auto is = [&](std::size_t l, std::vector<std::string> spec) {
      return l < model_.layers().size() && model_.tensors()[2 * l].partition == spec;
    };
    for (std::size_t l = 0; l < model_.layers().size(); ++l) {
      // A column-parallel layer's output is sliced: only a row-parallel layer can consume it.
      const bool column = is(l, {"", "model"});
      const bool row = is(l, {"model", ""});
      if (column != is(l + 1, {"model", ""}) || (row && !(l > 0 && is(l - 1, {"", "model"})))) {
        throw ConfigError("partition of " + model_.tensors()[2 * l].name +
                          ": column-parallel ('', 'model') and row-parallel ('model', '') "
                          "kernels must come in consecutive pairs");
      }
      const TensorSpec& kernel = model_.tensors()[2 * l];
      for (std::size_t dim = 0; dim < 2; ++dim) {
        if (kernel.partition[dim] == "model" && kernel.shape[dim] % m != 0) {
          throw ConfigError("mesh_shape " + format_shape(dist.mesh_shape) + ": the 'model' axis of size " +
                            std::to_string(m) + " does not divide width " +
                            std::to_string(kernel.shape[dim]) + " of layer " + std::to_string(l) +
                            ", which tensor parallelism splits");
        }
      }
    }
  } else if (!fsdp) {
    batch_group_ = make(mpi_of("data"));
  } else if (mesh_->has_axis("fsdp")) {
    shard_group_ = make(mpi_of("fsdp"));  // hybrid: shard across fsdp, replicate across data
    replica_group_ = make(mesh_->has_axis("data") ? mpi_of("data") : MPI_COMM_SELF);
  } else {
    shard_group_ = make(mpi_of("data"));  // a 1-D mesh shards over its data axis
    replica_group_ = make(MPI_COMM_SELF);
  }
}

Trainer::~Trainer() = default;

const GradientReducer& Trainer::reducer() const {
  const GradientReducer* reducer = engine_ ? engine_->reducer() : nullptr;
  if (!reducer) throw std::logic_error("Trainer::reducer(): no gradient reducer (before prepare, or fsdp)");
  return *reducer;
}

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
  full_plan_ = shard_batch(mesh_->world(), static_cast<int>(std::min(batch, n)), batch_parts_);
  last_plan_ = shard_batch(mesh_->world(), static_cast<int>(n % batch), batch_parts_);

  x_ = Matrix("meshtrain::x", n, x.extent(1));
  y_ = Matrix("meshtrain::y", n, y.extent(1));
  Kokkos::deep_copy(x_, x);
  Kokkos::deep_copy(y_, y);

  // A previous engine may hold the only copy of the parameters (fsdp shards): take them back.
  if (engine_) {
    engine_->write_parameters(model_);
    engine_.reset();
  }
  // Every rank starts from rank 0's parameters, whatever each was initialised with.
  Vector params = model_.parameters();
  ExecSpace().fence();
  mesh_->world().broadcast(params.data(), params.extent(0), DataType::Float32, 0);

  const auto max_rows = static_cast<std::size_t>(
      *std::max_element(full_plan_.counts.begin(), full_plan_.counts.end()));
  const OptimizerConfig optimizer = OptimizerConfig::from_name(config_.optimizer);
  if (model_group_) {
    engine_ = make_tensor_parallel_engine(model_, *model_group_, *batch_group_, optimizer, max_rows);
  } else if (batch_group_) {
    engine_ = make_data_parallel_engine(model_, *batch_group_, optimizer, config_.bucket_bytes,
                                        config_.overlap_communication, max_rows);
  } else {
    engine_ = make_fsdp_engine(model_, *shard_group_, *replica_group_, optimizer, max_rows);
  }
  loss_history_ = Vector("meshtrain::loss_history",
                         num_batches_ * static_cast<std::size_t>(config_.num_epochs));
  recorded_ = 0;
}

void Trainer::step(std::size_t batch) {
  const ShardPlan& plan = plan_for_batch(batch);
  const std::size_t begin = batch * static_cast<std::size_t>(config_.batch_size) +
                            static_cast<std::size_t>(plan.offsets[batch_index_]);
  const std::size_t end = begin + static_cast<std::size_t>(plan.counts[batch_index_]);
  engine_->step(rows(x_, begin, end), rows(y_, begin, end), plan.global_batch,
                config_.learning_rate);

  if (recorded_ < static_cast<std::int64_t>(loss_history_.extent(0))) {
    auto history = loss_history_;
    auto loss = engine_->loss();
    const auto slot = recorded_;
    Kokkos::parallel_for(
        "meshtrain::record_loss", Kokkos::RangePolicy<ExecSpace>(0, 1),
        KOKKOS_LAMBDA(int) { history(slot) = loss(); });
    ++recorded_;
  }
}

StateBytes Trainer::state_bytes() const {
  if (!engine_) throw std::logic_error("Trainer::state_bytes() called before prepare()");
  return engine_->state_bytes();
}

FitResult Trainer::fit(const HostMatrix& x, const HostMatrix& y) {
  prepare(x, y);
  return fit();
}

FitResult Trainer::fit() {
  if (!engine_) throw std::logic_error("Trainer::fit() called before prepare()");
  recorded_ = 0;
  mesh_->world().barrier();
  engine_->reset_timers();
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
  metrics.communication_seconds = engine_->blocked_seconds();
  metrics.gradient_buckets = engine_->reducer() ? engine_->reducer()->buckets().size() : 0;
  engine_->write_parameters(model_);
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
