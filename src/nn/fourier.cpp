#include "meshtrain/nn/fourier.hpp"

#include <KokkosBlas3_gemm.hpp>
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

// The spectral mixing is a complex product per kept mode: for each of the K = 2 m1 m2 kept
// modes (the corner blocks k1 < m1 and k1 >= s1 - m1, k2 < m2 of the rfft2 output), the n x in
// matrix of the samples' input channels times the in x out weights of that mode. Each is one
// real gemm on the real form of the complex matrices: [Xr Xi] (n x 2 in) times
// [[Wr, Wi], [-Wi, Wr]] (2 in x 2 out) gives [Yr Yi]; the adjoint is G times that block's
// transpose, and the weight gradient the block transpose of [Xr Xi] times G. So the FLOPs go
// through the BLAS (OpenBLAS, cuBLAS) like the dense layers', and the gathers and scatters
// around them are cheap copies. Scratch, in floats:
//   the expanded weights Wm (K x 2 in x 2 out) and their gradient dWm (the same),
//   the input's spectrum (n spectra; dx's spectrum in backward), the output's (dy's),
//   Xm (K x n x 2 in, kept from forward for the weight gradient; dXm in backward),
//   Ym (K x n x 2 out; G in backward).
namespace {
struct KeptModes {
  std::size_t s1, s2h, m1, m2;
};
struct SpectralScratch {
  float* wm;
  float* dwm;
  float* x_hat;
  float* y_hat;
  float* xm;
  float* ym;
};
}  // namespace


std::size_t SpectralConv2d::scratch_size(std::size_t max_rows) const {
  const std::size_t k = 2 * modes1_ * modes2_;
  return 2 * k * (2 * in_) * (2 * out_) +
         max_rows * (fft_in_.spectrum_size() + fft_out_.spectrum_size()) +
         max_rows * k * 2 * (in_ + out_);
}

static SpectralScratch spectral_scratch(float* base, std::size_t n, std::size_t k,
                                        std::size_t in, std::size_t out, std::size_t in_spectrum,
                                        std::size_t out_spectrum) {
  SpectralScratch s{};
  s.wm = base;
  s.dwm = s.wm + k * 4 * in * out;
  s.x_hat = s.dwm + k * 4 * in * out;
  s.y_hat = s.x_hat + n * in_spectrum;
  s.xm = s.y_hat + n * out_spectrum;
  s.ym = s.xm + k * n * 2 * in;
  return s;
}

// spectrum (n samples x s1 x s2h positions x c channels, complex interleaved) -> m (K x n x
// 2c: the kept modes' channels, real parts then imaginary parts).
// (Free functions, not members: nvcc refuses a KOKKOS_LAMBDA in a private member function.)
static void gather(const KeptModes& g, const float* spectrum, std::size_t c, float* m,
                   std::size_t n) {
  const std::size_t s1 = g.s1, m1 = g.m1, m2 = g.m2, modes = m1 * m2;
  const std::size_t s2h = g.s2h, stride = s1 * s2h;
  // One thread per (kept mode, sample), a loop over the channels: the index arithmetic once
  // per channel vector.
  Kokkos::parallel_for(
      "meshtrain::spectral_gather", Policy(0, 2 * modes * n), KOKKOS_LAMBDA(std::size_t t) {
        const std::size_t b = t % n;
        const std::size_t kept = t / n;
        const std::size_t mode = kept % modes;
        const std::size_t k1 = kept < modes ? mode / m2 : s1 - m1 + mode / m2;
        const float* from = spectrum + (b * stride + k1 * s2h + mode % m2) * c * 2;
        float* to = m + t * 2 * c;
        for (std::size_t ch = 0; ch < c; ++ch) {
          to[ch] = from[2 * ch];
          to[c + ch] = from[2 * ch + 1];
        }
      });
}

