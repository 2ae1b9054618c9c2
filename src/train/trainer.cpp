#include "meshtrain/train/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <tuple>
#include <cmath>
#include <limits>
#include <numeric>
#include <span>
#include <string>

#include "meshtrain/clock.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"
#include "batch_prefetcher.hpp"
#include "meshtrain/trace.hpp"

namespace meshtrain {

Trainer::Trainer(Model model, TrainingConfig config)
    : Trainer(std::move(model), config,
              current_process_groups(config.distributed_config)) {}

Trainer::Trainer(Model model, TrainingConfig config, std::shared_ptr<ProcessGroups> groups)
    : model_(std::move(model)), config_(std::move(config)), groups_(std::move(groups)) {
  if (!Kokkos::is_initialized()) {
    throw std::logic_error("Trainer: Kokkos is not initialised; create a DistributedManager first");
  }
  config_.distributed_config = groups_->config();
  config_.validate(groups_->batch_parts());
  model_.set_loss(config_.loss);
  model_.set_compute_dtype(config_.compute_dtype);
  world_ = &groups_->world();
  if (groups_->has_model()) {
    prepare_tensor_parallel(model_, mesh().shape(), mesh().axis_size("model"));
  }
}

Trainer::~Trainer() = default;

Progress Trainer::resolve_progress() const {
  if (config_.progress != Progress::Auto) return config_.progress;
  // A communication thread when it can be used and has something to do, and every rank has
  // a core to spare for it (a fact the runtime agreed on over the job): the same choice on
  // every rank, since a blocking all-reduce on one never matches a non-blocking one on
  // another.
  const Communicator& gradients = groups_->data();
  const bool usable = groups_->backend() == CommBackend::Mpi && config_.overlap_communication &&
                      gradients.size() > 1 && gradients.callable_from_another_thread();
  return usable && groups_->topology().spare_core_per_rank ? Progress::Thread : Progress::Poll;
}

const GradientReducer& Trainer::reducer() const {
  const GradientReducer* reducer = engine_ ? engine_->reducer() : nullptr;
  if (!reducer) throw std::logic_error("Trainer::reducer(): no gradient reducer (before prepare, or fsdp)");
  return *reducer;
}

StateBytes Trainer::state_bytes() const {
  if (!engine_) throw std::logic_error("Trainer::state_bytes() called before prepare()");
  return engine_->state_bytes();
}

const Trainer::StepPlan& Trainer::step_plan(std::size_t batch) const {
  const bool partial = batch + 1 == num_batches_ && samples_ % config_.batch_size != 0;
  return partial ? last_plan_ : full_plan_;
}

const ShardPlan& Trainer::plan_for_batch(std::size_t batch) const {
  return step_plan(batch).batch;
}

Trainer::StepPlan Trainer::make_step_plan(int rows) {
  const int parts = groups_->batch_parts();
  const int k = config_.accumulation_steps;
  StepPlan plan;
  plan.batch = shard_batch(*world_, rows, parts);
  plan.micro = make_shard_plan(rows, k);
  if (k == 1) {
    plan.micro_shards = {plan.batch};
  } else {
    for (int micro_rows : plan.micro.counts) {
      plan.micro_shards.push_back(shard_batch(*world_, micro_rows, parts));
    }
  }
  return plan;
}

namespace {
void check_pair(const HostMatrix& x, const HostMatrix& y, const Model& model, const char* what) {
  const std::string name(what);
  if (y.extent(0) != x.extent(0)) {
    throw ConfigError(name + " targets: " + std::to_string(y.extent(0)) + " rows for " +
                      std::to_string(x.extent(0)) + " input rows");
  }
  if (x.extent(1) != static_cast<std::size_t>(model.in_features())) {
    throw ConfigError(name + " inputs: " + std::to_string(x.extent(1)) +
                      " features for a model with " + std::to_string(model.in_features()) +
                      " inputs");
  }
  if (y.extent(1) != static_cast<std::size_t>(model.out_features())) {
    throw ConfigError(name + " targets: " + std::to_string(y.extent(1)) +
                      " columns for a model with " + std::to_string(model.out_features()) +
                      " outputs");
  }
  // The relative error divides by each target's norm.
  if (model.loss() == Loss::RelativeL2) {
    for (std::size_t i = 0; i < y.extent(0); ++i) {
      bool zero = true;
      for (std::size_t j = 0; j < y.extent(1) && zero; ++j) zero = y(i, j) == 0.0f;
      if (zero) {
        throw ConfigError("loss", "relative_l2: " + name + " target " + std::to_string(i) +
                                      " is all zeros, and its relative error is undefined");
      }
    }
  }
}

// A source's columns against the model (its rows are checked against each other by the
// source).
void check_columns(const RowSource& source, const Model& model, const char* what) {
  const std::string name(what);
  if (source.x_columns() != static_cast<std::size_t>(model.in_features())) {
    throw ConfigError(name + " inputs: " + std::to_string(source.x_columns()) +
                      " features for a model with " + std::to_string(model.in_features()) +
                      " inputs");
  }
  if (source.y_columns() != static_cast<std::size_t>(model.out_features())) {
    throw ConfigError(name + " targets: " + std::to_string(source.y_columns()) +
                      " columns for a model with " + std::to_string(model.out_features()) +
                      " outputs");
  }
}

// count rows of host memory (row-major, the device matrix's width) into device's first rows.
void upload_rows(const float* host, std::size_t count, const Matrix& device) {
  if (count == 0) return;
  Kokkos::View<const float**, Kokkos::LayoutRight, Kokkos::HostSpace, Unmanaged> from(
      host, count, device.extent(1));
  Kokkos::deep_copy(Kokkos::subview(device, std::make_pair(std::size_t{0}, count), Kokkos::ALL),
                    from);
}

Matrix upload(const HostMatrix& host, const std::string& label) {
  Matrix device(label, host.extent(0), host.extent(1));
  Kokkos::deep_copy(device, host);
  return device;
}

// Rows order(begin), ..., order(begin + count - 1) of (x, y) into the first count rows of
// (xb, yb). A free function: nvcc refuses a device lambda inside a private member function.
void gather_batch(const Kokkos::View<std::int64_t*, MemSpace>& order, std::size_t begin,
                  std::size_t count, const Matrix& x, const Matrix& y, const Matrix& xb,
                  const Matrix& yb) {
  const std::size_t in = x.extent(1), out = y.extent(1);
  Kokkos::parallel_for(
      "meshtrain::gather_batch", Kokkos::RangePolicy<ExecSpace>(0, count),
      KOKKOS_LAMBDA(std::size_t r) {
        const auto src = static_cast<std::size_t>(order(begin + r));
        for (std::size_t j = 0; j < in; ++j) xb(r, j) = x(src, j);
        for (std::size_t j = 0; j < out; ++j) yb(r, j) = y(src, j);
      });
}
}  // namespace

void Trainer::prepare(const HostMatrix& x, const HostMatrix& y) {
  const std::size_t n = x.extent(0);
  if (n < 1) throw ConfigError("samples 0: the training data is empty");
  check_pair(x, y, model_, "training");
  source_.reset();
  prefetch_.reset();
  x_ = upload(x, "meshtrain::x");
  y_ = upload(y, "meshtrain::y");
  prepare_run(n);
}

void Trainer::prepare(std::shared_ptr<const RowSource> source) {
  if (!source) throw std::invalid_argument("Trainer::prepare: no source");
  const std::size_t n = source->rows();
  if (n < 1) throw ConfigError("samples 0: the training data is empty");
  check_columns(*source, model_, "training");
  prefetch_.reset();
  source_ = std::move(source);
  x_ = Matrix();
  y_ = Matrix();
  prepare_run(n);
}

void Trainer::prepare_run(std::size_t n) {
  samples_ = n;
  const auto batch = static_cast<std::size_t>(config_.batch_size);
  num_batches_ = (n + batch - 1) / batch;
  schedule_.emplace(config_, static_cast<std::int64_t>(num_batches_));
  full_plan_ = make_step_plan(static_cast<int>(std::min(batch, n)));
  last_plan_ = make_step_plan(static_cast<int>(n % batch));

  // A previous engine may hold the only copy of the parameters (sharded): take them back.
  if (engine_) {
    engine_->write_parameters(model_);
    engine_.reset();
  }
  // Every rank starts from rank 0's parameters, whatever each was initialised with.
  Vector params = model_.parameters();
  ExecSpace().fence();
  world_->broadcast(params.data(), params.extent(0), DataType::Float32, 0);

  // The largest micro-batch shard (a partial last batch's are no larger).
  max_rows_ = 0;
  for (const ShardPlan& micro : full_plan_.micro_shards) {
    max_rows_ = std::max(max_rows_, static_cast<std::size_t>(*std::max_element(
                                        micro.counts.begin(), micro.counts.end())));
  }
  const OptimizerConfig optimizer = OptimizerConfig::of(config_.optimizer);
  const int k = config_.accumulation_steps;
  if (groups_->has_model()) {
    engine_ = make_tensor_parallel_engine(model_, groups_->model(), groups_->data(), optimizer,
                                          max_rows_, k);
  } else if (groups_->has_data()) {
    engine_ = make_data_parallel_engine(model_, groups_->data(), optimizer, config_.bucket_bytes,
                                        config_.overlap_communication, resolve_progress(),
                                        max_rows_, k, config_.grad_comm_dtype);
  } else {
    engine_ = make_fsdp_engine(model_, groups_->shard(), groups_->replica(), optimizer, max_rows_,
                               k);
  }
  if (config_.shuffle) {
    order_ = Kokkos::View<std::int64_t*, MemSpace>("meshtrain::order", n);
    host_order_.resize(n);
  }
  x_batch_ = Matrix();
  y_batch_ = Matrix();
  ensure_batch_buffers();
  if (source_) {
    // A step's rows for this rank: its shards of the k micro-batches.
    prefetch_ = std::make_unique<BatchPrefetcher>(source_, max_rows_ * static_cast<std::size_t>(k));
  }
  epoch_batch_losses_ = Vector("meshtrain::batch_losses", num_batches_);
  epoch_ = 0;
  batch_ = 0;
  run_steps_ = 0;
  carried_loss_sum_ = 0.0;
  carried_loss_count_ = 0;
  skipped_steps_ = 0;
  last_gradient_norm_ = std::numeric_limits<double>::quiet_NaN();
  epoch_losses_.clear();
  validation_losses_.clear();
  test_losses_.clear();
  begin_epoch(0);
}

void Trainer::set_validation_data(const HostMatrix& x, const HostMatrix& y) {
  check_pair(x, y, model_, "validation");
  val_source_.reset();
  x_val_ = upload(x, "meshtrain::x_validation");
  y_val_ = upload(y, "meshtrain::y_validation");
}

void Trainer::set_test_data(const HostMatrix& x, const HostMatrix& y) {
  check_pair(x, y, model_, "test");
  test_source_.reset();
  x_test_ = upload(x, "meshtrain::x_test");
  y_test_ = upload(y, "meshtrain::y_test");
}

void Trainer::set_validation_data(std::shared_ptr<const RowSource> source) {
  if (!source) throw std::invalid_argument("Trainer::set_validation_data: no source");
  check_columns(*source, model_, "validation");
  x_val_ = Matrix();
  y_val_ = Matrix();
  val_source_ = std::move(source);
  ensure_batch_buffers();
}

void Trainer::set_test_data(std::shared_ptr<const RowSource> source) {
  if (!source) throw std::invalid_argument("Trainer::set_test_data: no source");
  check_columns(*source, model_, "test");
  x_test_ = Matrix();
  y_test_ = Matrix();
  test_source_ = std::move(source);
  ensure_batch_buffers();
}

void Trainer::ensure_batch_buffers() {
  if (!engine_) return;  // before prepare(), which calls this again
  const auto in = static_cast<std::size_t>(model_.in_features());
  const auto out = static_cast<std::size_t>(model_.out_features());
  if (x_batch_.extent(0) == 0 && (config_.shuffle || source_ || val_source_ || test_source_)) {
    x_batch_ = Matrix("meshtrain::x_batch", max_rows_, in);
    y_batch_ = Matrix("meshtrain::y_batch", max_rows_, out);
  }
  if (val_source_ || test_source_) {  // a held-out chunk on the host
    eval_x_.resize(max_rows_ * in);
    eval_y_.resize(max_rows_ * out);
  }
}

DataBytes Trainer::data_bytes() const {
  DataBytes bytes;
  for (const Matrix* m : {&x_, &y_, &x_val_, &y_val_, &x_test_, &y_test_}) {
    bytes.sets += m->span() * sizeof(float);
  }
  bytes.batches = (x_batch_.span() + y_batch_.span() + eval_x_.capacity() + eval_y_.capacity()) *
                  sizeof(float);
  if (prefetch_) bytes.batches += prefetch_->bytes();
  bytes.order = (order_.span() + host_order_.capacity()) * sizeof(std::int64_t);
  return bytes;
}

double Trainer::data_wait_seconds() const { return prefetch_ ? prefetch_->wait_seconds() : 0.0; }

std::uint64_t Trainer::step_key(int epoch, std::size_t batch) const {
  return static_cast<std::uint64_t>(epoch) * (num_batches_ + 1) + batch;
}

std::vector<std::int64_t> Trainer::step_rows(std::size_t batch) const {
  const StepPlan& plan = step_plan(batch);
  const int shard = groups_->batch_index();
  std::vector<std::int64_t> out;
  for (std::size_t m = 0; m < plan.micro_shards.size(); ++m) {
    const ShardPlan& shards = plan.micro_shards[m];
    const std::size_t begin = batch * static_cast<std::size_t>(config_.batch_size) +
                              static_cast<std::size_t>(plan.micro.offsets[m]) +
                              static_cast<std::size_t>(shards.offsets[shard]);
    const auto count = static_cast<std::size_t>(shards.counts[shard]);
    for (std::size_t i = begin; i < begin + count; ++i) {
      out.push_back(config_.shuffle ? host_order_[i] : static_cast<std::int64_t>(i));
    }
  }
  return out;
}

void Trainer::set_epoch_callback(std::function<void(const EpochReport&)> callback) {
  epoch_callback_ = std::move(callback);
}

void Trainer::begin_epoch(int epoch) {
  if (!config_.shuffle) return;
  // Fisher-Yates from the seed and the epoch: the same on every rank, and rank 0's is
  // broadcast so that it is the one every rank follows.
  if (world_->rank() == 0) {
    Random rng(derive_seed(config_.seed, 1000 + static_cast<std::uint64_t>(epoch)));
    std::iota(host_order_.begin(), host_order_.end(), std::int64_t{0});
    for (std::size_t i = host_order_.size(); i > 1; --i) {
      const auto j = static_cast<std::size_t>(rng.uniform() * static_cast<double>(i));
      std::swap(host_order_[i - 1], host_order_[std::min(j, i - 1)]);
    }
  }
  world_->broadcast(std::span<std::int64_t>(host_order_), 0);
  Kokkos::deep_copy(order_, Kokkos::View<const std::int64_t*, Kokkos::HostSpace, Unmanaged>(
                                host_order_.data(), host_order_.size()));
}

std::pair<ConstMatrixRef, ConstMatrixRef> Trainer::batch_rows(std::size_t batch,
                                                             std::size_t micro) {
  const StepPlan& plan = step_plan(batch);
  const ShardPlan& shards = plan.micro_shards[micro];
  const int shard = groups_->batch_index();
  const std::size_t begin = batch * static_cast<std::size_t>(config_.batch_size) +
                            static_cast<std::size_t>(plan.micro.offsets[micro]) +
                            static_cast<std::size_t>(shards.offsets[shard]);
  const std::size_t count = static_cast<std::size_t>(shards.counts[shard]);
  if (source_) {  // the step's rows, read by the prefetch: this micro-batch's after the earlier
    std::size_t offset = 0;
    for (std::size_t m = 0; m < micro; ++m) {
      offset += static_cast<std::size_t>(plan.micro_shards[m].counts[shard]);
    }
    upload_rows(slot_x_ + offset * x_batch_.extent(1), count, x_batch_);
    upload_rows(slot_y_ + offset * y_batch_.extent(1), count, y_batch_);
    return {rows(x_batch_, 0, count), rows(y_batch_, 0, count)};
  }
  if (!config_.shuffle) return {rows(x_, begin, begin + count), rows(y_, begin, begin + count)};
  gather_batch(order_, begin, count, x_, y_, x_batch_, y_batch_);
  return {rows(x_batch_, 0, count), rows(y_batch_, 0, count)};
}

bool Trainer::step(std::size_t batch) {
  groups_->begin_step(run_steps_);
  TraceSpan span("step", "train", run_steps_);
  if (source_) {
    // This step's rows (read ahead during the previous step), then the next step's in the
    // background while this one computes.
    const BatchPrefetcher::Slot& slot = prefetch_->take(step_key(epoch_, batch), step_rows(batch));
    slot_x_ = slot.x.data();
    slot_y_ = slot.y.data();
    if (batch + 1 < num_batches_) prefetch_->request(step_key(epoch_, batch + 1), step_rows(batch + 1));
  }
  // The step's micro-batches (one without accumulation), each loss scaled by the whole batch.
  const int k = config_.accumulation_steps;
  for (int m = 0; m < k; ++m) {
    const auto [x, y] = batch_rows(batch, static_cast<std::size_t>(m));
    engine_->compute_gradients(x, y, plan_for_batch(batch).global_batch, MicroBatch{m, k});
  }

  // Every rank agrees, in one small collective, on whether any rank saw a non-finite loss
  // or gradient and whether any rank was asked to stop.
  const ConstVectorRef grads = engine_->gradients();
  const auto loss = engine_->loss();
  int bad = 0;
  const bool clipping = config_.clip_grad_norm > 0.0;
  double norm = 0.0;
  if (clipping) {
    // Clipping's norm reads every gradient element this rank holds anyway, so it is the
    // check: summed in double, the squares of finite floats stay finite (each below 1.2e77),
    // so the norm is NaN or Inf exactly when one of the elements it covers is, on this rank
    // or (summed over a shard group) on one whose flag the all-reduce below sees anyway.
    // No second pass over the gradients; the loss is one float.
    norm = engine_->gradient_norm();
    float value = 0.0f;
    Kokkos::deep_copy(value, loss);
    bad = std::isfinite(norm) && std::isfinite(value) ? 0 : 1;
  } else if (const GradientReducer* reducer = engine_->reducer();
             reducer != nullptr && reducer->wire_dtype() == Dtype::Bf16 &&
             reducer->buffer_size() == grads.extent(0) + 1) {
    // A bf16 gradient all-reduce widens the whole buffer (the gradients and the loss in its
    // last slot) back to fp32 in one kernel, which counted them as it wrote them.
    bad = reducer->nonfinite_count();
  } else {
    Kokkos::parallel_reduce(
        "meshtrain::count_nonfinite", Kokkos::RangePolicy<ExecSpace>(0, grads.extent(0) + 1),
        KOKKOS_LAMBDA(std::size_t i, int& count) {
          const float v = i < grads.extent(0) ? grads(i) : loss();
          if (!(v - v == 0.0f)) ++count;  // NaN or Inf
        },
        bad);
  }
  std::int32_t flags[2] = {bad > 0 ? 1 : 0, stop_flag_ && *stop_flag_ ? 1 : 0};
  CollectiveSite site("trainer.step_flags");
  world_->allreduce(std::span<std::int32_t>(flags), ReduceOp::Max);

  auto losses = epoch_batch_losses_;
  if (flags[0]) {
    if (config_.nonfinite == NonFinite::Abort) {
      float value = 0.0f;
      Kokkos::deep_copy(value, loss);
      throw TrainingError("step " + std::to_string(run_steps_) + " (epoch " +
                          std::to_string(epoch_) + ", batch " + std::to_string(batch) +
                          "): the loss (" + std::to_string(value) +
                          ") or a gradient is NaN or Inf; set nonfinite = skip to skip such steps");
    }
    ++skipped_steps_;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    Kokkos::parallel_for(
        "meshtrain::record_skipped", Kokkos::RangePolicy<ExecSpace>(0, 1),
        KOKKOS_LAMBDA(int) { losses(batch) = nan; });
  } else {
    if (clipping) {
      // optax.clip_by_global_norm, with the norm computed above.
      last_gradient_norm_ = norm;
      if (norm > config_.clip_grad_norm) {
        engine_->scale_gradients(static_cast<float>(config_.clip_grad_norm / norm));
      }
    }
    engine_->apply_gradients(learning_rate_at(run_steps_));
    Kokkos::parallel_for(
        "meshtrain::record_loss", Kokkos::RangePolicy<ExecSpace>(0, 1),
        KOKKOS_LAMBDA(int) { losses(batch) = loss(); });
  }
  return flags[1] != 0;
}

double Trainer::learning_rate_at(std::int64_t step) const {
  if (!schedule_) throw std::logic_error("Trainer::learning_rate_at() called before prepare()");
  return (*schedule_)(step);
}

double Trainer::evaluate(const Matrix& x, const Matrix& y) {
  const std::size_t n = x.extent(0);
  const ShardPlan plan = make_shard_plan(static_cast<int>(n), groups_->batch_parts());
  const int shard = groups_->batch_index();
  const auto begin = static_cast<std::size_t>(plan.offsets[shard]);
  const auto count = static_cast<std::size_t>(plan.counts[shard]);
  const auto most = static_cast<std::size_t>(plan.counts.front());
  const float scale = model_.loss_scale(static_cast<int>(n));
  CollectiveSite site("trainer.evaluate");
  double sum = 0.0;
  // The same number of chunks on every rank: sharded strategies communicate in forward.
  for (std::size_t done = 0; done < most; done += max_rows_) {
    const std::size_t from = begin + std::min(done, count);
    const std::size_t to = begin + std::min(done + max_rows_, count);
    sum += engine_->evaluate(rows(x, from, to), rows(y, from, to), scale);
  }
  return sum;
}

double Trainer::evaluate(const RowSource& source) {
  const std::size_t n = source.rows();
  const ShardPlan plan = make_shard_plan(static_cast<int>(n), groups_->batch_parts());
  const int shard = groups_->batch_index();
  const auto begin = static_cast<std::size_t>(plan.offsets[shard]);
  const auto count = static_cast<std::size_t>(plan.counts[shard]);
  const auto most = static_cast<std::size_t>(plan.counts.front());
  const float scale = model_.loss_scale(static_cast<int>(n));
  ensure_batch_buffers();
  std::vector<std::int64_t> chunk;
  double sum = 0.0;
  // As evaluate(x, y): the same chunks of this rank's rows, each read when it is needed.
  for (std::size_t done = 0; done < most; done += max_rows_) {
    const std::size_t from = begin + std::min(done, count);
    const std::size_t to = begin + std::min(done + max_rows_, count);
    chunk.resize(to - from);
    std::iota(chunk.begin(), chunk.end(), static_cast<std::int64_t>(from));
    if (!chunk.empty()) source.read(chunk, eval_x_.data(), eval_y_.data());
    upload_rows(eval_x_.data(), chunk.size(), x_batch_);
    upload_rows(eval_y_.data(), chunk.size(), y_batch_);
    sum += engine_->evaluate(rows(x_batch_, 0, chunk.size()), rows(y_batch_, 0, chunk.size()), scale);
  }
  return sum;
}

FitResult Trainer::fit(const HostMatrix& x, const HostMatrix& y) {
  prepare(x, y);
  return fit();
}

FitResult Trainer::fit() {
  if (!engine_) throw std::logic_error("Trainer::fit() called before prepare()");
  world_->barrier();
  engine_->reset_timers();
  if (prefetch_) prefetch_->reset_wait();
  FitClock clock;
  clock.start = now_seconds();
  bool stopped = false;
  while (epoch_ < config_.num_epochs && !stopped) {
    const double epoch_start = now_seconds();
    // The straggler's waits are those of this epoch's window (not the last one's checkpoint).
    if (FlightRecorder* flight = groups_->flight()) flight->take_wait_seconds();
    std::size_t epoch_samples = 0;
    const bool stop = train_rest_of_epoch(clock, epoch_samples);
    if (batch_ < num_batches_) {  // stopped inside the epoch: state() keeps the position
      stopped = true;
      break;
    }
    end_epoch(clock, epoch_start, epoch_samples);
    stopped = stop;
  }
  ExecSpace().fence();
  const TrainingMetrics metrics = metrics_of(clock, now_seconds() - clock.start, stopped);
  engine_->write_parameters(model_);
  return FitResult{model_.clone(), metrics};
}

bool Trainer::train_rest_of_epoch(FitClock& clock, std::size_t& epoch_samples) {
  bool stop = false;
  while (batch_ < num_batches_ && !stop) {
    stop = step(batch_);
    const auto rows = static_cast<std::size_t>(plan_for_batch(batch_).global_batch);
    epoch_samples += rows;
    clock.samples += rows;
    ++batch_;
    ++run_steps_;
    ++clock.steps;
  }
  return stop;
}

void Trainer::end_epoch(const FitClock& clock, double epoch_start, std::size_t epoch_samples) {
  TraceSpan span("end_epoch", "train", epoch_);
  const auto [sum, count] = epoch_loss_so_far(num_batches_);
  carried_loss_sum_ = 0.0;
  carried_loss_count_ = 0;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  epoch_losses_.push_back(count > 0 ? sum / static_cast<double>(count) : nan);
  const bool last = epoch_ + 1 == config_.num_epochs;
  // From a source: the next epoch's permutation now, and its first step's rows read while
  // validation and the epoch callback run (every rank alike, so the collectives still match).
  const bool next_early = source_ && !last;
  if (next_early) {
    begin_epoch(epoch_ + 1);
    prefetch_->request(step_key(epoch_ + 1, 0), step_rows(0));
  }
  const bool evaluate_now = config_.validation_every > 0 &&
                            ((epoch_ + 1) % config_.validation_every == 0 || last);
  const bool validate = evaluate_now && (x_val_.extent(0) > 0 || val_source_);
  const bool test = evaluate_now && (x_test_.extent(0) > 0 || test_source_);
  validation_losses_.push_back(
      validate ? (val_source_ ? evaluate(*val_source_) : evaluate(x_val_, y_val_)) : nan);
  test_losses_.push_back(
      test ? (test_source_ ? evaluate(*test_source_) : evaluate(x_test_, y_test_)) : nan);
  const double now = now_seconds();
  EpochReport report;
  report_straggler(report, now - epoch_start);
  if (epoch_callback_) {
    report.epoch = epoch_;
    report.num_epochs = config_.num_epochs;
    report.train_loss = epoch_losses_.back();
    report.validation_loss = validation_losses_.back();
    report.test_loss = test_losses_.back();
    report.step = run_steps_;
    report.skipped_steps = skipped_steps_;
    report.learning_rate = learning_rate_at(run_steps_ - 1);
    report.gradient_norm = last_gradient_norm_;
    report.epoch_seconds = now - epoch_start;
    report.elapsed_seconds = now - clock.start;
    report.samples_per_second =
        now > epoch_start ? static_cast<double>(epoch_samples) / (now - epoch_start) : 0.0;
    epoch_callback_(report);
  }
  ++epoch_;
  batch_ = 0;
  last_gradient_norm_ = nan;
  if (epoch_ < config_.num_epochs && !next_early) begin_epoch(epoch_);
}

void Trainer::report_straggler(EpochReport& report, double epoch_seconds) {
  FlightRecorder* flight = groups_->flight();
  const int n = world_->size();
  if (!flight || n < 2) return;
  const double wait = flight->take_wait_seconds();
  const double mine[2] = {std::max(epoch_seconds - wait, 0.0), wait};
  std::vector<double> all(2 * static_cast<std::size_t>(n));  // once an epoch
  {
    CollectiveSite site("trainer.straggler");
    world_->all_gather(mine, all.data(), 2, DataType::Float64);
  }
  int slow = 0;
  for (int r = 1; r < n; ++r) {
    if (all[2 * r] > all[2 * slow]) slow = r;
  }
  int fast = slow == 0 ? 1 : 0;  // another rank, even on a tie
  for (int r = 0; r < n; ++r) {
    if (r != slow && all[2 * r] < all[2 * fast]) fast = r;
  }
  report.straggler_rank = slow;
  report.fastest_rank = fast;
  report.straggler_compute_seconds = all[2 * slow];
  report.straggler_wait_seconds = all[2 * slow + 1];
  report.fastest_compute_seconds = all[2 * fast];
  report.fastest_wait_seconds = all[2 * fast + 1];
  report.straggler_behind_seconds = all[2 * slow] - all[2 * fast];
}

TrainingMetrics Trainer::metrics_of(const FitClock& clock, double wall, bool stopped) const {
  TrainingMetrics metrics;
  metrics.stopped = stopped;
  metrics.steps = clock.steps;
  metrics.skipped_steps = skipped_steps_;
  metrics.wall_seconds = wall;
  metrics.communication_seconds = engine_->blocked_seconds();
  if (prefetch_) metrics.data_wait_seconds = prefetch_->wait_seconds();
  if (const GradientReducer* reducer = engine_->reducer()) {
    metrics.gradient_buckets = reducer->buckets().size();
    if (reducer->overlap()) metrics.gradient_progress = name_of(reducer->progress_mode());
  }
  metrics.epoch_losses = epoch_losses_;
  metrics.validation_losses = validation_losses_;
  metrics.test_losses = test_losses_;
  if (!epoch_losses_.empty()) {
    metrics.initial_loss = epoch_losses_.front();
    metrics.final_loss = epoch_losses_.back();
  }
  if (wall > 0) {
    metrics.samples_per_second = static_cast<double>(clock.samples) / wall;
    metrics.steps_per_second = static_cast<double>(clock.steps) / wall;
  }
  return metrics;
}

std::pair<double, std::int64_t> Trainer::epoch_loss_so_far(std::size_t batches) const {
  // Skipped (non-finite) steps are recorded as NaN and left out.
  double sum = carried_loss_sum_;
  std::int64_t count = carried_loss_count_;
  if (batches == 0) return {sum, count};
  auto losses = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), epoch_batch_losses_);
  for (std::size_t b = 0; b < batches; ++b) {
    if (std::isfinite(losses(b))) {
      sum += losses(b);
      ++count;
    }
  }
  return {sum, count};
}

