// TrainingState <-> Checkpoint: round trips (in memory, through a file, and through a
// trainer that resumes), the layout, the fingerprint, and every refusal.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "meshtrain/data/dataset.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "meshtrain/train/checkpoint_state.hpp"
#include "meshtrain/train/trainer.hpp"

namespace {

using namespace meshtrain;
namespace fs = std::filesystem;

constexpr std::size_t kSamples = 40;  // batches of 32: 2 per epoch

HostVector filled(std::size_t n, float start) {
  HostVector v("values", n);
  for (std::size_t i = 0; i < n; ++i) v(i) = start + 0.25f * static_cast<float>(i);
  return v;
}

TrainingState sample_state(const Mlp& model) {
  TrainingState s;
  s.parameters = filled(model.num_parameters(), -3.0f);
  s.first_moment = filled(model.num_parameters(), 0.5f);
  s.second_moment = filled(model.num_parameters(), 1.5f);
  s.optimizer_step = 17;
  s.epoch = 2;
  s.batch = 1;
  s.epoch_loss_sum = 0.1 + 0.2;  // not exactly representable in decimal: %.17g keeps it
  s.epoch_loss_count = 1;
  s.skipped_steps = 3;
  s.epoch_losses = {20.123456789012345, 1.0 / 3.0};
  s.validation_losses = {std::numeric_limits<double>::quiet_NaN(), 2.0 / 3.0};
  return s;
}

std::vector<float> values(const HostVector& v) { return {v.data(), v.data() + v.extent(0)}; }

void expect_same(const TrainingState& a, const TrainingState& b) {
  EXPECT_EQ(values(a.parameters), values(b.parameters));
  EXPECT_EQ(values(a.first_moment), values(b.first_moment));
  EXPECT_EQ(values(a.second_moment), values(b.second_moment));
  EXPECT_EQ(a.optimizer_step, b.optimizer_step);
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.batch, b.batch);
  EXPECT_EQ(a.epoch_loss_sum, b.epoch_loss_sum);
  EXPECT_EQ(a.epoch_loss_count, b.epoch_loss_count);
  EXPECT_EQ(a.skipped_steps, b.skipped_steps);
  EXPECT_EQ(a.epoch_losses, b.epoch_losses);
  ASSERT_EQ(a.validation_losses.size(), b.validation_losses.size());
  for (std::size_t i = 0; i < a.validation_losses.size(); ++i) {
    if (std::isnan(a.validation_losses[i])) {
      EXPECT_TRUE(std::isnan(b.validation_losses[i]));
    } else {
      EXPECT_EQ(a.validation_losses[i], b.validation_losses[i]);
    }
  }
}

// The ConfigError message of from_checkpoint, or "" when it accepts the checkpoint.
std::string refusal(const Checkpoint& c, const Mlp& model, const TrainingConfig& config,
                    std::size_t samples = kSamples) {
  try {
    from_checkpoint(c, "run.safetensors", model, config, samples);
    return "";
  } catch (const ConfigError& e) {
    return e.what();
  }
}

void write_file_text(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
}

std::string temp_file(const std::string& name) {
  return (fs::temp_directory_path() /
          ("meshtrain-state-" + std::to_string(::getpid()) + "-" + name))
      .string();
}

TEST(CheckpointState, FingerprintIsFnv1a64) {
  EXPECT_EQ(fingerprint_of(""), "cbf29ce484222325");
  EXPECT_EQ(fingerprint_of("a"), "af63dc4c8601ec8c");
}

