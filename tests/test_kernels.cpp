// Kernels and the MLP: forward passes against plain double-precision loops, backward passes
// against central finite differences of a scalar loss evaluated in double on the host from
// the float model's outputs, and the model's layout and initialisation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "meshtrain/comm/bfloat16.hpp"
#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/nn/dense.hpp"
#include "meshtrain/nn/kernels.hpp"
#include "meshtrain/nn/mlp.hpp"
#include "meshtrain/nn/model.hpp"
#include "meshtrain/nn/types.hpp"
#include "meshtrain/train/gradient_reducer.hpp"

namespace {

using namespace meshtrain;

// Row-major host copy of a rank-1 or rank-2 view, in double.
template <class V>
std::vector<double> host_values(const V& v) {
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  std::vector<double> out;
  if constexpr (V::rank == 1) {
    for (std::size_t i = 0; i < h.extent(0); ++i) out.push_back(h(i));
  } else {
    for (std::size_t i = 0; i < h.extent(0); ++i) {
      for (std::size_t j = 0; j < h.extent(1); ++j) out.push_back(h(i, j));
    }
  }
  return out;
}

// Writes row-major values (rounded to float) into a rank-1 or rank-2 view.
template <class V>
void set_values(const V& v, const std::vector<double>& values) {
  auto h = Kokkos::create_mirror_view(v);
  if constexpr (V::rank == 1) {
    for (std::size_t i = 0; i < h.extent(0); ++i) h(i) = static_cast<float>(values.at(i));
  } else {
    for (std::size_t i = 0; i < h.extent(0); ++i) {
      for (std::size_t j = 0; j < h.extent(1); ++j) {
        h(i, j) = static_cast<float>(values.at(i * h.extent(1) + j));
      }
    }
  }
  Kokkos::deep_copy(v, h);
}

// Values rounded to float and back, so host references see exactly what the device sees.
std::vector<double> random_values(std::size_t n, Random& rng, double scale) {
  std::vector<double> out(n);
  for (auto& v : out) v = static_cast<float>(rng.normal() * scale);
  return out;
}

Matrix make_matrix(std::size_t rows_, std::size_t cols, const std::vector<double>& values) {
  Matrix m("test::matrix", rows_, cols);
  set_values(m, values);
  return m;
}

Vector make_vector(const std::vector<double>& values) {
  Vector v("test::vector", values.size());
  set_values(v, values);
  return v;
}

double apply(Activation a, double z) {
  switch (a) {
    case Activation::Identity: return z;
    case Activation::ReLU: return z > 0.0 ? z : 0.0;
    case Activation::Tanh: return std::tanh(z);
    case Activation::Gelu: return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// z = x W + b in double; x (n x in), W (in x out), b (out).
std::vector<double> host_affine(const std::vector<double>& x, const std::vector<double>& w,
                                const std::vector<double>& b, std::size_t n, std::size_t in,
                                std::size_t out) {
  std::vector<double> z(n * out);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < out; ++j) {
      double s = b[j];
      for (std::size_t k = 0; k < in; ++k) s += x[i * in + k] * w[k * out + j];
      z[i * out + j] = s;
    }
  }
  return z;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central difference with the step actually taken by the float parameter, so the rounding
// of p +- h to float does not bias the quotient.
struct Step {
  double plus;
  double minus;
};
Step float_step(double p, double h) {
  return {static_cast<double>(static_cast<float>(p + h)),
          static_cast<double>(static_cast<float>(p - h))};
}

// |analytic - fd| within a relative tolerance for float32 models plus a small absolute floor.
void expect_gradient_close(double analytic, double fd, const std::string& what) {
  const double tol = 1e-2 * std::max(std::abs(analytic), std::abs(fd)) + 1e-3;
  EXPECT_NEAR(analytic, fd, tol) << what;
}

// ---------------------------------------------------------------------------------------
// parse_activation / name_of

TEST(Activation, ParsesKnownNamesAndRejectsOthers) {
  EXPECT_EQ(parse_activation("relu"), Activation::ReLU);
  EXPECT_EQ(parse_activation("tanh"), Activation::Tanh);
  EXPECT_EQ(parse_activation("identity"), Activation::Identity);
  EXPECT_EQ(parse_activation("gelu"), Activation::Gelu);
  EXPECT_EQ(parse_activation("linear"), Activation::Identity);
  for (Activation a :
       {Activation::Identity, Activation::ReLU, Activation::Tanh, Activation::Gelu}) {
    EXPECT_EQ(parse_activation(name_of(a)), a);
  }
  try {
    parse_activation("swish");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("activation 'swish'", 0), 0u) << e.what();
  }
}

// ---------------------------------------------------------------------------------------
// linear_forward

class LinearForward : public ::testing::TestWithParam<Activation> {};

TEST_P(LinearForward, MatchesDoubleLoopReference) {
  const Activation act = GetParam();
  const std::size_t n = 9, in = 13, out = 6;
  Random rng(11);
  const auto xv = random_values(n * in, rng, 1.0);
  const auto wv = random_values(in * out, rng, 0.4);
  const auto bv = random_values(out, rng, 0.5);
  Matrix x = make_matrix(n, in, xv);
  Matrix w = make_matrix(in, out, wv);
  Vector b = make_vector(bv);
  Matrix y("y", n, out);
  Kokkos::deep_copy(y, 123.0f);  // stale contents must be overwritten

  linear_forward(x, w, b, y, act);
  const auto yv = host_values(y);
  const auto z = host_affine(xv, wv, bv, n, in, out);

  int positive = 0, negative = 0;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < out; ++j) {
      double magnitude = std::abs(bv[j]);
      for (std::size_t k = 0; k < in; ++k) magnitude += std::abs(xv[i * in + k] * wv[k * out + j]);
      const double expected = apply(act, z[i * out + j]);
      EXPECT_NEAR(yv[i * out + j], expected, 2e-6 * magnitude + 1e-6)
          << name_of(act) << " at (" << i << ", " << j << ")";
      (z[i * out + j] > 0 ? positive : negative)++;
    }
  }
  // The data must exercise both branches of the activation.
  EXPECT_GT(positive, 5);
  EXPECT_GT(negative, 5);
}

TEST_P(LinearForward, ZeroInputFeaturesGiveActivatedBias) {
  const Activation act = GetParam();
  const std::size_t n = 3, out = 4;
  const std::vector<double> bv = {0.5, -0.25, 1.5, -2.0};
  Matrix x("x", n, 0);
  Matrix w("w", 0, out);
  Vector b = make_vector(bv);
  Matrix y("y", n, out);
  Kokkos::deep_copy(y, 9.0f);
  linear_forward(x, w, b, y, act);
  const auto yv = host_values(y);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < out; ++j) {
      EXPECT_NEAR(yv[i * out + j], apply(act, bv[j]), 1e-6);
    }
  }
}

TEST_P(LinearForward, ZeroRowsIsANoOp) {
  Matrix x("x", 0, 3), w("w", 3, 2), y("y", 0, 2);
  Vector b("b", 2);
  EXPECT_NO_THROW(linear_forward(x, w, b, y, GetParam()));
}

INSTANTIATE_TEST_SUITE_P(AllActivations, LinearForward,
                         ::testing::Values(Activation::Identity, Activation::ReLU,
                                           Activation::Tanh, Activation::Gelu),
                         [](const auto& param_info) { return name_of(param_info.param); });

// ---------------------------------------------------------------------------------------
// activation_backward