TrainingState at_epoch_boundary(TrainingState state, std::size_t batches_per_epoch) {
  if (batches_per_epoch == 0 || state.batch < batches_per_epoch) return state;
  state.epoch += 1;
  state.batch = 0;
  state.epoch_loss_sum = 0.0;
  state.epoch_loss_count = 0;
  return state;
}

TrainingState Trainer::position() const {
  if (!engine_) throw std::logic_error("Trainer::position() called before prepare()");
  TrainingState st;
  st.optimizer_step = engine_->optimizer().steps();
  st.steps = run_steps_;
  st.epoch = epoch_;
  st.batch = batch_;
  // Called from the epoch callback, the epoch is complete (and already in epoch_losses_).
  if (batch_ < num_batches_) {
    std::tie(st.epoch_loss_sum, st.epoch_loss_count) = epoch_loss_so_far(batch_);
  }
  st.skipped_steps = skipped_steps_;
  st.epoch_losses = epoch_losses_;
  st.validation_losses = validation_losses_;
  st.test_losses = test_losses_;
  return at_epoch_boundary(std::move(st), num_batches_);
}

std::vector<HeldRun> Trainer::held_runs() const {
  if (!engine_) throw std::logic_error("Trainer::held_runs() called before prepare()");
  return engine_->held_runs();
}

