#include "meshtrain/data/darcy.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <string>

#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {

// Keeps the Darcy streams apart from the library's other streams of the same user seed.
constexpr std::uint64_t kDarcyStream = 0x4461726379;  // "Darcy"

std::size_t grid_size(int resolution) {
  const auto s = static_cast<std::size_t>(resolution);
  return s * s;
}

double dot(const std::vector<double>& x, const std::vector<double>& y) {
  double sum = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) sum += x[i] * y[i];
  return sum;
}

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", v);
  return text;
}

// The 5-point operator -div(a grad .) on the interior nodes of an s x s grid. Vectors are
// full s x s grids whose boundary entries stay 0, which keeps the stencil free of branches.
class DarcyOperator {
 public:
  DarcyOperator(int resolution, std::span<const double> a)
      : s_(static_cast<std::size_t>(resolution)),
        east_(s_ * s_, 0.0),
        north_(s_ * s_, 0.0),
        diagonal_(s_ * s_, 1.0) {
    const double inv_h2 = static_cast<double>(s_ - 1) * static_cast<double>(s_ - 1);
    for (std::size_t i = 0; i + 1 < s_; ++i) {
      for (std::size_t j = 0; j + 1 < s_; ++j) {
        const std::size_t k = i * s_ + j;
        east_[k] = 0.5 * (a[k] + a[k + s_]) * inv_h2;  // face between (i, j) and (i + 1, j)
        north_[k] = 0.5 * (a[k] + a[k + 1]) * inv_h2;  // face between (i, j) and (i, j + 1)
      }
    }
    for (std::size_t i = 1; i + 1 < s_; ++i) {
      for (std::size_t j = 1; j + 1 < s_; ++j) {
        const std::size_t k = i * s_ + j;
        diagonal_[k] = east_[k] + east_[k - s_] + north_[k] + north_[k - 1];
      }
    }
  }

  // out = A x on the interior; out's boundary is left as it is (0).
  void apply(const std::vector<double>& x, std::vector<double>& out) const {
    for (std::size_t i = 1; i + 1 < s_; ++i) {
      for (std::size_t j = 1; j + 1 < s_; ++j) {
        const std::size_t k = i * s_ + j;
        out[k] = diagonal_[k] * x[k] - east_[k] * x[k + s_] - east_[k - s_] * x[k - s_] -
                 north_[k] * x[k + 1] - north_[k - 1] * x[k - 1];
      }
    }
  }

  // r = b - A x on the interior, 0 on the boundary.
  void residual(const std::vector<double>& b, const std::vector<double>& x,
                std::vector<double>& r) const {
    apply(x, r);
    for (std::size_t i = 1; i + 1 < s_; ++i) {
      for (std::size_t j = 1; j + 1 < s_; ++j) r[i * s_ + j] = b[i * s_ + j] - r[i * s_ + j];
    }
  }

  // z = D^-1 r (D's boundary entries are 1, where r is 0).
  void precondition(const std::vector<double>& r, std::vector<double>& z) const {
    for (std::size_t k = 0; k < r.size(); ++k) z[k] = r[k] / diagonal_[k];
  }

 private:
  std::size_t s_;
  std::vector<double> east_;
  std::vector<double> north_;
  std::vector<double> diagonal_;
};

}  // namespace

std::vector<double> gaussian_random_field(int resolution, Random& rng, double alpha, double tau) {
  if (resolution < 2) throw std::invalid_argument("gaussian_random_field: resolution < 2");
  const auto s = static_cast<std::size_t>(resolution);
  const double pi = std::numbers::pi;
  // Weights of the modes, phi's sqrt(2) folded in: c[k1][k2] = xi * sqrt(lambda) g(k1) g(k2).
  std::vector<double> c(s * s);
  const double scale = std::pow(tau, alpha - 1.0);
  for (std::size_t k1 = 0; k1 < s; ++k1) {
    for (std::size_t k2 = 0; k2 < s; ++k2) {
      const double xi = rng.normal();
      const double k_squared = static_cast<double>(k1 * k1 + k2 * k2);
      const double g =
          (k1 == 0 ? 1.0 : std::numbers::sqrt2) * (k2 == 0 ? 1.0 : std::numbers::sqrt2);
      c[k1 * s + k2] = xi * g * scale * std::pow(pi * pi * k_squared + tau * tau, -alpha / 2.0);
    }
  }
  c[0] = 0.0;  // mean zero
  // cosines[i][k] = cos(pi k i / (s - 1)), the argument reduced modulo 2 pi exactly in integers.
  std::vector<double> cosines(s * s);
  const std::size_t period = 2 * (s - 1);
  for (std::size_t i = 0; i < s; ++i) {
    for (std::size_t k = 0; k < s; ++k) {
      const double m = static_cast<double>((i * k) % period);
      cosines[i * s + k] = std::cos(pi * m / static_cast<double>(s - 1));
    }
  }
  // field = cosines c cosines^T, in two products.
  std::vector<double> partial(s * s, 0.0);  // partial[k1][j] = sum_k2 c[k1][k2] cosines[j][k2]
  for (std::size_t k1 = 0; k1 < s; ++k1) {
    for (std::size_t j = 0; j < s; ++j) {
      double sum = 0.0;
      for (std::size_t k2 = 0; k2 < s; ++k2) sum += c[k1 * s + k2] * cosines[j * s + k2];
      partial[k1 * s + j] = sum;
    }
  }
  std::vector<double> field(s * s, 0.0);
  for (std::size_t i = 0; i < s; ++i) {
    for (std::size_t k1 = 0; k1 < s; ++k1) {
      const double weight = cosines[i * s + k1];
      for (std::size_t j = 0; j < s; ++j) field[i * s + j] += weight * partial[k1 * s + j];
    }
  }
  return field;
}