TEST(ActivationBackward, MatchesDerivativeFromOutput) {
  const std::size_t n = 7, in = 4, out = 5;
  Random rng(21);
  const auto xv = random_values(n * in, rng, 1.0);
  const auto wv = random_values(in * out, rng, 0.8);
  const auto bv = random_values(out, rng, 0.3);
  const auto gv = random_values(n * out, rng, 1.0);
  Matrix x = make_matrix(n, in, xv);
  Matrix w = make_matrix(in, out, wv);
  Vector b = make_vector(bv);

  for (Activation act : {Activation::Identity, Activation::ReLU, Activation::Tanh}) {
    Matrix y("y", n, out);
    linear_forward(x, w, b, y, act);
    const auto yv = host_values(y);
    Matrix dy = make_matrix(n, out, gv);
    activation_backward(y, dy, act);
    const auto dv = host_values(dy);
    int zeroed = 0;
    for (std::size_t k = 0; k < n * out; ++k) {
      double expected = gv[k];
      if (act == Activation::ReLU) expected = yv[k] > 0.0 ? gv[k] : 0.0;
      if (act == Activation::Tanh) expected = gv[k] * (1.0 - yv[k] * yv[k]);
      if (act == Activation::ReLU && !(yv[k] > 0.0)) ++zeroed;
      EXPECT_NEAR(dv[k], expected, 1e-6 * std::abs(gv[k]) + 1e-7) << name_of(act) << " k=" << k;
    }
    if (act == Activation::ReLU) {
      EXPECT_GT(zeroed, 3);
      EXPECT_LT(zeroed, static_cast<int>(n * out) - 3);
    }
  }
}

// ---------------------------------------------------------------------------------------
// linear_backward against plain loops

TEST(LinearBackward, MatchesDoubleLoopReference) {
  const std::size_t n = 8, in = 6, out = 5;
  Random rng(31);
  const auto xv = random_values(n * in, rng, 1.0);
  const auto wv = random_values(in * out, rng, 0.5);
  const auto dzv = random_values(n * out, rng, 1.0);
  Matrix x = make_matrix(n, in, xv);
  Matrix w = make_matrix(in, out, wv);
  Matrix dz = make_matrix(n, out, dzv);
  Matrix dw("dw", in, out), dx("dx", n, in);
  Vector db("db", out);
  // Stale values from an earlier step must be overwritten, not accumulated.
  Kokkos::deep_copy(dw, 7.0f);
  Kokkos::deep_copy(db, 7.0f);
  Kokkos::deep_copy(dx, 7.0f);

  linear_backward(x, w, dz, dw, db, dx);
  const auto dwv = host_values(dw), dbv = host_values(db), dxv = host_values(dx);

  for (std::size_t k = 0; k < in; ++k) {
    for (std::size_t j = 0; j < out; ++j) {
      double s = 0.0, mag = 0.0;
      for (std::size_t i = 0; i < n; ++i) {
        s += xv[i * in + k] * dzv[i * out + j];
        mag += std::abs(xv[i * in + k] * dzv[i * out + j]);
      }
      EXPECT_NEAR(dwv[k * out + j], s, 2e-6 * mag + 1e-6) << "dW(" << k << ", " << j << ")";
    }
  }
  for (std::size_t j = 0; j < out; ++j) {
    double s = 0.0, mag = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      s += dzv[i * out + j];
      mag += std::abs(dzv[i * out + j]);
    }
    EXPECT_NEAR(dbv[j], s, 2e-6 * mag + 1e-6) << "db(" << j << ")";
  }
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < in; ++k) {
      double s = 0.0, mag = 0.0;
      for (std::size_t j = 0; j < out; ++j) {
        s += dzv[i * out + j] * wv[k * out + j];
        mag += std::abs(dzv[i * out + j] * wv[k * out + j]);
      }
      EXPECT_NEAR(dxv[i * in + k], s, 2e-6 * mag + 1e-6) << "dx(" << i << ", " << k << ")";
    }
  }
}

// bf16 compute: each gemm is the exact products of the operands rounded to bf16, summed in
// fp32 (so within fp32 summation error of a double sum over the rounded operands), and not
// the fp32 gemm; the operands themselves are left as they were.
TEST(Bf16Gemm, ForwardAndBackwardUseRoundedOperandsWithFp32Sums) {
  const std::size_t n = 9, in = 7, out = 5;
  Random rng(5);
  const auto xv = random_values(n * in, rng, 1.0);
  const auto wv = random_values(in * out, rng, 0.5);
  const auto dzv = random_values(n * out, rng, 1.0);
  const auto round = [](float v) { return static_cast<double>(from_bfloat16(to_bfloat16(v))); };
  Matrix x = make_matrix(n, in, xv), w = make_matrix(in, out, wv), dz = make_matrix(n, out, dzv);
  Vector scratch("scratch", std::max({n * in + in * out, n * in + n * out, n * out + in * out}));
  const GemmPrecision bf16{Dtype::Bf16, scratch.data()};
  Matrix y("y", n, out), y32("y32", n, out), dw("dw", in, out), dx("dx", n, in);
  Vector db("db", out);
  matmul(x, w, y, bf16);
  matmul(x, w, y32);
  linear_backward(x, w, dz, dw, db, dx, bf16);
  const auto yv = host_values(y), y32v = host_values(y32), dwv = host_values(dw),
             dxv = host_values(dx);
  double largest_change = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < out; ++j) {
      double s = 0.0, mag = 0.0;
      for (std::size_t k = 0; k < in; ++k) {
        s += round(xv[i * in + k]) * round(wv[k * out + j]);
        mag += std::abs(xv[i * in + k] * wv[k * out + j]);
      }
      EXPECT_NEAR(yv[i * out + j], s, 2e-6 * mag + 1e-7) << "y(" << i << ", " << j << ")";
      largest_change = std::max(largest_change, std::abs(double(yv[i * out + j]) - y32v[i * out + j]));
    }
  }
  EXPECT_GT(largest_change, 1e-4) << "bf16 did not round";
  for (std::size_t k = 0; k < in; ++k) {
    for (std::size_t j = 0; j < out; ++j) {
      double s = 0.0, mag = 0.0;
      for (std::size_t i = 0; i < n; ++i) {
        s += round(xv[i * in + k]) * round(dzv[i * out + j]);
        mag += std::abs(xv[i * in + k] * dzv[i * out + j]);
      }
      EXPECT_NEAR(dwv[k * out + j], s, 2e-6 * mag + 1e-7) << "dW(" << k << ", " << j << ")";
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < in; ++k) {
      double s = 0.0, mag = 0.0;
      for (std::size_t j = 0; j < out; ++j) {
        s += round(dzv[i * out + j]) * round(wv[k * out + j]);
        mag += std::abs(dzv[i * out + j] * wv[k * out + j]);
      }
      EXPECT_NEAR(dxv[i * in + k], s, 2e-6 * mag + 1e-7) << "dx(" << i << ", " << k << ")";
    }
  }
  EXPECT_EQ(host_values(x), xv);  // the operands are not rounded in place
  EXPECT_EQ(host_values(w), wv);
}

TEST(LinearBackward, WideLayerBiasGradient) {
  // More columns than any small block size, and not a multiple of 64 or 32, so a blocked or
  // vectorised column sum must handle full blocks and a ragged tail.
  const std::size_t n = 5, in = 3, out = 131;
  Random rng(33);
  const auto xv = random_values(n * in, rng, 1.0);
  const auto wv = random_values(in * out, rng, 1.0);
  const auto dzv = random_values(n * out, rng, 1.0);
  Matrix x = make_matrix(n, in, xv), w = make_matrix(in, out, wv), dz = make_matrix(n, out, dzv);
  Matrix dw("dw", in, out), dx("dx", n, in);
  Vector db("db", out);
  Kokkos::deep_copy(db, 7.0f);
  linear_backward(x, w, dz, dw, db, dx);
  const auto dbv = host_values(db), dwv = host_values(dw);
  for (std::size_t j = 0; j < out; ++j) {
    double s = 0.0;
    for (std::size_t i = 0; i < n; ++i) s += dzv[i * out + j];
    EXPECT_NEAR(dbv[j], s, 1e-5) << "db(" << j << ")";
    for (std::size_t k = 0; k < in; ++k) {
      double t = 0.0;
      for (std::size_t i = 0; i < n; ++i) t += xv[i * in + k] * dzv[i * out + j];
      EXPECT_NEAR(dwv[k * out + j], t, 1e-5) << "dW(" << k << ", " << j << ")";
    }
  }
}

