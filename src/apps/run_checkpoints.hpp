#pragma once
// Checkpoints of a `meshtrain train` run: written by rank 0 from the state every rank
// gathers, pruned to the newest keep_last; read by rank 0 on --resume and broadcast.
#include <cstdint>
#include <string>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/train/trainer.hpp"
#include "run_config.hpp"

namespace meshtrain::app {

struct ResumePoint {
  TrainingState state;
  std::string path;
};

class RunCheckpoints {
 public:
  // Collective: rank 0 creates the directory (ConfigError on every rank when it cannot).
  RunCheckpoints(const RunConfig& config, Communicator& comm);

  bool enabled() const { return !settings_.dir.empty(); }

  // Rank 0 writes state (Trainer::state(), which every rank must call) atomically to
  // DIR/PREFIX-STEP.safetensors, STEP being the global batches trained since the run began,
  // then prunes the older ones. Returns the path; writes nothing when this step was just saved.
  std::string save(const TrainingState& state, const Trainer& trainer, std::size_t samples);

  // Collective: "latest" (the highest step in the directory) or a file's path, read and
  // checked against this run by rank 0 and broadcast. ConfigError on every rank for a
  // missing, corrupt or foreign checkpoint.
  ResumePoint load(const std::string& resume, const Trainer& trainer, std::size_t samples);

 private:
  CheckpointSettings settings_;
  std::string config_source_;
  Communicator& comm_;
  std::int64_t saved_step_ = -1;
  std::string saved_path_;
};

}  // namespace meshtrain::app
