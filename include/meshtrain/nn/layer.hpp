#pragma once
// The building block of a Model: one layer's forward and backward on 2-D activations (rows =
// samples, columns = per-sample features; a layer may read its columns as a flattened grid),
// its parameter tensors, and how tensor parallelism slices it.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/data/random.hpp"
#include "meshtrain/nn/kernels.hpp"  // GemmPrecision
#include "meshtrain/nn/types.hpp"

namespace meshtrain {

// One tensor inside a flat parameter buffer.
struct TensorSpec {
  std::string name;                 // "layers.0.kernel", "layers.0.bias", ...
  std::vector<std::size_t> shape;   // kernel (in, out), bias (out)
  std::size_t offset = 0;           // first element in the flat buffer
  std::size_t size = 0;             // elements
  // Which mesh axis each dimension is split over ("" = replicated), the analogue of Flax's
  // nnx.with_partitioning. Tensor parallelism reads it: a kernel ("", "model") is
  // column-parallel (its bias ("model")), a kernel ("model", "") row-parallel (its bias
  // replicated). FSDP shards each layer's flat block whatever the spec says.
  std::vector<std::string> partition;
};

// Where a layer stands under tensor parallelism over one mesh axis (Megatron's terms).
//   Column:     output features split: each rank computes its slice of the output, and the
//               input gradient is a partial sum over the axis.
//   Row:        input features split (it consumes a column-parallel layer's slice): the
//               product is a partial sum over the axis, summed before what follows it.
//   Replicated: every rank holds and computes the whole layer.
enum class ParallelRole { Replicated, Column, Row };

// Hooks of one forward or backward pass over a model (all optional, except `gradients` for
// backward). Strategies supply them to place parameters and move partial results; the pass
// calls them at fixed points, layer by layer.
struct PassHooks {
  // Layer l's parameters are needed: returns the block to compute with (laid out as the
  // layer's slice of the flat buffer). Empty: the model's own buffer.
  std::function<const float*(std::size_t layer)> gather;
  // Layer l's gathered parameters are no longer needed (after its forward, after its
  // backward).
  std::function<void(std::size_t layer)> release;
  // Where backward writes layer l's parameter gradients (laid out like its parameters).
  std::function<float*(std::size_t layer)> gradients;
  // Layer l's parameter gradients are written (before the input gradient for the layer
  // below is computed, so that their reduction can overlap it).
  std::function<void(std::size_t layer)> gradients_ready;
  // A row-parallel layer's product (before bias and activation) is a partial sum over the
  // model axis: sum it in place.
  std::function<void(std::size_t layer, MatrixRef partial)> reduce_output;
  // A column-parallel layer's input gradient is a partial sum over the model axis: sum it
  // in place.
  std::function<void(std::size_t layer, MatrixRef partial)> reduce_input_gradient;
  // Called between backward's kernels, so that communication that only advances when
  // polled (MPI's non-blocking collectives) moves on while backward computes.
  std::function<void()> progress;
};

// What the pass lends a layer while it runs: the hooks that may step in between its
// kernels, bound to the layer's index, and its scratch.
struct LayerPass {
  const PassHooks& hooks;
  std::size_t index;
  float* scratch;  // scratch_size(max_rows) floats, kept from forward to backward
  // How the layer's gemms compute (the model's compute dtype), with scratch shared by all
  // layers for one gemm at a time (gemm_scratch_size(max_rows) floats under bf16).
  GemmPrecision gemm = {};

  void progress() const {
    if (hooks.progress) hooks.progress();
  }
  void reduce_output(MatrixRef partial) const;
  void reduce_input_gradient(MatrixRef partial) const;
};

struct ShardRun {
  std::size_t full = 0;
  std::size_t local = 0;
  std::size_t length = 0;
  bool replicated = false;
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::unique_ptr<Layer> clone() const = 0;

  // What the layer computes, its shape and settings in one line, e.g. "dense(4, 64, relu)":
  // checkpoints identify a model by its layers' descriptions.
  virtual std::string describe() const = 0;

  // Per-sample features in and out (the columns of x and y).
  virtual std::size_t in_features() const = 0;
  virtual std::size_t out_features() const = 0;

  // The parameter tensors: names relative to the layer ("kernel"), offsets relative to the
  // layer's block, which holds num_parameters() floats.
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  std::size_t num_parameters() const;
  void set_partition(std::size_t tensor, std::vector<std::string> partition);

  // Writes the initial parameters into the layer's block (host memory, zero-filled), drawing
  // from rng: the model's layers share one stream, in order.
  virtual void initialize(float* block, Random& rng) const = 0;

  // Floats of scratch the layer needs for batches of up to max_rows rows.
  virtual std::size_t scratch_size(std::size_t /*max_rows*/) const { return 0; }
  // Whether the layer's gemms follow LayerPass::gemm (training.compute_dtype = "bf16"); a
  // model with a parameterised layer that does not is refused bf16 compute. And the floats
  // of shared gemm scratch that bf16 needs for batches of up to max_rows rows.
  virtual bool computes_in_bf16() const { return false; }
  virtual std::size_t gemm_scratch_size(std::size_t /*max_rows*/) const { return 0; }

  // y = layer(x); params is the layer's block.
  virtual void forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
                       MatrixRef y) const = 0;
  // After forward(x) -> y, with dy = dL/dy (overwritten): writes the parameter gradients
  // into grads (the layer's block). Leaves in dy what backward_input needs.
  virtual void backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                                   MatrixRef dy, const float* params, float* grads) const = 0;
  // dx = dL/dx, from what backward_parameters left in dy.
  virtual void backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                              MatrixRef dx) const = 0;

  // Tensor parallelism over `axis`, as the partition specs say. Megatron's pairing sets
  // the specs from a role.
  virtual ParallelRole parallel_role(const std::string& axis) const = 0;
  virtual void set_parallel_role(ParallelRole role, const std::string& axis) = 0;
  // This rank's part of the layer when `axis` has `parts` ranks (a copy of the layer when
  // its specs split nothing over the axis), which computes as its role says.
  virtual std::unique_ptr<Layer> shard(const std::string& axis, int parts) const = 0;
  // Host copies between the full layer's block and rank `rank`'s shard block.
  virtual void take_shard(const float* full, float* shard, const std::string& axis, int parts,
                          int rank) const = 0;
  // Where rank `rank`'s shard block sits in the full layer's block: runs of `length` values
  // at `full` in the layer's block and at `local` in the shard's, together covering the
  // shard block; `replicated` when every rank of the axis holds the same values. The
  // default: the layer unsplit (its role Replicated), one replicated run.
  virtual std::vector<ShardRun> shard_runs(const std::string& axis, int parts, int rank) const;
  // full from every rank's shard block (parts blocks one after another, in rank order);
  // what the shards replicate is taken from rank `rank`'s own.
  virtual void join_shards(const float* shards, float* full, const std::string& axis, int parts,
                           int rank) const = 0;

 protected:
  Layer() = default;
  Layer(const Layer&) = default;
  Layer& operator=(const Layer&) = default;
  // Appends a tensor at the end of the layer's block.
  void add_tensor(std::string name, std::vector<std::size_t> shape,
                  std::vector<std::string> partition);

 private:
  std::vector<TensorSpec> tensors_;
};

}  // namespace meshtrain