TEST(BiasGradient, ColumnSumsOfManyRows) {
  // Rows enough for every thread of a team to take several, two full column blocks and a
  // ragged tail. Where a team has one thread (Serial), each column is the row-by-row float
  // sum, bit for bit (what the blocked loop before the team reduction computed); a single
  // execution-space thread implies that.
  const std::size_t n = 1000, out = 70;
  Random rng(34);
  const auto dzv = random_values(n * out, rng, 1.0);
  Matrix dz = make_matrix(n, out, dzv);
  Vector db("db", out);
  Kokkos::deep_copy(db, 7.0f);
  bias_gradient(dz, db);
  const auto dbv = host_values(db);
  const bool one_thread_per_team = ExecSpace().concurrency() == 1;
  for (std::size_t j = 0; j < out; ++j) {
    float in_order = 0.0f;
    double exact = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      in_order += static_cast<float>(dzv[i * out + j]);
      exact += dzv[i * out + j];
    }
    EXPECT_NEAR(dbv[j], exact, 1e-3) << "db(" << j << ")";
    if (one_thread_per_team) {
      EXPECT_EQ(static_cast<float>(dbv[j]), in_order) << "db(" << j << ")";
    }
  }
}

TEST(LinearBackward, EmptyDxIsSkipped) {
  const std::size_t n = 4, in = 3, out = 2;
  Random rng(32);
  const auto xv = random_values(n * in, rng, 1.0);
  const auto wv = random_values(in * out, rng, 1.0);
  const auto dzv = random_values(n * out, rng, 1.0);
  Matrix x = make_matrix(n, in, xv), w = make_matrix(in, out, wv), dz = make_matrix(n, out, dzv);
  Matrix dw("dw", in, out);
  Vector db("db", out);
  ASSERT_NO_THROW(linear_backward(x, w, dz, dw, db, MatrixRef()));
  const auto dbv = host_values(db);
  for (std::size_t j = 0; j < out; ++j) {
    double s = 0.0;
    for (std::size_t i = 0; i < n; ++i) s += dzv[i * out + j];
    EXPECT_NEAR(dbv[j], s, 1e-5);
  }
}

TEST(LinearBackward, ZeroRowsZeroesWeightAndBiasGradients) {
  const std::size_t in = 3, out = 4;
  Matrix x("x", 0, in), dz("dz", 0, out), dx("dx", 0, in);
  Matrix w("w", in, out);
  Kokkos::deep_copy(w, 1.0f);
  Matrix dw("dw", in, out);
  Vector db("db", out);
  Kokkos::deep_copy(dw, 5.0f);
  Kokkos::deep_copy(db, -3.0f);
  linear_backward(x, w, dz, dw, db, dx);
  for (double v : host_values(dw)) EXPECT_EQ(v, 0.0);
  for (double v : host_values(db)) EXPECT_EQ(v, 0.0);
}

// ---------------------------------------------------------------------------------------
// One layer (linear_forward + activation_backward + linear_backward) against finite
// differences of L = sum(g .* act(x W + b)).

void check_layer_against_finite_differences(Activation act, std::uint64_t seed) {
  const std::size_t n = 6, in = 5, out = 4;
  const double h = 1e-2;
  Random rng(seed);
  const auto xv = random_values(n * in, rng, 1.0);
  const auto wv = random_values(in * out, rng, 0.6);
  const auto bv = random_values(out, rng, 0.5);
  const auto gv = random_values(n * out, rng, 1.0);

  Matrix x = make_matrix(n, in, xv), w = make_matrix(in, out, wv);
  Vector b = make_vector(bv);
  Matrix y("y", n, out);

  // Analytic gradients.
  linear_forward(x, w, b, y, act);
  Matrix dz = make_matrix(n, out, gv);
  activation_backward(y, dz, act);
  Matrix dw("dw", in, out), dx("dx", n, in);
  Vector db("db", out);
  linear_backward(x, w, dz, dw, db, dx);
  const auto dwv = host_values(dw), dbv = host_values(db), dxv = host_values(dx);

  auto loss = [&](const std::vector<double>& xs, const std::vector<double>& ws,
                  const std::vector<double>& bs) {
    set_values(x, xs);
    set_values(w, ws);
    set_values(b, bs);
    linear_forward(x, w, b, y, act);
    return dot(gv, host_values(y));
  };
  // ReLU is piecewise linear: skip a coordinate whose perturbation could cross a kink.
  const auto z = host_affine(xv, wv, bv, n, in, out);
  auto near_kink = [&](std::size_t i, std::size_t j, double shift) {
    return act == Activation::ReLU && std::abs(z[i * out + j]) < 2.0 * h * std::abs(shift) + 1e-4;
  };

  int checked = 0, total = 0;
  for (std::size_t k = 0; k < in; ++k) {
    for (std::size_t j = 0; j < out; ++j) {
      ++total;
      bool skip = false;
      for (std::size_t i = 0; i < n; ++i) skip |= near_kink(i, j, xv[i * in + k]);
      if (skip) continue;
      auto ws = wv;
      const Step s = float_step(wv[k * out + j], h);
      ws[k * out + j] = s.plus;
      const double lp = loss(xv, ws, bv);
      ws[k * out + j] = s.minus;
      const double lm = loss(xv, ws, bv);
      expect_gradient_close(dwv[k * out + j], (lp - lm) / (s.plus - s.minus),
                            name_of(act) + " dW(" + std::to_string(k) + "," + std::to_string(j) + ")");
      ++checked;
    }
  }
  for (std::size_t j = 0; j < out; ++j) {
    ++total;
    bool skip = false;
    for (std::size_t i = 0; i < n; ++i) skip |= near_kink(i, j, 1.0);
    if (skip) continue;
    auto bs = bv;
    const Step s = float_step(bv[j], h);
    bs[j] = s.plus;
    const double lp = loss(xv, wv, bs);
    bs[j] = s.minus;
    const double lm = loss(xv, wv, bs);
    expect_gradient_close(dbv[j], (lp - lm) / (s.plus - s.minus),
                          name_of(act) + " db(" + std::to_string(j) + ")");
    ++checked;
  }
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < in; ++k) {
      ++total;
      bool skip = false;
      for (std::size_t j = 0; j < out; ++j) skip |= near_kink(i, j, wv[k * out + j]);
      if (skip) continue;
      auto xs = xv;
      const Step s = float_step(xv[i * in + k], h);
      xs[i * in + k] = s.plus;
      const double lp = loss(xs, wv, bv);
      xs[i * in + k] = s.minus;
      const double lm = loss(xs, wv, bv);
      expect_gradient_close(dxv[i * in + k], (lp - lm) / (s.plus - s.minus),
                            name_of(act) + " dx(" + std::to_string(i) + "," + std::to_string(k) + ")");
      ++checked;
    }
  }
  EXPECT_GE(checked, total * 7 / 10) << "too many coordinates skipped near ReLU kinks";
}

TEST(LinearLayerGradient, IdentityMatchesFiniteDifferences) {
  check_layer_against_finite_differences(Activation::Identity, 41);
}
TEST(LinearLayerGradient, TanhMatchesFiniteDifferences) {
  check_layer_against_finite_differences(Activation::Tanh, 42);
}
TEST(LinearLayerGradient, ReluMatchesFiniteDifferences) {
  check_layer_against_finite_differences(Activation::ReLU, 43);
}

// ---------------------------------------------------------------------------------------
// mse_loss_grad

struct MseResult {
  std::vector<double> grad;
  double loss;
};

// A loss kernel's gradient (grad, at the prediction values pv) against central differences
// of the loss it reports: loss() runs the kernel on pred, which is moved to pv +- a step at
// every stride-th element.
template <class F>
void expect_loss_gradient(Matrix& pred, const std::vector<double>& pv,
                          const std::vector<double>& grad, F loss, std::size_t stride,
                          double rtol) {
  for (std::size_t k = 0; k < pv.size(); k += stride) {
    auto ps = pv;
    const Step s = float_step(pv[k], 1e-2);
    ps[k] = s.plus;
    set_values(pred, ps);
    const double lp = loss();
    ps[k] = s.minus;
    set_values(pred, ps);
    const double lm = loss();
    EXPECT_NEAR(grad[k], (lp - lm) / (s.plus - s.minus), rtol * std::abs(grad[k]) + 2e-5)
        << "k=" << k;
  }
  set_values(pred, pv);
}

