// meshtrain: the command line.
//   meshtrain train --config run.toml [--set KEY=VALUE ...] [--resume auto|latest|PATH]
//   meshtrain plot metrics.csv [-o loss.png]
//   meshtrain triage DIR            (the flight recorder's dumps of a run)
//   meshtrain consolidate INDEX     (a sharded checkpoint as one file)
//   meshtrain data darcy --samples N --resolution S [--seed K] -o DIR
// Launch `train` and `data` with mpirun (or launch/mpirun.sh); every rank runs the same
// command.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "meshtrain/cli/parse.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/trace.hpp"
#include "meshtrain/meshtrain.hpp"
#include "meshtrain/train/checkpoint_state.hpp"
#include "data_darcy.hpp"
#include "plot_metrics.hpp"
#include "root_io.hpp"
#include "run_checkpoints.hpp"
#include "run_config.hpp"
#include "run_report.hpp"
#include "training_data.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::app;

// EX_TEMPFAIL from sysexits.h: the run was stopped by a signal after writing a checkpoint;
// a scheduler or wrapper script resubmits it with --resume latest.
constexpr int kExitPreempted = 75;

constexpr const char* kExitCodes =
    "EXIT CODES\n"
    "  0   trained to the end\n"
    "  1   internal error (the failing rank reports it and the job is aborted)\n"
    "  2   bad input: command line, config, data, checkpoint, a model too large for the\n"
    "      memory, or a run directory that cannot be written, lacks space, or holds another\n"
    "      run's checkpoints (one line from rank 0, before any training); or a checkpoint\n"
    "      that could not be written during the run (the previous one is intact)\n"
    "  3   the training diverged (NaN/Inf loss with training.nonfinite = \"abort\")\n"
    "  75  preempted by SIGTERM or SIGUSR1: a checkpoint was written; resubmit with\n"
    "      --resume latest or --resume auto (EX_TEMPFAIL)\n";

// Raised by SIGTERM or SIGUSR1 (a scheduler's warning before the end of an allocation);
// the trainer polls it at every step and stops every rank after the same one.
volatile std::sig_atomic_t g_stop_requested = 0;

extern "C" void request_stop(int) { g_stop_requested = 1; }

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = request_stop;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // file writes in progress carry on
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGUSR1, &action, nullptr);
}

// How `train` shows its epochs: the program's own choice, with a table as the library's have.
enum class Display { Auto, Bar, Lines };
constexpr Choice<Display> kDisplayChoices[] = {
    {Display::Auto, "auto",
     "a progress bar redrawn in place when stdout is a terminal; under mpirun, whose ranks "
     "always see one, only when MESHTRAIN_STDOUT_IS_TTY=1"},
    {Display::Bar, "bar", ""},
    {Display::Lines, "lines", "one line per epoch only"},
};
constexpr std::span<const Choice<Display>> choice_table(Display) { return kDisplayChoices; }

struct TrainOptions {
  std::string config;
  std::vector<std::string> sets;
  std::string resume;
  std::string progress = name_of(Display::Auto);
  std::string trace;
};

struct PlotOptions {
  std::string metrics;
  std::string output;
  std::string title = "meshtrain: loss";
};

struct TriageOptions {
  std::string dir;
  bool quiet = false;
};

struct ConsolidateOptions {
  std::string index;
  std::string output;
};

struct CommandLine {
  CLI::App app{
      "meshtrain: distributed training of MLPs with MPI and Kokkos.\n"
      "Run `train` under mpirun (or launch/mpirun.sh) -np N: every rank runs the same "
      "command.",
      "meshtrain"};
  CLI::App* train = nullptr;
  CLI::App* plot = nullptr;
  CLI::App* data = nullptr;
  CLI::App* triage = nullptr;
  CLI::App* consolidate = nullptr;
  TrainOptions train_options;
  ConsolidateOptions consolidate_options;
  PlotOptions plot_options;
  TriageOptions triage_options;
  DarcyOptions darcy_options;