std::vector<double> threshold_coefficient(std::span<const double> field) {
  std::vector<double> a(field.size());
  for (std::size_t k = 0; k < field.size(); ++k) a[k] = field[k] >= 0.0 ? kDarcyHigh : kDarcyLow;
  return a;
}

CgReport solve_darcy(int resolution, std::span<const double> a, std::span<const double> f,
                     std::span<double> u, double tolerance, int max_iterations) {
  if (resolution < 3) throw std::invalid_argument("solve_darcy: resolution < 3 has no interior");
  const std::size_t n = grid_size(resolution);
  if (a.size() != n || f.size() != n || u.size() != n) {
    throw std::invalid_argument("solve_darcy: a, f and u must hold resolution^2 values");
  }
  if (!(tolerance > 0.0 && tolerance < 1.0)) {
    throw std::invalid_argument("solve_darcy: tolerance must be in (0, 1)");
  }
  for (double v : a) {
    if (!(std::isfinite(v) && v > 0.0))
      throw std::invalid_argument("solve_darcy: the coefficient must be finite and positive");
  }
  const auto s = static_cast<std::size_t>(resolution);
  const std::size_t unknowns = (s - 2) * (s - 2);
  const std::size_t limit =
      max_iterations > 0 ? static_cast<std::size_t>(max_iterations) : unknowns;

  const DarcyOperator op(resolution, a);
  std::vector<double> b(n, 0.0);
  for (std::size_t i = 1; i + 1 < s; ++i) {
    for (std::size_t j = 1; j + 1 < s; ++j) b[i * s + j] = f[i * s + j];
  }
  std::vector<double> x(n, 0.0), r = b, z(n), p(n), q(n, 0.0);
  const double b_norm = std::sqrt(dot(b, b));
  std::fill(u.begin(), u.end(), 0.0);
  if (b_norm == 0.0) return {};  // u = 0 exactly

  const double target = tolerance * b_norm;
  std::size_t iterations = 0;
  double r_norm = b_norm;
  bool breakdown = false;
  // Each pass runs CG from the current x; a pass ends when the recurrence's residual meets
  // the target, and the true residual decides. Rounding can leave the two apart: then CG
  // restarts from the true residual.
  while (iterations < limit && !breakdown) {
    op.precondition(r, z);
    p = z;
    double rz = dot(r, z);
    while (iterations < limit) {
      op.apply(p, q);
      const double pq = dot(p, q);
      if (!(pq > 0.0)) {  // only rounding can cause it for an SPD system; no way forward
        breakdown = true;
        break;
      }
      const double step = rz / pq;
      for (std::size_t k = 0; k < n; ++k) {
        x[k] += step * p[k];
        r[k] -= step * q[k];
      }
      ++iterations;
      if (std::sqrt(dot(r, r)) <= target) break;
      op.precondition(r, z);
      const double rz_next = dot(r, z);
      const double beta = rz_next / rz;
      rz = rz_next;
      for (std::size_t k = 0; k < n; ++k) p[k] = z[k] + beta * p[k];
    }
    op.residual(b, x, r);
    r_norm = std::sqrt(dot(r, r));
    if (r_norm <= target) break;
  }
  if (!(r_norm <= target)) {
    throw std::runtime_error("solve_darcy: conjugate gradients did not converge at resolution " +
                             std::to_string(resolution) + (breakdown ? " (breakdown)" : "") +
                             ": relative residual " + number(r_norm / b_norm) + " after " +
                             std::to_string(iterations) + " iterations, target " +
                             number(tolerance));
  }
  std::copy(x.begin(), x.end(), u.begin());
  return {static_cast<int>(iterations), r_norm / b_norm};
}