LocalState Trainer::local_state() const {
  if (!engine_) throw std::logic_error("Trainer::local_state() called before prepare()");
  LocalState local;
  auto copy = [](const Vector& from, std::vector<float>& to) {
    to.resize(from.extent(0));
    Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(
                          to.data(), to.size()),
                      from);
  };
  copy(engine_->local_parameters(), local.parameters);
  Optimizer& opt = engine_->optimizer();
  if (opt.first_moment().extent(0) > 0) copy(opt.first_moment(), local.first_moment);
  if (opt.second_moment().extent(0) > 0) copy(opt.second_moment(), local.second_moment);
  return local;
}

TrainingState Trainer::state() {
  if (!engine_) throw std::logic_error("Trainer::state() called before prepare()");
  TrainingState st = position();
  const std::size_t p = model_.num_parameters();
  st.parameters = HostVector("meshtrain::state_parameters", p);
  engine_->gather(engine_->local_parameters(), st.parameters);
  Optimizer& opt = engine_->optimizer();
  if (opt.first_moment().extent(0) > 0) {
    st.first_moment = HostVector("meshtrain::state_mu", p);
    engine_->gather(opt.first_moment(), st.first_moment);
  }
  if (opt.second_moment().extent(0) > 0) {
    st.second_moment = HostVector("meshtrain::state_nu", p);
    engine_->gather(opt.second_moment(), st.second_moment);
  }
  return st;
}

