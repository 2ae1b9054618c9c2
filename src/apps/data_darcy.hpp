#pragma once
// `meshtrain data darcy`: Darcy flow samples for neural operators (meshtrain/data/darcy.hpp),
// generated over the ranks of the job and written by rank 0 as DIR/x.npy and DIR/y.npy.
#include <CLI/CLI.hpp>
#include <string>

namespace meshtrain {
class DistributedManager;
}

namespace meshtrain::app {

// The flags as typed; parsed and checked by run_data_darcy, so that errors name them.
struct DarcyOptions {
  std::string samples;
  std::string resolution;
  std::string seed = "0";
  std::string tolerance = "1e-8";
  std::string output;
};

// Adds `data` and its subcommand `darcy` to app; returns `data` (true once parsed when the
// command line chose it).
CLI::App* add_data_command(CLI::App& app, DarcyOptions& options);

// Collective: every rank generates its contiguous block of samples; rank 0 gathers them over
// the world communicator, writes the files and prints one summary line. Bad flags and an
// output directory that cannot be created or written throw ConfigError naming the flag.
int run_data_darcy(DistributedManager& dm, const DarcyOptions& options);

}  // namespace meshtrain::app
