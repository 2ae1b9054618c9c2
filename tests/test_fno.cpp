// The Fourier Neural Operator's pieces: the FFT against a direct DFT, each layer's forward
// against double-precision loops and its backward against central finite differences of
// L = sum(g .* layer(x)) over every parameter and input, and make_fno2d's layout, gradient
// and hooks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/nn/fft.hpp"
#include "meshtrain/nn/fno.hpp"
#include "meshtrain/nn/fourier.hpp"
#include "meshtrain/nn/model.hpp"
#include "meshtrain/nn/normalize.hpp"

namespace {

using namespace meshtrain;
using Complex = std::complex<double>;

std::vector<double> random_values(std::size_t n, Random& rng, double scale) {
  std::vector<double> out(n);
  for (auto& v : out) v = static_cast<float>(rng.normal() * scale);
  return out;
}

Vector device_vector(const std::vector<double>& values) {
  Vector v("test::vector", values.size());
  auto h = Kokkos::create_mirror_view(v);
  for (std::size_t i = 0; i < values.size(); ++i) h(i) = static_cast<float>(values[i]);
  Kokkos::deep_copy(v, h);
  return v;
}

std::vector<double> host_values(const float* data, std::size_t size) {
  Kokkos::View<const float*, MemSpace, Unmanaged> v(data, size);
  auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
  return std::vector<double>(h.data(), h.data() + size);
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central difference with the step the float value actually takes.
double float_quotient(double p, double h, double& plus, double& minus) {
  plus = static_cast<float>(p + h);
  minus = static_cast<float>(p - h);
  return plus - minus;
}

void expect_gradient_close(double analytic, double fd, const std::string& what) {
  const double tol = 1e-2 * std::max(std::abs(analytic), std::abs(fd)) + 1e-3;
  EXPECT_NEAR(analytic, fd, tol) << what;
}

// e^{sign 2 pi i (k1 n1 / s1 + k2 n2 / s2)}
Complex twiddle(double sign, std::size_t k1, std::size_t n1, std::size_t s1, std::size_t k2,
                std::size_t n2, std::size_t s2) {
  const double theta = 2.0 * std::numbers::pi *
                       (static_cast<double>(k1 * n1) / static_cast<double>(s1) +
                        static_cast<double>(k2 * n2) / static_cast<double>(s2));
  return std::polar(1.0, sign * theta);
}

// rfft2 of one channel-last sample, in double: (s1, s2/2 + 1, c).
std::vector<Complex> direct_rfft2(const double* x, std::size_t s1, std::size_t s2,
                                  std::size_t c) {
  const std::size_t s2h = s2 / 2 + 1;
  std::vector<Complex> out(s1 * s2h * c);
  for (std::size_t k1 = 0; k1 < s1; ++k1) {
    for (std::size_t k2 = 0; k2 < s2h; ++k2) {
      for (std::size_t n1 = 0; n1 < s1; ++n1) {
        for (std::size_t n2 = 0; n2 < s2; ++n2) {
          const Complex t = twiddle(-1.0, k1, n1, s1, k2, n2, s2);
          for (std::size_t ch = 0; ch < c; ++ch) {
            out[(k1 * s2h + k2) * c + ch] += x[(n1 * s2 + n2) * c + ch] * t;
          }
        }
      }
    }
  }
  return out;
}

// irfft2 as torch defines it for a half spectrum: the real signal whose spectrum's other
// half is the Hermitian mirror, i.e. Re(sum_k c(k2) Y[k] e^{+i theta}) / (s1 s2), with c = 1
// for k2 = 0 and the Nyquist column of an even s2, 2 otherwise.
std::vector<double> direct_irfft2(const std::vector<Complex>& y, std::size_t s1, std::size_t s2,
                                  std::size_t c) {
  const std::size_t s2h = s2 / 2 + 1;
  std::vector<double> out(s1 * s2 * c);
  for (std::size_t n1 = 0; n1 < s1; ++n1) {
    for (std::size_t n2 = 0; n2 < s2; ++n2) {
      for (std::size_t k1 = 0; k1 < s1; ++k1) {
        for (std::size_t k2 = 0; k2 < s2h; ++k2) {
          const double weight = (k2 == 0 || (s2 % 2 == 0 && k2 == s2 / 2)) ? 1.0 : 2.0;
          const Complex t = twiddle(1.0, k1, n1, s1, k2, n2, s2);
          for (std::size_t ch = 0; ch < c; ++ch) {
            out[(n1 * s2 + n2) * c + ch] +=
                weight * (y[(k1 * s2h + k2) * c + ch] * t).real() / static_cast<double>(s1 * s2);
          }
        }
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Fft2d

struct Grid {
  std::size_t s1, s2, channels;
};

TEST(Fft2d, ForwardMatchesDirectDftAndInverseRecoversTheInput) {
  for (const Grid g : {Grid{6, 5, 3}, Grid{4, 6, 2}, Grid{1, 7, 1}, Grid{5, 1, 2}}) {
    const std::string shape = std::to_string(g.s1) + "x" + std::to_string(g.s2) + "x" +
                              std::to_string(g.channels);
    const Fft2d fft(g.s1, g.s2, g.channels);
    const std::size_t n = 3;
    Random rng(g.s1 * 10 + g.s2);
    const auto xv = random_values(n * fft.real_size(), rng, 1.0);
    Vector x = device_vector(xv);
    Vector spectrum("spectrum", n * fft.spectrum_size());
    fft.forward(x.data(), spectrum.data(), n);
    const auto sv = host_values(spectrum.data(), spectrum.extent(0));
    for (std::size_t b = 0; b < n; ++b) {
      const auto expected =
          direct_rfft2(xv.data() + b * fft.real_size(), g.s1, g.s2, g.channels);
      for (std::size_t k = 0; k < expected.size(); ++k) {
        const double* got = sv.data() + b * fft.spectrum_size() + 2 * k;
        EXPECT_NEAR(got[0], expected[k].real(), 1e-4) << shape << " sample " << b << " " << k;
        EXPECT_NEAR(got[1], expected[k].imag(), 1e-4) << shape << " sample " << b << " " << k;
      }
    }
    EXPECT_EQ(host_values(x.data(), x.extent(0)), xv) << "forward changed its input";
    Vector back("back", n * fft.real_size());
    fft.inverse(spectrum.data(), back.data(), n);
    const auto bv = host_values(back.data(), back.extent(0));
    for (std::size_t i = 0; i < xv.size(); ++i) EXPECT_NEAR(bv[i], xv[i], 1e-5) << shape << i;
  }
}

TEST(Fft2d, RejectsAnEmptyGrid) {
  EXPECT_THROW(Fft2d(0, 4, 1), ConfigError);
  EXPECT_THROW(Fft2d(4, 4, 0), ConfigError);
}

// ---------------------------------------------------------------------------------------
// One layer on its own: forward, backward_parameters and backward_input against central
// differences of L = sum(g .* layer(x)) over every parameter and every input.

struct LayerRun {
  std::vector<double> y;
  std::vector<double> grads;
  std::vector<double> dx;
};

LayerRun run_layer(const Layer& layer, std::size_t n, const std::vector<double>& params,
                   const std::vector<double>& xv, const std::vector<double>* gv) {
  const std::size_t in = layer.in_features(), out = layer.out_features();
  Vector p = device_vector(params);
  Vector x = device_vector(xv);
  Matrix y("y", n, out);
  Kokkos::deep_copy(y, 77.0f);  // stale values must be overwritten
  Vector scratch("scratch", layer.scratch_size(n + 2));  // larger than this batch needs
  const PassHooks hooks;
  const LayerPass pass{hooks, 0, scratch.data()};
  layer.forward(pass, ConstMatrixRef(x.data(), n, in), p.data(), y);
  LayerRun run{host_values(y.data(), n * out), {}, {}};
  if (!gv) return run;
  Vector dy = device_vector(*gv);
  Vector grads("grads", std::max<std::size_t>(params.size(), 1));
  Kokkos::deep_copy(grads, 55.0f);
  Matrix dx("dx", n, in);
  Kokkos::deep_copy(dx, 33.0f);
  layer.backward_parameters(pass, ConstMatrixRef(x.data(), n, in), y, MatrixRef(dy.data(), n, out),
                            p.data(), grads.data());
  layer.backward_input(pass, ConstMatrixRef(dy.data(), n, out), p.data(), dx);
  run.grads = host_values(grads.data(), params.size());
  run.dx = host_values(dx.data(), n * in);
  return run;
}

// Parameters from the layer's initialiser, shifted by `jitter` normal noise (so that biases
// and weights sit at generic points).
std::vector<double> initial_parameters(const Layer& layer, Random& rng, double jitter) {
  std::vector<float> block(layer.num_parameters(), 0.0f);
  layer.initialize(block.data(), rng);
  std::vector<double> out(block.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<float>(block[i] + jitter * rng.normal());
  }
  return out;
}

void check_layer_gradients(const Layer& layer, std::size_t n, std::uint64_t seed,
                           double jitter = 0.0, double h = 1e-2) {
  Random rng(seed);
  const auto params = initial_parameters(layer, rng, jitter);
  const auto xv = random_values(n * layer.in_features(), rng, 1.0);
  const auto gv = random_values(n * layer.out_features(), rng, 1.0);
  const LayerRun run = run_layer(layer, n, params, xv, &gv);
  // Nothing accumulates: a second backward gives the same values.
  const LayerRun again = run_layer(layer, n, params, xv, &gv);
  EXPECT_EQ(run.grads, again.grads);
  EXPECT_EQ(run.dx, again.dx);

  auto loss = [&](const std::vector<double>& ps, const std::vector<double>& xs) {
    return dot(gv, run_layer(layer, n, ps, xs, nullptr).y);
  };
  // Each of values moved by a step: loss_at(moved) against the gradient grads says.
  auto check = [&](const std::vector<double>& values, const std::vector<double>& grads,
                   const std::string& what, const auto& loss_at) {
    for (std::size_t i = 0; i < values.size(); ++i) {
      auto moved = values;
      double plus = 0.0, minus = 0.0;
      const double step = float_quotient(values[i], h, plus, minus);
      moved[i] = plus;
      const double lp = loss_at(moved);
      moved[i] = minus;
      const double lm = loss_at(moved);
      expect_gradient_close(grads[i], (lp - lm) / step, what + " " + std::to_string(i));
    }
  };
  check(params, run.grads, "parameter", [&](const auto& ps) { return loss(ps, xv); });
  check(xv, run.dx, "input", [&](const auto& xs) { return loss(params, xs); });
}

// ---------------------------------------------------------------------------------------
// GridCoordinates2d

TEST(GridCoordinates2d, AppendsLinspaceCoordinatesAfterTheChannels) {
  const GridCoordinates2d layer(3, 5, 2);
  EXPECT_EQ(layer.num_parameters(), 0u);
  EXPECT_EQ(layer.in_features(), 30u);
  EXPECT_EQ(layer.out_features(), 60u);
  Random rng(1);
  const std::size_t n = 2;
  const auto xv = random_values(n * 30, rng, 1.0);
  const auto y = run_layer(layer, n, {}, xv, nullptr).y;
  for (std::size_t b = 0; b < n; ++b) {
    for (std::size_t i = 0; i < 3; ++i) {
      for (std::size_t j = 0; j < 5; ++j) {
        const double* at = y.data() + ((b * 3 + i) * 5 + j) * 4;
        const double* from = xv.data() + ((b * 3 + i) * 5 + j) * 2;
        EXPECT_EQ(at[0], from[0]);
        EXPECT_EQ(at[1], from[1]);
        EXPECT_FLOAT_EQ(at[2], static_cast<double>(i) / 2.0);
        EXPECT_FLOAT_EQ(at[3], static_cast<double>(j) / 4.0);
      }
    }
  }
  const auto single = run_layer(GridCoordinates2d(1, 1, 1), 1, {}, {0.5}, nullptr).y;
  EXPECT_EQ(single, (std::vector<double>{0.5, 0.0, 0.0}));
}

TEST(GridCoordinates2d, GradientDropsTheCoordinates) {
  check_layer_gradients(GridCoordinates2d(3, 4, 2), 2, 3);
}

// ---------------------------------------------------------------------------------------
// Pointwise

TEST(Pointwise, MixesChannelsAtEveryPoint) {
  const std::size_t in = 3, out = 2, points = 4, n = 2;
  const Pointwise layer(in, out, points, Activation::Gelu);
  Random rng(5);
  const auto params = initial_parameters(layer, rng, 0.0);
  const auto xv = random_values(n * points * in, rng, 1.0);
  const auto y = run_layer(layer, n, params, xv, nullptr).y;
  for (std::size_t r = 0; r < n * points; ++r) {
    for (std::size_t o = 0; o < out; ++o) {
      double z = params[in * out + o];
      for (std::size_t i = 0; i < in; ++i) z += xv[r * in + i] * params[i * out + o];
      const double gelu = 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
      EXPECT_NEAR(y[r * out + o], gelu, 1e-5) << r << " " << o;
    }
  }
}

TEST(Pointwise, GradientsMatchFiniteDifferences) {
  check_layer_gradients(Pointwise(3, 4, 5, Activation::Identity), 2, 7);
  check_layer_gradients(Pointwise(3, 4, 5, Activation::Tanh), 2, 8);
  check_layer_gradients(Pointwise(3, 4, 5, Activation::Gelu), 2, 9);
}

TEST(Pointwise, InitialisesAsTorchLinear) {
  const Pointwise layer(16, 64, 1, Activation::Identity);
  std::vector<float> block(layer.num_parameters());
  Random rng(3);
  layer.initialize(block.data(), rng);
  double sum = 0.0, sum_sq = 0.0;
  for (float v : block) {
    EXPECT_LE(std::abs(v), 0.25f);  // 1 / sqrt(16)
    sum += v;
    sum_sq += static_cast<double>(v) * v;
  }
  const double count = static_cast<double>(block.size());
  EXPECT_NEAR(sum / count, 0.0, 0.02);
  EXPECT_NEAR(sum_sq / count, 0.25 * 0.25 / 3.0, 0.003);  // variance of U(-a, a): a^2 / 3
}

// ---------------------------------------------------------------------------------------
// SpectralConv2d

struct SpectralCase {
  std::size_t in, out, s1, s2, modes1, modes2;
};

// The layer's output against rfft2, the weights' product on both corner blocks and irfft2,
// all as O(s^4) sums in double.
void expect_spectral_conv_matches_direct_dft(const SpectralCase& c, std::uint64_t seed) {
  const SpectralConv2d layer(c.in, c.out, c.s1, c.s2, c.modes1, c.modes2);
  ASSERT_EQ(layer.tensors().size(), 2u);
  EXPECT_EQ(layer.tensors()[0].name, "weights1");
  EXPECT_EQ(layer.tensors()[1].name, "weights2");
  EXPECT_EQ(layer.tensors()[1].shape,
            (std::vector<std::size_t>{c.in, c.out, c.modes1, c.modes2, 2}));
  Random rng(seed);
  const auto params = initial_parameters(layer, rng, 0.3);
  const std::size_t n = 2, points = c.s1 * c.s2, s2h = c.s2 / 2 + 1;
  const auto xv = random_values(n * points * c.in, rng, 1.0);
  const auto y = run_layer(layer, n, params, xv, nullptr).y;
  const std::size_t block = c.in * c.out * c.modes1 * c.modes2 * 2;
  auto weight = [&](std::size_t w, std::size_t i, std::size_t o, std::size_t k1, std::size_t k2) {
    const double* at =
        params.data() + w * block + (((i * c.out + o) * c.modes1 + k1) * c.modes2 + k2) * 2;
    return Complex(at[0], at[1]);
  };
  for (std::size_t b = 0; b < n; ++b) {
    const auto x_hat = direct_rfft2(xv.data() + b * points * c.in, c.s1, c.s2, c.in);
    std::vector<Complex> y_hat(c.s1 * s2h * c.out);
    for (std::size_t k1 = 0; k1 < c.s1; ++k1) {
      const bool low = k1 < c.modes1, high = k1 >= c.s1 - c.modes1;
      if (!low && !high) continue;
      for (std::size_t k2 = 0; k2 < c.modes2; ++k2) {
        for (std::size_t o = 0; o < c.out; ++o) {
          Complex sum = 0.0;
          for (std::size_t i = 0; i < c.in; ++i) {
            sum += x_hat[(k1 * s2h + k2) * c.in + i] *
                   (low ? weight(0, i, o, k1, k2) : weight(1, i, o, k1 - (c.s1 - c.modes1), k2));
          }
          y_hat[(k1 * s2h + k2) * c.out + o] = sum;
        }
      }
    }
    const auto expected = direct_irfft2(y_hat, c.s1, c.s2, c.out);
    for (std::size_t k = 0; k < expected.size(); ++k) {
      EXPECT_NEAR(y[b * points * c.out + k], expected[k], 1e-4) << "sample " << b << " " << k;
    }
  }
}

TEST(SpectralConv2d, MatchesDirectDft) {
  expect_spectral_conv_matches_direct_dft({2, 3, 6, 5, 2, 2}, 11);
  // Both corner blocks meeting in the middle (modes1 = s1/2), every column kept
  // (modes2 = s2/2 + 1, the Nyquist column of an even s2 included).
  expect_spectral_conv_matches_direct_dft({3, 2, 6, 6, 3, 4}, 12);
  expect_spectral_conv_matches_direct_dft({1, 1, 4, 7, 1, 4}, 13);
}

TEST(SpectralConv2d, GradientsMatchFiniteDifferences) {
  check_layer_gradients(SpectralConv2d(2, 3, 6, 5, 2, 2), 2, 21, 0.3);
  check_layer_gradients(SpectralConv2d(2, 2, 4, 6, 2, 4), 2, 22, 0.3);  // Nyquist column kept
}

TEST(SpectralConv2d, InitialisesAsTorchRandOfComplexWeights) {
  const SpectralConv2d layer(4, 8, 16, 16, 4, 4);
  std::vector<float> block(layer.num_parameters());
  Random rng(5);
  layer.initialize(block.data(), rng);
  double sum = 0.0;
  for (float v : block) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LT(v, 1.0f / 32.0f);
    sum += v;
  }
  EXPECT_NEAR(sum / static_cast<double>(block.size()), 0.5 / 32.0, 0.05 / 32.0);
}

TEST(SpectralConv2d, RejectsModesTheGridDoesNotHave) {
  try {
    SpectralConv2d(2, 2, 8, 8, 5, 2);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "modes1");
    EXPECT_NE(std::string(e.what()).find("s1/2 = 4"), std::string::npos) << e.what();
  }
  try {
    SpectralConv2d(2, 2, 8, 8, 4, 6);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "modes2");
  }
  EXPECT_THROW(SpectralConv2d(2, 2, 8, 8, 0, 2), ConfigError);
  EXPECT_NO_THROW(SpectralConv2d(2, 2, 8, 8, 4, 5));
}

// ---------------------------------------------------------------------------------------
// FourierLayer2d

TEST(FourierLayer2d, IsSpectralPlusPointwisePaths) {
  const std::size_t in = 2, out = 3, s1 = 4, s2 = 5, m1 = 2, m2 = 2, n = 2;
  const FourierLayer2d layer(in, out, s1, s2, m1, m2, Activation::Identity);
  const SpectralConv2d spectral(in, out, s1, s2, m1, m2);
  const Pointwise w(in, out, s1 * s2, Activation::Identity);
  ASSERT_EQ(layer.num_parameters(), spectral.num_parameters() + w.num_parameters());
  Random rng(31);
  const auto params = initial_parameters(layer, rng, 0.2);
  const auto xv = random_values(n * layer.in_features(), rng, 1.0);
  const auto y = run_layer(layer, n, params, xv, nullptr).y;
  const auto split = params.begin() + static_cast<std::ptrdiff_t>(spectral.num_parameters());
  const auto ys = run_layer(spectral, n, std::vector<double>(params.begin(), split), xv, nullptr).y;
  const auto yw = run_layer(w, n, std::vector<double>(split, params.end()), xv, nullptr).y;
  for (std::size_t k = 0; k < y.size(); ++k) EXPECT_NEAR(y[k], ys[k] + yw[k], 1e-5) << k;
}

TEST(FourierLayer2d, GradientsMatchFiniteDifferences) {
  check_layer_gradients(FourierLayer2d(2, 3, 4, 5, 2, 2, Activation::Gelu), 2, 41, 0.2);
  check_layer_gradients(FourierLayer2d(3, 2, 4, 4, 2, 3, Activation::Identity), 2, 42, 0.2);
  check_layer_gradients(FourierLayer2d(2, 2, 4, 4, 1, 2, Activation::Tanh), 1, 43, 0.2);
}

TEST(FourierLayer2d, RefusesTensorParallelismNamingTheLayer) {
  FourierLayer2d layer(4, 4, 4, 4, 2, 2, Activation::Gelu);
  EXPECT_EQ(layer.parallel_role("model"), ParallelRole::Replicated);
  EXPECT_NO_THROW(layer.set_parallel_role(ParallelRole::Replicated, "model"));
  try {
    layer.shard("model", 2);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("FourierLayer2d: tensor parallelism", 0), 0u)
        << e.what();
  }
  EXPECT_THROW(layer.set_parallel_role(ParallelRole::Column, "model"), ConfigError);
}

// ---------------------------------------------------------------------------------------
// make_fno2d

// The reference's count (neuraloperator's count_params counts a complex weight as two).
std::size_t reference_parameter_count(const FnoConfig& c) {
  const auto w = static_cast<std::size_t>(c.width);
  const auto m = static_cast<std::size_t>(c.modes1 * c.modes2);
  const auto p = static_cast<std::size_t>(c.projection);
  const auto in = static_cast<std::size_t>(c.in_channels);
  const auto out = static_cast<std::size_t>(c.out_channels);
  const std::size_t fc0 = (in + 2) * w + w;
  const std::size_t fourier = 2 * w * w * m * 2 + w * w + w;  // weights1, weights2, w
  return fc0 + static_cast<std::size_t>(c.layers) * fourier + w * p + p + p * out + out;
}

TEST(Fno2d, ParameterCountIsTheReferences) {
  FnoConfig darcy;  // fourier_2d.py: modes 12, width 32, 4 layers, 1 -> 1 channels
  darcy.s1 = darcy.s2 = 85;
  const Model model = make_fno2d(darcy);
  EXPECT_EQ(model.num_parameters(), 2368001u);  // what the reference prints
  EXPECT_EQ(reference_parameter_count(darcy), 2368001u);

  FnoConfig small{.s1 = 8, .s2 = 6, .in_channels = 3, .out_channels = 2, .modes1 = 3,
                  .modes2 = 2, .width = 5, .layers = 3, .projection = 7, .seed = 1};
  const Model m = make_fno2d(small);
  EXPECT_EQ(m.num_parameters(), reference_parameter_count(small));
  EXPECT_EQ(m.in_features(), 8 * 6 * 3);
  EXPECT_EQ(m.out_features(), 8 * 6 * 2);
  ASSERT_EQ(m.num_layers(), 1u + 1u + 3u + 2u);
  EXPECT_EQ(m.tensors().front().name, "layers.1.kernel");  // the grid layer has none
  EXPECT_EQ(m.tensors()[2].name, "layers.2.weights1");
  EXPECT_EQ(m.tensors()[3].name, "layers.2.weights2");
  EXPECT_EQ(m.tensors()[4].name, "layers.2.kernel");
  EXPECT_EQ(m.tensors().back().name, "layers.6.bias");
  std::size_t offset = 0;
  for (const TensorSpec& t : m.tensors()) {
    EXPECT_EQ(t.offset, offset) << t.name;
    offset += t.size;
  }
  EXPECT_EQ(offset, m.num_parameters());
  const auto& last_fourier = dynamic_cast<const FourierLayer2d&>(m.layer(4));
  EXPECT_EQ(last_fourier.activation(), Activation::Identity);
  EXPECT_EQ(dynamic_cast<const FourierLayer2d&>(m.layer(3)).activation(), Activation::Gelu);
  EXPECT_EQ(dynamic_cast<const Pointwise&>(m.layer(5)).activation(), Activation::Gelu);
}

TEST(Fno2d, RejectsBadConfigsNamingTheField) {
  FnoConfig c{.s1 = 8, .s2 = 8};
  c.width = 0;
  try {
    make_fno2d(c);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "width");
  }
  c.width = 4;
  c.modes1 = 4;
  c.modes2 = 6;  // 8/2 + 1 = 5 at most
  try {
    make_fno2d(c);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "modes2");
  }
}