TEST(CheckpointState, SignatureNamesWhatDeterminesTheNumbers) {
  const Mlp model({4, 8, 1}, Activation::ReLU, 0);
  TrainingConfig config;
  EXPECT_EQ(run_signature(model, config, 256),
            "widths=4,8,1;activations=relu,identity;optimizer=adam;learning_rate=0.001;"
            "batch_size=32;seed=0;shuffle=false;samples=256");
  // Not the mesh, the rank count or the number of epochs.
  TrainingConfig other = config;
  other.num_epochs = 99;
  other.distributed_config = DistributedConfig{{1, 1}, {"data", "model"}, Strategy::Data};
  EXPECT_EQ(run_signature(model, other, 256), run_signature(model, config, 256));
  // The loss, when it is not the default (older checkpoints keep their fingerprints).
  TrainingConfig relative = config;
  relative.loss = Loss::RelativeL2;
  EXPECT_EQ(run_signature(model, relative, 256),
            "widths=4,8,1;activations=relu,identity;loss=relative_l2;optimizer=adam;"
            "learning_rate=0.001;batch_size=32;seed=0;shuffle=false;samples=256");
  // The schedule's settings and clipping, when they are not the defaults; the keys a
  // schedule does not use are left out. Not accumulation (float rounding only).
  TrainingConfig cosine = config;
  cosine.schedule = Schedule::WarmupCosine;
  cosine.warmup_steps = 10;
  cosine.decay_steps = 100;
  cosine.min_learning_rate = 1e-5;
  cosine.clip_grad_norm = 1.0;
  cosine.accumulation_steps = 4;
  EXPECT_EQ(run_signature(model, cosine, 256),
            run_signature(model, config, 256) +
                ";schedule=warmup_cosine;warmup_steps=10;warmup_initial_learning_rate=0;"
                "decay_steps=100;min_learning_rate=1.0000000000000001e-05;clip_grad_norm=1");
  TrainingConfig bf16 = config;
  bf16.compute_dtype = Dtype::Bf16;
  EXPECT_EQ(run_signature(model, bf16, 256),
            "widths=4,8,1;activations=relu,identity;compute_dtype=bf16;optimizer=adam;"
            "learning_rate=0.001;batch_size=32;seed=0;shuffle=false;samples=256");
  TrainingConfig step = config;
  step.schedule = Schedule::Step;
  step.step_size = 5;
  EXPECT_EQ(run_signature(model, step, 256),
            run_signature(model, config, 256) + ";schedule=step;step_size=5;gamma=0.10000000000000001");
  TrainingConfig warm = config;
  warm.schedule = Schedule::WarmupConstant;
  warm.warmup_steps = 3;
  EXPECT_EQ(run_signature(model, warm, 256),
            run_signature(model, config, 256) +
                ";schedule=warmup_constant;warmup_steps=3;warmup_initial_learning_rate=0");
}

TEST(CheckpointState, LayoutOfTensorsAndMetadata) {
  const Mlp model({4, 8, 1}, Activation::Tanh, 0);
  TrainingConfig config;
  config.distributed_config = DistributedConfig{{2}, {"data"}, Strategy::Data};
  const Checkpoint c = to_checkpoint(sample_state(model), model, config, kSamples);

  std::vector<std::string> names;
  for (const auto& t : c.tensors) names.push_back(t.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{
                "params/layers.0.kernel", "params/layers.0.bias", "params/layers.1.kernel",
                "params/layers.1.bias", "adam/mu/layers.0.kernel", "adam/mu/layers.0.bias",
                "adam/mu/layers.1.kernel", "adam/mu/layers.1.bias", "adam/nu/layers.0.kernel",
                "adam/nu/layers.0.bias", "adam/nu/layers.1.kernel", "adam/nu/layers.1.bias"}));
  EXPECT_EQ(c.find("params/layers.0.kernel")->shape, (std::vector<std::size_t>{4, 8}));
  EXPECT_EQ(c.find("params/layers.1.bias")->shape, (std::vector<std::size_t>{1}));
  EXPECT_EQ(c.find("params/layers.0.kernel")->values.front(), -3.0f);

  const auto& m = c.metadata;
  EXPECT_EQ(m.at("meshtrain.format"), "training_state");
  EXPECT_EQ(m.at("meshtrain.format_version"), "2");
  EXPECT_EQ(m.at("optimizer_step"), "17");
  EXPECT_EQ(m.at("epoch"), "2");
  EXPECT_EQ(m.at("batch"), "1");
  EXPECT_EQ(m.at("epoch_loss_sum"), "0.30000000000000004");
  EXPECT_EQ(m.at("epoch_losses"), "[20.123456789012344, 0.33333333333333331]");  // %.17g
  EXPECT_EQ(m.at("validation_losses"), "[nan, 0.66666666666666663]");
  EXPECT_EQ(m.at("fingerprint"), fingerprint_of(run_signature(model, config, kSamples)));
  EXPECT_EQ(m.at("model_widths"), "[4, 8, 1]");
  EXPECT_EQ(m.at("activation"), "tanh");
  EXPECT_EQ(m.at("strategy"), "data");
  EXPECT_EQ(m.at("world_size"), "2");
  EXPECT_EQ(m.at("mesh_shape"), "(2,)");
  EXPECT_EQ(m.at("created").size(), 20u);  // 2026-11-27T05:59:07Z
}