// The inverse of gather, with zeros at every position that is not a kept mode.
static void scatter(const KeptModes& g, const float* m, std::size_t c, float* spectrum,
                    std::size_t n) {
  const std::size_t s1 = g.s1, m1 = g.m1, m2 = g.m2, modes = m1 * m2;
  const std::size_t s2h = g.s2h, stride = s1 * s2h;
  Kokkos::parallel_for(
      "meshtrain::spectral_scatter", Policy(0, n * stride), KOKKOS_LAMBDA(std::size_t t) {
        const std::size_t p = t % stride;
        const std::size_t b = t / stride;
        const std::size_t k1 = p / s2h, k2 = p % s2h;
        float* to = spectrum + t * 2 * c;
        const bool low = k1 < m1;
        if (k2 >= m2 || (!low && k1 < s1 - m1)) {
          for (std::size_t d = 0; d < 2 * c; ++d) to[d] = 0.0f;
          return;
        }
        const std::size_t kept = (low ? 0 : modes) + (low ? k1 : k1 - (s1 - m1)) * m2 + k2;
        const float* from = m + (kept * n + b) * 2 * c;
        for (std::size_t ch = 0; ch < c; ++ch) {
          to[2 * ch] = from[ch];
          to[2 * ch + 1] = from[c + ch];
        }
      });
}

// weights1 then weights2, each [i][o][mode][re, im] (the reference's layout) -> Wm, K blocks
// of [[Wr, Wi], [-Wi, Wr]] (2 in x 2 out, row-major).
static void expand_weights(const KeptModes& g, std::size_t in, std::size_t out,
                           const float* params, float* wm) {
  const std::size_t modes = g.m1 * g.m2;
  Kokkos::parallel_for(
      "meshtrain::spectral_expand", Policy(0, 2 * modes * in * out),
      KOKKOS_LAMBDA(std::size_t t) {
        const std::size_t o = t % out;
        const std::size_t i = (t / out) % in;
        const std::size_t kept = t / (in * out);
        const std::size_t mode = kept % modes;
        const std::size_t block = kept < modes ? 0 : in * out * modes;
        const float* w = params + (block + (i * out + o) * modes + mode) * 2;
        float* to = wm + kept * 4 * in * out;
        const std::size_t row = 2 * out;
        to[i * row + o] = w[0];
        to[i * row + out + o] = w[1];
        to[(in + i) * row + o] = -w[1];
        to[(in + i) * row + out + o] = w[0];
      });
}

// Per kept mode k: C_k = op(A_k) op(B_k), each a row-major block of the given shape.
static void per_mode_gemm(const char* op_a, const char* op_b, std::size_t k, const float* a,
                          std::size_t a_rows, std::size_t a_cols, const float* b,
                          std::size_t b_rows, std::size_t b_cols, float* c, std::size_t c_rows,
                          std::size_t c_cols) {
  if (c_rows == 0 || c_cols == 0) return;
  const bool empty_sum = (op_a[0] == 'N' ? a_cols : a_rows) == 0;
  for (std::size_t m = 0; m < k; ++m) {
    MatrixRef cm(c + m * c_rows * c_cols, c_rows, c_cols);
    if (empty_sum) {
      Kokkos::deep_copy(ExecSpace(), cm, 0.0f);
      continue;
    }
    KokkosBlas::gemm(op_a, op_b, 1.0f, ConstMatrixRef(a + m * a_rows * a_cols, a_rows, a_cols),
                     ConstMatrixRef(b + m * b_rows * b_cols, b_rows, b_cols), 0.0f, cm);
  }
}

void SpectralConv2d::forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
                             MatrixRef y) const {
  const std::size_t n = x.extent(0), k = 2 * modes1_ * modes2_;
  const SpectralScratch s = spectral_scratch(pass.scratch, n, k, in_, out_,
                                             fft_in_.spectrum_size(), fft_out_.spectrum_size());
  fft_in_.forward(x.data(), s.x_hat, n);
  const KeptModes g{s1_, s2_ / 2 + 1, modes1_, modes2_};
  gather(g, s.x_hat, in_, s.xm, n);
  expand_weights(g, in_, out_, params, s.wm);
  per_mode_gemm("N", "N", k, s.xm, n, 2 * in_, s.wm, 2 * in_, 2 * out_, s.ym, n, 2 * out_);
  scatter(g, s.ym, out_, s.y_hat, n);
  fft_out_.inverse(s.y_hat, y.data(), n);
}

