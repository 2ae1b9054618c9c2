#pragma once
// Sharded checkpoints: every rank writes the values it holds, in parallel and off the
// training path, and any mesh, strategy and rank count reads them back.
//
// On disk, for a checkpoint DIR/PREFIX-STEP.safetensors:
//   DIR/PREFIX-STEP.shards-ID/shard-RRRRR-of-NNNNN.safetensors   one per rank, written by it:
//       tensors "params", "adam/mu", "adam/nu" (those the optimizer keeps), 1-D, the rank's
//       written runs (HeldRun::write) of the full flat layout concatenated in order; metadata
//       meshtrain.format = "training_state_shard", checkpoint_id = ID, shard, shard_count,
//       runs ("full:length,full:length,...") and the whole-file checksum;
//   DIR/PREFIX-STEP.safetensors   the index: a safetensors file without tensors whose
//       metadata is the training state's (to_checkpoint_index: position, history, run
//       signature, run id...) with meshtrain.format = "sharded_training_state" and
//       checkpoint_id, shards_dir (ID's directory name), shard_count, parameters,
//       shards (JSON: [{"file", "bytes", "runs": [[full, length], ...]}, ...]),
//       tensors (JSON: [{"name", "shape", "offset", "partition"}, ...]: the global shapes,
//       flat offsets and partition specs of the model the writer trained).
// The index is written last, after every shard is on disk, and published by one rename:
// a checkpoint is either complete or absent. The ID (fresh for every write) keeps a new
// write from ever mixing with an old or interrupted one.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "meshtrain/train/held_run.hpp"

namespace meshtrain {

inline constexpr const char* kShardedIndexFormat = "sharded_training_state";

// The full model's flat layout, as the index records it (Model::tensors(); see
// checkpoint_state.hpp's sharded_layout_of). This file includes no Kokkos, so that a CUDA
// build compiles it (and nlohmann-json) with the host compiler.
struct ShardedLayout {
  struct Tensor {
    std::string name;
    std::vector<std::size_t> shape;
    std::size_t offset = 0;
    std::vector<std::string> partition;
  };
  std::uint64_t parameters = 0;
  std::vector<Tensor> tensors;
};

// A rank's training state in its own layout (the engine's local buffers, padding included),
// on the host: what a sharded checkpoint is written from and read into. The moments are
// empty when the optimizer keeps none.
struct LocalState {
  std::vector<float> parameters;
  std::vector<float> first_moment;
  std::vector<float> second_moment;
};

// The tensor groups of a state, in file order, and the vector of each.
const std::vector<std::string>& shard_groups();  // "params", "adam/mu", "adam/nu"
std::vector<float>& group_of(LocalState& state, std::size_t group);
const std::vector<float>& group_of(const LocalState& state, std::size_t group);

// True when the metadata is a sharded checkpoint's index.
bool is_sharded_index(const std::map<std::string, std::string>& metadata);

// The directory an index's shards go to: "<index without .safetensors>.shards-<id>".
std::string shards_directory(const std::string& index_path, const std::string& checkpoint_id);
// "shard-00001-of-00004.safetensors"
std::string shard_file_name(int shard, int count);

// Writes rank `shard`'s file into shards_dir atomically: the values of its written runs.
// std::runtime_error naming the file when writing fails.
void write_shard(const std::string& shards_dir, const std::string& checkpoint_id, int shard,
                 int count, const std::vector<HeldRun>& runs, const LocalState& state);

// Once every shard of the checkpoint is in shards_dir: the metadata the index adds to the
// state's (reads the shards' headers only). ConfigError when a shard is missing, belongs to
// another write, or the shards do not cover the model's `parameters` values exactly once.
std::map<std::string, std::string> shard_index_entries(const std::string& shards_dir,
                                                       const std::string& checkpoint_id,
                                                       int count, const ShardedLayout& layout);

// A checkpoint's shards, for reading any run of the full layout.
class ShardSet {
 public:
  // From the index at index_path and its metadata (ConfigError naming the index when its
  // shard entries are malformed or do not cover `parameters` values exactly once).
  ShardSet(const std::string& index_path, const std::map<std::string, std::string>& metadata,
           std::uint64_t parameters);
  ~ShardSet();
  ShardSet(const ShardSet&) = delete;
  ShardSet& operator=(const ShardSet&) = delete;