TEST(Fno2d, DeterministicInSeed) {
  const FnoConfig c{.s1 = 6, .s2 = 6, .modes1 = 2, .modes2 = 2, .width = 3, .layers = 2,
                    .projection = 4, .seed = 9};
  const Model a = make_fno2d(c), b = make_fno2d(c);
  FnoConfig other = c;
  other.seed = 10;
  const Model d = make_fno2d(other);
  const auto pa = host_values(a.parameters().data(), a.num_parameters());
  EXPECT_EQ(pa, host_values(b.parameters().data(), b.num_parameters()));
  EXPECT_NE(pa, host_values(d.parameters().data(), d.num_parameters()));
}

using ScalarView = Kokkos::View<float, MemSpace>;

double host_scalar(const ScalarView& v) {
  float h = 0.0f;
  Kokkos::deep_copy(h, v);
  return h;
}

struct FnoBatch {
  Matrix x;
  Matrix y;
};

FnoBatch random_batch(const Model& model, std::size_t n, std::uint64_t seed) {
  Random rng(seed);
  const auto in = static_cast<std::size_t>(model.in_features());
  const auto out = static_cast<std::size_t>(model.out_features());
  FnoBatch b{Matrix("x", n, in), Matrix("y", n, out)};
  Kokkos::deep_copy(Kokkos::View<float*, MemSpace, Unmanaged>(b.x.data(), n * in),
                    device_vector(random_values(n * in, rng, 1.0)));
  Kokkos::deep_copy(Kokkos::View<float*, MemSpace, Unmanaged>(b.y.data(), n * out),
                    device_vector(random_values(n * out, rng, 1.0)));
  return b;
}

