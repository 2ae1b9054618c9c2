// Darcy flow data: the finite-difference solver against manufactured solutions, the CG
// residual criterion, the random coefficient's law and values, and determinism per sample.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <stdexcept>
#include <vector>

#include "meshtrain/data/darcy.hpp"
#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"
#include "test_support.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::testing;
constexpr double kPi = std::numbers::pi;

// g(x, y) at the s x s nodes.
template <class G>
std::vector<double> on_grid(int s, G&& g) {
  std::vector<double> values(static_cast<std::size_t>(s * s));
  const double h = 1.0 / (s - 1);
  for (int i = 0; i < s; ++i) {
    for (int j = 0; j < s; ++j) values[i * s + j] = g(i * h, j * h);
  }
  return values;
}

double max_error(int s, const std::vector<double>& u, const std::vector<double>& exact) {
  double worst = 0.0;
  for (int k = 0; k < s * s; ++k) worst = std::max(worst, std::fabs(u[k] - exact[k]));
  return worst;
}

// ||f - A u||_2 / ||f||_2 over the interior, with A written out here from the documented
// scheme (arithmetic mean of the nodes' a on each face), independently of the library's.
double relative_residual(int s, const std::vector<double>& a, const std::vector<double>& f,
                         const std::vector<double>& u) {
  const double inv_h2 = (s - 1.0) * (s - 1.0);
  auto face = [&](int k, int l) { return 0.5 * (a[k] + a[l]) * inv_h2; };
  double r2 = 0.0, f2 = 0.0;
  for (int i = 1; i < s - 1; ++i) {
    for (int j = 1; j < s - 1; ++j) {
      const int k = i * s + j;
      double au = 0.0;
      for (int l : {k - s, k + s, k - 1, k + 1}) au += face(k, l) * (u[k] - u[l]);
      r2 += (f[k] - au) * (f[k] - au);
      f2 += f[k] * f[k];
    }
  }
  return std::sqrt(r2 / f2);
}

// The observed orders of the max-norm error at s = 17, 33, 65 (h halves each time).
template <class A, class U, class F>
std::vector<double> observed_orders(A&& a_of, U&& u_of, F&& f_of) {
  std::vector<double> errors;
  for (int s : {17, 33, 65}) {
    const auto a = on_grid(s, a_of), exact = on_grid(s, u_of), f = on_grid(s, f_of);
    std::vector<double> u(a.size());
    const CgReport report = solve_darcy(s, a, f, u, 1e-12);
    EXPECT_LE(report.relative_residual, 1e-12);
    errors.push_back(max_error(s, u, exact));
  }
  return {std::log2(errors[0] / errors[1]), std::log2(errors[1] / errors[2])};
}

TEST(DarcySolver, PoissonManufacturedSolutionConvergesAtSecondOrder) {
  // a = 1, u = sin(pi x) sin(pi y): -Laplacian u = 2 pi^2 u.
  auto u = [](double x, double y) { return std::sin(kPi * x) * std::sin(kPi * y); };
  const auto orders = observed_orders([](double, double) { return 1.0; }, u,
                                      [&](double x, double y) { return 2 * kPi * kPi * u(x, y); });
  for (double order : orders) EXPECT_NEAR(order, 2.0, 0.05);
}

TEST(DarcySolver, VariableCoefficientManufacturedSolutionConvergesAtSecondOrder) {
  // a = 1 + x^2 + y, u = sin(pi x) sin(pi y):
  // -div(a grad u) = 2 pi^2 a u - a_x u_x - a_y u_y.
  auto a = [](double x, double y) { return 1.0 + x * x + y; };
  auto u = [](double x, double y) { return std::sin(kPi * x) * std::sin(kPi * y); };
  auto f = [&](double x, double y) {
    const double ux = kPi * std::cos(kPi * x) * std::sin(kPi * y);
    const double uy = kPi * std::sin(kPi * x) * std::cos(kPi * y);
    return 2 * kPi * kPi * a(x, y) * u(x, y) - 2 * x * ux - 1.0 * uy;
  };
  for (double order : observed_orders(a, u, f)) EXPECT_NEAR(order, 2.0, 0.1);
}

TEST(DarcySolver, MeetsTheResidualCriterionItReports) {
  const int s = 33;
  Random rng(7);
  const auto a = threshold_coefficient(gaussian_random_field(s, rng));
  const std::vector<double> f(a.size(), 1.0);
  std::vector<double> u(a.size());
  int previous_iterations = 0;
  for (double tolerance : {1e-3, 1e-6, 1e-10}) {
    const CgReport report = solve_darcy(s, a, f, u, tolerance);
    EXPECT_LE(report.relative_residual, tolerance);
    EXPECT_NEAR(relative_residual(s, a, f, u), report.relative_residual,
                0.01 * report.relative_residual);
    EXPECT_GT(report.iterations, previous_iterations) << tolerance;
    previous_iterations = report.iterations;
  }
}

