#pragma once
// Pointwise normalisation of data, as the FNO reference's UnitGaussianNormalizer does it:
// every feature (for a field of shape (s1, s2, C), every grid point and channel) gets the
// mean and the unbiased standard deviation over the training samples; inputs are encoded as
// (x - mean) / (std + eps), and the model's output is decoded as out * (std + eps) + mean by a
// FeatureAffine layer appended to the model, so that the loss, validation and test errors
// and the trained model's predictions are in the data's own units.
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/nn/fourier.hpp"
#include "meshtrain/nn/types.hpp"

namespace meshtrain {

struct PointwiseNormalizer {
  static constexpr double kEpsilon = 1e-5;  // the reference's eps

  std::vector<float> mean;   // per feature
  std::vector<float> scale;  // std + eps per feature

  // Statistics over the rows of data (samples x features), in double and in row order (the
  // same on every rank). Throws ConfigError for fewer than two samples.
  static PointwiseNormalizer fit(const HostMatrix& data);
  // data = (data - mean) / scale, in place. Throws ConfigError for another feature count.
  void encode(HostMatrix& data) const;
};

// PointwiseNormalizer::fit's statistics from rows streamed in order, for data sets that are
// not held in memory: every row to add_to_sums, then every row again to add_to_squares
// (row-major blocks of n rows). The same arithmetic in the same order as fit, so the result
// is bit-identical to fit on the whole matrix.
class PointwiseStatistics {
 public:
  explicit PointwiseStatistics(std::size_t features);
  void add_to_sums(const float* rows, std::size_t n);
  void add_to_squares(const float* rows, std::size_t n);
  // Throws ConfigError for fewer than two samples.
  PointwiseNormalizer result() const;

 private:
  std::vector<double> sum_, squares_;
  std::size_t samples_ = 0, squared_ = 0;
  bool means_ = false;
};

// y = x * scale + shift per feature (column), no parameters: the output decoder of a
// normalised run. Replicated under tensor parallelism (which refuses it, as the FNO layers).
class FeatureAffine final : public ReplicatedLayer {
 public:
  FeatureAffine(const std::vector<float>& scale, const std::vector<float>& shift);

  std::string name() const override { return "FeatureAffine"; }
  std::string describe() const override;
  std::unique_ptr<Layer> clone() const override { return std::make_unique<FeatureAffine>(*this); }
  std::size_t in_features() const override { return features_; }
  std::size_t out_features() const override { return features_; }

  void initialize(float* block, Random& rng) const override;
  void forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
               MatrixRef y) const override;
  void backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                           MatrixRef dy, const float* params, float* grads) const override;
  void backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                      MatrixRef dx) const override;

 private:
  std::size_t features_;
  Vector scale_;
  Vector shift_;
};

}  // namespace meshtrain