// The MSE loss through forward_loss and its gradient through backward, against central
// differences of the loss over every parameter.
TEST(Fno2d, GradientMatchesFiniteDifferences) {
  const FnoConfig c{.s1 = 6, .s2 = 5, .in_channels = 2, .out_channels = 1, .modes1 = 2,
                    .modes2 = 2, .width = 3, .layers = 2, .projection = 4, .seed = 3};
  Model model = make_fno2d(c);
  const std::size_t n = 3;
  const FnoBatch batch = random_batch(model, n, 4);
  const float scale = model.loss_scale(static_cast<int>(n));
  ModelWorkspace ws(model, n);
  ScalarView loss("loss");
  Vector grads("grads", model.num_parameters());
  PassHooks hooks;
  hooks.gradients = [&](std::size_t l) { return grads.data() + model.layer_offset(l); };
  model.forward_loss(batch.x, batch.y, scale, loss, ws, hooks);
  model.backward(batch.x, ws, hooks);
  const auto analytic = host_values(grads.data(), grads.extent(0));

  const HostVector original = model.parameters_on_host();
  auto loss_at = [&](std::size_t i, double value) {
    HostVector changed("changed", original.extent(0));
    Kokkos::deep_copy(changed, original);
    changed(i) = static_cast<float>(value);
    model.set_parameters(changed);
    model.forward_loss(batch.x, batch.y, scale, loss, ws);
    return host_scalar(loss);
  };
  for (std::size_t i = 0; i < model.num_parameters(); ++i) {
    double plus = 0.0, minus = 0.0;
    const double step = float_quotient(original(i), 1e-2, plus, minus);
    const double fd = (loss_at(i, plus) - loss_at(i, minus)) / step;
    // The loss is a mean of O(1) terms: an absolute floor below the FD's rounding is enough.
    const double tol = 1e-2 * std::max(std::abs(analytic[i]), std::abs(fd)) + 2e-4;
    EXPECT_NEAR(analytic[i], fd, tol) << "parameter " << i;
  }
  model.set_parameters(original);
}

