#include "meshtrain/nn/fourier.hpp"

#include <cmath>
#include <string>

#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {

using Policy = Kokkos::RangePolicy<ExecSpace>;

// The (rows x columns) matrix over the same memory: n samples of `points` grid points with
// c channels read as n points rows of c channels (channel-last data needs no transpose).
MatrixRef per_point(float* data, std::size_t rows, std::size_t c) {
  return MatrixRef(data, rows, c);
}
ConstMatrixRef per_point(const float* data, std::size_t rows, std::size_t c) {
  return ConstMatrixRef(data, rows, c);
}

// torch.nn.Linear's and ConvNd's default init: kaiming_uniform_(a = sqrt(5)) for the
// kernel, which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
void kaiming_uniform(float* block, std::size_t in, std::size_t out, Random& rng) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  for (std::size_t i = 0; i < in * out + out; ++i) {
    block[i] = static_cast<float>((2.0 * rng.uniform() - 1.0) * bound);
  }
}

std::string grid_text(std::size_t s1, std::size_t s2) {
  return std::to_string(s1) + " x " + std::to_string(s2);
}

// SpectralConv2d's shape checks, before its FFTs are planned; returns s1.
std::size_t checked_grid(std::size_t in, std::size_t out, std::size_t s1, std::size_t s2,
                         std::size_t modes1, std::size_t modes2) {
  if (in == 0 || out == 0) {
    throw ConfigError("SpectralConv2d: " + std::to_string(in) + " -> " + std::to_string(out) +
                      " channels: none may be 0");
  }
  if (s1 == 0 || s2 == 0) throw ConfigError("SpectralConv2d: empty grid " + grid_text(s1, s2));
  if (modes1 == 0 || modes1 > s1 / 2) {
    throw ConfigError("modes1", std::to_string(modes1) + ": SpectralConv2d on a " +
                                    grid_text(s1, s2) + " grid keeps 1 to s1/2 = " +
                                    std::to_string(s1 / 2) + " modes along its first axis");
  }
  if (modes2 == 0 || modes2 > s2 / 2 + 1) {
    throw ConfigError("modes2", std::to_string(modes2) + ": SpectralConv2d on a " +
                                    grid_text(s1, s2) + " grid keeps 1 to s2/2+1 = " +
                                    std::to_string(s2 / 2 + 1) + " modes along its second axis");
  }
  return s1;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// ReplicatedLayer

void ReplicatedLayer::refuse_tensor_parallelism() const {
  throw ConfigError(name() + ": tensor parallelism over channels is not supported (use the "
                             "data or fsdp strategy)");
}

ParallelRole ReplicatedLayer::parallel_role(const std::string& /*axis*/) const {
  return ParallelRole::Replicated;
}

void ReplicatedLayer::set_parallel_role(ParallelRole role, const std::string& /*axis*/) {
  if (role != ParallelRole::Replicated) refuse_tensor_parallelism();
}

std::unique_ptr<Layer> ReplicatedLayer::shard(const std::string& /*axis*/, int /*parts*/) const {
  refuse_tensor_parallelism();
}

void ReplicatedLayer::take_shard(const float* /*full*/, float* /*shard*/,
                                 const std::string& /*axis*/, int /*parts*/,
                                 int /*rank*/) const {
  refuse_tensor_parallelism();
}

void ReplicatedLayer::join_shards(const float* /*shards*/, float* /*full*/,
                                  const std::string& /*axis*/, int /*parts*/,
                                  int /*rank*/) const {
  refuse_tensor_parallelism();
}

// ---------------------------------------------------------------------------------------
// GridCoordinates2d

GridCoordinates2d::GridCoordinates2d(std::size_t s1, std::size_t s2, std::size_t channels)
    : s1_(s1), s2_(s2), channels_(channels) {
  if (s1 == 0 || s2 == 0) throw ConfigError("GridCoordinates2d: empty grid " + grid_text(s1, s2));
}

void GridCoordinates2d::initialize(float* /*block*/, Random& /*rng*/) const {}

void GridCoordinates2d::forward(const LayerPass& /*pass*/, ConstMatrixRef x,
                                const float* /*params*/, MatrixRef y) const {
  const std::size_t c = channels_;
  const std::size_t s2 = s2_;
  const std::size_t points = s1_ * s2_;
  // linspace(0, 1, s): step 1 / (s - 1), and a single point at 0.
  const float dx = s1_ > 1 ? 1.0f / static_cast<float>(s1_ - 1) : 0.0f;
  const float dy = s2_ > 1 ? 1.0f / static_cast<float>(s2_ - 1) : 0.0f;
  const float* in = x.data();
  float* out = y.data();
  Kokkos::parallel_for(
      "meshtrain::grid_coordinates", Policy(0, x.extent(0) * points),
      KOKKOS_LAMBDA(std::size_t p) {
        const float* from = in + p * c;
        float* to = out + p * (c + 2);
        for (std::size_t k = 0; k < c; ++k) to[k] = from[k];
        const std::size_t ij = p % points;
        to[c] = static_cast<float>(ij / s2) * dx;
        to[c + 1] = static_cast<float>(ij % s2) * dy;
      });
}

void GridCoordinates2d::backward_parameters(const LayerPass& /*pass*/, ConstMatrixRef /*x*/,
                                            ConstMatrixRef /*y*/, MatrixRef /*dy*/,
                                            const float* /*params*/, float* /*grads*/) const {}

void GridCoordinates2d::backward_input(const LayerPass& /*pass*/, ConstMatrixRef dy,
                                       const float* /*params*/, MatrixRef dx) const {
  const std::size_t c = channels_;
  const float* from = dy.data();
  float* to = dx.data();
  Kokkos::parallel_for(
      "meshtrain::grid_coordinates_backward", Policy(0, dx.extent(0) * s1_ * s2_),
      KOKKOS_LAMBDA(std::size_t p) {
        for (std::size_t k = 0; k < c; ++k) to[p * c + k] = from[p * (c + 2) + k];
      });
}

// ---------------------------------------------------------------------------------------
// Pointwise

Pointwise::Pointwise(std::size_t in, std::size_t out, std::size_t points, Activation activation)
    : in_(in), out_(out), points_(points), activation_(activation) {
  if (in == 0 || out == 0 || points == 0) {
    throw ConfigError("Pointwise: " + std::to_string(in) + " -> " + std::to_string(out) +
                      " channels at " + std::to_string(points) + " points: none may be 0");
  }
  add_tensor("kernel", {in, out}, {"", ""});
  add_tensor("bias", {out}, {""});
}

void Pointwise::initialize(float* block, Random& rng) const {
  kaiming_uniform(block, in_, out_, rng);
}

std::size_t Pointwise::scratch_size(std::size_t max_rows) const {
  return needs_preactivation(activation_) ? max_rows * points_ * out_ : 0;
}

void Pointwise::forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
                        MatrixRef y) const {
  const std::size_t rows = x.extent(0) * points_;
  const ConstMatrixRef w = per_point(params, in_, out_);
  const ConstVectorRef b(params + in_ * out_, out_);
  const MatrixRef y2 = per_point(y.data(), rows, out_);
  if (needs_preactivation(activation_)) {
    const MatrixRef z = per_point(pass.scratch, rows, out_);
    linear_forward(per_point(x.data(), rows, in_), w, b, z, Activation::Identity);
    activation_forward(z, y2, activation_);
  } else {
    linear_forward(per_point(x.data(), rows, in_), w, b, y2, activation_);
  }
}

