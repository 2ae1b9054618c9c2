#include "meshtrain/nn/kernels.hpp"

#include <KokkosBlas3_gemm.hpp>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "compat/kokkos_compat.hpp"
#include "meshtrain/comm/bfloat16.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
using Policy2D = Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>;

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// erf in single precision without a library call (which no compiler vectorises and which
// was a fifth of an FNO step): Eigen's and XLA's rational approximation, x P(x^2) / Q(x^2)
// on [-4, 4] (erf is +-1 in float outside), absolute error below 2e-7 (tested against
// std::erf).
KOKKOS_INLINE_FUNCTION float erf_float(float x) {
  x = x < -4.0f ? -4.0f : x;
  x = x > 4.0f ? 4.0f : x;
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

// e^x for x <= 0 without a library call (the GELU derivative's e^(-z^2/2), which as a libm
// call was a tenth of an FNO step): Cephes' expf, x = n ln 2 + r with |r| <= ln 2 / 2, a
// degree-6 polynomial for e^r and 2^n from the exponent bits; within 2 ulp, 0 below -87.
KOKKOS_INLINE_FUNCTION float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  // Nearest n to x log2(e): truncating a non-positive number rounds it up.
  const int n = static_cast<int>(x * 1.44269504088896341f - 0.5f);
  const float fn = static_cast<float>(n);
  const float r = (x - fn * 0.693359375f) + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  // 2^n from its bits. memcpy, not std::bit_cast: nvcc refuses a constexpr host function in
  // device code (warning 20013) unless --expt-relaxed-constexpr, which Kokkos may not set.
  const std::int32_t bits = (n + 127) << 23;
  float two_n = 0.0f;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return er * two_n;
}

// x * Phi(x), Phi the standard normal CDF (PyTorch's gelu, approximate = "none").
KOKKOS_INLINE_FUNCTION float gelu(float z) { return 0.5f * z * (1.0f + erf_float(z * kInvSqrt2)); }

// d/dz z Phi(z) = Phi(z) + z phi(z).
KOKKOS_INLINE_FUNCTION float gelu_derivative(float z) {
  const float cdf = 0.5f * (1.0f + erf_float(z * kInvSqrt2));
  return cdf + z * kInvSqrt2Pi * exp_nonpositive(-0.5f * z * z);
}
}  // namespace

namespace detail {
// Partial sums of a block of columns: the value bias_gradient's team threads reduce.
constexpr std::size_t kColumnBlock = 32;
struct ColumnSums {
  float v[kColumnBlock];
  KOKKOS_INLINE_FUNCTION ColumnSums() {
    for (std::size_t j = 0; j < kColumnBlock; ++j) v[j] = 0.0f;
  }
  KOKKOS_INLINE_FUNCTION ColumnSums& operator+=(const ColumnSums& other) {
    for (std::size_t j = 0; j < kColumnBlock; ++j) v[j] += other.v[j];
    return *this;
  }
  // Kokkos 3's reducers join through volatile references.
  KOKKOS_INLINE_FUNCTION void operator+=(const volatile ColumnSums& other) volatile {
    for (std::size_t j = 0; j < kColumnBlock; ++j) v[j] = v[j] + other.v[j];
  }
};
}  // namespace detail
}  // namespace meshtrain

// The identity of ColumnSums under Kokkos::Sum.
template <>
struct Kokkos::reduction_identity<meshtrain::detail::ColumnSums> {
  KOKKOS_FORCEINLINE_FUNCTION static meshtrain::detail::ColumnSums sum() { return {}; }
};

