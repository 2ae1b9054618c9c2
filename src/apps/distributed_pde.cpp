// The reference example: Opifex's "Distributed Data-Parallel Training" tutorial in meshtrain.
// A 4 -> 64 -> 1 ReLU MLP learns y = sum(x^2) from normal samples, data-parallel over every
// rank of the job (mpirun -np N distributed_pde).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "meshtrain/cli/parse.hpp"
#include "meshtrain/meshtrain.hpp"

namespace {

using namespace meshtrain;

// The library's ConfigErrors name a config field (ConfigError::field()); these are the flags
// that set them. bucket_bytes is missing on purpose: --bucket-mb is checked here, in its own
// unit, before it becomes bytes.
const std::map<std::string, std::string> kFieldFlags = {
    {"num_epochs", "--epochs"},       {"batch_size", "--batch-size"},
    {"learning_rate", "--lr"},        {"samples", "--samples"},
    {"mesh_shape", "--mesh-shape"},   {"mesh_axis_names", "--axis-names"},
    {"strategy", "--strategy"},       {"optimizer", "--optimizer"},
    {"model widths", "--hidden/--layers"}, {"comm", "--comm"},
    {"collective_timeout", "--collective-timeout"}, {"nonfinite", "--nonfinite"},
    {"progress", "--progress"},       {"schedule", "--schedule"},
    {"grad_comm_dtype", "--grad-comm-dtype"}, {"compute_dtype", "--compute-dtype"},
    {"warmup_steps", "--warmup-steps"}, {"warmup_initial_learning_rate", "--warmup-initial-lr"},
    {"decay_steps", "--decay-steps"}, {"min_learning_rate", "--min-lr"},
    {"step_size", "--step-size"},     {"gamma", "--gamma"},
    {"clip_grad_norm", "--clip-grad-norm"}, {"accumulation_steps", "--accumulation-steps"},
};

struct Options {
  std::string epochs = "20", batch_size = "32", lr = "1e-3", samples = "256", seed = "0";
  std::string mesh_shape, axis_names;
  // The choices' defaults are the library's, by name.
  std::string strategy = name_of(DistributedConfig{}.strategy);
  std::string optimizer = name_of(TrainingConfig{}.optimizer);
  std::string hidden = "64", layers = "1";
  std::string bucket_mb = "4", overlap = "on";
  std::string progress = name_of(TrainingConfig{}.progress);
  std::string grad_comm_dtype = name_of(TrainingConfig{}.grad_comm_dtype);
  std::string compute_dtype = name_of(TrainingConfig{}.compute_dtype);
  std::string comm = name_of(DistributedConfig{}.comm);
  std::string collective_timeout = "600";
  std::string nonfinite = name_of(TrainingConfig{}.nonfinite);
  bool debug_collectives = false;
  std::string schedule = name_of(TrainingConfig{}.schedule);
  std::string warmup_steps = "0", warmup_initial_lr = "0", decay_steps = "0", min_lr = "0";
  std::string step_size = "0", gamma = "0.1";
  std::string clip_grad_norm = "0", accumulation_steps = "1";
};

void add_options(CLI::App& app, Options& o) {
  app.add_option("--epochs", o.epochs, "Training epochs")->default_str(o.epochs);
  app.add_option("--batch-size", o.batch_size, "Global batch size, split over the 'data' axis")
      ->default_str(o.batch_size);
  app.add_option("--lr", o.lr, "Learning rate")->default_str(o.lr);
  app.add_option("--samples", o.samples, "Training samples (x ~ N(0,1) in 4-D, y = sum x^2)")
      ->default_str(o.samples);
  app.add_option("--seed", o.seed, "Seed for the data and the parameter initialisation")
      ->default_str(o.seed);
  app.add_option("--mesh-shape", o.mesh_shape,
                 "Device mesh shape, e.g. 4 or 2,2 (default: one axis over all ranks)");
  app.add_option("--axis-names", o.axis_names,
                 "Mesh axis names, e.g. data or data,fsdp (default: data)");
  app.add_option("--strategy", o.strategy, "Parallel strategy: " + choice_help<Strategy>())
      ->default_str(o.strategy);
  app.add_option("--optimizer", o.optimizer, "Optimizer: " + choice_help<OptimizerType>())
      ->default_str(o.optimizer);
  app.add_option("--schedule", o.schedule,
                 "Learning rate per optimizer step: " + choice_help<Schedule>())
      ->default_str(o.schedule);
  app.add_option("--warmup-steps", o.warmup_steps,
                 "warmup_cosine, warmup_constant: optimizer steps of linear warmup")
      ->default_str(o.warmup_steps);
  app.add_option("--warmup-initial-lr", o.warmup_initial_lr, "The warmup's first learning rate")
      ->default_str(o.warmup_initial_lr);
  app.add_option("--decay-steps", o.decay_steps,
                 "warmup_cosine: the schedule's optimizer steps, warmup included (0: the run)")
      ->default_str(o.decay_steps);
  app.add_option("--min-lr", o.min_lr, "warmup_cosine: the rate the cosine decays to")
      ->default_str(o.min_lr);
  app.add_option("--step-size", o.step_size, "step: epochs between decays")
      ->default_str(o.step_size);
  app.add_option("--gamma", o.gamma, "step: the factor of each decay")->default_str(o.gamma);
  app.add_option("--clip-grad-norm", o.clip_grad_norm,
                 "Scale the gradient down to this global L2 norm when it is larger (0: off)")
      ->default_str(o.clip_grad_norm);
  app.add_option("--accumulation-steps", o.accumulation_steps,
                 "Micro-batches per optimizer step (gradients summed locally, reduced once)")
      ->default_str(o.accumulation_steps);
  app.add_option("--hidden", o.hidden, "Width of each hidden layer")->default_str(o.hidden);
  app.add_option("--layers", o.layers, "Number of hidden layers")->default_str(o.layers);
  app.add_option("--comm", o.comm, "Gradient collectives: " + choice_help<CommBackend>())
      ->default_str(o.comm);
  app.add_option("--collective-timeout", o.collective_timeout,
                 "Seconds a rank may wait in one collective before the watchdog aborts the job "
                 "(0: off)")
      ->default_str(o.collective_timeout);
  app.add_flag("--debug-collectives", o.debug_collectives,
               "Compare every collective across ranks before running it; report mismatches");
  app.add_option("--nonfinite", o.nonfinite,
                 "A step with a NaN/Inf loss or gradient: " + choice_help<NonFinite>())
      ->default_str(o.nonfinite);
  app.add_option("--bucket-mb", o.bucket_mb, "Gradient all-reduce bucket size in MiB")
      ->default_str(o.bucket_mb);
  app.add_option("--overlap", o.overlap,
                 "on: start each bucket's all-reduce during backward; off: after backward")
      ->default_str(o.overlap);
  app.add_option("--grad-comm-dtype", o.grad_comm_dtype,
                 "The gradient all-reduce's format: " + choice_help<Dtype>() +
                     " (weights, accumulation and optimizer state stay fp32; strategy data only)")
      ->default_str(o.grad_comm_dtype);
  app.add_option("--compute-dtype", o.compute_dtype,
                 "The gemms of forward and backward: bf16 rounds their operands and sums in "
                 "fp32 (weights, activations and optimizer state stay fp32)")
      ->default_str(o.compute_dtype);
  app.add_option("--progress", o.progress,
                 "How overlapped MPI all-reduces advance: " + choice_help<Progress>())
      ->default_str(o.progress);
}

// The run the options describe: every value parsed and checked, naming its flag.
struct Run {
  TrainingConfig config;
  int samples = 0;
  std::vector<int> widths;
};

Run parse_run(const Options& o) {
  Run run;
  TrainingConfig& config = run.config;
  config.num_epochs = cli::parse_int("--epochs", o.epochs);
  config.batch_size = cli::parse_int("--batch-size", o.batch_size);
  config.learning_rate = cli::parse_double("--lr", o.lr);
  config.seed = cli::parse_uint64("--seed", o.seed);
  config.optimizer = parse_choice<OptimizerType>("--optimizer", o.optimizer);
  config.schedule = parse_choice<Schedule>("--schedule", o.schedule);
  config.warmup_steps = cli::parse_int("--warmup-steps", o.warmup_steps);
  config.warmup_initial_learning_rate = cli::parse_double("--warmup-initial-lr", o.warmup_initial_lr);
  config.decay_steps = cli::parse_int("--decay-steps", o.decay_steps);
  config.min_learning_rate = cli::parse_double("--min-lr", o.min_lr);
  config.step_size = cli::parse_int("--step-size", o.step_size);
  config.gamma = cli::parse_double("--gamma", o.gamma);
  config.clip_grad_norm = cli::parse_double("--clip-grad-norm", o.clip_grad_norm);
  config.accumulation_steps = cli::parse_int("--accumulation-steps", o.accumulation_steps);
  run.samples = cli::parse_int("--samples", o.samples);
  const int hidden = cli::parse_int("--hidden", o.hidden);
  const int layers = cli::parse_int("--layers", o.layers);
  DistributedConfig& dist = config.distributed_config;
  if (!o.mesh_shape.empty()) dist.mesh_shape = cli::parse_int_list("--mesh-shape", o.mesh_shape);
  if (!o.axis_names.empty()) {
    dist.mesh_axis_names = cli::parse_name_list("--axis-names", o.axis_names);
  }
  dist.strategy = parse_choice<Strategy>("--strategy", o.strategy);
  dist.comm = parse_choice<CommBackend>("--comm", o.comm);
  dist.collective_timeout_seconds = cli::parse_double("--collective-timeout", o.collective_timeout);
  dist.debug_collectives = o.debug_collectives;
  config.nonfinite = parse_choice<NonFinite>("--nonfinite", o.nonfinite);
  const double bucket_mb = cli::parse_double("--bucket-mb", o.bucket_mb);
  if (!(bucket_mb > 0) || bucket_mb > 1024) {
    throw ConfigError("--bucket-mb", o.bucket_mb + ": must be in (0, 1024]");
  }
  config.bucket_bytes = static_cast<std::size_t>(bucket_mb * 1024 * 1024);
  // Checked here in MiB, as given: the library's own check would name bucket_bytes.
  if (config.bucket_bytes < sizeof(float)) {
    throw ConfigError("--bucket-mb", o.bucket_mb + ": " + std::to_string(config.bucket_bytes) +
                                         " bytes; a bucket must hold at least 4 bytes (one "
                                         "float)");
  }
  if (o.overlap != "on" && o.overlap != "off") {
    throw ConfigError("--overlap", "'" + o.overlap + "': choose on or off");
  }
  config.overlap_communication = o.overlap == "on";
  config.progress = parse_choice<Progress>("--progress", o.progress);
  config.grad_comm_dtype = parse_choice<Dtype>("--grad-comm-dtype", o.grad_comm_dtype);
  config.compute_dtype = parse_choice<Dtype>("--compute-dtype", o.compute_dtype);
  if (run.samples < 1) throw ConfigError("--samples", o.samples + ": must be at least 1");
  if (hidden < 1) throw ConfigError("--hidden", o.hidden + ": must be at least 1");
  if (layers < 0) throw ConfigError("--layers", o.layers + ": must be at least 0");
  run.widths = {4};
  for (int l = 0; l < layers; ++l) run.widths.push_back(hidden);
  run.widths.push_back(1);
  return run;
}

const std::string kRule(70, '=');

void print_header(const DistributedManager& dm, const Trainer& trainer, const Run& run) {
  const TrainingConfig& config = trainer.config();
  const DistributedConfig& dc = config.distributed_config;
  const ShardPlan plan =
      make_shard_plan(std::min(config.batch_size, run.samples), trainer.batch_group_size());
  std::printf("%s\nmeshtrain: Distributed Data-Parallel Training\n%s\n", kRule.c_str(),
              kRule.c_str());
  std::printf("Backend:      %s (Kokkos), gradient all-reduce over %s\n",
              dm.backend_name().c_str(), trainer.gradient_backend().c_str());
  std::printf("Devices:      %d (one per MPI rank, %d per node)\n", dm.size(), dm.local_size());
  std::printf("Model parameters: %zu\n", trainer.model().num_parameters());
  std::printf("Mesh shape:   %s\n", format_shape(dc.mesh_shape).c_str());
  std::printf("Axis names:   %s\n", format_axis_names(dc.mesh_axis_names).c_str());
  std::printf("Strategy:     %s\n", name_of(dc.strategy).c_str());
  std::printf("Training data: x=(%d, 4), y=(%d, 1)\n", run.samples, run.samples);
  std::printf("State bytes per rank: %s\n", format_state_bytes(trainer.state_bytes()).c_str());
  // The data every rank holds: its host copy (x and y) and the trainer's (device copy, batch
  // buffers, permutation).
  const DataBytes data = trainer.data_bytes();
  const std::size_t host = static_cast<std::size_t>(run.samples) * (4 + 1) * sizeof(float);
  std::printf("Data bytes per rank: %zu (host %zu, device %zu, batch buffers %zu, permutation %zu)\n",
              host + data.total(), host, data.sets, data.batches, data.order);
  const std::string settings = describe_step_settings(config);
  std::printf("Epochs: %d, global batch: %d (%d to %d per rank), optimizer: %s, lr: %g%s\n",
              config.num_epochs, config.batch_size, plan.counts.back(), plan.counts.front(),
              name_of(config.optimizer).c_str(), config.learning_rate, settings.c_str());
  std::fflush(stdout);
}

void print_results(const DistributedManager& dm, const TrainingConfig& config,
                   const TrainingMetrics& m) {
  std::printf("%s\nRESULTS\n%s\n", kRule.c_str(), kRule.c_str());
  std::printf("Devices used: %d\n", dm.size());
  std::printf("Initial loss: %.6f\n", m.initial_loss);
  std::printf("Final loss:   %.6f\n", m.final_loss);
  std::printf("Training time: %.4f s (%lld steps, %.0f steps/s, %.0f samples/s)\n",
              m.wall_seconds, static_cast<long long>(m.steps), m.steps_per_second,
              m.samples_per_second);
  std::printf("Communication: %.4f s blocked on the gradient all-reduce (%zu bucket%s, overlap %s%s)\n",
              m.communication_seconds, m.gradient_buckets, m.gradient_buckets == 1 ? "" : "s",
              config.overlap_communication ? "on" : "off",
              m.gradient_progress.empty() ? "" : (", progress " + m.gradient_progress).c_str());
  std::fflush(stdout);
}

int run(DistributedManager& dm, int argc, char** argv) {
  CLI::App app{"distributed_pde: data-parallel training of the reference 4->64->1 MLP on y = sum(x^2)\n"
               "Launch with mpirun -np N (or launch/mpirun.sh -np N); every rank owns one device.",
               "distributed_pde"};
  Options o;
  add_options(app, o);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    if (dm.rank() == 0) std::printf("%s", app.help().c_str());
    return 0;
  } catch (const CLI::ParseError& e) {
    throw ConfigError(std::string(e.what()) + " (see --help)");
  }
  // Given but empty is not "not given": the default mesh would silently replace it.
  using Given = std::pair<const char*, const std::string&>;
  for (const auto& [flag, text] :
       {Given{"--mesh-shape", o.mesh_shape}, Given{"--axis-names", o.axis_names}}) {
    if (app.count(flag) > 0 && text.find_first_not_of(" \t") == std::string::npos) {
      throw ConfigError(flag, "'" + text + "': empty; leave the flag out for the default");
    }
  }
  const Run run = parse_run(o);

