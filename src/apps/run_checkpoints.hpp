#pragma once
// Checkpoints of a `meshtrain train` run: written by rank 0 from the state every rank
// gathers, pruned to this run's newest keep_last; read by rank 0 on --resume and broadcast.
//
// A run has an id (metadata run_id), made by rank 0 at a fresh start and kept through every
// resume, so that a run only ever prunes its own files, and a run never starts where another
// run's checkpoints are unless told what to do with them.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/train/sharded_checkpoint.hpp"
#include "meshtrain/train/trainer.hpp"
#include "run_config.hpp"
#include "training_data.hpp"

namespace meshtrain::app {

struct ResumePoint {
  TrainingState state;  // from a sharded checkpoint: the position only (no vectors)
  std::string path;
  // From a sharded checkpoint: this rank's own values, read from the shards in its layout
  // (Trainer::restore(state, *local)).
  std::optional<LocalState> local;
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

  // Collective. Checkpoints the trainer's current step as DIR/PREFIX-STEP.safetensors, STEP
  // being the global batches trained since the run began, then prunes this run's older
  // ones. Returns the path; writes nothing when this step was just saved.
  //   checkpoint.format = "single": rank 0 writes the gathered state (Trainer::state())
  //     atomically before save returns.
  //   "sharded": every rank copies what it holds to the host and writes its shard in the
  //     background (ShardedCheckpointWriter); rank 0 publishes the index once every shard
  //     is on disk. With wait, save returns after the publication; without, training goes
  //     on and the next save (or finish()) collects the result.
  // A write that fails (the disk filled up during the run) is a ConfigError on every rank
  // naming checkpoint.dir and the file, so that the run ends with one line; the previous
  // checkpoint is intact.
  std::string save(Trainer& trainer, std::size_t samples, bool wait = true);
  // Collective: waits for a sharded write still in progress (ConfigError as save's).
  void finish();
  // The sharded writes' totals so far: the time training was held up starting them, and
  // their wall time to publication (rank 0).
  double blocked_seconds() const { return blocked_seconds_; }
  double write_seconds() const { return write_seconds_; }
  int writes() const { return writes_; }

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
  // Collective, sharded: a resumed index's shards, verified, read into this rank's layout.
  LocalState read_shards(const std::string& path, const Trainer& trainer);
  void check_shared_directory();
  void remove_orphan_shards();
  std::int64_t saved_step_ = -1;
  std::string saved_path_;
  std::string published_path_;  // the newest checkpoint known complete
  std::unique_ptr<ShardedCheckpointWriter> writer_;
  double blocked_seconds_ = 0.0;
  double write_seconds_ = 0.0;
  int writes_ = 0;
};

}  // namespace meshtrain::app