namespace meshtrain {

namespace {

// `from` rounded to bf16 (nearest even) into `to`, which has its shape.
MatrixRef round_to_bfloat16(ConstMatrixRef from, float* to) {
  const MatrixRef rounded(to, from.extent(0), from.extent(1));
  Kokkos::parallel_for(
      "meshtrain::round_bf16", Policy2D({0, 0}, {from.extent(0), from.extent(1)}),
      KOKKOS_LAMBDA(std::size_t i, std::size_t j) {
        rounded(i, j) = from_bfloat16(to_bfloat16(from(i, j)));
      });
  return rounded;
}

// C = beta C + op(A) op(B) at the given precision.
void gemm(const char* op_a, const char* op_b, ConstMatrixRef a, ConstMatrixRef b, float beta,
          MatrixRef c, const GemmPrecision& precision) {
  if (precision.dtype == Dtype::Bf16) {
    if (precision.scratch == nullptr) throw std::logic_error("gemm: bf16 without scratch");
    const MatrixRef ra = round_to_bfloat16(a, precision.scratch);
    const MatrixRef rb = round_to_bfloat16(b, precision.scratch + a.size());
    KokkosBlas::gemm(op_a, op_b, 1.0f, ConstMatrixRef(ra), ConstMatrixRef(rb), beta, c);
    return;
  }
  KokkosBlas::gemm(op_a, op_b, 1.0f, a, b, beta, c);
}

}  // namespace

void linear_forward(ConstMatrixRef x, ConstMatrixRef w, ConstVectorRef b, MatrixRef y,
                    Activation activation, const GemmPrecision& precision) {
  matmul(x, w, y, precision);
  bias_activation(y, b, activation);
}

void matmul(ConstMatrixRef x, ConstMatrixRef w, MatrixRef y, const GemmPrecision& precision) {
  if (y.extent(0) == 0 || y.extent(1) == 0) return;
  if (x.extent(1) > 0) {
    gemm("N", "N", x, w, 0.0f, y, precision);
  } else {
    Kokkos::deep_copy(ExecSpace(), y, 0.0f);
  }
}

void bias_activation(MatrixRef y, ConstVectorRef b, Activation activation) {
  const auto n = y.extent(0);
  const auto out = y.extent(1);
  if (n == 0) return;
  switch (activation) {
    case Activation::Identity:
      Kokkos::parallel_for(
          "meshtrain::bias", Policy2D({0, 0}, {n, out}),
          KOKKOS_LAMBDA(std::size_t i, std::size_t j) { y(i, j) += b(j); });
      break;
    case Activation::ReLU:
      Kokkos::parallel_for(
          "meshtrain::bias_relu", Policy2D({0, 0}, {n, out}),
          KOKKOS_LAMBDA(std::size_t i, std::size_t j) {
            const float z = y(i, j) + b(j);
            y(i, j) = z > 0.0f ? z : 0.0f;
          });
      break;
    case Activation::Tanh:
      Kokkos::parallel_for(
          "meshtrain::bias_tanh", Policy2D({0, 0}, {n, out}),
          KOKKOS_LAMBDA(std::size_t i, std::size_t j) { y(i, j) = compat::math::tanh(y(i, j) + b(j)); });
      break;
    case Activation::Gelu:
      Kokkos::parallel_for(
          "meshtrain::bias_gelu", Policy2D({0, 0}, {n, out}),
          KOKKOS_LAMBDA(std::size_t i, std::size_t j) { y(i, j) = gelu(y(i, j) + b(j)); });
      break;
  }
}

void matmul_add(ConstMatrixRef x, ConstMatrixRef w, MatrixRef y) {
  if (y.extent(0) == 0 || y.extent(1) == 0 || x.extent(1) == 0) return;
  gemm("N", "N", x, w, 1.0f, y, {});
}

namespace {

// y = op(z, y) element by element: one 1-D loop over contiguous matrices (which compilers
// vectorise; the workspace's are), a 2-D one otherwise. One kernel per activation, so that no
// switch sits inside the loop.
template <class Op>
void map_into(const char* name, ConstMatrixRef z, MatrixRef y, Op op) {
  const std::size_t n = z.extent(0), m = z.extent(1);
  if (n == 0 || m == 0) return;
  if (z.span_is_contiguous() && y.span_is_contiguous()) {
    // On host threads a work item is a block of elements, whose plain inner loop the
    // compiler vectorises (it does not vectorise Kokkos' loop over single elements); on a GPU
    // one element, so that neighbouring threads touch neighbouring floats.
    constexpr std::size_t block =
        Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible ? 512 : 1;
    const std::size_t count = n * m;
    const float* in = z.data();
    float* out = y.data();
    Kokkos::parallel_for(
        name, Kokkos::RangePolicy<ExecSpace>(0, (count + block - 1) / block),
        KOKKOS_LAMBDA(std::size_t b) {
          const std::size_t end = (b + 1) * block < count ? (b + 1) * block : count;
          for (std::size_t k = b * block; k < end; ++k) out[k] = op(in[k], out[k]);
        });
  } else {
    Kokkos::parallel_for(
        name, Policy2D({0, 0}, {n, m}),
        KOKKOS_LAMBDA(std::size_t i, std::size_t j) { y(i, j) = op(z(i, j), y(i, j)); });
  }
}

struct CopyOp {
  KOKKOS_INLINE_FUNCTION float operator()(float v, float) const { return v; }
};
struct ReluOp {
  KOKKOS_INLINE_FUNCTION float operator()(float v, float) const { return v > 0.0f ? v : 0.0f; }
};
struct TanhOp {
  KOKKOS_INLINE_FUNCTION float operator()(float v, float) const {
    return compat::math::tanh(v);
  }
};
struct GeluOp {
  KOKKOS_INLINE_FUNCTION float operator()(float v, float) const { return gelu(v); }
};
// Backward: (pre-activation v, dL/dy g) -> dL/dz.
struct ReluBackwardOp {
  KOKKOS_INLINE_FUNCTION float operator()(float v, float g) const { return v > 0.0f ? g : 0.0f; }
};
struct TanhBackwardOp {
  KOKKOS_INLINE_FUNCTION float operator()(float v, float g) const {
    const float t = compat::math::tanh(v);
    return g * (1.0f - t * t);
  }
};
struct GeluBackwardOp {
  KOKKOS_INLINE_FUNCTION float operator()(float v, float g) const {
    return g * gelu_derivative(v);
  }
};

}  // namespace

void activation_forward(ConstMatrixRef z, MatrixRef y, Activation activation) {
  switch (activation) {
    case Activation::Identity: map_into("meshtrain::identity", z, y, CopyOp{}); break;
    case Activation::ReLU: map_into("meshtrain::relu", z, y, ReluOp{}); break;
    case Activation::Tanh: map_into("meshtrain::tanh", z, y, TanhOp{}); break;
    case Activation::Gelu: map_into("meshtrain::gelu", z, y, GeluOp{}); break;
  }
}

void activation_backward_from_input(ConstMatrixRef z, MatrixRef dy, Activation activation) {
  switch (activation) {
    case Activation::Identity: break;
    case Activation::ReLU: map_into("meshtrain::relu_backward", z, dy, ReluBackwardOp{}); break;
    case Activation::Tanh: map_into("meshtrain::tanh_backward", z, dy, TanhBackwardOp{}); break;
    case Activation::Gelu: map_into("meshtrain::gelu_backward", z, dy, GeluBackwardOp{}); break;
  }
}

void activation_backward(ConstMatrixRef y, MatrixRef dy, Activation activation) {
  const auto n = y.extent(0);
  const auto out = y.extent(1);
  if (n == 0) return;
  switch (activation) {
    case Activation::Identity: return;
    case Activation::ReLU:
      Kokkos::parallel_for(
          "meshtrain::relu_backward", Policy2D({0, 0}, {n, out}),
          KOKKOS_LAMBDA(std::size_t i, std::size_t j) {
            if (!(y(i, j) > 0.0f)) dy(i, j) = 0.0f;
          });
      return;
    case Activation::Tanh:
      Kokkos::parallel_for(
          "meshtrain::tanh_backward", Policy2D({0, 0}, {n, out}),
          KOKKOS_LAMBDA(std::size_t i, std::size_t j) {
            dy(i, j) *= 1.0f - y(i, j) * y(i, j);
          });
      return;
    case Activation::Gelu:
      throw std::logic_error("activation_backward: " + name_of(activation) +
                             "'s derivative needs the pre-activation "
                             "(activation_backward_from_input)");
  }
}

void linear_backward(ConstMatrixRef x, ConstMatrixRef w, ConstMatrixRef dz, MatrixRef dw,
                     VectorRef db, MatrixRef dx, const GemmPrecision& precision) {
  const auto n = dz.extent(0);
  if (n == 0) {
    // An empty shard contributes nothing, but its gradient slots must still be zero
    // before the all-reduce sums them.
    Kokkos::deep_copy(ExecSpace(), dw, 0.0f);
    Kokkos::deep_copy(ExecSpace(), db, 0.0f);
    return;
  }
  gemm("T", "N", x, dz, 0.0f, dw, precision);
  bias_gradient(dz, db);
  linear_backward_input(dz, w, dx, precision);
}

void bias_gradient(ConstMatrixRef dz, VectorRef db) {
  // db = column sums of dz: one team per block of kColumnBlock columns, whose threads split the
  // rows between them, each summing whole row segments (contiguous reads), and then reduce
  // their partial sums. With one thread per team (Serial, and OpenMP's default) every column
  // is summed row by row from zero, in order.
  const std::size_t n = dz.extent(0);
  const std::size_t out = dz.extent(1);
  using detail::ColumnSums, detail::kColumnBlock;
  const std::size_t blocks = (out + kColumnBlock - 1) / kColumnBlock;
  using Team = Kokkos::TeamPolicy<ExecSpace>;
  Kokkos::parallel_for(
      "meshtrain::bias_backward", Team(static_cast<int>(blocks), Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team::member_type& team) {
        const std::size_t j0 = static_cast<std::size_t>(team.league_rank()) * kColumnBlock;
        const std::size_t width = out - j0 < kColumnBlock ? out - j0 : kColumnBlock;
        ColumnSums sums;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, n),
            [&](std::size_t i, ColumnSums& partial) {
              for (std::size_t j = 0; j < width; ++j) partial.v[j] += dz(i, j0 + j);
            },
            Kokkos::Sum<ColumnSums>(sums));
        Kokkos::single(Kokkos::PerTeam(team), [&]() {
          for (std::size_t j = 0; j < width; ++j) db(j0 + j) = sums.v[j];
        });
      });
}

