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

// Data-parallel training with global-batch semantics: every global batch x[s:s+B] is split
// by rank 0's plan across the mesh's "data" axis; each rank computes its shard's share of the
// global mean loss and gradient; one all-reduce over the flat gradient buffer (with the loss
// in one extra slot) sums them; every rank takes the same optimizer step. An N-rank run
// therefore computes what a 1-rank run computes on the same global batches.
class Trainer {
 public:
  // Collective over base (MPI and Kokkos must be initialised, e.g. by a DistributedManager).
  // Builds the mesh from config.distributed_config; throws ConfigError for a bad config.
  Trainer(Mlp model, TrainingConfig config, MPI_Comm base = MPI_COMM_WORLD);
  ~Trainer();

  // Trains on (x, y), which every rank holds in full: x (samples x in), y (samples x out).
  FitResult fit(const HostMatrix& x, const HostMatrix& y);

  // The pieces of fit, for benchmarks and tests: prepare() validates and uploads the data
  // and broadcasts rank 0's parameters; step(b) trains on global batch b (collective).
  void prepare(const HostMatrix& x, const HostMatrix& y);
  void step(std::size_t batch);
  std::size_t batches_per_epoch() const { return num_batches_; }
  const GradientReducer& reducer() const { return *reducer_; }

  const Mlp& model() const { return model_; }
  const DeviceMesh& mesh() const { return *mesh_; }
  const TrainingConfig& config() const { return config_; }
  const ShardPlan& plan_for_batch(std::size_t batch) const;
  // The backend the gradient all-reduce runs on: "mpi" or "nccl".
  std::string_view gradient_backend() const { return gradient_comm_->backend(); }

 private:
  Mlp model_;
  TrainingConfig config_;
  std::unique_ptr<DeviceMesh> mesh_;
  Communicator* data_comm_ = nullptr;
  std::unique_ptr<Communicator> gradient_comm_;  // over the data axis, of the chosen backend

  // Prepared state.
  std::size_t samples_ = 0;
  std::size_t num_batches_ = 0;
  ShardPlan full_plan_;
  ShardPlan last_plan_;
  Matrix x_;
  Matrix y_;
  Vector grads_;  // num_parameters + 1: the loss rides in the last slot
  Vector loss_history_;
  std::int64_t recorded_ = 0;
  std::unique_ptr<MlpWorkspace> workspace_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<GradientReducer> reducer_;
};

}  // namespace meshtrain