// The pass with FSDP's hooks (each layer gathered into a buffer of its own, gradients
// written layer by layer into another) gives the hookless gradient bit for bit.
TEST(Fno2d, HooksGiveTheSameGradientAsNone) {
  const FnoConfig c{.s1 = 8, .s2 = 8, .in_channels = 1, .out_channels = 1, .modes1 = 3,
                    .modes2 = 3, .width = 4, .layers = 3, .projection = 6, .seed = 5};
  const Model model = make_fno2d(c);
  const std::size_t n = 4;
  const FnoBatch batch = random_batch(model, n, 6);
  const float scale = model.loss_scale(static_cast<int>(n));
  ModelWorkspace ws(model, n + 1);
  ScalarView loss("loss"), hooked_loss("hooked_loss");

  Vector plain("plain", model.num_parameters());
  PassHooks none;
  none.gradients = [&](std::size_t l) { return plain.data() + model.layer_offset(l); };
  model.forward_loss(batch.x, batch.y, scale, loss, ws, none);
  model.backward(batch.x, ws, none);

  Vector block("gathered_layer", model.num_parameters());
  Vector layer_grad("layer_gradient", model.num_parameters());
  Vector hooked("hooked", model.num_parameters());
  std::vector<std::size_t> ready;
  PassHooks hooks;
  hooks.gather = [&](std::size_t l) {
    const auto from = model.layer_offset(l);
    const auto size = model.layer_size(l);
    Kokkos::deep_copy(Kokkos::subview(block, std::make_pair(std::size_t{0}, size)),
                      Kokkos::subview(model.parameters(), std::make_pair(from, from + size)));
    return static_cast<const float*>(block.data());
  };
  hooks.release = [&](std::size_t) { Kokkos::deep_copy(block, -1.0f); };
  hooks.gradients = [&](std::size_t) { return layer_grad.data(); };
  hooks.gradients_ready = [&](std::size_t l) {
    ready.push_back(l);
    const auto to = model.layer_offset(l);
    const auto size = model.layer_size(l);
    Kokkos::deep_copy(Kokkos::subview(hooked, std::make_pair(to, to + size)),
                      Kokkos::subview(layer_grad, std::make_pair(std::size_t{0}, size)));
  };
  model.forward_loss(batch.x, batch.y, scale, hooked_loss, ws, hooks);
  model.backward(batch.x, ws, hooks);
  EXPECT_EQ(ready, (std::vector<std::size_t>{6, 5, 4, 3, 2, 1, 0}));
  EXPECT_EQ(host_scalar(loss), host_scalar(hooked_loss));
  EXPECT_EQ(host_values(plain.data(), plain.extent(0)),
            host_values(hooked.data(), hooked.extent(0)));
}

