#include "meshtrain/nn/normalize.hpp"

#include <cmath>
#include <stdexcept>

#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

Vector to_device(const std::vector<float>& values, const char* label) {
  Vector out(std::string(label), values.size());
  auto host = Kokkos::create_mirror_view(out);
  for (std::size_t i = 0; i < values.size(); ++i) host(i) = values[i];
  Kokkos::deep_copy(out, host);
  return out;
}
}  // namespace

PointwiseStatistics::PointwiseStatistics(std::size_t features)
    : sum_(features, 0.0), squares_(features, 0.0) {}

void PointwiseStatistics::add_to_sums(const float* rows, std::size_t n) {
  if (means_) throw std::logic_error("PointwiseStatistics: add_to_sums after add_to_squares");
  const std::size_t features = sum_.size();
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t f = 0; f < features; ++f) sum_[f] += rows[r * features + f];
  }
  samples_ += n;
}

void PointwiseStatistics::add_to_squares(const float* rows, std::size_t n) {
  const std::size_t features = sum_.size();
  if (!means_) {  // every row has been summed: the sums become the means
    for (std::size_t f = 0; f < features; ++f) sum_[f] /= static_cast<double>(samples_);
    means_ = true;
  }
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t f = 0; f < features; ++f) {
      const double d = rows[r * features + f] - sum_[f];
      squares_[f] += d * d;
    }
  }
  squared_ += n;
}

PointwiseNormalizer PointwiseStatistics::result() const {
  if (samples_ < 2) {
    throw ConfigError("needs at least 2 training samples for a standard deviation, got " +
                      std::to_string(samples_));
  }
  if (!means_ || squared_ != samples_) {
    throw std::logic_error("PointwiseStatistics: every row must pass add_to_sums, then add_to_squares");
  }
  const std::size_t features = sum_.size();
  PointwiseNormalizer out;
  out.mean.resize(features);
  out.scale.resize(features);
  for (std::size_t f = 0; f < features; ++f) {
    out.mean[f] = static_cast<float>(sum_[f]);
    out.scale[f] = static_cast<float>(std::sqrt(squares_[f] / static_cast<double>(samples_ - 1)) +
                                      PointwiseNormalizer::kEpsilon);
  }
  return out;
}

PointwiseNormalizer PointwiseNormalizer::fit(const HostMatrix& data) {
  const std::size_t n = data.extent(0), features = data.extent(1);
  if (n < 2) {
    throw ConfigError("needs at least 2 training samples for a standard deviation, got " +
                      std::to_string(n));
  }
  // Row-major and contiguous: the rows as one block, the same arithmetic as streaming them.
  PointwiseStatistics statistics(features);
  statistics.add_to_sums(data.data(), n);
  statistics.add_to_squares(data.data(), n);
  return statistics.result();
}

void PointwiseNormalizer::encode(HostMatrix& data) const {
  if (data.extent(1) != mean.size()) {
    throw ConfigError("data of " + std::to_string(data.extent(1)) +
                      " features, statistics of " + std::to_string(mean.size()));
  }
  for (std::size_t r = 0; r < data.extent(0); ++r) {
    for (std::size_t f = 0; f < mean.size(); ++f) data(r, f) = (data(r, f) - mean[f]) / scale[f];
  }
}

FeatureAffine::FeatureAffine(const std::vector<float>& scale, const std::vector<float>& shift)
    : features_(scale.size()),
      scale_(to_device(scale, "meshtrain::affine_scale")),
      shift_(to_device(shift, "meshtrain::affine_shift")) {
  if (scale.empty() || shift.size() != scale.size()) {
    throw ConfigError("FeatureAffine: " + std::to_string(scale.size()) + " scales and " +
                      std::to_string(shift.size()) + " shifts");
  }
}

std::string FeatureAffine::describe() const {
  return "affine(" + std::to_string(features_) + ")";
}

void FeatureAffine::initialize(float* /*block*/, Random& /*rng*/) const {}

void FeatureAffine::forward(const LayerPass& /*pass*/, ConstMatrixRef x, const float* /*params*/,
                            MatrixRef y) const {
  const std::size_t f = features_;
  const Vector scale = scale_, shift = shift_;
  Kokkos::parallel_for(
      "meshtrain::affine", Policy(0, x.extent(0) * f), KOKKOS_LAMBDA(std::size_t i) {
        const std::size_t c = i % f;
        y.data()[i] = x.data()[i] * scale(c) + shift(c);
      });
}

void FeatureAffine::backward_parameters(const LayerPass& /*pass*/, ConstMatrixRef /*x*/,
                                        ConstMatrixRef /*y*/, MatrixRef /*dy*/,
                                        const float* /*params*/, float* /*grads*/) const {}

void FeatureAffine::backward_input(const LayerPass& /*pass*/, ConstMatrixRef dy,
                                   const float* /*params*/, MatrixRef dx) const {
  const std::size_t f = features_;
  const Vector scale = scale_;
  Kokkos::parallel_for(
      "meshtrain::affine_backward", Policy(0, dy.extent(0) * f), KOKKOS_LAMBDA(std::size_t i) {
        dx.data()[i] = dy.data()[i] * scale(i % f);
      });
}

}  // namespace meshtrain
