#pragma once
#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "meshtrain/data/row_source.hpp"
#include "meshtrain/nn/mlp.hpp"
#include "meshtrain/optim/optimizer.hpp"
#include "meshtrain/runtime/process_groups.hpp"
#include "meshtrain/runtime/shard_plan.hpp"
#include "meshtrain/train/gradient_reducer.hpp"
#include "meshtrain/train/schedule.hpp"
#include "meshtrain/train/sharded_checkpoint.hpp"
#include "meshtrain/train/step_engine.hpp"
#include "meshtrain/train/training_config.hpp"

namespace meshtrain {

struct TrainingMetrics {
  double initial_loss = 0.0;  // mean over epoch 0's batches of each batch's loss before its update
  double final_loss = 0.0;    // the same for the last epoch trained
  std::vector<double> epoch_losses;       // every epoch so far, those before a resume included
  std::vector<double> validation_losses;  // per epoch; NaN where not evaluated
  std::vector<double> test_losses;        // the same for the test set
  std::int64_t steps = 0;                 // optimizer steps taken by this fit() call
  std::int64_t skipped_steps = 0;         // non-finite steps skipped (nonfinite = "skip")
  bool stopped = false;                   // ended early by the stop flag (preemption)
  double wall_seconds = 0.0;              // the training loop, setup excluded
  double samples_per_second = 0.0;
  double steps_per_second = 0.0;
  // Seconds the training loop spent blocked on gradient communication: all of it with
  // overlap off, the part backward did not hide with it on.
  double communication_seconds = 0.0;
  std::size_t gradient_buckets = 0;
  // How overlapped all-reduces advanced: "thread", "poll", or "" (overlap off, or no
  // gradient all-reduce: fsdp and tensor parallelism).
  std::string gradient_progress;
  // Seconds the steps waited for their rows (training from a RowSource: reading what the
  // prefetch thread had not read yet; 0 when the data set is in memory).
  double data_wait_seconds = 0.0;
};

struct FitResult {
  Model model;
  TrainingMetrics metrics;
};

// Reported on every rank after each epoch.
struct EpochReport {
  int epoch = 0;  // 0-based, just finished
  int num_epochs = 0;
  double train_loss = 0.0;
  double validation_loss = 0.0;  // NaN when not evaluated this epoch
  double test_loss = 0.0;        // the same for the test set
  std::int64_t step = 0;         // optimizer steps of the whole run so far
  std::int64_t skipped_steps = 0;
  double learning_rate = 0.0;    // the schedule's rate at the epoch's last step
  // With clip_grad_norm: the global gradient norm before clipping of the epoch's last
  // (non-skipped) step. NaN without clipping, which is the only time it is computed.
  double gradient_norm = 0.0;
  double epoch_seconds = 0.0;
  double elapsed_seconds = 0.0;  // since this fit() started
  double samples_per_second = 0.0;
  // The epoch's straggler, from one all-gather of two numbers per rank over the world at the
  // epoch's end (with the flight recorder on, on more than one rank; else straggler_rank is
  // -1): each rank's compute time (the epoch's wall time less the time it was blocked in
  // collectives, as the flight recorder measures it) and its wait. The straggler computed the
  // longest, the fastest rank the least; behind is the difference, the time the others spent
  // waiting for it.
  int straggler_rank = -1;
  int fastest_rank = -1;
  double straggler_behind_seconds = 0.0;
  double straggler_compute_seconds = 0.0, straggler_wait_seconds = 0.0;
  double fastest_compute_seconds = 0.0, fastest_wait_seconds = 0.0;
};

// The bytes of the data set a rank holds (host and device): whole sets uploaded by
// prepare(HostMatrix...) and set_*_data(HostMatrix...), the batch buffers (a batch's rows on
// the device, and from a RowSource the two host buffers of the prefetch and one of
// evaluation), and the epoch's permutation (8 bytes a sample, on the host and the device).
struct DataBytes {
  std::size_t sets = 0;
  std::size_t batches = 0;
  std::size_t order = 0;
  std::size_t total() const { return sets + batches + order; }
};

class BatchPrefetcher;

// Everything needed to continue a run exactly where it stopped, in the full model's layout
// (independent of the mesh, so a data-parallel run can resume on another rank count).
struct TrainingState {
  HostVector parameters;
  HostVector first_moment;   // empty for plain SGD
  HostVector second_moment;  // empty for SGD
  std::int64_t optimizer_step = 0;
  std::int64_t steps = 0;   // steps of the whole run so far (skipped ones included)
  int epoch = 0;            // the epoch to continue in
  std::size_t batch = 0;    // its first batch not yet trained
  double epoch_loss_sum = 0.0;  // that epoch's batch losses so far
  std::int64_t epoch_loss_count = 0;
  std::int64_t skipped_steps = 0;
  std::vector<double> epoch_losses;  // completed epochs
  std::vector<double> validation_losses;
  std::vector<double> test_losses;
};

// The one place a run's position is normalised: a state taken when an epoch has just
// finished (epoch E, batch = batches_per_epoch) is the same point of the run as (E + 1, 0)
// with nothing carried, which is what restore() must be given so that it does not finish
// epoch E a second time. Any other state is returned unchanged. Trainer::state() and
// to_checkpoint() return normalised states.
TrainingState at_epoch_boundary(TrainingState state, std::size_t batches_per_epoch);

// Training with global-batch semantics: every global batch x[s:s+B] is split by rank 0's plan
// across the batch group (the "data" axis; with strategy fsdp, the "data" and "fsdp" axes);
// each rank computes its shard's share of the global mean loss and gradient; the strategy's
// collectives sum them (data: bucketed all-reduces of the flat gradient; fsdp: per-layer
// reduce-scatter; a "model" axis: Megatron tensor parallelism), and every rank applies the
// same optimizer update to what it holds. An N-rank run therefore computes what a 1-rank run
// computes on the same global batches.
class Trainer {
 public:
  // Trains with the process groups that the current DistributedManager assembles for
  // config.distributed_config (collective; the same groups when they exist already).
  // Throws ConfigError for a bad config.
  Trainer(Model model, TrainingConfig config);
  // Trains with the given groups (their config replaces config.distributed_config).
  Trainer(Model model, TrainingConfig config, std::shared_ptr<ProcessGroups> groups);
  ~Trainer();

