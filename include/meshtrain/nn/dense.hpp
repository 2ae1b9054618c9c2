#pragma once
#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/nn/layer.hpp"

namespace meshtrain {

// y = act(x W + b): kernel W (in x out, row-major, as Flax stores it) then bias b (out),
// the activation fused into the bias kernel. Kernels are initialised LeCun-normal as Flax
// does (truncated to +-2 sigma, then std = sqrt(1 / fan_in) / 0.87962566103423978), biases
// zero. GELU keeps its pre-activation in the layer's scratch for backward.
class Dense final : public Layer {
 public:
  Dense(std::size_t in, std::size_t out, Activation activation);

  std::unique_ptr<Layer> clone() const override { return std::make_unique<Dense>(*this); }
  std::string describe() const override;
  std::size_t in_features() const override { return in_; }
  std::size_t out_features() const override { return out_; }
  Activation activation() const { return activation_; }

  void initialize(float* block, Random& rng) const override;
  std::size_t scratch_size(std::size_t max_rows) const override;
  bool computes_in_bf16() const override { return true; }
  std::size_t gemm_scratch_size(std::size_t max_rows) const override;

  void forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
               MatrixRef y) const override;
  void backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                           MatrixRef dy, const float* params, float* grads) const override;
  void backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                      MatrixRef dx) const override;

  ParallelRole parallel_role(const std::string& axis) const override;
  void set_parallel_role(ParallelRole role, const std::string& axis) override;
  std::unique_ptr<Layer> shard(const std::string& axis, int parts) const override;
  std::vector<ShardRun> shard_runs(const std::string& axis, int parts, int rank) const override;
  void take_shard(const float* full, float* shard, const std::string& axis, int parts,
                  int rank) const override;
  void join_shards(const float* shards, float* full, const std::string& axis, int parts,
                   int rank) const override;

 private:
  MatrixRef kernel(const float* block) const;
  VectorRef bias(const float* block) const;

  std::size_t in_;
  std::size_t out_;
  Activation activation_;
  // How this layer computes: Replicated for a whole layer, the role for a shard.
  ParallelRole computes_as_ = ParallelRole::Replicated;
};

}  // namespace meshtrain
