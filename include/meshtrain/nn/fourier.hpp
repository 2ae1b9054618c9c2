#pragma once
// The layers of the Fourier Neural Operator (Li et al. 2020), on channel-last grids: a
// sample of an s1 x s2 grid with C channels is s1 s2 C columns in (i, j, c) order, as .npy
// data of shape (N, s1, s2, C) is laid out.
//
// Tensor parallelism over channels is not supported: these layers are replicated, and
// asking for a column- or row-parallel role, or a shard, throws a ConfigError naming the
// layer. Data parallelism and FSDP need nothing from a layer and work unchanged.
#include <string>

#include "meshtrain/nn/fft.hpp"
#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/nn/layer.hpp"

namespace meshtrain {

// A layer that is whole on every rank under tensor parallelism.
class ReplicatedLayer : public Layer {
 public:
  // "SpectralConv2d" and so on, for errors.
  virtual std::string name() const = 0;

  ParallelRole parallel_role(const std::string& axis) const override;
  void set_parallel_role(ParallelRole role, const std::string& axis) override;
  std::unique_ptr<Layer> shard(const std::string& axis, int parts) const override;
  void take_shard(const float* full, float* shard, const std::string& axis, int parts,
                  int rank) const override;
  void join_shards(const float* shards, float* full, const std::string& axis, int parts,
                   int rank) const override;

 protected:
  ReplicatedLayer() = default;
  ReplicatedLayer(const ReplicatedLayer&) = default;
  ReplicatedLayer& operator=(const ReplicatedLayer&) = default;

 private:
  [[noreturn]] void refuse_tensor_parallelism() const;
};

// Appends the grid's coordinates as two channels, x = i / (s1 - 1) and y = j / (s2 - 1)
// (linspace over [0, 1], as the reference's get_grid; 0 on an axis of one point), after
// the C channels of each point. No parameters; backward drops the coordinates' gradient.
class GridCoordinates2d final : public ReplicatedLayer {
 public:
  GridCoordinates2d(std::size_t s1, std::size_t s2, std::size_t channels);

  std::string name() const override { return "GridCoordinates2d"; }
  std::string describe() const override;
  std::unique_ptr<Layer> clone() const override {
    return std::make_unique<GridCoordinates2d>(*this);
  }
  std::size_t in_features() const override { return s1_ * s2_ * channels_; }
  std::size_t out_features() const override { return s1_ * s2_ * (channels_ + 2); }

  void initialize(float* block, Random& rng) const override;
  void forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
               MatrixRef y) const override;
  void backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                           MatrixRef dy, const float* params, float* grads) const override;
  void backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                      MatrixRef dx) const override;

 private:
  std::size_t s1_;
  std::size_t s2_;
  std::size_t channels_;
};

// The 1x1 channel mixer: y = act(x W + b) at each of `points` grid points, kernel W (in x
// out) and bias b (out). On the channel-last layout the batch is one (n points x in) by
// (in x out) product, with no transpose. Initialised as torch.nn.Linear and Conv1d/Conv2d
// with a 1x1 kernel are: kernel and bias U(-1/sqrt(in), 1/sqrt(in)).
class Pointwise final : public ReplicatedLayer {
 public:
  Pointwise(std::size_t in, std::size_t out, std::size_t points, Activation activation);

  std::string name() const override { return "Pointwise"; }
  std::string describe() const override;
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Pointwise>(*this); }
  std::size_t in_features() const override { return points_ * in_; }
  std::size_t out_features() const override { return points_ * out_; }
  Activation activation() const { return activation_; }

  void initialize(float* block, Random& rng) const override;
  std::size_t scratch_size(std::size_t max_rows) const override;
  void forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
               MatrixRef y) const override;
  void backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                           MatrixRef dy, const float* params, float* grads) const override;
  void backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                      MatrixRef dx) const override;

 private:
  std::size_t in_;
  std::size_t out_;
  std::size_t points_;
  Activation activation_;
};

// The FNO's spectral convolution: per input channel rfft2 over the grid; on the lowest
// modes1 x modes2 frequencies of both corner blocks of the spectrum (rows [0, modes1) and
// [s1 - modes1, s1), columns [0, modes2)) out channel o gets sum_i X_i W[i, o, k1, k2], the
// rest of the spectrum is zero; irfft2. As the reference's SpectralConv2d: complex weights1
// (the first rows) and weights2 (the last rows), stored as (in, out, modes1, modes2, 2) real
// and imaginary float pairs, so that checkpoints and collectives stay float32; initialised
// real and imaginary parts each U[0, 1) / (in out), as torch.rand of a cfloat tensor. No
// bias. Requires modes1 <= s1 / 2 (the blocks do not overlap) and modes2 <= s2 / 2 + 1.
class SpectralConv2d final : public ReplicatedLayer {
 public:
  SpectralConv2d(std::size_t in, std::size_t out, std::size_t s1, std::size_t s2,
                 std::size_t modes1, std::size_t modes2);

  std::string name() const override { return "SpectralConv2d"; }
  std::string describe() const override;
  std::unique_ptr<Layer> clone() const override {
    return std::make_unique<SpectralConv2d>(*this);
  }
  std::size_t in_features() const override { return s1_ * s2_ * in_; }
  std::size_t out_features() const override { return s1_ * s2_ * out_; }

  void initialize(float* block, Random& rng) const override;
  // The weights in real block form and their gradient, the input's and output's spectra,
  // and the kept modes' channels (the input's kept from forward for the weight gradient).
  std::size_t scratch_size(std::size_t max_rows) const override;
  void forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
               MatrixRef y) const override;
  // Leaves dy as it was (a FourierLayer2d reads it again).
  void backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                           MatrixRef dy, const float* params, float* grads) const override;
  void backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                      MatrixRef dx) const override;

 private:
  std::size_t in_;
  std::size_t out_;
  std::size_t s1_;
  std::size_t s2_;
  std::size_t modes1_;
  std::size_t modes2_;
  Fft2d fft_in_;
  Fft2d fft_out_;
};

// One Fourier layer of the FNO: y = act(SpectralConv2d(x) + x W + b), the spectral path and
// the 1x1 path W (the reference's Conv2d(width, width, 1): kernel and bias U(-1/sqrt(in),
// 1/sqrt(in))) on the same input. Tensors: weights1, weights2, kernel, bias. GELU keeps
// its pre-activation in the layer's scratch for backward.
class FourierLayer2d final : public ReplicatedLayer {
 public:
  FourierLayer2d(std::size_t in, std::size_t out, std::size_t s1, std::size_t s2,
                 std::size_t modes1, std::size_t modes2, Activation activation);

  std::string name() const override { return "FourierLayer2d"; }
  std::string describe() const override;
  std::unique_ptr<Layer> clone() const override {
    return std::make_unique<FourierLayer2d>(*this);
  }
  std::size_t in_features() const override { return spectral_.in_features(); }
  std::size_t out_features() const override { return spectral_.out_features(); }
  Activation activation() const { return activation_; }

  void initialize(float* block, Random& rng) const override;
  std::size_t scratch_size(std::size_t max_rows) const override;
  void forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
               MatrixRef y) const override;
  void backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                           MatrixRef dy, const float* params, float* grads) const override;
  void backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                      MatrixRef dx) const override;

 private:
  // The spectral path's share of the scratch, after the pre-activation of n rows.
  LayerPass spectral_pass(const LayerPass& pass, std::size_t n) const;
  std::size_t preactivation_size(std::size_t rows) const;

  SpectralConv2d spectral_;
  std::size_t in_;
  std::size_t out_;
  std::size_t points_;
  Activation activation_;
};

}  // namespace meshtrain