void linear_backward_input(ConstMatrixRef dz, ConstMatrixRef w, MatrixRef dx,
                           const GemmPrecision& precision) {
  if (dx.extent(0) > 0 && dx.extent(1) > 0) gemm("N", "T", dz, w, 0.0f, dx, precision);
}

void linear_backward_input_add(ConstMatrixRef dz, ConstMatrixRef w, MatrixRef dx) {
  if (dx.extent(0) > 0 && dx.extent(1) > 0 && dz.extent(1) > 0) {
    gemm("N", "T", dz, w, 1.0f, dx, {});
  }
}

void mse_loss_grad(ConstMatrixRef pred, ConstMatrixRef target, float scale, MatrixRef dpred,
                   Kokkos::View<float, MemSpace, Unmanaged> loss_out) {
  const auto n = pred.extent(0);
  const auto cols = pred.extent(1);
  const float two_scale = 2.0f * scale;
  Kokkos::parallel_reduce(
      "meshtrain::mse", Kokkos::RangePolicy<ExecSpace>(0, n * cols),
      KOKKOS_LAMBDA(std::size_t k, float& sum) {
        const std::size_t i = k / cols;
        const std::size_t j = k % cols;
        const float diff = pred(i, j) - target(i, j);
        dpred(i, j) = two_scale * diff;
        sum += scale * diff * diff;
      },
      loss_out);
}