MseResult run_mse(const Matrix& pred, const Matrix& target, float scale) {
  Matrix dpred("dpred", pred.extent(0), pred.extent(1));
  Kokkos::deep_copy(dpred, 42.0f);
  Kokkos::View<float, MemSpace> loss("loss");
  Kokkos::deep_copy(loss, 5.0f);  // must be overwritten, not accumulated into
  mse_loss_grad(pred, target, scale, dpred, Kokkos::View<float, MemSpace, Unmanaged>(loss.data()));
  Kokkos::fence();
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), loss);
  return {host_values(dpred), static_cast<double>(h())};
}

TEST(MseLossGrad, MatchesReferenceAndFiniteDifferences) {
  const std::size_t n = 5, cols = 3, global_rows = 10;
  const float scale = 1.0f / static_cast<float>(global_rows * cols);
  Random rng(51);
  const auto pv = random_values(n * cols, rng, 1.0);
  const auto tv = random_values(n * cols, rng, 1.0);
  Matrix pred = make_matrix(n, cols, pv), target = make_matrix(n, cols, tv);

  const MseResult r = run_mse(pred, target, scale);
  double expected_loss = 0.0;
  for (std::size_t k = 0; k < n * cols; ++k) {
    const double diff = pv[k] - tv[k];
    expected_loss += static_cast<double>(scale) * diff * diff;
    EXPECT_NEAR(r.grad[k], 2.0 * scale * diff, 1e-6 * std::abs(2.0 * scale * diff) + 1e-9);
  }
  EXPECT_NEAR(r.loss, expected_loss, 1e-5 * expected_loss);

  // The gradient is the derivative of the loss the kernel itself reports.
  expect_loss_gradient(pred, pv, r.grad, [&] { return run_mse(pred, target, scale).loss; }, 1,
                       1e-3);
}

TEST(MseLossGrad, ShardLossesSumToGlobalMean) {
  const std::size_t n = 7, cols = 2;
  const float scale = 1.0f / static_cast<float>(n * cols);
  Random rng(52);
  const auto pv = random_values(n * cols, rng, 1.0);
  const auto tv = random_values(n * cols, rng, 1.0);
  Matrix pred = make_matrix(n, cols, pv), target = make_matrix(n, cols, tv);
  double mean = 0.0;
  for (std::size_t k = 0; k < n * cols; ++k) mean += (pv[k] - tv[k]) * (pv[k] - tv[k]);
  mean /= static_cast<double>(n * cols);

  const MseResult whole = run_mse(pred, target, scale);
  EXPECT_NEAR(whole.loss, mean, 1e-5 * mean);

  auto shard = [&](std::size_t b, std::size_t e) {
    Matrix p("p", e - b, cols), t("t", e - b, cols);
    Kokkos::deep_copy(p, rows(pred, b, e));
    Kokkos::deep_copy(t, rows(target, b, e));
    return run_mse(p, t, scale).loss;
  };
  EXPECT_NEAR(shard(0, 3) + shard(3, n), mean, 1e-5 * mean);
}

TEST(MseLossGrad, ZeroRowsGiveZeroLoss) {
  Matrix pred("pred", 0, 3), target("target", 0, 3);
  const MseResult r = run_mse(pred, target, 0.25f);
  EXPECT_EQ(r.loss, 0.0);
  EXPECT_TRUE(r.grad.empty());
}

// ---------------------------------------------------------------------------------------
// relative_l2_loss_grad

MseResult run_relative_l2(const Matrix& pred, const Matrix& target, float scale) {
  Matrix dpred("dpred", pred.extent(0), pred.extent(1));
  Kokkos::deep_copy(dpred, 42.0f);
  Kokkos::View<float, MemSpace> loss("loss");
  Kokkos::deep_copy(loss, 5.0f);  // must be overwritten, not accumulated into
  relative_l2_loss_grad(pred, target, scale, dpred,
                        Kokkos::View<float, MemSpace, Unmanaged>(loss.data()));
  Kokkos::fence();
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), loss);
  return {host_values(dpred), static_cast<double>(h())};
}

TEST(RelativeL2LossGrad, MatchesReferenceAndFiniteDifferences) {
  const std::size_t n = 4, cols = 37, global_rows = 10;  // 37: not a multiple of a team
  const float scale = 1.0f / static_cast<float>(global_rows);
  Random rng(53);
  const auto pv = random_values(n * cols, rng, 1.0);
  const auto tv = random_values(n * cols, rng, 1.0);
  Matrix pred = make_matrix(n, cols, pv), target = make_matrix(n, cols, tv);

  const MseResult r = run_relative_l2(pred, target, scale);
  double expected_loss = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    double e2 = 0.0, y2 = 0.0;
    for (std::size_t j = 0; j < cols; ++j) {
      const double d = pv[i * cols + j] - tv[i * cols + j];
      e2 += d * d;
      y2 += static_cast<double>(tv[i * cols + j]) * tv[i * cols + j];
    }
    expected_loss += scale * std::sqrt(e2) / std::sqrt(y2);
    for (std::size_t j = 0; j < cols; ++j) {
      const double want = scale * (pv[i * cols + j] - tv[i * cols + j]) /
                          (std::sqrt(e2) * std::sqrt(y2));
      EXPECT_NEAR(r.grad[i * cols + j], want, 1e-5 * std::abs(want) + 1e-9);
    }
  }
  EXPECT_NEAR(r.loss, expected_loss, 1e-5 * expected_loss);

  // The gradient is the derivative of the loss the kernel itself reports.
  expect_loss_gradient(pred, pv, r.grad,
                       [&] { return run_relative_l2(pred, target, scale).loss; }, 5, 2e-2);
}

TEST(RelativeL2LossGrad, ShardLossesSumToGlobalMeanAndAnExactRowGivesZero) {
  const std::size_t n = 6, cols = 5;
  const float scale = 1.0f / static_cast<float>(n);
  Random rng(54);
  auto pv = random_values(n * cols, rng, 1.0);
  const auto tv = random_values(n * cols, rng, 1.0);
  for (std::size_t j = 0; j < cols; ++j) pv[2 * cols + j] = tv[2 * cols + j];  // row 2 exact
  Matrix pred = make_matrix(n, cols, pv), target = make_matrix(n, cols, tv);
  const MseResult whole = run_relative_l2(pred, target, scale);
  for (std::size_t j = 0; j < cols; ++j) EXPECT_EQ(whole.grad[2 * cols + j], 0.0);
  auto shard = [&](std::size_t b, std::size_t e) {
    Matrix p("p", e - b, cols), t("t", e - b, cols);
    Kokkos::deep_copy(p, rows(pred, b, e));
    Kokkos::deep_copy(t, rows(target, b, e));
    return run_relative_l2(p, t, scale).loss;
  };
  EXPECT_NEAR(shard(0, 4) + shard(4, n), whole.loss, 1e-5 * whole.loss);
  EXPECT_EQ(run_relative_l2(Matrix("p", 0, cols), Matrix("t", 0, cols), scale).loss, 0.0);
}

// ---------------------------------------------------------------------------------------
// Mlp: layout