void Pointwise::backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                                    MatrixRef dy, const float* params, float* grads) const {
  const std::size_t rows = x.extent(0) * points_;
  const MatrixRef dz = per_point(dy.data(), rows, out_);
  if (needs_preactivation(activation_)) {
    activation_backward_from_input(per_point(pass.scratch, rows, out_), dz, activation_);
  } else {
    activation_backward(per_point(y.data(), rows, out_), dz, activation_);
  }
  pass.progress();
  linear_backward(per_point(x.data(), rows, in_), per_point(params, in_, out_), dz,
                  per_point(grads, in_, out_), VectorRef(grads + in_ * out_, out_), MatrixRef());
}

void Pointwise::backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                               MatrixRef dx) const {
  const std::size_t rows = dy.extent(0) * points_;
  linear_backward_input(per_point(dy.data(), rows, out_), per_point(params, in_, out_),
                        per_point(dx.data(), rows, in_));
  pass.progress();
}

// ---------------------------------------------------------------------------------------
// SpectralConv2d

SpectralConv2d::SpectralConv2d(std::size_t in, std::size_t out, std::size_t s1, std::size_t s2,
                               std::size_t modes1, std::size_t modes2)
    : in_(in),
      out_(out),
      s1_(s1),
      s2_(s2),
      modes1_(modes1),
      modes2_(modes2),
      fft_in_(checked_grid(in, out, s1, s2, modes1, modes2), s2, in),
      fft_out_(s1, s2, out) {
  add_tensor("weights1", {in, out, modes1, modes2, 2}, {"", "", "", "", ""});
  add_tensor("weights2", {in, out, modes1, modes2, 2}, {"", "", "", "", ""});
}

