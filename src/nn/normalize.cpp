#include "meshtrain/nn/normalize.hpp"

#include <cmath>

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

PointwiseNormalizer PointwiseNormalizer::fit(const HostMatrix& data) {
  const std::size_t n = data.extent(0), features = data.extent(1);
  if (n < 2) {
    throw ConfigError("needs at least 2 training samples for a standard deviation, got " +
                      std::to_string(n));
  }
  std::vector<double> sum(features, 0.0), squares(features, 0.0);
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t f = 0; f < features; ++f) sum[f] += data(r, f);
  }
  PointwiseNormalizer out;
  out.mean.resize(features);
  out.scale.resize(features);
  for (std::size_t f = 0; f < features; ++f) sum[f] /= static_cast<double>(n);
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t f = 0; f < features; ++f) {
      const double d = data(r, f) - sum[f];
      squares[f] += d * d;
    }
  }
  for (std::size_t f = 0; f < features; ++f) {
    out.mean[f] = static_cast<float>(sum[f]);
    out.scale[f] = static_cast<float>(std::sqrt(squares[f] / static_cast<double>(n - 1)) + kEpsilon);
  }
  return out;
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