TEST(Mlp, SimplePdeModelLayout) {
  const Mlp model = Mlp::simple_pde_model(0);
  EXPECT_EQ(model.num_parameters(), 385u);
  EXPECT_EQ(model.parameters().extent(0), 385u);
  EXPECT_EQ(model.widths(), (std::vector<int>{4, 64, 1}));
  EXPECT_EQ(model.in_features(), 4);
  EXPECT_EQ(model.out_features(), 1);
  ASSERT_EQ(model.layers().size(), 2u);
  EXPECT_EQ(model.layers()[0].in, 4);
  EXPECT_EQ(model.layers()[0].out, 64);
  EXPECT_EQ(model.layers()[0].activation, Activation::ReLU);
  EXPECT_EQ(model.layers()[1].in, 64);
  EXPECT_EQ(model.layers()[1].out, 1);
  EXPECT_EQ(model.layers()[1].activation, Activation::Identity);

  const auto& t = model.tensors();
  ASSERT_EQ(t.size(), 4u);
  const std::vector<std::string> names = {"layers.0.kernel", "layers.0.bias", "layers.1.kernel",
                                          "layers.1.bias"};
  const std::vector<std::vector<std::size_t>> shapes = {{4, 64}, {64}, {64, 1}, {1}};
  const std::vector<std::size_t> offsets = {0, 256, 320, 384};
  const std::vector<std::size_t> sizes = {256, 64, 64, 1};
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(t[i].name, names[i]);
    EXPECT_EQ(t[i].shape, shapes[i]);
    EXPECT_EQ(t[i].offset, offsets[i]);
    EXPECT_EQ(t[i].size, sizes[i]);
  }

  Vector flat("flat", model.num_parameters());
  float* p = flat.data();
  const MatrixRef k1 = model.kernel(p, 1);
  EXPECT_EQ(k1.data(), p + 320);
  EXPECT_EQ(k1.extent(0), 64u);
  EXPECT_EQ(k1.extent(1), 1u);
  const VectorRef b0 = model.bias(p, 0);
  EXPECT_EQ(b0.data(), p + 256);
  EXPECT_EQ(b0.extent(0), 64u);
  const MatrixRef k0 = model.kernel(p, 0);
  EXPECT_EQ(k0.data(), p);
  EXPECT_EQ(k0.extent(0), 4u);
  EXPECT_EQ(k0.extent(1), 64u);
}

TEST(Mlp, GeneralLayoutIsContiguous) {
  const Mlp model({3, 5, 4, 2}, Activation::Tanh, 1);
  EXPECT_EQ(model.num_parameters(), 3u * 5 + 5 + 5 * 4 + 4 + 4 * 2 + 2);
  std::size_t next = 0;
  for (const TensorSpec& t : model.tensors()) {
    EXPECT_EQ(t.offset, next) << t.name;
    std::size_t prod = 1;
    for (std::size_t d : t.shape) prod *= d;
    EXPECT_EQ(t.size, prod) << t.name;
    next += t.size;
  }
  EXPECT_EQ(next, model.num_parameters());
  ASSERT_EQ(model.layers().size(), 3u);
  EXPECT_EQ(model.layers()[0].activation, Activation::Tanh);
  EXPECT_EQ(model.layers()[1].activation, Activation::Tanh);
  EXPECT_EQ(model.layers()[2].activation, Activation::Identity);
}

TEST(Mlp, RejectsBadWidths) {
  EXPECT_THROW(Mlp({3}, Activation::ReLU, 0), ConfigError);
  EXPECT_THROW(Mlp({}, Activation::ReLU, 0), ConfigError);
  EXPECT_THROW(Mlp({3, 0, 1}, Activation::ReLU, 0), ConfigError);
  EXPECT_THROW(Mlp({3, -2, 1}, Activation::ReLU, 0), ConfigError);
}

TEST(Mlp, SetParametersRoundTripsAndChecksSize) {
  Mlp model({2, 3, 1}, Activation::Tanh, 5);
  HostVector values("values", model.num_parameters());
  for (std::size_t i = 0; i < values.extent(0); ++i) values(i) = 0.5f * static_cast<float>(i) - 2.0f;
  model.set_parameters(values);
  const HostVector back = model.parameters_on_host();
  for (std::size_t i = 0; i < values.extent(0); ++i) EXPECT_EQ(back(i), values(i));
  EXPECT_THROW(model.set_parameters(HostVector("short", model.num_parameters() - 1)), ConfigError);
  EXPECT_THROW(model.set_parameters(HostVector("long", model.num_parameters() + 1)), ConfigError);
}

TEST(Mlp, CloneHasIndependentStorage) {
  const Mlp model({2, 3, 1}, Activation::Tanh, 6);
  Mlp copy = model.clone();
  EXPECT_NE(copy.parameters().data(), model.parameters().data());
  const HostVector a = model.parameters_on_host();
  HostVector b = copy.parameters_on_host();
  ASSERT_EQ(a.extent(0), b.extent(0));
  for (std::size_t i = 0; i < a.extent(0); ++i) EXPECT_EQ(a(i), b(i));
  for (std::size_t i = 0; i < b.extent(0); ++i) b(i) += 1.0f;
  copy.set_parameters(b);
  const HostVector after = model.parameters_on_host();
  for (std::size_t i = 0; i < a.extent(0); ++i) EXPECT_EQ(after(i), a(i));
}

// ---------------------------------------------------------------------------------------
// Mlp: initialisation (Flax lecun_normal: truncated normal on +-2, std sqrt(1/fan_in))

TEST(MlpInit, LecunNormalStatistics) {
  const int fan_in = 512;
  const Mlp model({fan_in, 512}, Activation::Identity, 1234);
  const HostVector p = model.parameters_on_host();
  const TensorSpec& k = model.tensors()[0];
  const TensorSpec& b = model.tensors()[1];
  const double target_std = std::sqrt(1.0 / fan_in);
  const double bound = 2.0 * target_std / 0.87962566103423978;

  double sum = 0.0, sum_sq = 0.0, max_abs = 0.0;
  for (std::size_t i = 0; i < k.size; ++i) {
    const double v = p(k.offset + i);
    sum += v;
    sum_sq += v * v;
    max_abs = std::max(max_abs, std::abs(v));
  }
  const double count = static_cast<double>(k.size);
  const double mean = sum / count;
  const double std = std::sqrt(sum_sq / count - mean * mean);
  // 262144 samples: the std estimate's relative standard error is ~0.13%.
  EXPECT_NEAR(std, target_std, 0.01 * target_std);
  EXPECT_NEAR(mean, 0.0, 0.01 * target_std);
  EXPECT_LE(max_abs, bound * (1.0 + 1e-6));
  // The truncation point is reached (so the scale is the truncated one, not clipped smaller).
  EXPECT_GT(max_abs, 0.97 * bound);
  for (std::size_t i = 0; i < b.size; ++i) EXPECT_EQ(p(b.offset + i), 0.0f);
}

TEST(MlpInit, ScalePerLayerFanIn) {
  const Mlp model = Mlp::simple_pde_model(7);
  const HostVector p = model.parameters_on_host();
  for (std::size_t l = 0; l < model.layers().size(); ++l) {
    const TensorSpec& k = model.tensors()[2 * l];
    const double bound = 2.0 * std::sqrt(1.0 / model.layers()[l].in) / 0.87962566103423978;
    double max_abs = 0.0;
    for (std::size_t i = 0; i < k.size; ++i) max_abs = std::max(max_abs, std::abs(double(p(k.offset + i))));
    EXPECT_LE(max_abs, bound * (1.0 + 1e-6)) << k.name;
    EXPECT_GT(max_abs, 0.3 * bound) << k.name;
    const TensorSpec& b = model.tensors()[2 * l + 1];
    for (std::size_t i = 0; i < b.size; ++i) EXPECT_EQ(p(b.offset + i), 0.0f) << b.name;
  }
}

TEST(MlpInit, DeterministicInSeed) {
  const HostVector a = Mlp::simple_pde_model(3).parameters_on_host();
  const HostVector b = Mlp::simple_pde_model(3).parameters_on_host();
  const HostVector c = Mlp::simple_pde_model(4).parameters_on_host();
  ASSERT_EQ(a.extent(0), 385u);
  int same_as_other_seed = 0;
  for (std::size_t i = 0; i < a.extent(0); ++i) {
    EXPECT_EQ(a(i), b(i)) << i;
    if (a(i) == c(i)) ++same_as_other_seed;
  }
  // Only the 65 zero biases coincide.
  EXPECT_EQ(same_as_other_seed, 65);
}

// ---------------------------------------------------------------------------------------
// Mlp: forward and backward as a whole

std::vector<double> host_mlp_forward(const Mlp& model, const std::vector<double>& params,
                                     std::vector<double> a, std::size_t n) {
  for (std::size_t l = 0; l < model.layers().size(); ++l) {
    const DenseSpec& layer = model.layers()[l];
    const TensorSpec& k = model.tensors()[2 * l];
    const TensorSpec& b = model.tensors()[2 * l + 1];
    const std::vector<double> w(params.begin() + k.offset, params.begin() + k.offset + k.size);
    const std::vector<double> bias(params.begin() + b.offset, params.begin() + b.offset + b.size);
    auto z = host_affine(a, w, bias, n, layer.in, layer.out);
    for (auto& v : z) v = apply(layer.activation, v);
    a = std::move(z);
  }
  return a;
}

