#pragma once
// How one training step is computed and synchronised: the strategy behind a Trainer.
// The engines compute the same global-batch gradient and the same optimizer step; they
// differ in what each rank stores and which collectives move it.
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/nn/model.hpp"
#include "meshtrain/optim/optimizer.hpp"
#include "meshtrain/train/gradient_reducer.hpp"
#include "meshtrain/train/held_run.hpp"

namespace meshtrain {

// Bytes each rank holds for the training state (activations and data excluded).
struct StateBytes {
  std::size_t parameters = 0;
  std::size_t gradients = 0;
  std::size_t optimizer = 0;
  std::size_t gathered = 0;  // FSDP: the one gathered layer and its full gradient
  std::size_t total() const { return parameters + gradients + optimizer + gathered; }
};
std::string format_state_bytes(const StateBytes& bytes);

// The host value of a device scalar summed over the given communicators (those of size 1
// are skipped).
double sum_scalar(Kokkos::View<float, MemSpace, Unmanaged> value,
                  std::initializer_list<Communicator*> groups);

// The sum of data[i]^2 over [0, n), accumulated in double (device data, host result).
double squared_norm(const float* data, std::size_t n);
// value summed over group, through scratch (device memory, which NCCL needs): collective.
double sum_over(Communicator& group, double value, Kokkos::View<double, MemSpace> scratch);
// data[i] *= factor over [0, n).
void scale_in_place(float* data, std::size_t n, float factor);

// Which micro-batch of an optimizer step a compute_gradients call computes, when the step's
// global batch is processed as `count` micro-batches (gradient accumulation).
struct MicroBatch {
  int index = 0;
  int count = 1;
  bool first() const { return index == 0; }
  bool last() const { return index + 1 == count; }
};

class StepEngine {
 public:
  virtual ~StepEngine() = default;
  // Forward, loss, backward and gradient synchronisation on this rank's rows (x, y) of a
  // global batch of global_batch rows. Afterwards loss() holds the global batch's mean loss
  // and gradients() this rank's part of the summed gradient (on the device).
  // With micro.count > 1 (an engine built for that many), (x, y) are this rank's rows of one
  // micro-batch of the step's global batch (global_batch rows in all, which scales the loss):
  // the micro-batches before the last only accumulate their gradient locally and communicate
  // no gradient; the last one adds the sum to its own and synchronises it once, after which
  // loss() and gradients() are the whole step's.
  virtual void compute_gradients(ConstMatrixRef x, ConstMatrixRef y, int global_batch,
                                 MicroBatch micro = {}) = 0;
  // The optimizer step on what this rank holds.
  virtual void apply_gradients(double lr) = 0;
  void step(ConstMatrixRef x, ConstMatrixRef y, int global_batch, double lr) {
    compute_gradients(x, y, global_batch);
    apply_gradients(lr);
  }
  virtual Kokkos::View<float, MemSpace, Unmanaged> loss() const = 0;
  virtual ConstVectorRef gradients() const = 0;
  // After compute_gradients: the L2 norm of the whole model's summed gradient, each element
  // counted once whatever the strategy splits or replicates (collective over the groups that
  // split the model), the same on every rank.
  virtual double gradient_norm() = 0;
  // Multiplies the gradients this rank holds by factor (clipping), before apply_gradients.
  virtual void scale_gradients(float factor) = 0;
  // Forward only: the sum over the batch group of scale * sum((model(x) - y)^2) over each
  // rank's rows (collective; every rank of the group must call it, with zero rows if need
  // be). At most the max_rows given at construction per call.
  virtual double evaluate(ConstMatrixRef x, ConstMatrixRef y, float scale) = 0;