  // Trains on (x, y), which every rank holds in full: x (samples x in), y (samples x out).
  FitResult fit(const HostMatrix& x, const HostMatrix& y);
  // Trains on the data of the last prepare() call, from the start or from restore()'s
  // position, until num_epochs or the stop flag.
  FitResult fit();

  // The pieces of fit, for benchmarks and tests: prepare() validates and uploads the data
  // and broadcasts rank 0's parameters; step(b) trains on batch b of the current epoch's
  // order (collective).
  void prepare(const HostMatrix& x, const HostMatrix& y);
  // The same from a source that is not held in memory: every step reads only this rank's
  // rows of its global batch (under the epoch's permutation when shuffling), the next step's
  // in a background thread while the current one computes. Trains exactly as prepare(x, y)
  // on the same rows does.
  void prepare(std::shared_ptr<const RowSource> source);
  // Returns true when the stop flag was raised on some rank (every rank agrees).
  bool step(std::size_t batch);
  std::size_t batches_per_epoch() const { return num_batches_; }
  // The rate of the optimizer step that follows `step` earlier ones of the run (after
  // prepare()).
  double learning_rate_at(std::int64_t step) const;

  // Optional, before fit(): a validation set and a test set (every rank holds them in full),
  // evaluated with the training loss every validation_every epochs and after the last.
  void set_validation_data(const HostMatrix& x, const HostMatrix& y);
  void set_test_data(const HostMatrix& x, const HostMatrix& y);
  // The same read from sources: each rank reads its rows, a batch at a time.
  void set_validation_data(std::shared_ptr<const RowSource> source);
  void set_test_data(std::shared_ptr<const RowSource> source);
  // Called on every rank after each epoch (after validation).
  void set_epoch_callback(std::function<void(const EpochReport&)> callback);
  // Polled at every step; when it is non-zero on any rank, every rank stops after the same
  // step (agreed by a collective), and fit() returns with metrics.stopped set.
  void set_stop_flag(const volatile std::sig_atomic_t* flag) { stop_flag_ = flag; }

  // Collective. The run's state at the current step boundary.
  TrainingState state();
  // The same without its vectors (position, history; not collective).
  TrainingState position() const;
  // For sharded checkpoints (not collective): where this rank's buffers sit in the full
  // model's layout and which runs it saves, and a host copy of those buffers (parameters
  // and optimizer moments in this rank's layout).
  std::vector<HeldRun> held_runs() const;
  LocalState local_state() const;
  // Collective, after prepare(): continue from state (parameters, optimizer moments and step,
  // position, loss history). Throws ConfigError when it does not fit this model.
  void restore(const TrainingState& state);
  // Collective, after prepare(): the same from position (its vectors empty) and this rank's
  // own buffers (local_state()'s layout; e.g. read from a sharded checkpoint by
  // read_local_state over held_runs()), whatever layout wrote them.
  void restore(const TrainingState& position, const LocalState& local);

  // The data-parallel gradient reducer (std::logic_error under fsdp, which has none).
  const GradientReducer& reducer() const;
  StateBytes state_bytes() const;  // after prepare()
  DataBytes data_bytes() const;    // after prepare() (and set_*_data)
  // Seconds step() has waited for rows from a source since prepare() or fit() began (0 in
  // memory): what metrics.data_wait_seconds reports, for benchmarks that call step().
  double data_wait_seconds() const;
  int batch_group_size() const { return groups_->batch_parts(); }