TEST(MlpForward, MatchesHostReference) {
  const Mlp model({3, 5, 4, 2}, Activation::Tanh, 77);
  const std::size_t n = 7;
  Random rng(78);
  const auto xv = random_values(n * 3, rng, 1.0);
  Matrix x = make_matrix(n, 3, xv);
  ModelWorkspace ws(model, 10);
  const auto out = host_values(model.forward(x, ws));
  const auto expected = host_mlp_forward(model, host_values(model.parameters()), xv, n);
  ASSERT_EQ(out.size(), n * 2);
  for (std::size_t k = 0; k < out.size(); ++k) EXPECT_NEAR(out[k], expected[k], 1e-5) << k;
}

TEST(MlpForward, RejectsMoreRowsThanWorkspace) {
  const Mlp model({3, 5, 2}, Activation::Tanh, 1);
  ModelWorkspace ws(model, 4);
  Matrix x("x", 5, 3);
  EXPECT_THROW(model.forward(x, ws), std::logic_error);
  Matrix ok("ok", 4, 3);
  EXPECT_NO_THROW(model.forward(ok, ws));
}

// L = sum(g .* model(x)); analytic gradients from backward against central differences over
// every parameter. skip(i) says whether parameter i may not be differenced (ReLU kinks).
template <class Skip>
void check_mlp_against_finite_differences(Mlp& model, const std::vector<double>& xv,
                                          std::size_t n, double h, Skip skip,
                                          std::size_t min_checked) {
  const std::size_t in = static_cast<std::size_t>(model.in_features());
  const std::size_t out = static_cast<std::size_t>(model.out_features());
  Random rng(99);
  const auto gv = random_values(n * out, rng, 1.0);
  Matrix x = make_matrix(n, in, xv);
  ModelWorkspace ws(model, n + 3);  // a workspace larger than the batch

  model.forward(x, ws);
  Matrix dout = make_matrix(n, out, gv);
  Vector grads("grads", model.num_parameters());
  Kokkos::deep_copy(grads, 1234.0f);  // stale values must be overwritten
  model.backward(x, ws, dout, grads.data());
  const auto analytic = host_values(grads);

  // A second forward/backward gives the same gradients (nothing accumulates).
  model.forward(x, ws);
  Matrix dout2 = make_matrix(n, out, gv);
  model.backward(x, ws, dout2, grads.data());
  const auto again = host_values(grads);
  for (std::size_t i = 0; i < analytic.size(); ++i) EXPECT_EQ(again[i], analytic[i]) << i;

  const HostVector original = model.parameters_on_host();
  std::vector<double> params(original.extent(0));
  for (std::size_t i = 0; i < params.size(); ++i) params[i] = original(i);
  auto loss = [&](const std::vector<double>& ps) {
    HostVector hv("p", ps.size());
    for (std::size_t i = 0; i < ps.size(); ++i) hv(i) = static_cast<float>(ps[i]);
    model.set_parameters(hv);
    return dot(gv, host_values(model.forward(x, ws)));
  };

  std::size_t checked = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (skip(i)) continue;
    auto ps = params;
    const Step s = float_step(params[i], h);
    ps[i] = s.plus;
    const double lp = loss(ps);
    ps[i] = s.minus;
    const double lm = loss(ps);
    expect_gradient_close(analytic[i], (lp - lm) / (s.plus - s.minus), "parameter " + std::to_string(i));
    ++checked;
  }
  model.set_parameters(original);
  EXPECT_GE(checked, min_checked);
}

// Every parameter of a 3 -> 5 -> 4 -> 2 MLP against finite differences, with non-zero biases
// so that their gradients flow through a generic point.
void check_small_mlp(Activation activation, std::uint64_t seed) {
  Mlp model({3, 5, 4, 2}, activation, seed);
  const std::size_t n = 7;
  Random rng(seed + 1);
  const auto xv = random_values(n * 3, rng, 1.0);
  HostVector p = model.parameters_on_host();
  for (std::size_t l = 0; l < model.layers().size(); ++l) {
    const TensorSpec& b = model.tensors()[2 * l + 1];
    for (std::size_t i = 0; i < b.size; ++i) p(b.offset + i) = static_cast<float>(0.3 * rng.normal());
  }
  model.set_parameters(p);
  check_mlp_against_finite_differences(model, xv, n, 1e-2, [](std::size_t) { return false; },
                                       model.num_parameters());
}

TEST(MlpBackward, TanhMatchesFiniteDifferences) { check_small_mlp(Activation::Tanh, 2024); }

// GELU's derivative comes from the pre-activation the layer keeps in its scratch.
TEST(MlpBackward, GeluMatchesFiniteDifferences) { check_small_mlp(Activation::Gelu, 2026); }

// GELU's erf is a rational approximation (no library call): against std::erf in double on a
// dense grid over [-10, 10], the value and the derivative within float rounding.
TEST(Activation, GeluMatchesTheExactErfOnADenseGrid) {
  const std::size_t count = 20001;
  std::vector<double> zs(count);
  for (std::size_t i = 0; i < count; ++i) zs[i] = -10.0 + 20.0 * static_cast<double>(i) / (count - 1);
  const Matrix z = make_matrix(count, 1, zs);
  Matrix y("y", count, 1);
  activation_forward(z, y, Activation::Gelu);
  Matrix dy = make_matrix(count, 1, std::vector<double>(count, 1.0));
  activation_backward_from_input(z, dy, Activation::Gelu);
  const auto yv = host_values(y);
  const auto dv = host_values(dy);
  const auto zf = host_values(z);  // the float inputs
  double worst_value = 0.0, worst_derivative = 0.0;
  for (std::size_t i = 0; i < count; ++i) {
    const double x = zf[i];
    const double cdf = 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
    const double derivative = cdf + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
    worst_value = std::max(worst_value, std::abs(yv[i] - x * cdf) / std::max(1.0, std::abs(x)));
    worst_derivative = std::max(worst_derivative, std::abs(dv[i] - derivative));
  }
  EXPECT_LT(worst_value, 1e-6);
  EXPECT_LT(worst_derivative, 1e-6);
}

TEST(ActivationBackward, GeluNeedsThePreactivation) {
  Matrix y("y", 2, 2), dy("dy", 2, 2);
  EXPECT_THROW(activation_backward(y, dy, Activation::Gelu), std::logic_error);
}

TEST(MlpBackward, ReluPdeModelMatchesFiniteDifferences) {
  Mlp model = Mlp::simple_pde_model(11);
  const std::size_t n = 8;
  const double h = 1e-2;
  Random rng(12);
  const auto xv = random_values(n * 4, rng, 1.0);

  // Hidden pre-activations in double: a parameter is differenced only if its +-h step
  // cannot move any pre-activation across zero.
  const auto params = host_values(model.parameters());
  const TensorSpec& k0 = model.tensors()[0];
  const TensorSpec& b0 = model.tensors()[1];
  const std::vector<double> w0(params.begin() + k0.offset, params.begin() + k0.offset + k0.size);
  const std::vector<double> bias0(params.begin() + b0.offset, params.begin() + b0.offset + b0.size);
  const auto z = host_affine(xv, w0, bias0, n, 4, 64);
  auto skip = [&](std::size_t i) {
    if (i < k0.offset + k0.size) {  // W0(r, c) shifts z(:, c) by h * x(:, r)
      const std::size_t r = i / 64, c = i % 64;
      for (std::size_t row = 0; row < n; ++row) {
        if (std::abs(z[row * 64 + c]) < 2.0 * h * std::abs(xv[row * 4 + r]) + 1e-4) return true;
      }
      return false;
    }
    if (i < b0.offset + b0.size) {  // b0(c) shifts z(:, c) by h
      const std::size_t c = i - b0.offset;
      for (std::size_t row = 0; row < n; ++row) {
        if (std::abs(z[row * 64 + c]) < 2.0 * h + 1e-4) return true;
      }
      return false;
    }
    return false;  // the output layer is linear
  };
  check_mlp_against_finite_differences(model, xv, n, h, skip, 300);
}