void relative_l2_loss_grad(ConstMatrixRef pred, ConstMatrixRef target, float scale,
                           MatrixRef dpred, Kokkos::View<float, MemSpace, Unmanaged> loss_out) {
  using Team = Kokkos::TeamPolicy<ExecSpace>;
  const auto cols = pred.extent(1);
  // One team per sample: its two norms are reductions over the sample's columns (spread over
  // the team's threads), then its gradient row; the samples' losses sum into loss_out.
  Kokkos::parallel_reduce(
      "meshtrain::relative_l2", Team(static_cast<int>(pred.extent(0)), Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team::member_type& team, float& sum) {
        const auto i = static_cast<std::size_t>(team.league_rank());
        double error2 = 0.0, target2 = 0.0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, cols),
            [&](std::size_t j, double& acc) {
              const double d = static_cast<double>(pred(i, j)) - target(i, j);
              acc += d * d;
            },
            error2);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, cols),
            [&](std::size_t j, double& acc) { acc += static_cast<double>(target(i, j)) * target(i, j); },
            target2);
        const double error = compat::math::sqrt(error2);
        const double norm = compat::math::sqrt(target2);
        // d(|e| / |y|)/d pred = e / (|e| |y|); at e = 0 the loss is at its minimum: 0.
        const float g = error > 0.0 ? static_cast<float>(scale / (error * norm)) : 0.0f;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols),
                             [&](std::size_t j) { dpred(i, j) = g * (pred(i, j) - target(i, j)); });
        Kokkos::single(Kokkos::PerTeam(team),
                       [&] { sum += static_cast<float>(scale * error / norm); });
      },
      loss_out);
}

}  // namespace meshtrain