  CommandLine() {
    app.require_subcommand(1);
    app.footer(kExitCodes);
    train = app.add_subcommand("train", "Train from a TOML run description");
    TrainOptions& t = train_options;
    train->add_option("-c,--config", t.config, "The run description (TOML; see below)")
        ->required()
        ->type_name("PATH");
    train
        ->add_option("--set", t.sets,
                     "Override one setting, e.g. --set training.batch_size=64 (repeatable)")
        ->type_name("SECTION.KEY=VALUE")
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    train
        ->add_option("--resume", t.resume,
                     "Continue from a checkpoint: 'latest' (the newest in checkpoint.dir; there "
                     "must be one), 'auto' (the newest if checkpoint.dir holds one, else start "
                     "fresh: for job scripts that are resubmitted) or a file; the run's settings "
                     "and training data must match those that wrote it")
        ->type_name("auto|latest|PATH");
    train
        ->add_option("--trace", t.trace,
                     "Write a Chrome trace (chrome://tracing, Perfetto) of steps, layers and "
                     "collectives: one file per rank, FILE with .rank<R> before its extension")
        ->type_name("FILE");
    train
        ->add_option("--progress", t.progress, choice_help<Display>())
        ->check(CLI::IsMember(choice_names<Display>()))
        ->default_str(t.progress);
    train->footer(config_reference() + "\n" + kExitCodes);

    plot = app.add_subcommand("plot", "Draw train and validation loss against epoch (gnuplot)");
    PlotOptions& p = plot_options;
    plot->add_option("metrics", p.metrics, "A run's metrics.csv (in output.dir)")
        ->required()
        ->type_name("METRICS.csv");
    plot->add_option("-o,--output", p.output, "The PNG to write (default: METRICS with .png)")
        ->type_name("PNG");
    plot->add_option("--title", p.title, "Title of the plot")->default_str(p.title);

    data = add_data_command(app, darcy_options);

    triage = app.add_subcommand(
        "triage",
        "Read a run's flight recorder dumps (flight-rank<R>.bin in output.dir, else "
        "checkpoint.dir) and name the first collective on which the ranks diverge and the rank "
        "that is missing, lagging or calling something else");
    triage->add_option("dir", triage_options.dir, "The directory holding the dumps")
        ->required()
        ->type_name("DIR");
    triage->add_flag("-q,--quiet", triage_options.quiet, "Only the verdict, no per-rank lines");
    consolidate = app.add_subcommand(
        "consolidate",
        "Write a sharded checkpoint (its index, DIR/PREFIX-STEP.safetensors) as one "
        "single-file checkpoint: the whole model's tensors params/NAME, adam/mu/NAME, "
        "adam/nu/NAME, for safetensors' own tools and other frameworks (--resume takes "
        "either)");
    consolidate->add_option("index", consolidate_options.index, "The sharded checkpoint's index")
        ->required()
        ->type_name("INDEX.safetensors");
    consolidate
        ->add_option("-o,--output", consolidate_options.output,
                     "The file to write (default: INDEX with .consolidated.safetensors)")
        ->type_name("OUT.safetensors");
    triage->footer(
        "EXIT CODES\n"
        "  0   consistent: every group's ranks called the same collectives\n"
        "  1   a culprit: a rank that never reached a collective the others entered, called\n"
        "      another one, or left no dump\n"
        "  2   no dumps in DIR, or one that cannot be read (one line)\n");
  }
};

bool stdout_is_terminal() {
  if (const char* forced = std::getenv("MESHTRAIN_STDOUT_IS_TTY"))
    return std::string(forced) == "1";
  // Open MPI gives its ranks a pseudo-terminal even when mpirun's own output is a file.
  if (DistributedManager::started_by_launcher()) return false;
  return ::isatty(STDOUT_FILENO) != 0;
}

// Library ConfigErrors name a config field (batch_size); say where the run set it.
template <class F>
auto locating_errors(const RunConfig& config, F&& work) {
  try {
    return work();
  } catch (const ConfigError& e) {
    throw ConfigError(locate_library_error(config, e));
  }
}