// ---------------------------------------------------------------------------------------
// Model: the one pass over layers

using ScalarView = Kokkos::View<float, MemSpace>;

double host_scalar(const ScalarView& v) {
  float h = 0.0f;
  Kokkos::deep_copy(h, v);
  return h;
}

// The pass as Mlp ran it before it was built from layers, kernel by kernel on buffers of its
// own: the model's pass must run the same kernels on the same values, so that training
// stays bit for bit what it was.
void expect_pass_matches_kernel_sequence(const Mlp& model, std::size_t n, std::uint64_t seed) {
  const auto in = static_cast<std::size_t>(model.in_features());
  const auto out = static_cast<std::size_t>(model.out_features());
  Random rng(seed);
  Matrix x = make_matrix(n, in, random_values(n * in, rng, 1.0));
  Matrix y = make_matrix(n, out, random_values(n * out, rng, 1.0));
  const float scale = model.loss_scale(static_cast<int>(n));

  ModelWorkspace ws(model, n);
  ScalarView loss("loss");
  const auto pred = host_values(model.forward_loss(x, y, scale, loss, ws));
  Vector grads("grads", model.num_parameters());
  PassHooks hooks;
  hooks.gradients = [&](std::size_t l) { return grads.data() + model.layer_offset(l); };
  model.backward(x, ws, hooks);

  float* p = model.parameters().data();
  std::vector<Matrix> acts;
  ConstMatrixRef input = x;
  for (std::size_t l = 0; l < model.layers().size(); ++l) {
    const DenseSpec& d = model.layers()[l];
    acts.emplace_back("act", n, static_cast<std::size_t>(d.out));
    linear_forward(input, model.kernel(p, l), model.bias(p, l), acts.back(), d.activation);
    input = acts.back();
  }
  Matrix dz("dpred", n, out);
  ScalarView ref_loss("ref_loss");
  mse_loss_grad(input, y, scale, dz, ref_loss);
  Vector ref_grads("ref_grads", model.num_parameters());
  float* g = ref_grads.data();
  for (std::size_t l = model.layers().size(); l-- > 0;) {
    const DenseSpec& d = model.layers()[l];
    activation_backward(acts[l], dz, d.activation);
    const ConstMatrixRef below = l == 0 ? ConstMatrixRef(x) : ConstMatrixRef(acts[l - 1]);
    linear_backward(below, model.kernel(p, l), dz, model.kernel(g, l), model.bias(g, l),
                    MatrixRef());
    if (l > 0) {
      Matrix dx("dx", n, static_cast<std::size_t>(d.in));
      linear_backward_input(dz, model.kernel(p, l), dx);
      dz = dx;
    }
  }

  EXPECT_EQ(pred, host_values(input));
  EXPECT_EQ(host_scalar(loss), host_scalar(ref_loss));
  EXPECT_EQ(host_values(grads), host_values(ref_grads));
}

TEST(ModelPass, HooklessPassRunsTheDenseKernelsBitForBit) {
  expect_pass_matches_kernel_sequence(Mlp({3, 6, 5, 2}, Activation::Tanh, 31), 9, 32);
  expect_pass_matches_kernel_sequence(Mlp({4, 16, 16, 16, 1}, Activation::ReLU, 33), 13, 34);
  expect_pass_matches_kernel_sequence(Mlp::simple_pde_model(35), 1, 36);
}

TEST(ModelPass, MlpIsAModelOfDenseLayers) {
  const Mlp mlp({3, 6, 2}, Activation::Tanh, 41);
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::make_unique<Dense>(3, 6, Activation::Tanh));
  layers.push_back(std::make_unique<Dense>(6, 2, Activation::Identity));
  const Model model(std::move(layers), 41);
  ASSERT_EQ(model.num_parameters(), mlp.num_parameters());
  for (std::size_t t = 0; t < mlp.tensors().size(); ++t) {
    EXPECT_EQ(model.tensors()[t].name, mlp.tensors()[t].name);
    EXPECT_EQ(model.tensors()[t].shape, mlp.tensors()[t].shape);
    EXPECT_EQ(model.tensors()[t].offset, mlp.tensors()[t].offset);
  }
  EXPECT_EQ(host_values(model.parameters()), host_values(mlp.parameters()));
}

TEST(ModelPass, RejectsLayersThatDoNotChain) {
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::make_unique<Dense>(3, 6, Activation::Tanh));
  layers.push_back(std::make_unique<Dense>(5, 2, Activation::Identity));
  EXPECT_THROW(Model(std::move(layers)), ConfigError);
}

// The MSE loss of a model of Dense layers through forward_loss, and its gradient through
// backward with every hook set, as FSDP sets them (each layer's parameters gathered into one
// buffer of its own), against central differences of the loss.
TEST(ModelPass, DenseGradientsThroughHooksMatchFiniteDifferences) {
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::make_unique<Dense>(3, 5, Activation::Tanh));
  layers.push_back(std::make_unique<Dense>(5, 4, Activation::Tanh));
  layers.push_back(std::make_unique<Dense>(4, 2, Activation::Identity));
  Model model(std::move(layers), 2024);
  const std::size_t n = 6;
  Random rng(2025);
  HostVector p = model.parameters_on_host();
  for (std::size_t t = 1; t < model.tensors().size(); t += 2) {  // non-zero biases
    const TensorSpec& b = model.tensors()[t];
    for (std::size_t i = 0; i < b.size; ++i) {
      p(b.offset + i) = static_cast<float>(0.3 * rng.normal());
    }
  }
  model.set_parameters(p);
  Matrix x = make_matrix(n, 3, random_values(n * 3, rng, 1.0));
  Matrix y = make_matrix(n, 2, random_values(n * 2, rng, 1.0));
  const float scale = model.loss_scale(static_cast<int>(n));
  ModelWorkspace ws(model, n);
  ScalarView loss("loss");

  std::vector<std::size_t> gathered, released, ready;
  Vector block("gathered_layer", model.num_parameters());
  Vector layer_grad("layer_gradient", model.num_parameters());
  Vector grads("grads", model.num_parameters());
  PassHooks hooks;
  hooks.gather = [&](std::size_t l) {
    gathered.push_back(l);
    const auto from = model.layer_offset(l);
    const auto size = model.layer_size(l);
    Kokkos::deep_copy(Kokkos::subview(block, std::make_pair(std::size_t{0}, size)),
                      Kokkos::subview(model.parameters(), std::make_pair(from, from + size)));
    return static_cast<const float*>(block.data());
  };
  hooks.release = [&](std::size_t l) { released.push_back(l); };
  hooks.gradients = [&](std::size_t) { return layer_grad.data(); };
  hooks.gradients_ready = [&](std::size_t l) {
    ready.push_back(l);
    const auto to = model.layer_offset(l);
    const auto size = model.layer_size(l);
    Kokkos::deep_copy(Kokkos::subview(grads, std::make_pair(to, to + size)),
                      Kokkos::subview(layer_grad, std::make_pair(std::size_t{0}, size)));
  };
  model.forward_loss(x, y, scale, loss, ws, hooks);
  model.backward(x, ws, hooks);
  EXPECT_EQ(gathered, (std::vector<std::size_t>{0, 1, 2, 2, 1, 0}));
  EXPECT_EQ(released, (std::vector<std::size_t>{0, 1, 2, 2, 1, 0}));
  EXPECT_EQ(ready, (std::vector<std::size_t>{2, 1, 0}));
  const auto analytic = host_values(grads);

  const HostVector original = model.parameters_on_host();
  auto loss_at = [&](std::size_t i, double value) {
    HostVector changed("changed", original.extent(0));
    Kokkos::deep_copy(changed, original);
    changed(i) = static_cast<float>(value);
    model.set_parameters(changed);
    model.forward_loss(x, y, scale, loss, ws);
    return host_scalar(loss);
  };
  for (std::size_t i = 0; i < model.num_parameters(); ++i) {
    const Step s = float_step(original(i), 1e-2);
    const double fd = (loss_at(i, s.plus) - loss_at(i, s.minus)) / (s.plus - s.minus);
    expect_gradient_close(analytic[i], fd, "parameter " + std::to_string(i));
  }
  model.set_parameters(original);
}