  const Model& model() const { return model_; }
  const DeviceMesh& mesh() const { return groups_->mesh(); }
  const ProcessGroups& groups() const { return *groups_; }
  const TrainingConfig& config() const { return config_; }
  const ShardPlan& plan_for_batch(std::size_t batch) const;
  // The backend the gradient collectives run on: "mpi" or "nccl".
  std::string gradient_backend() const { return name_of(groups_->backend()); }

 private:
  // Totals of one fit() call.
  struct FitClock {
    double start = 0.0;
    std::int64_t steps = 0;
    std::size_t samples = 0;
  };
  void begin_epoch(int epoch);
  // Trains the current epoch's remaining batches; true when the stop flag was raised.
  bool train_rest_of_epoch(FitClock& clock, std::size_t& epoch_samples);
  // The finished epoch's loss, validation and report; moves on to the next epoch.
  void end_epoch(const FitClock& clock, double epoch_start, std::size_t epoch_samples);
  TrainingMetrics metrics_of(const FitClock& clock, double wall, bool stopped) const;
  // Collective over the world: fills the report's straggler fields.
  void report_straggler(EpochReport& report, double epoch_seconds);
  // The loss over a whole held-out set (collective over the batch group).
  double evaluate(const Matrix& x, const Matrix& y);
  double evaluate(const RowSource& source);
  // The parts of prepare() that do not depend on where the data is.
  void prepare_run(std::size_t samples);
  // This rank's rows (global indices) of every micro-batch of batch `batch`, concatenated.
  std::vector<std::int64_t> step_rows(std::size_t batch) const;
  std::uint64_t step_key(int epoch, std::size_t batch) const;  // names a prefetched step
  // The device batch buffers (shuffling or sources) and a held-out source's host chunk.
  void ensure_batch_buffers();
  // One optimizer step's global batch: over the batch group, and as micro-batches
  // (accumulation_steps contiguous slices of its rows), each over the batch group.
  struct StepPlan {
    ShardPlan batch;
    ShardPlan micro;  // the batch's rows into micro-batches (arithmetic, as everywhere)
    std::vector<ShardPlan> micro_shards;
  };
  StepPlan make_step_plan(int rows);  // collective: rank 0's shard plans
  const StepPlan& step_plan(std::size_t batch) const;
  // This rank's rows of micro-batch `micro` of batch `batch`.
  std::pair<ConstMatrixRef, ConstMatrixRef> batch_rows(std::size_t batch, std::size_t micro);
  Progress resolve_progress() const;  // config_.progress, "auto" decided alike on every rank
  void check_position(const TrainingState& st) const;  // ConfigError when outside this run
  void apply_position(const TrainingState& st);
  // The current epoch's loss sum and count over its first `batches` batches (finite ones),
  // including what a resumed epoch carried in.
  std::pair<double, std::int64_t> epoch_loss_so_far(std::size_t batches) const;

  Model model_;
  TrainingConfig config_;
  std::shared_ptr<ProcessGroups> groups_;
  Communicator* world_ = nullptr;  // groups_->world(): control collectives

  // Prepared state.
  std::size_t samples_ = 0;
  std::size_t num_batches_ = 0;
  std::size_t max_rows_ = 0;
  std::optional<LearningRateSchedule> schedule_;
  StepPlan full_plan_;
  StepPlan last_plan_;
  Matrix x_;
  Matrix y_;
  Matrix x_val_;
  Matrix y_val_;
  Matrix x_test_;
  Matrix y_test_;
  // Data sets read from sources instead (training, validation, test).
  std::shared_ptr<const RowSource> source_;
  std::shared_ptr<const RowSource> val_source_;
  std::shared_ptr<const RowSource> test_source_;
  std::unique_ptr<BatchPrefetcher> prefetch_;
  const float* slot_x_ = nullptr;  // the step's rows from the prefetch
  const float* slot_y_ = nullptr;
  std::vector<float> eval_x_, eval_y_;  // a chunk of a held-out source
  // Shuffling: this epoch's order on the device and the rows it selects for this rank.
  Kokkos::View<std::int64_t*, MemSpace> order_;
  std::vector<std::int64_t> host_order_;
  Matrix x_batch_;
  Matrix y_batch_;
  Vector epoch_batch_losses_;
  std::unique_ptr<StepEngine> engine_;

  // Position and history of the run.
  int epoch_ = 0;
  std::size_t batch_ = 0;
  std::int64_t run_steps_ = 0;
  double carried_loss_sum_ = 0.0;  // a resumed epoch's losses from before the resume
  std::int64_t carried_loss_count_ = 0;
  std::int64_t skipped_steps_ = 0;
  double last_gradient_norm_ = 0.0;  // before clipping; NaN until a clipped step
  std::vector<double> epoch_losses_;
  std::vector<double> validation_losses_;
  std::vector<double> test_losses_;

  std::function<void(const EpochReport&)> epoch_callback_;
  const volatile std::sig_atomic_t* stop_flag_ = nullptr;
};

}  // namespace meshtrain