  std::size_t count() const;
  const std::string& path(std::size_t shard) const;
  // Shard `shard` whole: its checksum (read a chunk at a time), its checkpoint id, runs and
  // size against the index. ConfigError naming the file.
  void verify(std::size_t shard) const;
  // Values [full, full + length) of group (shard_groups() index) into out, from the shards
  // that hold them (pread). ConfigError naming the file on a short read or missing group.
  void read(std::size_t group, std::uint64_t full, std::uint64_t length, float* out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Collective over comm: every shard verified, shard i by rank i % size, and the result
// shared: "" or the first problem found (the same text on every rank).
std::string verify_shards(Communicator& comm, const ShardSet& shards);

// This rank's state in its layout, read from the shards: every non-empty vector of state
// (sized as the rank's buffers) gets each run of `runs` at its local offset and zeros
// elsewhere (padding).
void read_local_state(const ShardSet& shards, const std::vector<HeldRun>& runs, LocalState& state);

// The sharded checkpoint indexed by index_path as one single-file checkpoint (what
// checkpoint.format = "single" writes: tensors params/NAME, adam/mu/NAME, adam/nu/NAME with
// the model's shapes, and the index's metadata under meshtrain.format = "training_state"),
// every shard verified first. Holds the whole model: for export, not for training.
// ConfigError naming the file for any problem.
Checkpoint consolidate_sharded(const std::string& index_path);

// Collective over comm: runs work on every rank, and when it threw a ConfigError or
// std::runtime_error on any, throws ConfigError with the lowest such rank's message on all.
void on_every_rank_sharing_errors(Communicator& comm, const std::function<void()>& work);

// One sharded checkpoint write at a time, in a background thread per rank.
class ShardedCheckpointWriter {
 public:
  struct Save {
    std::string index_path;   // DIR/PREFIX-STEP.safetensors
    Checkpoint index;         // metadata only (to_checkpoint_index and the caller's keys); rank 0's
    std::vector<HeldRun> runs;  // this rank's (engine's) runs
    LocalState state;           // this rank's values, in its layout
    ShardedLayout layout;        // the full model's
    // Rank 0, in the writer thread, after the index is published (e.g. pruning); an
    // exception it throws is the write's error.
    std::function<void()> after_commit;
  };
  explicit ShardedCheckpointWriter(Communicator& comm);
  ~ShardedCheckpointWriter();  // joins a write still running (its result is lost)
  ShardedCheckpointWriter(const ShardedCheckpointWriter&) = delete;
  ShardedCheckpointWriter& operator=(const ShardedCheckpointWriter&) = delete;

  // Collective. Finishes the previous write (wait(); its error, if any, is thrown as
  // ConfigError before anything else happens), then makes the shard directory (rank 0),
  // agrees on the write's id and starts writing this rank's shard in the background; rank
  // 0's thread then waits for every shard to land, writes the index and publishes it.
  void start(Save save);
  // Collective: waits for the write in progress, if any. Returns "" when it was published,
  // else what went wrong (the same on every rank); the shards of a failed write are removed.
  std::string wait();
  bool pending() const { return pending_; }
  // Seconds start() spent on the calling thread in the last call (the part of a write that
  // blocks training) and the last write's wall time from start() to its publication as
  // measured by wait() (rank 0's thread; 0 elsewhere).
  double last_start_seconds() const { return start_seconds_; }
  double last_write_seconds() const;

  // How long rank 0 waits for a shard that does not appear before giving up (default 600 s).
  void set_shard_timeout(double seconds) { shard_timeout_ = seconds; }

 private:
  struct Job;
  Communicator& comm_;
  std::unique_ptr<Job> job_;
  bool pending_ = false;
  double start_seconds_ = 0.0;
  double write_seconds_ = 0.0;
  double shard_timeout_ = 600.0;
};

}  // namespace meshtrain
