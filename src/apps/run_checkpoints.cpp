#include "run_checkpoints.hpp"

#include <filesystem>
#include <system_error>

#include "meshtrain/error.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "meshtrain/train/checkpoint_state.hpp"
#include "root_io.hpp"

namespace meshtrain::app {

namespace fs = std::filesystem;

RunCheckpoints::RunCheckpoints(const RunConfig& config, Communicator& comm)
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

std::string RunCheckpoints::save(const TrainingState& state, const Trainer& trainer,
                                 std::size_t samples) {
  if (!enabled()) return "";
  const std::size_t batches = trainer.batches_per_epoch();
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