// y = irfft2(Y) is y[n] = Re(sum_k c(k2) Y[k] e^{+i theta(k, n)}) / (s1 s2), c(k2) = 1 for
// the columns the half spectrum holds once (k2 = 0 and, for even s2, s2/2), 2 for the
// others. So dL/dRe Y + i dL/dIm Y = c(k2) rfft2(dy) / (s1 s2), and for Y = X W,
// dW = that times conj(X), summed over the samples: from dWm = Xm^T G, dWr = dWm[r, r] +
// dWm[i, i] and dWi = dWm[r, i] - dWm[i, r].
void SpectralConv2d::backward_parameters(const LayerPass& pass, ConstMatrixRef x,
                                         ConstMatrixRef /*y*/, MatrixRef dy,
                                         const float* /*params*/, float* grads) const {
  const std::size_t n = x.extent(0), k = 2 * modes1_ * modes2_;
  const SpectralScratch s = spectral_scratch(pass.scratch, n, k, in_, out_,
                                             fft_in_.spectrum_size(), fft_out_.spectrum_size());
  fft_out_.forward(dy.data(), s.y_hat, n);
  pass.progress();
  gather({s1_, s2_ / 2 + 1, modes1_, modes2_}, s.y_hat, out_, s.ym, n);  // G, kept for backward_input
  per_mode_gemm("T", "N", k, s.xm, n, 2 * in_, s.ym, n, 2 * out_, s.dwm, 2 * in_, 2 * out_);
  const std::size_t in = in_, out = out_, s2 = s2_, m2 = modes2_, modes = modes1_ * modes2_;
  const float inv_size = 1.0f / static_cast<float>(s1_ * s2_);
  const float* dwm = s.dwm;
  Kokkos::parallel_for(
      "meshtrain::spectral_weight_gradient", Policy(0, 2 * modes * in * out),
      KOKKOS_LAMBDA(std::size_t t) {
        const std::size_t o = t % out;
        const std::size_t i = (t / out) % in;
        const std::size_t kept = t / (in * out);
        const std::size_t mode = kept % modes;
        const std::size_t k2 = mode % m2;
        const bool once = k2 == 0 || (s2 % 2 == 0 && k2 == s2 / 2);
        const float scale = (once ? 1.0f : 2.0f) * inv_size;
        const float* d = dwm + kept * 4 * in * out;
        const std::size_t row = 2 * out;
        const float re = d[i * row + o] + d[(in + i) * row + out + o];
        const float im = d[i * row + out + o] - d[(in + i) * row + o];
        const std::size_t e = (kept < modes ? 0 : in * out * modes) + (i * out + o) * modes + mode;
        grads[2 * e] = scale * re;
        grads[2 * e + 1] = scale * im;
      });
}

// dx = irfft2(sum_o rfft2(dy)_o conj(W[i, o])), dXm = G Wm^T: the c(k2) of the inverse
// transform's gradient cancels against the forward transform's adjoint, which is c2r / c(k2).
void SpectralConv2d::backward_input(const LayerPass& pass, ConstMatrixRef dy,
                                    const float* /*params*/, MatrixRef dx) const {
  const std::size_t n = dy.extent(0), k = 2 * modes1_ * modes2_;
  const SpectralScratch s = spectral_scratch(pass.scratch, n, k, in_, out_,
                                             fft_in_.spectrum_size(), fft_out_.spectrum_size());
  per_mode_gemm("N", "T", k, s.ym, n, 2 * out_, s.wm, 2 * in_, 2 * out_, s.xm, n, 2 * in_);
  pass.progress();
  scatter({s1_, s2_ / 2 + 1, modes1_, modes2_}, s.xm, in_, s.x_hat, n);
  fft_in_.inverse(s.x_hat, dx.data(), n);
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