// The metrics files' size at the end of the run, generously: two lines of about 200
// characters an epoch, plus the header.
std::uint64_t metrics_bytes_estimate(int num_epochs) {
  return 4096 + 2 * 256 * static_cast<std::uint64_t>(std::max(num_epochs, 0));
}

std::string widths_text(const std::vector<int>& widths) {
  std::string out = "[";
  for (std::size_t i = 0; i < widths.size(); ++i)
    out += (i ? ", " : "") + std::to_string(widths[i]);
  return out + "]";
}

// [model]'s FNO on the data's grid and channels.
FnoConfig fno_config(const RunConfig& config, const TrainingData& data) {
  const ModelSettings& m = config.model;
  FnoConfig fno;
  fno.s1 = static_cast<int>(data.x_sample_shape.at(0));
  fno.s2 = static_cast<int>(data.x_sample_shape.at(1));
  fno.in_channels = static_cast<int>(data.x_sample_shape.at(2));
  fno.out_channels = static_cast<int>(data.y_sample_shape.at(2));
  fno.modes1 = fno.modes2 = m.modes;
  fno.width = m.width;
  fno.layers = m.layers;
  fno.projection = m.projection;
  fno.seed = config.training.seed;
  return fno;
}

// The model [model] describes; an FNO takes its grid and channels from the data.
Model described_model(const RunConfig& config, const TrainingData& data) {
  const ModelSettings& m = config.model;
  if (m.type == ModelType::Mlp) return Mlp(m.widths, m.activation, config.training.seed);
  return make_fno2d(fno_config(config, data));
}

// ... with the output decoder of normalised data after it.
Model build_model(const RunConfig& config, const TrainingData& data) {
  Model model = described_model(config, data);
  if (data.output_decoder) {
    model.append_fixed(
        std::make_unique<FeatureAffine>(data.output_decoder->scale, data.output_decoder->mean));
  }
  return model;
}

// Before the model is built: a run (its model with gradients, optimizer state and
// activations, and its data) that cannot fit in the node's memory is refused naming the key
// that sized its largest part. data: the data as loaded; nullptr for synthetic data before
// it is generated (an MLP's: its host and device copies are both still to come).
void check_memory(const RunConfig& config, const TrainingData* data, const ProcessGroups& groups,
                  int ranks_on_node) {
  const ModelSettings& m = config.model;
  if (!data && m.type != ModelType::Mlp) return;
  // Sharded loading holds no set: its few batches are checked against data.max_resident_bytes.
  const std::size_t samples =
      data ? (data->sharded() ? 0 : data->samples + data->held_out_samples)
           : static_cast<std::size_t>(config.data.samples);
  const std::size_t features = data ? data->features
                                    : 2 * (static_cast<std::size_t>(config.data.dim) + 1);
  const MemoryLayout layout = memory_layout(groups, config.training.batch_size, samples, features);
  std::string key, value;
  MemoryEstimate estimate;
  if (m.type == ModelType::Mlp) {
    estimate = estimate_mlp_memory(m.widths, config.training.optimizer, layout);
    key = "model.widths";
    for (const char* given : {"model.widths", "model.hidden", "model.layers"}) {
      if (config.origins.count(given)) {
        key = given;
        break;
      }
    }
    value = widths_text(m.widths);
  } else {
    estimate = estimate_fno_memory(fno_config(config, *data), config.training.optimizer, layout);
    key = "model.width";
    value = std::to_string(m.width);
  }
  const auto shortfall =
      memory_shortfall(estimate, available_memory_per_rank(ranks_on_node));
  if (!shortfall) return;
  if (estimate.largest() == MemoryEstimate::Part::Activations) {
    key = "training.batch_size";
    value = std::to_string(config.training.batch_size);
  } else if (estimate.largest() == MemoryEstimate::Part::Data) {
    key = config.data.synthetic.empty() ? "data.train_x" : "data.samples";
    value = config.data.synthetic.empty() ? config.data.train_x : std::to_string(config.data.samples);
  }
  throw ConfigError(config.where(key) + " " + value + ": " + *shortfall);
}