void SpectralConv2d::initialize(float* block, Random& rng) const {
  const double scale = 1.0 / static_cast<double>(in_ * out_);
  for (std::size_t i = 0; i < num_parameters(); ++i) {
    block[i] = static_cast<float>(scale * rng.uniform());
  }
}

std::size_t SpectralConv2d::scratch_size(std::size_t max_rows) const {
  return max_rows * (fft_in_.spectrum_size() + fft_out_.spectrum_size());
}

namespace {
// SpectralConv2d::mix's kernel. A free function: nvcc refuses a device lambda inside a private
// member function.
void spectral_mix(const float* src, float* dst, std::size_t n, const float* weights,
                  bool adjoint, std::size_t in, std::size_t out, std::size_t s1, std::size_t s2,
                  std::size_t m1, std::size_t m2) {
  const std::size_t s2h = s2 / 2 + 1;
  const std::size_t block = in * out * m1 * m2 * 2;  // weights2 after weights1
  const std::size_t src_c = adjoint ? out : in;
  const std::size_t dst_c = adjoint ? in : out;
  Kokkos::parallel_for(
      "meshtrain::spectral_mix", Policy(0, n * s1 * s2h), KOKKOS_LAMBDA(std::size_t p) {
        const std::size_t k2 = p % s2h;
        const std::size_t k1 = (p / s2h) % s1;
        const float* from = src + p * 2 * src_c;
        float* to = dst + p * 2 * dst_c;
        const bool low = k1 < m1;
        if (k2 >= m2 || (!low && k1 < s1 - m1)) {
          for (std::size_t d = 0; d < 2 * dst_c; ++d) to[d] = 0.0f;
          return;
        }
        const float* w = weights + (low ? 0 : block);
        const std::size_t mode = (low ? k1 : k1 - (s1 - m1)) * m2 + k2;
        for (std::size_t d = 0; d < dst_c; ++d) {
          float re = 0.0f, im = 0.0f;
          for (std::size_t s = 0; s < src_c; ++s) {
            // W[i, o] with i the input channel: the source's forward, the destination's
            // in the adjoint.
            const std::size_t io = adjoint ? d * out + s : s * out + d;
            const float* wv = w + (io * m1 * m2 + mode) * 2;
            const float xr = from[2 * s], xi = from[2 * s + 1];
            if (adjoint) {  // x conj(w)
              re += xr * wv[0] + xi * wv[1];
              im += xi * wv[0] - xr * wv[1];
            } else {
              re += xr * wv[0] - xi * wv[1];
              im += xr * wv[1] + xi * wv[0];
            }
          }
          to[2 * d] = re;
          to[2 * d + 1] = im;
        }
      });
}
}  // namespace

void SpectralConv2d::mix(const float* src, float* dst, std::size_t n, const float* weights,
                         bool adjoint) const {
  spectral_mix(src, dst, n, weights, adjoint, in_, out_, s1_, s2_, modes1_, modes2_);
}

