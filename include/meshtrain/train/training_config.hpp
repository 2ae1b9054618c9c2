#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "meshtrain/choices.hpp"
#include "meshtrain/mesh/distributed_config.hpp"

namespace meshtrain {

// A training run, with the reference tutorial's names and defaults.
struct TrainingConfig {
  int num_epochs = 20;
  double learning_rate = 1e-3;
  int batch_size = 32;  // global: split across the mesh's "data" axis
  std::uint64_t seed = 0;
  OptimizerType optimizer = OptimizerType::Adam;
  // Mean squared error (the tutorial's) or the relative L2 error of each sample, averaged.
  Loss loss = Loss::Mse;
  DistributedConfig distributed_config;
  // Gradient all-reduce: buckets of about this many bytes (whole tensors each), started
  // during backward as soon as each is complete when overlap_communication is on.
  std::size_t bucket_bytes = 4u << 20;
  bool overlap_communication = true;
  // How the overlapped MPI all-reduces advance during backward: Thread (a communication
  // thread per rank runs them; needs a core to spare per rank), Poll (non-blocking
  // all-reduces tested between backward's kernels) or Auto (thread when every rank has a
  // spare core in its CPU mask, else poll). NCCL always runs on its own stream.
  Progress progress = Progress::Auto;
  // A seeded permutation of the samples each epoch, the same on every rank (rank 0's is
  // broadcast). Off, as in the reference: batches are contiguous slices in order.
  bool shuffle = false;
  // Validation loss every this many epochs (and after the last); 0: never.
  int validation_every = 1;
  // A step whose loss or gradient is NaN or Inf: Abort the run (TrainingError on every
  // rank) or Skip it (no update; counted in the metrics).
  NonFinite nonfinite = NonFinite::Abort;

  // The learning rate of each optimizer step (train/schedule.hpp), learning_rate its peak.
  // Keys that a schedule does not use must keep their defaults (ConfigError otherwise).
  Schedule schedule = Schedule::Constant;
  // warmup_cosine, warmup_constant: optimizer steps of linear warmup from
  // warmup_initial_learning_rate to learning_rate (optax's warmup_steps and init_value).
  int warmup_steps = 0;
  double warmup_initial_learning_rate = 0.0;
  // warmup_cosine: optimizer steps of the whole schedule, warmup included (optax's
  // decay_steps); 0: the run's (num_epochs x batches per epoch). After them, and at the
  // run's end, the rate is min_learning_rate (optax's end_value).
  std::int64_t decay_steps = 0;
  double min_learning_rate = 0.0;
  // step: learning_rate * gamma^floor(epoch / step_size), epochs as PyTorch's StepLR is
  // usually stepped (once per epoch).
  int step_size = 0;
  static constexpr double kDefaultGamma = 0.1;  // PyTorch's StepLR
  double gamma = kDefaultGamma;

  // Gradient clipping by global norm (optax.clip_by_global_norm): when the L2 norm of the
  // whole model's gradient, averaged over the global batch, exceeds this, every gradient is
  // scaled by clip_grad_norm / norm before the optimizer step. 0: off.
  double clip_grad_norm = 0.0;

  // Gradient accumulation: each optimizer step's global batch of batch_size rows is computed
  // as this many micro-batches (contiguous slices of it, of batch_size / k rows, the first
  // batch_size % k one row more; likewise for a partial last batch), each split over the
  // 'data' axis. Their gradients are summed locally and reduced once per step, and the loss
  // is scaled by the whole batch, so the step is the one a single batch would take (within
  // float rounding). Each rank then holds activations for a micro-batch only.
  int accumulation_steps = 1;

  // The gradient all-reduce of data parallelism in bf16: each bucket is rounded to bfloat16
  // (round to nearest even) into a preallocated buffer, summed across ranks in bf16 (float
  // arithmetic, rounded once per combine) and widened back to fp32, halving the bytes sent.
  // The loss that rides with the gradient stays fp32 (one 4-byte all-reduce more), as do the
  // master weights, gradient accumulation and the optimizer state. Only with strategy data
  // and no 'model' axis (FSDP's reduce-scatter and tensor parallelism stay fp32).
  Dtype grad_comm_dtype = Dtype::Fp32;
  // The gemms of forward and backward: fp32, or bf16 operands with fp32 accumulation (see
  // GemmPrecision; master weights, activations, gradients and optimizer state stay fp32).
  // bf16 needs a model whose parameterised layers are dense (ConfigError otherwise).
  Dtype compute_dtype = Dtype::Fp32;

  // Throws ConfigError naming the field and value. data_axis_size is the number of shards
  // each global batch is split into.
  void validate(int data_axis_size) const;

 private:
  void validate_schedule() const;
};

}  // namespace meshtrain