TEST(DarcySolver, RefusesToReturnAnUnconvergedSolution) {
  const int s = 33;
  const std::vector<double> a(s * s, 1.0), f(s * s, 1.0);
  std::vector<double> u(s * s, 42.0);
  const std::string message =
      error_of<std::runtime_error>([&] { solve_darcy(s, a, f, u, 1e-8, 3); });
  EXPECT_TRUE(contains(message, "did not converge")) << message;
  EXPECT_TRUE(contains(message, "after 3 iterations")) << message;
}

TEST(DarcySolver, RejectsBadArguments) {
  const std::vector<double> ones(9, 1.0);
  std::vector<double> u(9);
  std::vector<double> bad = ones;
  bad[4] = 0.0;
  EXPECT_THROW(solve_darcy(3, bad, ones, u), std::invalid_argument);
  bad[4] = std::nan("");
  EXPECT_THROW(solve_darcy(3, bad, ones, u), std::invalid_argument);
  EXPECT_THROW(solve_darcy(4, ones, ones, u), std::invalid_argument);
  EXPECT_THROW(solve_darcy(2, std::vector<double>(4, 1.0), std::vector<double>(4, 1.0), u),
               std::invalid_argument);
  EXPECT_THROW(solve_darcy(3, ones, ones, u, 0.0), std::invalid_argument);
  // The one interior node: 4 faces of a = 1 over h^2 = 1/4, so u = 1 / 16.
  const CgReport report = solve_darcy(3, ones, ones, u);
  EXPECT_EQ(report.iterations, 1);
  EXPECT_DOUBLE_EQ(u[4], 1.0 / 16.0);
}

TEST(DarcyField, HasMeanZeroAndTheSpectrumsVariance) {
  // Over many draws at s = 9, the variance at a node is sum_k lambda_k phi_k(x)^2 phi_k(y)^2.
  const int s = 9, draws = 4000;
  std::vector<double> sum_squares(s * s, 0.0);
  Random rng(11);
  for (int n = 0; n < draws; ++n) {
    const auto field = gaussian_random_field(s, rng);
    // The trapezoidal mean of every cosine mode but (0, 0) vanishes on these nodes.
    double mean = 0.0, scale = 0.0;
    for (int i = 0; i < s; ++i) {
      for (int j = 0; j < s; ++j) {
        const double w = (i == 0 || i == s - 1 ? 0.5 : 1.0) * (j == 0 || j == s - 1 ? 0.5 : 1.0);
        mean += w * field[i * s + j];
        scale = std::max(scale, std::fabs(field[i * s + j]));
      }
    }
    ASSERT_LE(std::fabs(mean), 1e-13 * scale * s * s);
    for (int k = 0; k < s * s; ++k) sum_squares[k] += field[k] * field[k];
  }
  for (int i : {0, 3, 8}) {
    for (int j : {0, 5}) {
      double expected = 0.0;
      for (int k1 = 0; k1 < s; ++k1) {
        for (int k2 = 0; k2 < s; ++k2) {
          if (k1 == 0 && k2 == 0) continue;
          auto phi = [&](int k, int node) {
            return k == 0 ? 1.0 : std::sqrt(2.0) * std::cos(kPi * k * node / (s - 1.0));
          };
          const double root_lambda = 3.0 / (kPi * kPi * (k1 * k1 + k2 * k2) + 9.0);
          expected += std::pow(root_lambda * phi(k1, i) * phi(k2, j), 2);
        }
      }
      // The sample variance of 4000 normals is within 3 standard errors (sqrt(2/4000)).
      EXPECT_NEAR(sum_squares[i * s + j] / draws / expected, 1.0, 0.07) << i << ", " << j;
    }
  }
}

TEST(DarcySample, CoefficientIsTwelveOrThreeByTheFieldsSignAndBothOccur) {
  const DarcyConfig config{8, 32, 5, 1e-8};
  for (int index = 0; index < config.samples; ++index) {
    const DarcySample sample = darcy_sample(config, static_cast<std::uint64_t>(index));
    int high = 0, low = 0;
    for (std::size_t k = 0; k < sample.a.size(); ++k) {
      if (sample.field[k] >= 0.0) {
        EXPECT_EQ(sample.a[k], 12.0);
        ++high;
      } else {
        EXPECT_EQ(sample.a[k], 3.0);
        ++low;
      }
    }
    EXPECT_GT(high, 0) << index;
    EXPECT_GT(low, 0) << index;
  }
}