std::string model_text(const RunConfig& config, const TrainingData& data) {
  const ModelSettings& m = config.model;
  if (m.type == ModelType::Mlp) {
    return "widths " + widths_text(m.widths) + ", " + name_of(m.activation);
  }
  return "fno on a " + std::to_string(data.x_sample_shape[0]) + " x " +
         std::to_string(data.x_sample_shape[1]) + " grid, modes " + std::to_string(m.modes) +
         ", width " + std::to_string(m.width) + ", " + std::to_string(m.layers) +
         " Fourier layers, projection " + std::to_string(m.projection);
}

std::string mib(std::size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return text;
}

// The bytes of data this rank holds: the trainer's, and in memory the sets' host copies.
std::size_t host_set_bytes(const TrainingData& data) {
  std::size_t floats = 0;
  for (const HostMatrix* m : {&data.x, &data.y, &data.val_x, &data.val_y, &data.test_x, &data.test_y}) {
    floats += m->span();
  }
  return floats * sizeof(float);
}

std::string data_bytes_text(const DataBytes& d, std::size_t host_sets) {
  return std::to_string(d.total() + host_sets) + " (" + mib(d.total() + host_sets) + ": sets " +
         std::to_string(d.sets + host_sets) + ", batch buffers " + std::to_string(d.batches) +
         ", permutation " + std::to_string(d.order) + ")";
}

// data.max_resident_bytes against what this rank holds (the same on every rank).
void check_data_cap(const RunConfig& config, std::size_t held, const std::string& what) {
  const std::int64_t cap = config.data.max_resident_bytes;
  if (cap <= 0 || held <= static_cast<std::size_t>(cap)) return;
  std::string hint;
  if (config.data.loading == DataLoading::Memory) {
    hint = config.data.synthetic.empty()
               ? "; data.loading = \"sharded\" holds only the rows of a few batches"
               : "; synthetic data is held in memory";
  }
  throw ConfigError(config.where("data.max_resident_bytes") + " " + std::to_string(cap) +
                    ": each rank would hold " + what + " of data, more than this limit" + hint);
}

// The most any rank has had resident (VmHWM of /proc/self/status), in bytes; 0 if unknown.
std::size_t peak_resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  std::size_t kib = 0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::sscanf(line, "VmHWM: %zu kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib * 1024;
}

void print_header(const RunConfig& config, const Trainer& trainer, const DistributedManager& dm,
                  const TrainingData& data, const std::optional<ResumePoint>& resumed,
                  const std::vector<std::string>& set_aside) {
  const TrainingConfig& t = trainer.config();
  const DistributedConfig& d = t.distributed_config;
  const Model& model = trainer.model();
  std::printf("meshtrain: %s\n", config.source.c_str());
  std::printf("Ranks:       %d (%s, gradient collectives over %s)\n", dm.size(),
              dm.backend_name().c_str(), trainer.gradient_backend().c_str());
  std::printf("Mesh:        shape %s, axes %s, strategy %s\n", format_shape(d.mesh_shape).c_str(),
              format_axis_names(d.mesh_axis_names).c_str(), name_of(d.strategy).c_str());
  std::printf("Model:       %s, %zu parameters, loss %s\n", model_text(config, data).c_str(),
              model.num_parameters(), name_of(t.loss).c_str());
  std::printf("Data:        %s\n", data.description.c_str());
  std::printf("Memory:      state %s per rank; data %s per rank\n",
              format_state_bytes(trainer.state_bytes()).c_str(),
              data_bytes_text(trainer.data_bytes(), host_set_bytes(data)).c_str());
  const std::string settings = describe_step_settings(t);
  std::printf("Training:    %d epochs of %zu batches, global batch %d, %s, lr %g%s, shuffle %s\n",
              t.num_epochs, trainer.batches_per_epoch(), t.batch_size, name_of(t.optimizer).c_str(),
              t.learning_rate, settings.c_str(), t.shuffle ? "on" : "off");
  const CheckpointSettings& c = config.checkpoint;
  if (c.dir.empty()) {
    std::printf("Checkpoints: off (set checkpoint.dir)\n");
  } else {
    const std::string when = c.every_epochs > 0
                                 ? "every " + std::to_string(c.every_epochs) + " epoch(s)"
                                 : std::string("at the end and on preemption");
    const std::string keep =
        c.keep_last > 0 ? "the newest " + std::to_string(c.keep_last) : std::string("all");
    const char* format = c.format == CheckpointFormat::Sharded
                             ? "sharded: each rank writes its own values in the background"
                             : "single file: rank 0 writes the gathered state";
    std::printf("Checkpoints: %s/%s-<step>.safetensors, %s, keep %s, %s\n", c.dir.c_str(),
                c.prefix.c_str(), when.c_str(), keep.c_str(), format);
  }
  if (resumed) {
    std::printf("Resumed:     %s at epoch %d, batch %zu\n", resumed->path.c_str(),
                resumed->state.epoch + 1, resumed->state.batch);
  }
  for (const std::string& line : set_aside) std::printf("Set aside:   %s\n", line.c_str());
  std::fflush(stdout);
}