TEST(ModelPass, ShardsOfADenseLayerJoinBackIntoIt) {
  for (const ParallelRole role : {ParallelRole::Column, ParallelRole::Row}) {
    Dense layer(6, 4, Activation::ReLU);
    layer.set_parallel_role(role, "model");
    EXPECT_EQ(layer.parallel_role("model"), role);
    const int parts = 2;
    const auto shard = layer.shard("model", parts);
    EXPECT_EQ(shard->in_features(), role == ParallelRole::Row ? 3u : 6u);
    EXPECT_EQ(shard->out_features(), role == ParallelRole::Column ? 2u : 4u);
    std::vector<float> full(layer.num_parameters());
    for (std::size_t i = 0; i < full.size(); ++i) full[i] = static_cast<float>(i);
    std::vector<float> shards(shard->num_parameters() * parts);
    for (int r = 0; r < parts; ++r) {
      layer.take_shard(full.data(), shards.data() + r * shard->num_parameters(), "model", parts,
                       r);
    }
    std::vector<float> joined(full.size(), -1.0f);
    layer.join_shards(shards.data(), joined.data(), "model", parts, 1);
    EXPECT_EQ(joined, full);
  }
}

}  // namespace

// ---- bfloat16 conversion (meshtrain/comm/bfloat16.hpp) and its Kokkos kernels.

namespace {
float float_of_bits(std::uint32_t u) {
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
std::uint32_t bits_of(float f) {
  std::uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
// The nearest bfloat16 by value, ties to the even pattern, computed in double from the two
// candidates around x (the truncation and the next pattern away from zero): an independent
// reference for the bit trick. Finite x only.
std::uint16_t nearest_bfloat16(float x) {
  const std::uint32_t u = bits_of(x);
  const auto low = static_cast<std::uint16_t>(u >> 16);
  const auto high = static_cast<std::uint16_t>(low + 1);  // may be Inf: fine
  const double dl = std::abs(static_cast<double>(x) - from_bfloat16(low));
  // Past the largest bfloat16 the next pattern is Inf; IEEE rounding treats it as 2^128.
  const double next = (high & 0x7F80u) == 0x7F80u
                          ? std::copysign(std::ldexp(1.0, 128), static_cast<double>(x))
                          : static_cast<double>(from_bfloat16(high));
  const double dh = std::abs(static_cast<double>(x) - next);
  if (dl < dh) return low;
  if (dh < dl) return high;
  return (low & 1u) == 0 ? low : high;
}
}  // namespace

TEST(Bfloat16, ExactValuesConvertExactly) {
  EXPECT_EQ(to_bfloat16(0.0f), 0x0000);
  EXPECT_EQ(to_bfloat16(-0.0f), 0x8000);
  EXPECT_EQ(to_bfloat16(1.0f), 0x3F80);
  EXPECT_EQ(to_bfloat16(-2.0f), 0xC000);
  EXPECT_EQ(to_bfloat16(0.15625f), 0x3E20);
  EXPECT_EQ(to_bfloat16(3.3895313892515355e38f), 0x7F7F);  // the largest bfloat16
  // Every bfloat16 but the NaNs goes to a float and back unchanged.
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float f = from_bfloat16(static_cast<std::uint16_t>(b));
    EXPECT_EQ(bits_of(f), b << 16);
    if (std::isnan(f)) continue;
    ASSERT_EQ(to_bfloat16(f), b) << std::hex << b;
  }
}

TEST(Bfloat16, RoundsToNearestTiesToEven) {
  EXPECT_EQ(to_bfloat16(float_of_bits(0x3F808000)), 0x3F80);  // tie, 0x3F80 even: down
  EXPECT_EQ(to_bfloat16(float_of_bits(0x3F818000)), 0x3F82);  // tie, 0x3F81 odd: up
  EXPECT_EQ(to_bfloat16(float_of_bits(0x3F807FFF)), 0x3F80);  // just below the tie
  EXPECT_EQ(to_bfloat16(float_of_bits(0x3F808001)), 0x3F81);  // just above
  EXPECT_EQ(to_bfloat16(float_of_bits(0xBF808001)), 0xBF81);  // negative: away from zero
  EXPECT_EQ(to_bfloat16(float_of_bits(0x3F7FFFFF)), 0x3F80);  // carries into the exponent
  // Past the largest bfloat16 halfway to the next power of two: Inf, as IEEE rounding says.
  EXPECT_EQ(to_bfloat16(float_of_bits(0x7F7F7FFF)), 0x7F7F);
  EXPECT_EQ(to_bfloat16(float_of_bits(0x7F7F8000)), 0x7F80);
  EXPECT_EQ(to_bfloat16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(to_bfloat16(-std::numeric_limits<float>::max()), 0xFF80);
  // Against the reference on a spread of finite floats (every 997th bit pattern).
  for (std::uint64_t u = 0; u <= 0xFFFFFFFFull; u += 997) {
    const float x = float_of_bits(static_cast<std::uint32_t>(u));
    if (!std::isfinite(x)) continue;
    ASSERT_EQ(to_bfloat16(x), nearest_bfloat16(x)) << std::hex << u;
  }
}

TEST(Bfloat16, InfinitiesAndNansAreKept) {
  EXPECT_EQ(to_bfloat16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(to_bfloat16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(to_bfloat16(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  // A NaN whose payload lies in the low 16 bits only would truncate to Inf, and rounding
  // could carry a NaN into the sign: both stay NaNs of their sign.
  for (std::uint32_t nan : {0x7F800001u, 0x7F80FFFFu, 0x7FFFFFFFu, 0xFF800001u, 0xFFC00000u}) {
    const std::uint16_t b = to_bfloat16(float_of_bits(nan));
    EXPECT_TRUE(std::isnan(from_bfloat16(b))) << std::hex << nan;
    EXPECT_EQ(b & 0x8000u, (nan >> 16) & 0x8000u) << std::hex << nan;
  }
}

TEST(Bfloat16, SubnormalsRoundLikeOtherValues) {
  EXPECT_EQ(to_bfloat16(std::numeric_limits<float>::denorm_min()), 0x0000);  // to zero
  EXPECT_EQ(to_bfloat16(float_of_bits(0x00010000)), 0x0001);  // the smallest bf16 subnormal
  EXPECT_EQ(to_bfloat16(float_of_bits(0x00008000)), 0x0000);  // tie: to even (zero)
  EXPECT_EQ(to_bfloat16(float_of_bits(0x00018000)), 0x0002);  // tie: to even (up)
  EXPECT_EQ(to_bfloat16(float_of_bits(0x80010000)), 0x8001);
  EXPECT_EQ(to_bfloat16(float_of_bits(0x007FFFFF)), 0x0080);  // up to the smallest normal
  EXPECT_EQ(from_bfloat16(0x0001), float_of_bits(0x00010000));
}

TEST(Bfloat16, KernelsMatchTheScalarConversion) {
  const std::size_t n = 1000;
  Vector values("values", n), back("back", n);
  Kokkos::View<std::uint16_t*, MemSpace> narrow("narrow", n);
  auto host = Kokkos::create_mirror_view(values);
  for (std::size_t i = 0; i < n; ++i) {
    host(i) = static_cast<float>(std::sin(0.1 * static_cast<double>(i)) * std::pow(10.0, i % 9));
  }
  Kokkos::deep_copy(values, host);
  round_to_bfloat16(values.data(), narrow.data(), 10, n);  // [0, 10) untouched
  widen_from_bfloat16(narrow.data(), back.data(), 10, n);
  Kokkos::fence();
  auto h_narrow = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), narrow);
  auto h_back = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), back);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t want = i < 10 ? 0 : to_bfloat16(host(i));
    ASSERT_EQ(h_narrow(i), want) << i;
    ASSERT_EQ(h_back(i), i < 10 ? 0.0f : from_bfloat16(want)) << i;
    if (i >= 10) {
      // Unit roundoff of 8 significant bits: 2^-8.
      EXPECT_LE(std::abs(h_back(i) - host(i)), std::ldexp(std::abs(host(i)), -8)) << i;
    }
  }
}
