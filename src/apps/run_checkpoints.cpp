#include "run_checkpoints.hpp"

#include <array>
#include <filesystem>
#include <system_error>

#include "meshtrain/error.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "meshtrain/train/checkpoint_state.hpp"
#include "root_io.hpp"

namespace meshtrain::app {

namespace {

namespace fs = std::filesystem;

// Rank 0's state on every rank; the other ranks know the parameter count from the model.
void broadcast_state(MpiCommunicator& comm, TrainingState& s, std::size_t parameters) {
  std::array<std::int64_t, 7> header{s.first_moment.extent(0) > 0,
                                     s.second_moment.extent(0) > 0,
                                     s.optimizer_step,
                                     s.epoch,
                                     static_cast<std::int64_t>(s.batch),
                                     s.epoch_loss_count,
                                     s.skipped_steps};
  comm.broadcast(header.data(), header.size(), DataType::Int64, 0);
  s.optimizer_step = header[2];
  s.epoch = static_cast<int>(header[3]);
  s.batch = static_cast<std::size_t>(header[4]);
  s.epoch_loss_count = header[5];
  s.skipped_steps = header[6];
  comm.broadcast(&s.epoch_loss_sum, 1, DataType::Float64, 0);
  broadcast_doubles(comm, s.epoch_losses);
  broadcast_doubles(comm, s.validation_losses);
  auto vector = [&](HostVector& v, bool present, const char* label) {
    if (!present) return;
    if (comm.rank() != 0) v = HostVector(std::string(label), parameters);
    broadcast_floats(comm, v.data(), parameters);
  };
  vector(s.parameters, true, "resume.parameters");
  vector(s.first_moment, header[0] != 0, "resume.mu");
  vector(s.second_moment, header[1] != 0, "resume.nu");
}

}  // namespace

RunCheckpoints::RunCheckpoints(const RunConfig& config, MpiCommunicator& comm)
    : settings_(config.checkpoint), config_source_(config.source), comm_(comm) {
  if (!enabled()) return;
  const std::string where = config.where("checkpoint.dir");
  on_root_sharing_errors(comm_, [&] {
    std::error_code ec;
    fs::create_directories(settings_.dir, ec);
    if (ec || !fs::is_directory(settings_.dir)) {
      throw ConfigError(where + ": " + settings_.dir + ": cannot create the directory" +
                        (ec ? ": " + ec.message() : std::string()));
    }
  });
}

std::string RunCheckpoints::save(const TrainingState& raw_state, const Trainer& trainer,
                                 std::size_t samples) {
  if (!enabled()) return "";
  const std::size_t batches = trainer.batches_per_epoch();
  const TrainingState state = at_epoch_boundary(raw_state, batches);
  const auto step =
      static_cast<std::int64_t>(static_cast<std::size_t>(state.epoch) * batches + state.batch);
  if (step == saved_step_) return saved_path_;
  const std::string path =
      checkpoint_path(settings_.dir, settings_.prefix, static_cast<std::uint64_t>(step));
  if (comm_.rank() == 0) {
    write_checkpoint_atomic(path, to_checkpoint(state, trainer.model(), trainer.config(), samples));
    if (settings_.keep_last > 0) {
      prune_checkpoints(settings_.dir, settings_.prefix,
                        static_cast<std::size_t>(settings_.keep_last));
    }
  }
  saved_step_ = step;
  saved_path_ = path;
  return path;
}

ResumePoint RunCheckpoints::load(const std::string& resume, const Trainer& trainer,
                                 std::size_t samples) {
  ResumePoint point;
  on_root_sharing_errors(comm_, [&] {
    if (resume == "latest") {
      if (!enabled()) {
        throw ConfigError("--resume latest: checkpoint.dir is not set in " + config_source_);
      }
      const auto paths = list_checkpoints(settings_.dir, settings_.prefix);
      if (paths.empty()) {
        throw ConfigError("--resume latest: no checkpoints " + settings_.prefix +
                          "-<step>.safetensors in " + settings_.dir);
      }
      point.path = paths.back();
    } else {
      point.path = resume;
    }
    Checkpoint checkpoint;
    try {
      checkpoint = read_checkpoint(point.path);
    } catch (const ConfigError& e) {
      throw ConfigError("--resume " + resume + ": " + e.what());
    }
    point.state =
        from_checkpoint(checkpoint, point.path, trainer.model(), trainer.config(), samples);
    if (point.state.epoch > trainer.config().num_epochs) {
      throw ConfigError(
          "checkpoint " + point.path + ": at epoch " + std::to_string(point.state.epoch) +
          ", beyond training.num_epochs = " + std::to_string(trainer.config().num_epochs));
    }
  });
  broadcast_string(comm_, point.path);
  broadcast_state(comm_, point.state, trainer.model().num_parameters());
  return point;
}

}  // namespace meshtrain::app
