#pragma once
// A TrainingState as a safetensors Checkpoint, and back.
//
// Tensors (F32, shapes as the model's TensorSpec::shape):
//   params/<tensor>     e.g. params/layers.0.kernel (in, out), params/layers.0.bias (out)
//   adam/mu/<tensor>    the optimizer's first moment, when it keeps one (adam, adamw)
//   adam/nu/<tensor>    the second moment (adam, adamw)
// Metadata (strings, as safetensors requires):
//   meshtrain.format = "training_state", meshtrain.format_version = "2" (version 1 files,
//     whose checksum covered only the tensor data, still load; version 2 ones must carry
//     the whole-file checksum, checkpoint.hpp's kCheckpointFileChecksumKey)
//   optimizer_step, epoch, batch, epoch_loss_count, skipped_steps: decimal integers
//   epoch_loss_sum: "%.17g"; epoch_losses, validation_losses, test_losses: "[a, b, ...]"
//     with "%.17g" (NaN, where an epoch had no validation, as "nan"; test_losses may be
//     absent, in checkpoints from before test sets)
//   fingerprint: 16 hex digits of FNV-1a 64 over `run`, the canonical run signature
//   run: "widths=4,64,1;activations=relu,identity;optimizer=adam;..." (see run_signature)
//   run_id: 16 hex digits naming the run (made at a fresh start, kept through resumes;
//     set by the program that writes the checkpoints, see run_id_of)
//   model_widths and activation (an MLP) or model_layers (any other model), optimizer,
//     strategy, mesh_shape, world_size, created (UTC, ISO 8601): for people; never read back.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/nn/model.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "meshtrain/train/sharded_checkpoint.hpp"
#include "meshtrain/train/trainer.hpp"
#include "meshtrain/train/training_config.hpp"

namespace meshtrain {

inline constexpr int kTrainingStateFormatVersion = 2;

// What determines a run's numbers, so that a checkpoint is only resumed by the run that made
// it: the model (an MLP, a model of Dense layers only, by its widths and activations as
// checkpoints have always said; any other by its layers' descriptions, "layers=a|b|..."),
// optimizer, learning rate, global batch, seed, shuffle and the number of training samples. Not the mesh, the rank count or num_epochs:
// a data-parallel run may resume on another rank count, or continue for more epochs.
// Format: "key=value;key=value;..." in a fixed order, doubles as "%.17g".
std::string run_signature(const Model& model, const TrainingConfig& config, std::size_t samples);

// 16 lowercase hex digits of the 64-bit FNV-1a hash of text.
std::string fingerprint_of(const std::string& text);

// The metadata key of a checkpoint's run id.
inline constexpr const char* kRunIdKey = "run_id";

// A new run id: 16 lowercase hex digits from std::random_device.
std::string new_run_id();

// The run a checkpoint (given by its metadata) belongs to: its run_id, or, for checkpoints
// written before runs had ids, its fingerprint (so an old run resumed keeps one id, and its
// old files count as its own). Empty when the metadata has neither.
std::string run_id_of(const std::map<std::string, std::string>& metadata);

// A checkpoint file of dir with the prefix (list_checkpoints), its step and its run
// (run_id_of; empty when the file cannot be read: `problem` says why).
struct CheckpointFileInfo {
  std::string path;
  std::uint64_t step = 0;
  std::string run_id;
  std::string problem;
};
std::vector<CheckpointFileInfo> describe_checkpoints(const std::string& dir, const std::string& prefix);

// Deletes all but the keep_last newest (by step) of dir's checkpoints that belong to run_id,
// never the file `keep` (the one just written). Files of other runs and files that cannot be
// read are left alone. keep_last 0 deletes nothing.
void prune_run_checkpoints(const std::string& dir, const std::string& prefix, std::size_t keep_last,
                           const std::string& run_id, const std::string& keep);

// The files a checkpoint file brings along: a sharded index's shard directory (when it
// exists); none for a single-file checkpoint or a file that cannot be read.
std::vector<std::string> checkpoint_companions(const std::string& path);
// Removes a checkpoint: the file, then its companions. std::runtime_error naming what could
// not be removed.
void remove_checkpoint(const std::string& path);

// Moves the files `paths` (and their companions) (files of dir: another run's checkpoints or metrics) into a new
// directory dir/replaced-<UTC time> (with -2, -3, ... when that exists) and returns its
// path: set aside, not deleted, and no longer listed. ConfigError naming dir and the target
// when a move fails.
std::string move_files_aside(const std::string& dir, const std::vector<std::string>& paths);

// About the size in bytes of one checkpoint of model under config (its tensors exactly,
// the header by a generous estimate), for checking the free space before a run.
std::uint64_t checkpoint_size_estimate(const Model& model, const TrainingConfig& config);

// Collective over comm: root's state on every rank (the receivers allocate the vectors
// root has; `parameters` is the model's parameter count, which every rank knows).
void broadcast_state(Communicator& comm, TrainingState& state, std::size_t parameters,
                     int root = 0);

// The checkpoint of state for a run of model under config on `samples` training samples.
// The human-readable metadata comes from config (its distributed_config as resolved by the
// Trainer).
Checkpoint to_checkpoint(const TrainingState& state, const Model& model, const TrainingConfig& config,
                         std::size_t samples);

// The index of a sharded checkpoint of position (the state without its vectors, which the
// ranks write as shards: see sharded_checkpoint.hpp): to_checkpoint's metadata with
// meshtrain.format = "sharded_training_state", and no tensors.
Checkpoint to_checkpoint_index(const TrainingState& position, const Model& model,
                               const TrainingConfig& config, std::size_t samples);

// The model's flat layout for a sharded checkpoint's index.
ShardedLayout sharded_layout_of(const Model& model);

// The state stored in checkpoint, checked against the run about to resume it. Throws
// ConfigError starting with "checkpoint SOURCE: " (source: the file's path) when the format
// or its version is unknown, metadata is missing or malformed, the fingerprint differs
// ("made for a different run (fingerprint X, this run Y); differs in: ..."), or a tensor is
// missing, unexpected or of the wrong shape. A sharded checkpoint's index gives the position
// and history only (the vectors empty: the ranks read them from the shards).
TrainingState from_checkpoint(const Checkpoint& checkpoint, const std::string& source,
                              const Model& model, const TrainingConfig& config, std::size_t samples);

}  // namespace meshtrain