void validate(const DarcyConfig& config) {
  if (config.samples < 1) {
    throw ConfigError("samples", std::to_string(config.samples) + ": must be at least 1");
  }
  if (config.resolution < 3) {
    throw ConfigError("resolution", std::to_string(config.resolution) +
                                        ": must be at least 3 (the grid needs an interior node)");
  }
  const std::size_t per_sample = grid_size(config.resolution);
  if (per_sample / static_cast<std::size_t>(config.resolution) !=
          static_cast<std::size_t>(config.resolution) ||
      static_cast<std::size_t>(config.samples) >
          std::numeric_limits<std::size_t>::max() / sizeof(float) / per_sample) {
    throw ConfigError("samples", std::to_string(config.samples) + ": " +
                                     std::to_string(config.samples) + " x " +
                                     std::to_string(config.resolution) + "^2 values are too many");
  }
  if (!(config.tolerance > 0.0 && config.tolerance < 1.0)) {
    throw ConfigError("tolerance", number(config.tolerance) + ": must be in (0, 1)");
  }
}

std::uint64_t darcy_sample_seed(std::uint64_t seed, std::uint64_t index) {
  return derive_seed(derive_seed(seed, kDarcyStream), index);
}

DarcySample darcy_sample(const DarcyConfig& config, std::uint64_t index) {
  Random rng(darcy_sample_seed(config.seed, index));
  DarcySample sample;
  sample.field = gaussian_random_field(config.resolution, rng);
  sample.a = threshold_coefficient(sample.field);
  const std::vector<double> f(sample.a.size(), 1.0);
  sample.u.resize(sample.a.size());
  try {
    sample.cg = solve_darcy(config.resolution, sample.a, f, sample.u, config.tolerance);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("darcy sample " + std::to_string(index) + " (seed " +
                             std::to_string(config.seed) + "): " + e.what());
  }
  return sample;
}

void DarcyStats::add(const DarcySample& sample) {
  const auto [a_lo, a_hi] = std::minmax_element(sample.a.begin(), sample.a.end());
  const auto [u_lo, u_hi] = std::minmax_element(sample.u.begin(), sample.u.end());
  DarcyStats one;
  one.a_min = *a_lo;
  one.a_max = *a_hi;
  one.u_min = *u_lo;
  one.u_max = *u_hi;
  one.cg_min = one.cg_max = sample.cg.iterations;
  one.max_residual = sample.cg.relative_residual;
  one.empty = false;
  combine(one);
}

void DarcyStats::combine(const DarcyStats& other) {
  if (other.empty) return;
  if (empty) {
    *this = other;
    return;
  }
  a_min = std::min(a_min, other.a_min);
  a_max = std::max(a_max, other.a_max);
  u_min = std::min(u_min, other.u_min);
  u_max = std::max(u_max, other.u_max);
  cg_min = std::min(cg_min, other.cg_min);
  cg_max = std::max(cg_max, other.cg_max);
  max_residual = std::max(max_residual, other.max_residual);
}

DarcyBlock generate_darcy(const DarcyConfig& config, std::size_t first, std::size_t count) {
  validate(config);
  if (first > static_cast<std::size_t>(config.samples) ||
      count > static_cast<std::size_t>(config.samples) - first) {
    throw std::invalid_argument("generate_darcy: samples [" + std::to_string(first) + ", " +
                                std::to_string(first + count) + ") outside the " +
                                std::to_string(config.samples) + " samples");
  }
  const std::size_t per_sample = grid_size(config.resolution);
  DarcyBlock block{first, count, std::vector<float>(count * per_sample),
                   std::vector<float>(count * per_sample), {}};
  for (std::size_t i = 0; i < count; ++i) {
    const DarcySample sample = darcy_sample(config, first + i);
    std::copy(sample.a.begin(), sample.a.end(), block.a.begin() + i * per_sample);
    std::transform(sample.u.begin(), sample.u.end(), block.u.begin() + i * per_sample,
                   [](double v) { return static_cast<float>(v); });
    block.stats.add(sample);
  }
  return block;
}

std::pair<std::size_t, std::size_t> contiguous_block(std::size_t total, int parts, int part) {
  if (parts < 1 || part < 0 || part >= parts) {
    throw std::invalid_argument("contiguous_block: part " + std::to_string(part) + " of " +
                                std::to_string(parts));
  }
  const auto n = static_cast<std::size_t>(parts), k = static_cast<std::size_t>(part);
  const std::size_t base = total / n, extra = total % n;
  return {k * base + std::min(k, extra), base + (k < extra ? 1 : 0)};
}

}  // namespace meshtrain