namespace {

void expect_values(std::size_t got, std::size_t want, const char* what) {
  if (got != want) {
    throw ConfigError(std::string("checkpoint ") + what + ": " + std::to_string(got) +
                      " values where this run has " + std::to_string(want));
  }
}

}  // namespace

void Trainer::restore(const TrainingState& st) {
  if (!engine_) throw std::logic_error("Trainer::restore() called before prepare()");
  const std::size_t p = model_.num_parameters();
  Optimizer& opt = engine_->optimizer();
  expect_values(st.parameters.extent(0), p, "parameters");
  expect_values(st.first_moment.extent(0), opt.first_moment().extent(0) > 0 ? p : 0, "first moment");
  expect_values(st.second_moment.extent(0), opt.second_moment().extent(0) > 0 ? p : 0, "second moment");
  check_position(st);
  engine_->scatter(st.parameters, engine_->local_parameters());
  if (st.first_moment.extent(0) > 0) engine_->scatter(st.first_moment, opt.first_moment());
  if (st.second_moment.extent(0) > 0) engine_->scatter(st.second_moment, opt.second_moment());
  apply_position(st);
}

void Trainer::restore(const TrainingState& position, const LocalState& local) {
  if (!engine_) throw std::logic_error("Trainer::restore() called before prepare()");
  Optimizer& opt = engine_->optimizer();
  const Vector params = engine_->local_parameters();
  expect_values(local.parameters.size(), params.extent(0), "parameters (this rank's)");
  expect_values(local.first_moment.size(), opt.first_moment().extent(0), "first moment (this rank's)");
  expect_values(local.second_moment.size(), opt.second_moment().extent(0), "second moment (this rank's)");
  check_position(position);
  auto copy = [](const std::vector<float>& from, const Vector& to) {
    if (from.empty()) return;
    Kokkos::deep_copy(to, Kokkos::View<const float*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(
                              from.data(), from.size()));
  };
  copy(local.parameters, params);
  copy(local.first_moment, opt.first_moment());
  copy(local.second_moment, opt.second_moment());
  apply_position(position);
}