TEST(CheckpointState, RoundTripInMemoryAndThroughAFile) {
  const Mlp model({4, 8, 1}, Activation::ReLU, 0);
  const TrainingConfig config;
  const TrainingState state = sample_state(model);
  const Checkpoint c = to_checkpoint(state, model, config, kSamples);
  expect_same(state, from_checkpoint(c, "memory", model, config, kSamples));

  const std::string path = temp_file("round-trip.safetensors");
  write_checkpoint_atomic(path, c);
  expect_same(state, from_checkpoint(read_checkpoint(path), path, model, config, kSamples));
  fs::remove(path);
}

TEST(CheckpointState, SgdStoresNoMoments) {
  const Mlp model({4, 8, 1}, Activation::ReLU, 0);
  TrainingConfig config;
  config.optimizer = OptimizerType::Sgd;
  TrainingState state = sample_state(model);
  state.first_moment = HostVector();
  state.second_moment = HostVector();
  const Checkpoint c = to_checkpoint(state, model, config, kSamples);
  EXPECT_EQ(c.tensors.size(), 4u);
  expect_same(state, from_checkpoint(c, "memory", model, config, kSamples));
}

TEST(CheckpointState, AFinishedEpochIsStoredAsTheStartOfTheNext) {
  // Trainer::state() from the epoch callback: (epoch 2, batch = batches per epoch).
  const Mlp model({4, 8, 1}, Activation::ReLU, 0);
  const TrainingConfig config;
  TrainingState state = sample_state(model);
  state.batch = 2;
  state.epoch_losses.push_back(5.0);
  state.validation_losses.push_back(6.0);
  state.epoch_loss_sum = 10.0;
  state.epoch_loss_count = 2;
  const TrainingState back = from_checkpoint(to_checkpoint(state, model, config, kSamples),
                                             "memory", model, config, kSamples);
  EXPECT_EQ(back.epoch, 3);
  EXPECT_EQ(back.batch, 0u);
  EXPECT_EQ(back.epoch_loss_sum, 0.0);
  EXPECT_EQ(back.epoch_loss_count, 0);
  EXPECT_EQ(back.epoch_losses.size(), 3u);
}

