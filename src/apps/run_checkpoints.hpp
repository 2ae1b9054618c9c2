#pragma once
// Checkpoints of a `meshtrain train` run: written by rank 0 from the state every rank
// gathers, pruned to this run's newest keep_last; read by rank 0 on --resume and broadcast.
//
// A run has an id (metadata run_id), made by rank 0 at a fresh start and kept through every
// resume, so that a run only ever prunes its own files, and a run never starts where another
// run's checkpoints are unless told what to do with them.
#include <cstdint>
#include <optional>
#include <string>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/train/trainer.hpp"
#include "run_config.hpp"
#include "training_data.hpp"

namespace meshtrain::app {

struct ResumePoint {
  TrainingState state;
  std::string path;
};

class RunCheckpoints {
 public:
  // Rank 0 takes the CRC-32 of the training data (x then y, as float32), which every
  // checkpoint records and a resume must match.
  RunCheckpoints(const RunConfig& config, const TrainingData& data, Communicator& comm);
  ~RunCheckpoints();
  RunCheckpoints(const RunCheckpoints&) = delete;
  RunCheckpoints& operator=(const RunCheckpoints&) = delete;

  bool enabled() const { return !settings_.dir.empty(); }

  // Collective, before any training: decides how the run starts and checks checkpoint.dir.
  // resume: "" (a fresh run), "auto" (the newest checkpoint when checkpoint.dir holds one,
  // else a fresh run), "latest" (the newest; there must be one) or a file's path.
  // Rank 0 creates checkpoint.dir, checks that it is writable with room for the checkpoints
  // the run keeps, locks it against other runs with the same prefix for as long as this
  // object lives (flock on DIR/.PREFIX.lock; a file system without locks is not refused), reads and checks the checkpoint to resume (this run's settings and
  // training data), and refuses when checkpoint.dir holds checkpoints (same prefix) of
  // another run, or of this run beyond the one resumed, unless checkpoint.overwrite moves
  // them aside. Returns the state to resume, or nothing for a fresh run. ConfigError on every
  // rank for any problem.
  std::optional<ResumePoint> start(const std::string& resume, const Trainer& trainer,
                                   std::size_t samples);

  // Rank 0 writes state (Trainer::state(), which every rank must call) atomically to
  // DIR/PREFIX-STEP.safetensors, STEP being the global batches trained since the run began,
  // then prunes this run's older ones. Returns the path; writes nothing when this step was
  // just saved. Collective: a write that fails (the disk filled up during the run) is a
  // ConfigError on every rank naming checkpoint.dir and the file, so that the run ends with
  // one line; the previous checkpoint is intact.
  std::string save(const TrainingState& state, const Trainer& trainer, std::size_t samples);

  // Where the checkpoints of another run went (checkpoint.overwrite), or empty.
  const std::string& set_aside() const { return set_aside_; }

 private:
  std::optional<ResumePoint> resolve(const std::string& resume, const Trainer& trainer,
                                     std::size_t samples);
  void lock_directory();
  void check_directory_contents(const std::optional<ResumePoint>& resumed, const Trainer& trainer);

  CheckpointSettings settings_;
  std::string config_source_;
  std::string dir_where_;        // "run.toml:21: checkpoint.dir"
  std::string data_description_;  // "data.train_x = a.npy, data.train_y = b.npy"
  Communicator& comm_;
  std::uint32_t data_crc_ = 0;  // rank 0
  std::string run_id_;
  std::string set_aside_;
  int lock_fd_ = -1;  // rank 0: the open, locked DIR/.PREFIX.lock
  std::int64_t saved_step_ = -1;
  std::string saved_path_;
};

}  // namespace meshtrain::app
