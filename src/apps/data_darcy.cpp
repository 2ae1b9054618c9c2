#include "data_darcy.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "meshtrain/cli/parse.hpp"
#include "meshtrain/clock.hpp"
#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/data/darcy.hpp"
#include "meshtrain/data/npy.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/runtime/distributed_manager.hpp"
#include "root_io.hpp"

namespace meshtrain::app {

namespace {

namespace fs = std::filesystem;

constexpr const char* kOutputFlag = "-o";

// The flag that sets each field of DarcyConfig, for the library's errors.
const std::map<std::string, std::string> kFlagOfField = {
    {"samples", "--samples"}, {"resolution", "--resolution"}, {"tolerance", "--tolerance"}};

constexpr const char* kDarcyFooter =
    "x = a, 12 where a Gaussian random field N(0, (-Laplacian + 9 I)^-2) is >= 0 and 3\n"
    "elsewhere; y = u, the solution of -div(a grad u) = 1 on the unit square with u = 0 on its\n"
    "boundary (5-point finite differences, conjugate gradients). Writes DIR/x.npy and\n"
    "DIR/y.npy, float32 of shape (N, S, S, 1), value [n, i, j, 0] at (i, j) / (S - 1). The\n"
    "ranks split the samples; any rank count writes the same bytes.\n"
    "\n"
    "EXIT CODES\n"
    "  0   the files were written\n"
    "  1   internal error, e.g. a sample whose solve did not converge (the failing rank\n"
    "      reports it and the job is aborted)\n"
    "  2   bad input: a flag, or an output directory that cannot be made or written\n";

// The same checks on every rank (they read nothing but the flags), before any collective.
DarcyConfig parse_config(const DarcyOptions& options) {
  DarcyConfig config;
  config.samples = cli::parse_int("--samples", options.samples);
  config.resolution = cli::parse_int("--resolution", options.resolution);
  config.seed = cli::parse_uint64("--seed", options.seed);
  config.tolerance = cli::parse_double("--tolerance", options.tolerance);
  try {
    validate(config);
  } catch (const ConfigError& e) {
    throw ConfigError(cli::with_flag_name(e, kFlagOfField));
  }
  return config;
}

[[noreturn]] void bad_output(const std::string& dir, const std::string& why) {
  throw ConfigError(kOutputFlag, "'" + dir + "': " + why);
}

// Rank 0: whether it can hold what it writes (x and y, float32), so that a set too large for
// the machine is one clear error rather than a failed allocation after the other ranks
// have computed their blocks.
void check_output_fits(const DarcyConfig& config) {
  const double bytes = 2.0 * sizeof(float) * config.samples * config.resolution *
                       static_cast<double>(config.resolution);
  const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return;  // unknown: let the allocation decide
  const double memory = static_cast<double>(pages) * static_cast<double>(page_size);
  if (bytes > memory) {
    char text[160];
    std::snprintf(text, sizeof text,
                  "%d: x and y of %d x %d samples take %.3g GiB, more than the %.3g GiB of "
                  "rank 0's machine",
                  config.samples, config.resolution, config.resolution, bytes / (1 << 30),
                  memory / (1 << 30));
    throw ConfigError("--samples", text);
  }
}

// Rank 0: makes DIR and proves that a file can be created in it, so that a bad -o fails
// before the samples are computed rather than after.
void prepare_output(const std::string& dir) {
  if (dir.empty()) bad_output(dir, "an empty path");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) bad_output(dir, "cannot create the directory: " + ec.message());
  if (!fs::is_directory(dir, ec)) bad_output(dir, "exists and is not a directory");
  std::string probe = (fs::path(dir) / ".meshtrain-probe-XXXXXX").string();
  const int fd = ::mkstemp(probe.data());
  if (fd < 0) bad_output(dir, std::string("cannot write there: ") + std::strerror(errno));
  ::close(fd);
  fs::remove(probe, ec);
}

// Rank 0's output: all samples, in order.
struct Gathered {
  std::vector<float> x;
  std::vector<float> y;
};

// Collective: rank 0 receives every rank's block. The communicator gathers equal counts, so
// the ranks exchange one sample each per round (a rank whose block is used up sends padding
// that rank 0 skips): the other ranks never hold more than one sample per rank beyond their own.
Gathered gather_samples(Communicator& world, const DarcyConfig& config, const DarcyBlock& mine) {
  const int ranks = world.size();
  const std::size_t per_sample =
      static_cast<std::size_t>(config.resolution) * static_cast<std::size_t>(config.resolution);
  const auto total = static_cast<std::size_t>(config.samples);
  const std::size_t rounds = contiguous_block(total, ranks, 0).second;  // the largest block
  const bool root = world.rank() == 0;
  Gathered out;
  if (root) {
    out.x.resize(total * per_sample);
    out.y.resize(total * per_sample);
  }
  std::vector<float> send(2 * per_sample), receive(static_cast<std::size_t>(ranks) * send.size());
  for (std::size_t round = 0; round < rounds; ++round) {
    if (round < mine.count) {
      const auto offset = static_cast<std::ptrdiff_t>(round * per_sample);
      std::copy_n(mine.a.begin() + offset, per_sample, send.begin());
      std::copy_n(mine.u.begin() + offset, per_sample, send.begin() + per_sample);
    }
    world.all_gather(send.data(), receive.data(), send.size(), DataType::Float32);
    if (!root) continue;
    for (int rank = 0; rank < ranks; ++rank) {
      const auto [first, count] = contiguous_block(total, ranks, rank);
      if (round >= count) continue;
      const float* piece = receive.data() + static_cast<std::size_t>(rank) * 2 * per_sample;
      const std::size_t at = (first + round) * per_sample;
      std::copy_n(piece, per_sample, out.x.begin() + static_cast<std::ptrdiff_t>(at));
      std::copy_n(piece + per_sample, per_sample, out.y.begin() + static_cast<std::ptrdiff_t>(at));
    }
  }
  return out;
}

// Collective: the ranges over every rank's samples (ranks without samples add nothing).
DarcyStats combine_stats(Communicator& world, const DarcyStats& mine) {
  constexpr double kNone = -std::numeric_limits<double>::infinity();
  std::vector<double> v = mine.empty ? std::vector<double>(7, kNone)
                                     : std::vector<double>{-mine.a_min,
                                                           mine.a_max,
                                                           -mine.u_min,
                                                           mine.u_max,
                                                           -static_cast<double>(mine.cg_min),
                                                           static_cast<double>(mine.cg_max),
                                                           mine.max_residual};
  world.allreduce(std::span<double>(v), ReduceOp::Max);
  DarcyStats all;
  all.a_min = -v[0];
  all.a_max = v[1];
  all.u_min = -v[2];
  all.u_max = v[3];
  all.cg_min = static_cast<int>(-v[4]);
  all.cg_max = static_cast<int>(v[5]);
  all.max_residual = v[6];
  all.empty = false;
  return all;
}

void write_files(const std::string& dir, const DarcyConfig& config, const Gathered& data) {
  const auto s = static_cast<std::size_t>(config.resolution);
  const std::vector<std::size_t> shape = {static_cast<std::size_t>(config.samples), s, s, 1};
  try {
    write_npy((fs::path(dir) / "x.npy").string(), shape, data.x.data());
    write_npy((fs::path(dir) / "y.npy").string(), shape, data.y.data());
  } catch (const std::runtime_error& e) {
    throw ConfigError(kOutputFlag, "'" + dir + "': " + e.what());
  }
}

}  // namespace