TEST(CheckpointState, ADifferentRunIsRefusedNamingTheDifference) {
  const Mlp model({4, 8, 1}, Activation::ReLU, 0);
  const TrainingConfig config;
  const Checkpoint c = to_checkpoint(sample_state(model), model, config, kSamples);

  TrainingConfig faster = config;
  faster.learning_rate = 0.002;
  const std::string message = refusal(c, model, faster);
  EXPECT_NE(message.find("checkpoint run.safetensors: made for a different run (fingerprint " +
                         c.metadata.at("fingerprint") + ", this run " +
                         fingerprint_of(run_signature(model, faster, kSamples)) + ")"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("differs in learning_rate (checkpoint 0.001, this run 0.002)"),
            std::string::npos)
      << message;

  const Mlp wider({4, 9, 1}, Activation::ReLU, 0);
  EXPECT_NE(refusal(c, wider, config).find("widths (checkpoint 4,8,1, this run 4,9,1)"),
            std::string::npos);
  EXPECT_NE(refusal(c, model, config, kSamples + 1).find("samples"), std::string::npos);
  TrainingConfig sgd = config;
  sgd.optimizer = OptimizerType::Sgd;
  EXPECT_NE(refusal(c, model, sgd).find("optimizer (checkpoint adam, this run sgd)"),
            std::string::npos);

  // What does not change the numbers is allowed to change.
  TrainingConfig longer = config;
  longer.num_epochs = 50;
  longer.distributed_config = DistributedConfig{{1}, {"data"}, Strategy::Fsdp};
  EXPECT_EQ(refusal(c, model, longer), "");
}

TEST(CheckpointState, ShapeMismatchMissingAndUnexpectedTensorsAreRefused) {
  const Mlp model({4, 8, 1}, Activation::ReLU, 0);
  const TrainingConfig config;
  const Checkpoint good = to_checkpoint(sample_state(model), model, config, kSamples);

  Checkpoint reshaped = good;
  for (auto& t : reshaped.tensors) {
    if (t.name == "params/layers.0.kernel") t.shape = {8, 4};
  }
  EXPECT_NE(refusal(reshaped, model, config)
                .find("checkpoint run.safetensors: tensor params/layers.0.kernel has shape [8, 4], "
                      "this model's is [4, 8]"),
            std::string::npos);

  for (const std::string missing : {"params/layers.1.bias", "adam/nu/layers.0.kernel"}) {
    Checkpoint c = good;
    std::erase_if(c.tensors, [&](const CheckpointTensor& t) { return t.name == missing; });
    EXPECT_NE(refusal(c, model, config).find("tensor " + missing + " is missing"),
              std::string::npos)
        << missing;
  }

  Checkpoint extra = good;
  extra.tensors.push_back({"params/layers.2.kernel", {1}, {0.0f}});
  EXPECT_NE(refusal(extra, model, config).find("unexpected tensor params/layers.2.kernel"),
            std::string::npos);
}

TEST(CheckpointState, ForeignOrMalformedMetadataIsRefused) {
  const Mlp model({4, 8, 1}, Activation::ReLU, 0);
  const TrainingConfig config;
  const Checkpoint good = to_checkpoint(sample_state(model), model, config, kSamples);
  auto with = [&](const std::string& key, const std::string& value) {
    Checkpoint c = good;
    c.metadata[key] = value;
    return refusal(c, model, config);
  };
  auto without = [&](const std::string& key) {
    Checkpoint c = good;
    c.metadata.erase(key);
    return refusal(c, model, config);
  };
  EXPECT_NE(without("meshtrain.format").find("not a meshtrain training-state checkpoint"),
            std::string::npos);
  EXPECT_NE(with("meshtrain.format_version", "3").find("format version 3; this meshtrain reads versions 1 to 2"),
            std::string::npos);
  // Version 2 read from a file that no whole-file checksum covers (the key was removed, or
  // the header rewritten by another writer): refused. Version 1 (data checksum only) loads.
  Checkpoint unverified = good;
  unverified.header_unverified = true;
  EXPECT_NE(refusal(unverified, model, config).find("no whole-file checksum"), std::string::npos);
  unverified.metadata["meshtrain.format_version"] = "1";
  EXPECT_EQ(refusal(unverified, model, config), "");
  EXPECT_NE(without("fingerprint").find("metadata fingerprint is missing"), std::string::npos);
  EXPECT_NE(with("optimizer_step", "-1").find("metadata optimizer_step '-1'"), std::string::npos);
  EXPECT_NE(with("epoch", "two").find("metadata epoch 'two'"), std::string::npos);
  EXPECT_NE(
      with("epoch_losses", "[1, x]").find("metadata epoch_losses: 'x' is not a finite number"),
      std::string::npos);
  EXPECT_NE(with("epoch_losses", "[1]").find("metadata epoch 2 with 1 epoch_losses"),
            std::string::npos);
  EXPECT_NE(with("batch", "7").find("metadata batch 7: an epoch of this run has 2 batches"),
            std::string::npos);
}

// A run's checkpoints carry its id; pruning touches only the run's own files and never the
// one just written, whatever steps other runs' files have.
TEST(CheckpointState, PruningTouchesOnlyThisRunsCheckpoints) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) GTEST_SKIP() << "files: rank 0 only";
  const std::string dir = temp_file("prune");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const Mlp model({4, 8, 1}, Activation::ReLU, 0);
  const TrainingConfig config;
  Checkpoint base = to_checkpoint(sample_state(model), model, config, kSamples);
  const auto write = [&](std::uint64_t step, const std::string& run_id) {
    Checkpoint c = base;
    if (!run_id.empty()) c.metadata[kRunIdKey] = run_id;
    write_checkpoint_atomic(checkpoint_path(dir, "ckpt", step), c);
  };
  const std::string old_run = "00000000000000aa", new_run = new_run_id();
  EXPECT_EQ(new_run.size(), 16u);
  EXPECT_NE(new_run, new_run_id());
  for (std::uint64_t step : {18, 24, 30}) write(step, old_run);  // an earlier run, higher steps
  write(6, new_run);
  prune_run_checkpoints(dir, "ckpt", 1, new_run, checkpoint_path(dir, "ckpt", 6));
  write(12, new_run);
  prune_run_checkpoints(dir, "ckpt", 1, new_run, checkpoint_path(dir, "ckpt", 12));
  std::vector<std::string> names;
  for (const std::string& p : list_checkpoints(dir, "ckpt")) names.push_back(fs::path(p).filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"ckpt-12.safetensors", "ckpt-18.safetensors",
                                             "ckpt-24.safetensors", "ckpt-30.safetensors"}));
  // The file just written is kept even when its step is lower than the run's others.
  write(3, new_run);
  prune_run_checkpoints(dir, "ckpt", 1, new_run, checkpoint_path(dir, "ckpt", 3));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir, "ckpt", 3)));
  EXPECT_FALSE(fs::exists(checkpoint_path(dir, "ckpt", 12)));

  // Each file's step and run; a checkpoint from before run ids belongs to its fingerprint;
  // an unreadable one to no run, and it is never pruned.
  write(40, "");
  write_file_text(checkpoint_path(dir, "ckpt", 50), "not a checkpoint");
  const auto files = describe_checkpoints(dir, "ckpt");
  ASSERT_EQ(files.size(), 6u);
  EXPECT_EQ(files[0].step, 3u);
  EXPECT_EQ(files[0].run_id, new_run);
  EXPECT_EQ(files[1].run_id, old_run);
  EXPECT_EQ(files[4].step, 40u);
  EXPECT_EQ(files[4].run_id, base.metadata.at("fingerprint"));
  EXPECT_TRUE(files[4].problem.empty());
  EXPECT_EQ(files[5].run_id, "");
  EXPECT_NE(files[5].problem.find("runs past the end of the file"), std::string::npos) << files[5].problem;
  prune_run_checkpoints(dir, "ckpt", 1, "", checkpoint_path(dir, "ckpt", 99));
  EXPECT_EQ(describe_checkpoints(dir, "ckpt").size(), 6u);
  fs::remove_all(dir);
}