TEST(DarcySample, SolutionIsZeroOnTheBoundaryPositiveInsideAndSolvesTheSystem) {
  const int s = 40;
  const DarcyConfig config{3, s, 9, 1e-8};
  for (int index = 0; index < config.samples; ++index) {
    const DarcySample sample = darcy_sample(config, static_cast<std::uint64_t>(index));
    for (int i = 0; i < s; ++i) {
      for (int j = 0; j < s; ++j) {
        const double v = sample.u[i * s + j];
        if (i == 0 || j == 0 || i == s - 1 || j == s - 1) {
          EXPECT_EQ(v, 0.0) << i << ", " << j;
        } else {
          EXPECT_GT(v, 0.0) << i << ", " << j;  // the discrete maximum principle with f = 1
        }
      }
    }
    EXPECT_LE(sample.cg.relative_residual, 1e-8);
    EXPECT_LE(relative_residual(s, sample.a, std::vector<double>(s * s, 1.0), sample.u), 1e-8);
  }
}

bool same_bytes(const std::vector<float>& x, const std::vector<float>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

TEST(DarcyGenerate, SameSeedSameBytesAnySplitDifferentSeedDifferentData) {
  const DarcyConfig config{7, 20, 123, 1e-8};
  const DarcyBlock whole = generate_darcy(config, 0, 7);
  ASSERT_EQ(whole.a.size(), 7u * 20 * 20);
  EXPECT_TRUE(same_bytes(whole.a, generate_darcy(config, 0, 7).a));
  EXPECT_TRUE(same_bytes(whole.u, generate_darcy(config, 0, 7).u));

  for (int parts : {2, 3, 4}) {
    std::vector<float> a, u;
    DarcyStats stats;
    for (int part = 0; part < parts; ++part) {
      const auto [first, count] = contiguous_block(7, parts, part);
      const DarcyBlock block = generate_darcy(config, first, count);
      a.insert(a.end(), block.a.begin(), block.a.end());
      u.insert(u.end(), block.u.begin(), block.u.end());
      stats.combine(block.stats);
    }
    EXPECT_TRUE(same_bytes(whole.a, a)) << parts;
    EXPECT_TRUE(same_bytes(whole.u, u)) << parts;
    EXPECT_EQ(stats.u_max, whole.stats.u_max);
    EXPECT_EQ(stats.cg_min, whole.stats.cg_min);
    EXPECT_EQ(stats.cg_max, whole.stats.cg_max);
  }
  EXPECT_EQ(whole.stats.a_min, 3.0);
  EXPECT_EQ(whole.stats.a_max, 12.0);
  EXPECT_EQ(whole.stats.u_min, 0.0);
  EXPECT_GT(whole.stats.u_max, 0.0);
  EXPECT_LE(whole.stats.max_residual, 1e-8);

  DarcyConfig other = config;
  other.seed = 124;
  const DarcyBlock different = generate_darcy(other, 0, 7);
  EXPECT_FALSE(same_bytes(whole.a, different.a));
  EXPECT_FALSE(same_bytes(whole.u, different.u));
  // Samples differ from each other within a set too.
  EXPECT_NE(std::memcmp(whole.a.data(), whole.a.data() + 400, 400 * sizeof(float)), 0);
}

TEST(DarcyGenerate, ValidationNamesTheField) {
  auto field_of = [](DarcyConfig config) {
    return config_error_object([&] { validate(config); }).field();
  };
  EXPECT_EQ(field_of({0, 16, 0, 1e-8}), "samples");
  EXPECT_EQ(field_of({-1, 16, 0, 1e-8}), "samples");
  EXPECT_EQ(field_of({1, 2, 0, 1e-8}), "resolution");
  EXPECT_EQ(field_of({1, 16, 0, 0.0}), "tolerance");
  EXPECT_EQ(field_of({1, 16, 0, 1.0}), "tolerance");
  EXPECT_EQ(config_error([] { validate({0, 16, 0, 1e-8}); }), "samples 0: must be at least 1");
  EXPECT_THROW(generate_darcy({3, 8, 0, 1e-8}, 2, 2), std::invalid_argument);
}

TEST(DarcyGenerate, ContiguousBlocksCoverTheSamplesInOrder) {
  for (std::size_t total : {0, 1, 7, 10}) {
    for (int parts : {1, 2, 3, 4}) {
      std::size_t next = 0;
      for (int part = 0; part < parts; ++part) {
        const auto [first, count] = contiguous_block(total, parts, part);
        EXPECT_EQ(first, next);
        EXPECT_LE(count, total / parts + 1);
        next = first + count;
      }
      EXPECT_EQ(next, total);
    }
  }
}

}  // namespace