  // Validate everything before any work: the mesh, then the training config against it.
  const std::shared_ptr<ProcessGroups> groups = dm.process_groups(run.config.distributed_config);
  run.config.validate(groups->batch_parts());
  // Before anything is allocated: a model that cannot fit is one line naming the flags.
  const MemoryLayout layout =
      memory_layout(*groups, run.config.batch_size, static_cast<std::size_t>(run.samples), 4 + 1);
  const MemoryEstimate estimate = estimate_mlp_memory(run.widths, run.config.optimizer, layout);
  if (const auto shortfall =
          memory_shortfall(estimate, available_memory_per_rank(dm.local_size()))) {
    switch (estimate.largest()) {
      case MemoryEstimate::Part::Data: throw ConfigError("--samples", o.samples + ": " + *shortfall);
      case MemoryEstimate::Part::Activations:
        throw ConfigError("--batch-size", o.batch_size + ": " + *shortfall);
      case MemoryEstimate::Part::State:
        throw ConfigError("--hidden", o.hidden + " --layers " + o.layers + ": " + *shortfall);
    }
  }
  const ReferenceData data = make_reference_data(run.samples, 4, run.config.seed);
  Trainer trainer(Mlp(run.widths, Activation::ReLU, run.config.seed), run.config, groups);
  trainer.prepare(data.x, data.y);

  const bool root = dm.rank() == 0;
  if (root) print_header(dm, trainer, run);
  const FitResult result = trainer.fit();
  if (root) print_results(dm, trainer.config(), result.metrics);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return meshtrain::cli::run_main(
      "distributed_pde", argc, argv,
      [&](meshtrain::DistributedManager& dm) { return run(dm, argc, argv); }, kFieldFlags);
}