TEST(CheckpointState, SizeEstimateCoversTheFile) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) GTEST_SKIP() << "files: rank 0 only";
  for (const OptimizerType optimizer : {OptimizerType::Adam, OptimizerType::Sgd}) {
    const Mlp model({4, 32, 32, 1}, Activation::Tanh, 0);
    TrainingConfig config;
    config.optimizer = optimizer;
    config.num_epochs = 500;
    TrainingState state = sample_state(model);
    if (optimizer == OptimizerType::Sgd) state.first_moment = state.second_moment = HostVector();
    state.epoch = 500;
    state.batch = 0;
    state.epoch_losses.assign(500, 1.0 / 3.0);
    state.validation_losses.assign(500, 2.0 / 3.0);
    const std::string path = temp_file("size.safetensors");
    write_checkpoint_atomic(path, to_checkpoint(state, model, config, kSamples));
    const auto actual = fs::file_size(path);
    const std::uint64_t estimate = checkpoint_size_estimate(model, config);
    EXPECT_GE(estimate, actual) << name_of(optimizer);
    EXPECT_LE(estimate, actual + 64 * 1024) << name_of(optimizer);
    fs::remove(path);
  }
}

// A run stopped mid-epoch, written to a file by rank 0, read back by every rank and resumed in
// a fresh trainer, ends with the parameters of a run that was never stopped.
TEST(CheckpointState, ResumingThroughAFileIsBitIdentical) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  long pid = ::getpid();
  MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  const std::string path =
      (fs::temp_directory_path() / ("meshtrain-resume-" + std::to_string(pid) + ".safetensors"))
          .string();

  TrainingConfig config;
  config.num_epochs = 3;
  config.batch_size = 8;
  config.shuffle = true;
  const ReferenceData data = make_reference_data(static_cast<int>(kSamples), 4, 5);
  const std::vector<int> widths{4, 8, 1};

  Trainer straight(Mlp(widths, Activation::ReLU, 5), config);
  const FitResult full = straight.fit(data.x, data.y);

  volatile std::sig_atomic_t stop = 0;
  Trainer first(Mlp(widths, Activation::ReLU, 5), config);
  first.set_stop_flag(&stop);
  first.set_epoch_callback([&](const EpochReport& r) {
    if (r.epoch == 0) stop = 1;  // stops after the first step of epoch 1
  });
  first.fit(data.x, data.y);
  const TrainingState state = first.state();
  if (rank == 0)
    write_checkpoint_atomic(path, to_checkpoint(state, first.model(), first.config(), kSamples));
  MPI_Barrier(MPI_COMM_WORLD);

  Trainer second(Mlp(widths, Activation::ReLU, 77), config);
  second.prepare(data.x, data.y);
  const TrainingState loaded =
      from_checkpoint(read_checkpoint(path), path, second.model(), second.config(), kSamples);
  EXPECT_EQ(loaded.epoch, 1);
  EXPECT_EQ(loaded.batch, 1u);
  second.restore(loaded);
  const FitResult rest = second.fit();
  const HostVector a = full.model.parameters_on_host();
  const HostVector b = rest.model.parameters_on_host();
  EXPECT_EQ(values(a), values(b));
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove(path);
}

}  // namespace