TEST(Fno2d, RefusesTensorParallelism) {
  Model model = make_fno2d({.s1 = 4, .s2 = 4, .modes1 = 2, .modes2 = 2, .width = 2,
                            .layers = 1, .projection = 2});
  EXPECT_THROW(model.set_megatron_partitioning("model"), ConfigError);
}

// ---------------------------------------------------------------------------------------
// Pointwise normalisation (the reference's UnitGaussianNormalizer)

TEST(PointwiseNormalizer, MeanAndUnbiasedStdPerFeature) {
  HostMatrix data("data", 3, 2);
  const double values[3][2] = {{1.0, 10.0}, {2.0, 10.0}, {6.0, 10.0}};
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 2; ++c) data(r, c) = static_cast<float>(values[r][c]);
  }
  const PointwiseNormalizer n = PointwiseNormalizer::fit(data);
  EXPECT_FLOAT_EQ(n.mean[0], 3.0f);
  EXPECT_FLOAT_EQ(n.scale[0], static_cast<float>(std::sqrt(7.0) + 1e-5));  // (4 + 1 + 9) / 2
  EXPECT_FLOAT_EQ(n.mean[1], 10.0f);
  EXPECT_FLOAT_EQ(n.scale[1], 1e-5f);  // a constant feature: eps alone, as the reference
  n.encode(data);
  EXPECT_NEAR(data(0, 0), -2.0 / (std::sqrt(7.0) + 1e-5), 1e-6);
  EXPECT_NEAR(data(2, 0), 3.0 / (std::sqrt(7.0) + 1e-5), 1e-6);
  EXPECT_EQ(data(1, 1), 0.0f);
  HostMatrix one("one", 1, 2);
  EXPECT_THROW(PointwiseNormalizer::fit(one), ConfigError);
  HostMatrix other("other", 2, 3);
  EXPECT_THROW(n.encode(other), ConfigError);
}