void print_results(const TrainingMetrics& m, const std::string& checkpoint,
                   const std::string& checkpoint_writes,
                   const std::optional<MetricsFiles>& metrics, bool sharded, std::size_t peak) {
  std::printf("Initial loss: %.6f\n", m.initial_loss);
  std::printf("Final loss:   %.6f\n", m.final_loss);
  std::printf("Training time: %.4f s (%lld steps, %.0f steps/s, %.0f samples/s)\n", m.wall_seconds,
              static_cast<long long>(m.steps), m.steps_per_second, m.samples_per_second);
  if (sharded) {
    std::printf("Data wait:    %.4f s (%.1f us per step) reading rows the prefetch had not read\n",
                m.data_wait_seconds,
                m.steps > 0 ? 1e6 * m.data_wait_seconds / static_cast<double>(m.steps) : 0.0);
  }
  if (peak > 0) std::printf("Peak memory:  %s resident on the largest rank (VmHWM)\n", mib(peak).c_str());
  if (!checkpoint.empty()) std::printf("Checkpoint:   %s\n", checkpoint.c_str());
  if (!checkpoint_writes.empty()) std::printf("Checkpoint writes: %s\n", checkpoint_writes.c_str());
  if (metrics) std::printf("Metrics:      %s\n", metrics->csv_path().c_str());
  std::fflush(stdout);
}

// Collective: rank 0 reads the file; every rank parses the same text, so that all of them
// agree on any error.
RunConfig read_run_config(Communicator& world, const TrainOptions& options) {
  std::string text;
  on_root_sharing_errors(world, [&] { text = read_config_file(options.config); });
  broadcast_string(world, text);
  return parse_run_config(options.config, text, options.sets);
}

