#pragma once
// Darcy flow data for the Fourier Neural Operator, as in Li et al. 2020, "Fourier Neural
// Operator for Parametric PDEs" (section 5.2) and their MATLAB generator (GRF.m,
// solve_gwf.m): a piecewise-constant permeability a(x) on the unit square and the pressure u
// that solves
//     -div(a grad u) = f on (0, 1)^2,  u = 0 on the boundary,  f = 1.
//
// Grid: s x s nodes (x_i, y_j) = (i, j) / (s - 1); a field is s * s values, row-major, the
// value at (x_i, y_j) at index i * s + j. The samples' arrays are (N, s, s, 1) in that order.
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace meshtrain {

class Random;

// The two values of the thresholded coefficient: the paper's 12 and 3 (the generator scripts
// released with it set 4 for the lower one).
inline constexpr double kDarcyHigh = 12.0;
inline constexpr double kDarcyLow = 3.0;

// A sample of the Gaussian random field N(0, tau^(2 alpha - 2) (-Laplacian + tau^2 I)^-alpha)
// with Neumann boundary conditions on the unit square, as GRF.m draws it: the Karhunen-Loeve
// expansion over the cosine eigenfunctions phi_k1(x) phi_k2(y) (phi_0 = 1,
// phi_k = sqrt(2) cos(pi k x)), k1, k2 = 0..s-1, each with an independent N(0, 1) weight times
// tau^(alpha - 1) (pi^2 (k1^2 + k2^2) + tau^2)^(-alpha/2), and without the (0, 0) mode, so
// that the field has mean zero. Unlike GRF.m (an inverse DCT-II onto cell centres, then a
// spline onto the nodes in solve_gwf.m) the series is summed at the grid's nodes themselves
// (an inverse DCT-I), as two dense s x s products of our own rather than FFTW's REDFT00: O(s^3),
// no more than one solve costs (O(s) CG iterations of O(s^2)), with no plan to choose, in a fixed
// order of operations, so that a sample is the same bytes whichever rank computes it.
// Draws s * s normals from rng (the (0, 0) one is discarded). resolution >= 2.
std::vector<double> gaussian_random_field(int resolution, Random& rng, double alpha = 2.0,
                                          double tau = 3.0);

// kDarcyHigh where field >= 0, kDarcyLow elsewhere.
std::vector<double> threshold_coefficient(std::span<const double> field);

struct CgReport {
  int iterations = 0;
  double relative_residual = 0.0;  // ||f - A u||_2 / ||f||_2 over the interior, recomputed
};

// Solves -div(a grad u) = f with u = 0 on the boundary by the 5-point finite-difference scheme
// on the s x s grid: the (s - 2)^2 interior nodes are the unknowns, boundary nodes are 0. The
// coefficient on the face between two neighbouring nodes is the arithmetic mean of theirs (as
// solve_gwf.m does), so the boundary nodes' a enters the faces next to them; f's boundary
// values are not used. The system is symmetric positive definite; it is solved in double
// precision by conjugate gradients with Jacobi (diagonal) preconditioning, from u = 0, until
// the true residual satisfies ||f - A u||_2 <= tolerance * ||f||_2 (checked on the recomputed
// residual, not only the recurrence's). max_iterations <= 0 means the number of unknowns, CG's
// bound in exact arithmetic.
// Throws std::invalid_argument for sizes that do not match s * s, resolution < 3, a tolerance
// outside (0, 1) or a coefficient that is not finite and positive, and std::runtime_error
// (iterations and residual reached) when CG does not converge: never a silently wrong u.
CgReport solve_darcy(int resolution, std::span<const double> a, std::span<const double> f,
                     std::span<double> u, double tolerance = 1e-8, int max_iterations = 0);

// What to generate: samples i = 0..samples-1 at resolution s. Sample i's random numbers come
// from Random(darcy_sample_seed(seed, i)) alone, so any split of the samples over ranks gives
// the same data.
struct DarcyConfig {
  int samples = 1;
  int resolution = 64;
  std::uint64_t seed = 0;
  double tolerance = 1e-8;  // CG's relative residual
};

// Throws ConfigError whose field() is "samples", "resolution" or "tolerance" (samples >= 1,
// resolution >= 3, samples * s * s values addressable, 0 < tolerance < 1).
void validate(const DarcyConfig& config);

std::uint64_t darcy_sample_seed(std::uint64_t seed, std::uint64_t index);

// One sample in double precision: the field, the coefficient a, the solution u (s * s each).
struct DarcySample {
  std::vector<double> field;
  std::vector<double> a;
  std::vector<double> u;
  CgReport cg;
};
DarcySample darcy_sample(const DarcyConfig& config, std::uint64_t index);

// Ranges over a set of samples; combine() merges those of disjoint sets.
struct DarcyStats {
  double a_min = 0.0, a_max = 0.0;
  double u_min = 0.0, u_max = 0.0;
  int cg_min = 0, cg_max = 0;  // CG iterations per sample
  double max_residual = 0.0;   // the largest relative residual reached
  bool empty = true;
  void add(const DarcySample& sample);
  void combine(const DarcyStats& other);
};

// Samples first..first+count-1 as float32: a and u hold count * s * s values each.
struct DarcyBlock {
  std::size_t first = 0;
  std::size_t count = 0;
  std::vector<float> a;
  std::vector<float> u;
  DarcyStats stats;
};
// validate(config) first; first + count <= config.samples.
DarcyBlock generate_darcy(const DarcyConfig& config, std::size_t first, std::size_t count);

// The contiguous block [first, first + count) of `total` items that part `part` of `parts`
// takes: the first total % parts parts take one more than the others.
std::pair<std::size_t, std::size_t> contiguous_block(std::size_t total, int parts, int part);

}  // namespace meshtrain
