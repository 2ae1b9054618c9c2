#pragma once
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "meshtrain/mesh/device_mesh.hpp"
#include "meshtrain/nn/mlp.hpp"
#include "meshtrain/optim/optimizer.hpp"
#include "meshtrain/runtime/shard_plan.hpp"
#include "meshtrain/train/gradient_reducer.hpp"
#include "meshtrain/train/step_engine.hpp"
#include "meshtrain/train/training_config.hpp"

namespace meshtrain {

struct TrainingMetrics {
  double initial_loss = 0.0;  // mean over epoch 0's batches of each batch's loss before its update
  double final_loss = 0.0;    // the same for the last epoch
  std::vector<double> epoch_losses;
  std::int64_t steps = 0;
  double wall_seconds = 0.0;  // the training loop, setup excluded
  double samples_per_second = 0.0;
  double steps_per_second = 0.0;
  // Seconds the training loop spent blocked on the gradient all-reduce: all communication
  // with overlap off, the part backward did not hide with it on.
  double communication_seconds = 0.0;
  std::size_t gradient_buckets = 0;
};

struct FitResult {
  Mlp model;
  TrainingMetrics metrics;
};

// Training with global-batch semantics: every global batch x[s:s+B] is split by rank 0's plan
// across the batch group (the "data" axis; with strategy fsdp, the "data" and "fsdp" axes);
// each rank computes its shard's share of the global mean loss and gradient; the strategy's
// collectives sum them (data: bucketed all-reduces of the flat gradient; fsdp: per-layer
// reduce-scatter), and every rank applies the same optimizer update to what it holds. An
// N-rank run therefore computes what a 1-rank run computes on the same global batches.
class Trainer {
 public:
  // Collective over base (MPI and Kokkos must be initialised, e.g. by a DistributedManager).
  // Builds the mesh from config.distributed_config; throws ConfigError for a bad config.
  Trainer(Mlp model, TrainingConfig config, MPI_Comm base = MPI_COMM_WORLD);
  ~Trainer();

  // Trains on (x, y), which every rank holds in full: x (samples x in), y (samples x out).
  FitResult fit(const HostMatrix& x, const HostMatrix& y);
  // Trains on the data of the last prepare() call.
  FitResult fit();

  // The pieces of fit, for benchmarks and tests: prepare() validates and uploads the data
  // and broadcasts rank 0's parameters; step(b) trains on global batch b (collective).
  void prepare(const HostMatrix& x, const HostMatrix& y);
  void step(std::size_t batch);
  std::size_t batches_per_epoch() const { return num_batches_; }
  // The data-parallel gradient reducer (std::logic_error under fsdp, which has none).
  const GradientReducer& reducer() const;
  StateBytes state_bytes() const;  // after prepare()
  int batch_group_size() const { return batch_parts_; }

  const Mlp& model() const { return model_; }
  const DeviceMesh& mesh() const { return *mesh_; }
  const TrainingConfig& config() const { return config_; }
  const ShardPlan& plan_for_batch(std::size_t batch) const;
  // The backend the gradient all-reduce runs on: "mpi" or "nccl".
  std::string_view gradient_backend() const { return backend_name_; }

 private:
  Mlp model_;
  TrainingConfig config_;
  std::unique_ptr<DeviceMesh> mesh_;
  // Communicators of the chosen backend: the batch group (data parallel) or the shard and
  // replica groups (fsdp).
  std::vector<std::unique_ptr<Communicator>> comms_;
  Communicator* batch_group_ = nullptr;
  Communicator* shard_group_ = nullptr;
  Communicator* replica_group_ = nullptr;
  Communicator* model_group_ = nullptr;  // tensor parallelism over "model"
  std::string backend_name_;
  int batch_parts_ = 1;  // shards each global batch is split into
  int batch_index_ = 0;  // this rank's shard

  // Prepared state.
  std::size_t samples_ = 0;
  std::size_t num_batches_ = 0;
  ShardPlan full_plan_;
  ShardPlan last_plan_;
  Matrix x_;
  Matrix y_;
  Vector loss_history_;
  std::int64_t recorded_ = 0;
  std::unique_ptr<StepEngine> engine_;
};

}  // namespace meshtrain