int train(DistributedManager& dm, const TrainOptions& options) {
  install_stop_handlers();  // before anything slow: a signal during loading stops at step 1
  Communicator& world = dm.world();
  const bool root = dm.rank() == 0;
  const RunConfig config = read_run_config(world, options);

  // The mesh first: a config that does not fit the job fails before the model is built.
  const auto groups = locating_errors(
      config, [&] { return dm.process_groups(config.training.distributed_config); });
  const bool synthetic = !config.data.synthetic.empty();
  if (synthetic) check_memory(config, nullptr, *groups, dm.local_size());  // before generating it
  const TrainingData data = load_training_data(config, world);
  if (!data.sharded()) {  // before anything more is allocated
    check_data_cap(config, host_set_bytes(data), std::to_string(host_set_bytes(data)) + " bytes");
  }
  if (!synthetic) check_memory(config, &data, *groups, dm.local_size());
  Model model = locating_errors(config, [&] { return build_model(config, data); });
  Trainer trainer = locating_errors(
      config, [&] { return Trainer(std::move(model), config.training, groups); });
  RunCheckpoints checkpoints(config, data, world);
  const std::size_t samples = data.samples;
  locating_errors(config, [&] {
    if (data.sharded()) {
      trainer.prepare(data.train_source);
      if (data.val_source) trainer.set_validation_data(data.val_source);
      if (data.test_source) trainer.set_test_data(data.test_source);
    } else {
      trainer.prepare(data.x, data.y);
      if (data.has_validation()) trainer.set_validation_data(data.val_x, data.val_y);
      if (data.has_test()) trainer.set_test_data(data.test_x, data.test_y);
    }
  });
  check_data_cap(config, trainer.data_bytes().total() + host_set_bytes(data),
                 data_bytes_text(trainer.data_bytes(), host_set_bytes(data)) + " bytes");

  // Before any training: the run's directories (the output first: checking the checkpoints
  // may move another run's aside), and what the run continues.
  if (!config.output.dir.empty()) {
    on_root_sharing_errors(world, [&] {
      // The flight recorder's files too: every rank's, in case they share the directory.
      const std::uint64_t flight_bytes =
          groups->flight() ? groups->flight()->file_bytes() * static_cast<std::uint64_t>(dm.size())
                           : 0;
      prepare_output_directory(config.where("output.dir"), config.output.dir,
                               metrics_bytes_estimate(config.training.num_epochs) + flight_bytes,
                               groups->flight() ? "metrics.csv, metrics.jsonl and flight-rank*.bin"
                                                : "metrics.csv and metrics.jsonl");
    });
  }
  const std::optional<ResumePoint> resumed = checkpoints.start(options.resume, trainer, samples);
  if (resumed) {
    if (resumed->local)
      trainer.restore(resumed->state, *resumed->local);  // a sharded checkpoint, resharded
    else
      trainer.restore(resumed->state);
  }
  std::vector<std::string> set_aside;
  if (!checkpoints.set_aside().empty()) {
    set_aside.push_back("another run's checkpoints, moved to " + checkpoints.set_aside() +
                        " (checkpoint.overwrite)");
  }
  std::optional<MetricsFiles> metrics;
  if (!config.output.dir.empty()) {
    on_root_sharing_errors(world, [&] {
      // A fresh run starts the metrics anew: an earlier run's are moved, never overwritten.
      if (const auto earlier = MetricsFiles::existing(config.output.dir); !resumed && !earlier.empty()) {
        try {
          set_aside.push_back("the earlier metrics, moved to " + move_files_aside(config.output.dir, earlier));
        } catch (const ConfigError& e) {
          throw ConfigError(config.where("output.dir") + ": " + e.what());
        }
      }
      metrics.emplace(config.output.dir, resumed ? resumed->state.epoch : 0);
    });
  }
  // The flight recorder's ring becomes a file of the run directory, written as it records.
  const std::string flight_dir = !config.output.dir.empty() ? config.output.dir : config.checkpoint.dir;
  if (FlightRecorder* flight = groups->flight(); flight && !flight_dir.empty()) {
    try {
      flight->persist(flight_dir);
    } catch (const std::runtime_error& e) {
      throw ConfigError(config.where(config.output.dir.empty() ? "checkpoint.dir" : "output.dir") +
                        ": " + e.what());
    }
  }
  if (root) print_header(config, trainer, dm, data, resumed, set_aside);
  if (root && groups->flight() && !flight_dir.empty()) {
    std::printf("Flight:      %s/flight-rank<R>.bin, each rank's last %zu collectives "
                "(meshtrain triage %s)\n",
                flight_dir.c_str(), groups->flight()->capacity(), flight_dir.c_str());
    std::fflush(stdout);
  }

  const Display display = parse_choice<Display>("--progress", options.progress);
  const bool bar = display == Display::Bar || (display == Display::Auto && stdout_is_terminal());
  ProgressPrinter progress(bar, resumed ? resumed->state.epoch : 0);
  const int every = config.checkpoint.every_epochs;
  trainer.set_epoch_callback([&](const EpochReport& report) {
    std::string metrics_error;
    if (root) {
      progress.epoch(report);
      try {
        if (metrics) metrics->append(report);
      } catch (const std::runtime_error& e) {  // the disk filled up during the run
        metrics_error = e.what();
      }
    }
    if (!config.output.dir.empty()) {  // every rank leaves at the same epoch, rank 0 says why
      broadcast_string(world, metrics_error);
      if (!metrics_error.empty()) throw ConfigError(config.where("output.dir") + ": " + metrics_error);
    }
    if (checkpoints.enabled() && every > 0 && (report.epoch + 1) % every == 0) {
      checkpoints.save(trainer, samples, /*wait=*/false);  // collective; written in the background
    }
  });
  trainer.set_stop_flag(&g_stop_requested);

  // Checked before training, the same on every rank: the trace is written at the end.
  std::unique_ptr<Tracer> tracer;
  std::string trace_path;
  if (!options.trace.empty()) {
    trace_path = Tracer::rank_path(options.trace, dm.rank());
    on_root_sharing_errors(world, [&] {
      std::FILE* probe = std::fopen(Tracer::rank_path(options.trace, 0).c_str(), "w");
      if (!probe) {
        throw ConfigError("--trace", options.trace + ": cannot write " +
                                         Tracer::rank_path(options.trace, 0) + ": " +
                                         std::strerror(errno));
      }
      std::fclose(probe);
    });
    tracer = std::make_unique<Tracer>(std::size_t{1} << 18);
    tracer->activate();
  }

  const FitResult result = trainer.fit();
  if (tracer) {
    tracer->deactivate();
    tracer->write(trace_path, dm.rank());
    if (root) {
      std::printf("Trace:        %s (%zu events on rank 0%s)\n",
                  Tracer::rank_path(options.trace, 0).c_str(), tracer->size(),
                  tracer->dropped() ? (", " + std::to_string(tracer->dropped()) +
                                       " dropped: the buffer was full").c_str()
                                    : "");
      std::fflush(stdout);
    }
  }
  if (root) progress.finish();
  const TrainingMetrics& m = result.metrics;
  const bool finished =
      m.epoch_losses.size() >= static_cast<std::size_t>(config.training.num_epochs);
  const TrainingState state = trainer.position();
  const std::string checkpoint = checkpoints.save(trainer, samples);

  if (m.stopped && !finished) {
    if (root) {
      std::printf("meshtrain: preempted at epoch %d batch %zu; %s; resubmit with --resume latest\n",
                  state.epoch + 1, state.batch,
                  checkpoint.empty() ? "no checkpoint (checkpoint.dir is not set)"
                                     : ("checkpoint " + checkpoint).c_str());
      std::fflush(stdout);
    }
    // Every rank leaves only once rank 0 has written and said so: the launcher may end the
    // job as soon as one rank exits with a non-zero code.
    world.barrier();
    return kExitPreempted;
  }
  std::int64_t peak = static_cast<std::int64_t>(peak_resident_bytes());
  world.allreduce(std::span<std::int64_t>(&peak, 1), ReduceOp::Max);
  // The sharded writes: how long training was held up (the slowest rank) against how long
  // the writes took to publish (rank 0, from the start to the index's rename).
  std::string writes;
  if (checkpoints.writes() > 0) {
    double blocked = checkpoints.blocked_seconds();
    world.allreduce(std::span<double>(&blocked, 1), ReduceOp::Max);
    const double written = checkpoints.write_seconds();
    char text[256];
    std::snprintf(text, sizeof text,
                  "%d sharded, %.1f ms of writing in all; training held up %.1f ms (%.1f %%, "
                  "the slowest rank's copies to the host)",
                  checkpoints.writes(), 1e3 * written, 1e3 * blocked,
                  written > 0 ? 100.0 * blocked / written : 0.0);
    writes = text;
  }
  if (root) print_results(m, checkpoint, writes, metrics, data.sharded(), static_cast<std::size_t>(peak));
  world.barrier();
  return 0;
}