void SpectralConv2d::forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
                             MatrixRef y) const {
  const std::size_t n = x.extent(0);
  float* x_hat = pass.scratch;
  float* y_hat = x_hat + n * fft_in_.spectrum_size();
  fft_in_.forward(x.data(), x_hat, n);
  mix(x_hat, y_hat, n, params, false);
  fft_out_.inverse(y_hat, y.data(), n);
}

// y = irfft2(Y) is y[n] = Re(sum_k c(k2) Y[k] e^{+i theta(k, n)}) / (s1 s2), c(k2) = 1 for
// the columns the half spectrum holds once (k2 = 0 and, for even s2, s2/2), 2 for the
// others. So dL/dRe Y + i dL/dIm Y = c(k2) rfft2(dy) / (s1 s2), and for Y = X W,
// dW = that times conj(X), summed over the samples.
void SpectralConv2d::backward_parameters(const LayerPass& pass, ConstMatrixRef x,
                                         ConstMatrixRef /*y*/, MatrixRef dy,
                                         const float* /*params*/, float* grads) const {
  const std::size_t n = x.extent(0);
  const float* x_hat = pass.scratch;
  float* dy_hat = pass.scratch + n * fft_in_.spectrum_size();
  fft_out_.forward(dy.data(), dy_hat, n);
  pass.progress();
  const std::size_t in = in_, out = out_, s1 = s1_, s2 = s2_, m1 = modes1_, m2 = modes2_;
  const std::size_t s2h = s2 / 2 + 1;
  const std::size_t x_stride = fft_in_.spectrum_size();
  const std::size_t dy_stride = fft_out_.spectrum_size();
  const float inv_size = 1.0f / static_cast<float>(s1 * s2);
  Kokkos::parallel_for(
      "meshtrain::spectral_weight_gradient", Policy(0, 2 * in * out * m1 * m2),
      KOKKOS_LAMBDA(std::size_t e) {
        const std::size_t k2 = e % m2;
        const std::size_t kk = (e / m2) % m1;
        const std::size_t o = (e / (m2 * m1)) % out;
        const std::size_t i = (e / (m2 * m1 * out)) % in;
        const bool low = e < in * out * m1 * m2;
        const std::size_t k1 = low ? kk : s1 - m1 + kk;
        const bool once = k2 == 0 || (s2 % 2 == 0 && k2 == s2 / 2);
        const float scale = (once ? 1.0f : 2.0f) * inv_size;
        const std::size_t at = k1 * s2h + k2;
        float re = 0.0f, im = 0.0f;
        for (std::size_t b = 0; b < n; ++b) {
          const float* g = dy_hat + b * dy_stride + (at * out + o) * 2;
          const float* xv = x_hat + b * x_stride + (at * in + i) * 2;
          re += g[0] * xv[0] + g[1] * xv[1];
          im += g[1] * xv[0] - g[0] * xv[1];
        }
        grads[2 * e] = scale * re;
        grads[2 * e + 1] = scale * im;
      });
}

// dx = irfft2(sum_o rfft2(dy)_o conj(W[i, o])): the c(k2) of the inverse transform's
// gradient cancels against the forward transform's adjoint, which is c2r / c(k2).
void SpectralConv2d::backward_input(const LayerPass& pass, ConstMatrixRef dy,
                                    const float* params, MatrixRef dx) const {
  const std::size_t n = dy.extent(0);
  float* dx_hat = pass.scratch;  // the input's spectrum is no longer needed
  const float* dy_hat = pass.scratch + n * fft_in_.spectrum_size();
  mix(dy_hat, dx_hat, n, params, true);
  pass.progress();
  fft_in_.inverse(dx_hat, dx.data(), n);
}

// ---------------------------------------------------------------------------------------
// FourierLayer2d

FourierLayer2d::FourierLayer2d(std::size_t in, std::size_t out, std::size_t s1, std::size_t s2,
                               std::size_t modes1, std::size_t modes2, Activation activation)
    : spectral_(in, out, s1, s2, modes1, modes2),
      in_(in),
      out_(out),
      points_(s1 * s2),
      activation_(activation) {
  for (const TensorSpec& t : spectral_.tensors()) add_tensor(t.name, t.shape, t.partition);
  add_tensor("kernel", {in, out}, {"", ""});
  add_tensor("bias", {out}, {""});
}