void Trainer::check_position(const TrainingState& st) const {
  if (st.epoch < 0 || st.epoch > config_.num_epochs ||
      (st.epoch == config_.num_epochs && st.batch != 0) || st.batch > num_batches_) {
    throw ConfigError("checkpoint position: epoch " + std::to_string(st.epoch) + ", batch " +
                      std::to_string(st.batch) + " is outside this run (" +
                      std::to_string(config_.num_epochs) + " epochs of " +
                      std::to_string(num_batches_) + " batches)");
  }
}

void Trainer::apply_position(const TrainingState& st) {
  engine_->optimizer().set_steps(st.optimizer_step);
  epoch_ = st.epoch;
  batch_ = st.batch;
  run_steps_ = st.steps;
  // The resumed epoch's earlier batches are in the carried sum, not in this buffer.
  Kokkos::deep_copy(epoch_batch_losses_, std::numeric_limits<float>::quiet_NaN());
  carried_loss_sum_ = st.epoch_loss_sum;
  carried_loss_count_ = st.epoch_loss_count;
  skipped_steps_ = st.skipped_steps;
  last_gradient_norm_ = std::numeric_limits<double>::quiet_NaN();
  epoch_losses_ = st.epoch_losses;
  validation_losses_ = st.validation_losses;
  test_losses_ = st.test_losses;
  if (epoch_ < config_.num_epochs) begin_epoch(epoch_);
}

}  // namespace meshtrain