int plot(const PlotOptions& options) {
  std::string output = options.output;
  if (output.empty()) {
    const auto dot = options.metrics.rfind('.');
    const auto slash = options.metrics.rfind('/');
    const bool has_suffix = dot != std::string::npos && (slash == std::string::npos || dot > slash);
    output = (has_suffix ? options.metrics.substr(0, dot) : options.metrics) + ".png";
  }
  plot_metrics(options.metrics, output, options.title);
  std::printf("meshtrain: wrote %s\n", output.c_str());
  return 0;
}

// `triage` is a single process: no MPI.
int triage(const TriageOptions& options) {
  TriageReport report;
  try {
    report = triage_flight_directory(options.dir);
  } catch (const std::runtime_error& e) {
    std::fprintf(stderr, "meshtrain: error: %s\n", e.what());
    return 2;
  }
  if (report.code == 2) {
    std::fprintf(stderr, "meshtrain: error: %s\n", report.finding.c_str());
    return 2;
  }
  std::printf("%s\n", report.finding.c_str());
  if (!options.quiet) {
    for (const std::string& line : report.details) std::printf("  %s\n", line.c_str());
  }
  std::fflush(stdout);
  return report.code;
}

// `consolidate` is a single process: no MPI.
int consolidate(const ConsolidateOptions& options) {
  std::string output = options.output;
  if (output.empty()) {
    constexpr std::string_view suffix = ".safetensors";
    std::string_view stem = options.index;
    if (stem.size() > suffix.size() && stem.ends_with(suffix)) stem.remove_suffix(suffix.size());
    output = std::string(stem) + ".consolidated.safetensors";
  }
  const Checkpoint checkpoint = consolidate_sharded(options.index);
  try {
    write_checkpoint_atomic(output, checkpoint);
  } catch (const std::runtime_error& e) {
    throw ConfigError(e.what());
  }
  std::size_t values = 0;
  for (const CheckpointTensor& t : checkpoint.tensors) values += t.values.size();
  std::printf("meshtrain: wrote %s (%zu tensors, %zu values)\n", output.c_str(), checkpoint.tensors.size(), values);
  return 0;
}