TEST(FeatureAffine, DecodesAndPassesTheGradientScaled) {
  Model model = make_fno2d({.s1 = 4, .s2 = 4, .modes1 = 2, .modes2 = 2, .width = 3,
                            .layers = 1, .projection = 4, .seed = 5});
  const std::size_t params = model.num_parameters();
  const std::size_t layers = model.num_layers();
  std::vector<float> scale(16), shift(16);
  for (std::size_t f = 0; f < 16; ++f) {
    scale[f] = 0.5f + 0.1f * static_cast<float>(f);
    shift[f] = static_cast<float>(f) - 3.0f;
  }
  Model decoded = model;  // shares the parameters
  decoded.append_fixed(std::make_unique<FeatureAffine>(scale, shift));
  EXPECT_EQ(decoded.num_parameters(), params);
  EXPECT_EQ(decoded.num_layers(), layers + 1);
  EXPECT_THROW(decoded.append_fixed(std::make_unique<FeatureAffine>(std::vector<float>(5, 1.0f),
                                                                    std::vector<float>(5, 0.0f))),
               ConfigError);  // 5 features after 16
  EXPECT_EQ(decoded.num_layers(), layers + 1);
  EXPECT_THROW(decoded.append_fixed(std::make_unique<Pointwise>(1, 1, 16, Activation::Identity)),
               ConfigError);  // has parameters

  Matrix x("x", 2, 16);
  auto hx = Kokkos::create_mirror_view(x);
  Random rng(9);
  for (std::size_t i = 0; i < 32; ++i) hx.data()[i] = static_cast<float>(rng.uniform());
  Kokkos::deep_copy(x, hx);
  ModelWorkspace plain_ws(model, 2), decoded_ws(decoded, 2);
  const auto plain = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(),
                                                         model.forward(x, plain_ws));
  const auto out = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(),
                                                       decoded.forward(x, decoded_ws));
  for (std::size_t r = 0; r < 2; ++r) {
    for (std::size_t f = 0; f < 16; ++f) {
      EXPECT_FLOAT_EQ(out(r, f), plain(r, f) * scale[f] + shift[f]);
    }
  }
  // dL/d(plain output) = scale * dL/d(decoded output): the gradients for dout = 1 through the
  // decoder equal those for dout = scale without it.
  Vector g_plain("g_plain", params), g_decoded("g_decoded", params);
  Matrix ones("ones", 2, 16), scaled("scaled", 2, 16);
  Kokkos::deep_copy(ones, 1.0f);
  auto hs = Kokkos::create_mirror_view(scaled);
  for (std::size_t r = 0; r < 2; ++r) {
    for (std::size_t f = 0; f < 16; ++f) hs(r, f) = scale[f];
  }
  Kokkos::deep_copy(scaled, hs);
  model.backward(x, plain_ws, scaled, g_plain.data());
  decoded.backward(x, decoded_ws, ones, g_decoded.data());
  const auto a = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), g_plain);
  const auto b = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), g_decoded);
  for (std::size_t i = 0; i < params; ++i) EXPECT_FLOAT_EQ(a(i), b(i)) << i;
}

}  // namespace