  // What this rank holds, in its local layout: the parameters, and the optimizer whose
  // moments share that layout.
  virtual Vector local_parameters() const = 0;
  virtual Optimizer& optimizer() = 0;
  // Collective conversions between a local buffer and the full model's flat layout (full
  // holds num_parameters() elements, on the host, identical on every rank after gather).
  virtual void gather(const Vector& local, HostVector& full) = 0;
  virtual void scatter(const HostVector& full, const Vector& local) = 0;
  // Where local_parameters() (and the optimizer's moments) sit in the full model's flat
  // layout, and which of them this rank saves in a sharded checkpoint (held_run.hpp).
  virtual std::vector<HeldRun> held_runs() const = 0;
  // The full trained parameters, written into model's own buffer (collective).
  virtual void write_parameters(Model& model);
  virtual StateBytes state_bytes() const = 0;
  // Seconds blocked in gradient communication since the last reset.
  virtual double blocked_seconds() const = 0;
  virtual void reset_timers() = 0;
  virtual const GradientReducer* reducer() const { return nullptr; }
};

// Every engine runs the model's one forward and backward pass (Model::forward_loss and
// Model::backward) and steps in only through its hooks, with its collectives.

// Data parallel: every rank holds the whole model, gradients are summed over the batch
// group with bucketed (optionally overlapped) all-reduces, advanced as `progress` says. With
// accumulation_steps > 1 the buckets are reduced during the last micro-batch's backward only
// (one gradient buffer more per rank).
std::unique_ptr<StepEngine> make_data_parallel_engine(const Model& model,
                                                      Communicator& batch_group,
                                                      const OptimizerConfig& optimizer,
                                                      std::size_t bucket_bytes, bool overlap,
                                                      Progress progress, std::size_t max_rows,
                                                      int accumulation_steps = 1,
                                                      Dtype grad_comm_dtype = Dtype::Fp32);

// FSDP (ZeRO-3): each layer's parameters, gradients and optimizer state are split into
// equal chunks (the layer padded to a multiple of the shard count) over shard_group. Per
// layer: all-gather before forward and again before backward, released after use;
// reduce-scatter of the gradient, then an all-reduce of the shard over replica_group (hybrid
// sharding: replicated across it). Each rank updates only its own chunk. Takes the initial
// parameters from model and releases model's buffer. With accumulation_steps > 1 every
// micro-batch gathers the parameters again, but the gradients of the inner micro-batches are
// summed locally in full (unsharded: one model's gradient more per rank, as PyTorch FSDP's
// no_sync) and reduce-scattered once per optimizer step.
std::unique_ptr<StepEngine> make_fsdp_engine(Model& model, Communicator& shard_group,
                                             Communicator& replica_group,
                                             const OptimizerConfig& optimizer,
                                             std::size_t max_rows, int accumulation_steps = 1);

}  // namespace meshtrain

namespace meshtrain {

// Readies a model for tensor parallelism over a 'model' axis of model_axis_size ranks: a
// model without partition specs gets Megatron's (Model::set_megatron_partitioning), then
// the specs are checked (column-parallel layers each followed by a row-parallel one, every
// split width divisible by the axis size). Throws ConfigError naming mesh_shape otherwise.
void prepare_tensor_parallel(Model& model, const std::vector<int>& mesh_shape,
                             int model_axis_size);

// Tensor parallelism (Megatron-style) over model_group, data parallelism over data_group,
// for a model that went through prepare_tensor_parallel. Each rank runs the one pass on its
// local model, every layer replaced by its shard (Layer::shard) as its partition spec says:
// column-parallel (output features split: each rank computes its slice of the activations,
// no communication), row-parallel (input features split: the partial products are summed
// with one all-reduce in forward before the bias and activation), or replicated. In
// backward the input gradient of a column-parallel layer is summed with one all-reduce.
// Gradients of what each rank holds are then summed over data_group.
std::unique_ptr<StepEngine> make_tensor_parallel_engine(Model& model,
                                                        Communicator& model_group,
                                                        Communicator& data_group,
                                                        const OptimizerConfig& optimizer,
                                                        std::size_t max_rows,
                                                        int accumulation_steps = 1);

}  // namespace meshtrain