// Parses argv; true when help was printed (by the caller's choice of rank).
bool parse(CommandLine& cli, int argc, char** argv, bool print_help) {
  try {
    cli.app.parse(argc, argv);
    return false;
  } catch (const CLI::CallForHelp&) {
    if (print_help) std::printf("%s", cli.app.help().c_str());
    return true;
  } catch (const CLI::ParseError& e) {
    throw ConfigError(std::string(e.what()) + " (see meshtrain --help)");
  }
}

// `plot`, `triage` and `consolidate` are single processes: no MPI.
int plot_main(int argc, char** argv) {
  try {
    CommandLine cli;
    if (parse(cli, argc, argv, true)) return 0;
    if (*cli.triage) return triage(cli.triage_options);
    if (*cli.consolidate) return consolidate(cli.consolidate_options);
    return plot(cli.plot_options);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "meshtrain: error: %s\n", e.what());
    return 2;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (std::string(argv[1]) == "plot" || std::string(argv[1]) == "triage" ||
                   std::string(argv[1]) == "consolidate")) {
    return plot_main(argc, argv);
  }
  // Before MPI and Kokkos start: a SIGTERM or SIGUSR1 that arrives while they do is kept
  // (the run stops after its first step with a checkpoint) instead of killing the rank.
  // train() installs them again, in case starting MPI replaced them.
  if (argc > 1 && std::string(argv[1]) == "train") install_stop_handlers();
  return meshtrain::cli::run_main("meshtrain", argc, argv, [&](DistributedManager& dm) {
    CommandLine cli;
    if (parse(cli, argc, argv, dm.rank() == 0)) return 0;
    if (*cli.data) return run_data_darcy(dm, cli.darcy_options);
    return train(dm, cli.train_options);
  });
}