CLI::App* add_data_command(CLI::App& app, DarcyOptions& options) {
  CLI::App* data = app.add_subcommand("data", "Generate a data set (run under mpirun like train)");
  data->require_subcommand(1);
  CLI::App* darcy = data->add_subcommand(
      "darcy", "Darcy flow samples for the Fourier Neural Operator (Li et al. 2020)");
  darcy->add_option("-n,--samples", options.samples, "Number of samples N (at least 1)")
      ->required()
      ->type_name("N");
  darcy->add_option("-s,--resolution", options.resolution,
                    "Grid points per side s (at least 3), nodes at i / (s - 1)")
      ->required()
      ->type_name("S");
  darcy->add_option("--seed", options.seed, "Seed; sample i depends on (seed, i) only")
      ->type_name("K")
      ->default_str(options.seed);
  darcy->add_option("--tolerance", options.tolerance,
                    "Relative residual at which conjugate gradients stop")
      ->type_name("TOL")
      ->default_str(options.tolerance);
  darcy->add_option("-o,--output", options.output, "Directory to write (created if needed)")
      ->required()
      ->type_name("DIR");
  darcy->footer(kDarcyFooter);
  return data;
}

int run_data_darcy(DistributedManager& dm, const DarcyOptions& options) {
  Communicator& world = dm.world();
  const bool root = world.rank() == 0;
  const DarcyConfig config = parse_config(options);
  on_root_sharing_errors(world, [&] {
    check_output_fits(config);
    prepare_output(options.output);
  });

  const double start = now_seconds();
  const auto [first, count] =
      contiguous_block(static_cast<std::size_t>(config.samples), world.size(), world.rank());
  const DarcyBlock mine = generate_darcy(config, first, count);
  const Gathered data = gather_samples(world, config, mine);
  const DarcyStats stats = combine_stats(world, mine.stats);
  on_root_sharing_errors(world, [&] { write_files(options.output, config, data); });
  const double seconds = now_seconds() - start;

  if (root) {
    std::printf(
        "meshtrain: darcy: %d samples at %d x %d on %d rank(s) in %.3g s: a in [%g, %g], u in "
        "[%.6g, %.6g], CG iterations %d to %d (relative residual <= %.3g); wrote %s/x.npy and "
        "%s/y.npy\n",
        config.samples, config.resolution, config.resolution, world.size(), seconds,
        stats.a_min, stats.a_max, stats.u_min, stats.u_max, stats.cg_min, stats.cg_max,
        stats.max_residual, options.output.c_str(), options.output.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace meshtrain::app