void FourierLayer2d::initialize(float* block, Random& rng) const {
  spectral_.initialize(block, rng);
  kaiming_uniform(block + spectral_.num_parameters(), in_, out_, rng);
}

std::size_t FourierLayer2d::preactivation_size(std::size_t rows) const {
  return needs_preactivation(activation_) ? rows * points_ * out_ : 0;
}

std::size_t FourierLayer2d::scratch_size(std::size_t max_rows) const {
  return preactivation_size(max_rows) + spectral_.scratch_size(max_rows);
}

LayerPass FourierLayer2d::spectral_pass(const LayerPass& pass, std::size_t n) const {
  return {pass.hooks, pass.index, pass.scratch + preactivation_size(n)};
}

void FourierLayer2d::forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
                             MatrixRef y) const {
  const std::size_t n = x.extent(0);
  const std::size_t rows = n * points_;
  const float* w = params + spectral_.num_parameters();
  const bool keep = needs_preactivation(activation_);
  // z = spectral(x) + x W + b, into the scratch when the activation's derivative needs it.
  const MatrixRef z(keep ? pass.scratch : y.data(), n, points_ * out_);
  spectral_.forward(spectral_pass(pass, n), x, params, z);
  const MatrixRef z2 = per_point(z.data(), rows, out_);
  matmul_add(per_point(x.data(), rows, in_), per_point(w, in_, out_), z2);
  bias_activation(z2, ConstVectorRef(w + in_ * out_, out_),
                  keep ? Activation::Identity : activation_);
  if (keep) activation_forward(z2, per_point(y.data(), rows, out_), activation_);
}

void FourierLayer2d::backward_parameters(const LayerPass& pass, ConstMatrixRef x,
                                         ConstMatrixRef y, MatrixRef dy, const float* params,
                                         float* grads) const {
  const std::size_t n = x.extent(0);
  const std::size_t rows = n * points_;
  const MatrixRef dz = per_point(dy.data(), rows, out_);
  if (needs_preactivation(activation_)) {
    activation_backward_from_input(per_point(pass.scratch, rows, out_), dz, activation_);
  } else {
    activation_backward(per_point(y.data(), rows, out_), dz, activation_);
  }
  spectral_.backward_parameters(spectral_pass(pass, n), x, y, dy, params, grads);
  const std::size_t at = spectral_.num_parameters();
  linear_backward(per_point(x.data(), rows, in_), per_point(params + at, in_, out_), dz,
                  per_point(grads + at, in_, out_), VectorRef(grads + at + in_ * out_, out_),
                  MatrixRef());
}

void FourierLayer2d::backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                                    MatrixRef dx) const {
  const std::size_t n = dy.extent(0);
  const std::size_t rows = n * points_;
  spectral_.backward_input(spectral_pass(pass, n), dy, params, dx);
  linear_backward_input_add(per_point(dy.data(), rows, out_),
                            per_point(params + spectral_.num_parameters(), in_, out_),
                            per_point(dx.data(), rows, in_));
}

std::string GridCoordinates2d::describe() const {
  return "grid2d(" + std::to_string(s1_) + ", " + std::to_string(s2_) + ", " +
         std::to_string(channels_) + ")";
}

std::string Pointwise::describe() const {
  return "pointwise(" + std::to_string(in_) + ", " + std::to_string(out_) + ", " +
         std::to_string(points_) + ", " + name_of(activation_) + ")";
}

std::string SpectralConv2d::describe() const {
  return "spectral_conv2d(" + std::to_string(in_) + ", " + std::to_string(out_) + ", " +
         std::to_string(s1_) + ", " + std::to_string(s2_) + ", " + std::to_string(modes1_) +
         ", " + std::to_string(modes2_) + ")";
}

std::string FourierLayer2d::describe() const {
  return "fourier2d(" + spectral_.describe() + ", " + name_of(activation_) + ")";
}

}  // namespace meshtrain
