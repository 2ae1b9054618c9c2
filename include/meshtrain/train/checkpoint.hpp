#pragma once
// Checkpoints in the safetensors format (https://github.com/huggingface/safetensors):
// an 8-byte little-endian header length N, N bytes of JSON header, then the raw tensor bytes.
// Files are readable by safetensors.numpy.load_file / safetensors.torch.load_file, and files
// written by those (F32 only) are readable here.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace meshtrain {

struct CheckpointTensor {
  std::string name;
  std::vector<std::size_t> shape;  // [] is a scalar (one value)
  std::vector<float> values;       // product(shape) values, row-major
};

struct Checkpoint {
  std::vector<CheckpointTensor> tensors;  // in file (byte-buffer) order
  std::map<std::string, std::string> metadata;

  // The tensor called name, or nullptr.
  const CheckpointTensor* find(const std::string& name) const;
};

// The metadata key under which the writer stores the CRC-32 (IEEE, as zlib.crc32 computes it)
// of the byte buffer, as 8 lowercase hex digits. Reserved: the writer sets it, the reader
// checks it and does not return it in Checkpoint::metadata.
inline constexpr const char* kCheckpointChecksumKey = "meshtrain.crc32";

// Writes checkpoint to path + ".tmp.<pid>" in the same directory, flushes and fsyncs it,
// renames it over path and fsyncs the directory, so path holds either the old file or the
// complete new one, never a partial one. Call it from one rank.
// Throws std::invalid_argument for an inconsistent checkpoint (values not matching the
// shape, duplicate, empty or reserved names) and std::runtime_error naming the path and the
// system error when writing fails; the temporary file is removed then.
void write_checkpoint_atomic(const std::string& path, const Checkpoint& checkpoint);

// Reads and validates a safetensors file holding F32 tensors. Every problem (short or
// truncated file, bad header length, invalid JSON, unknown or unsupported dtype, shapes not
// matching offsets, offsets out of range, overlapping or leaving gaps, duplicate names,
// non-string metadata, trailing bytes, a checksum mismatch) throws ConfigError whose message
// starts with the path. Files without the checksum key are accepted.
Checkpoint read_checkpoint(const std::string& path);

// dir/<prefix>-<step>.safetensors
std::string checkpoint_path(const std::string& dir, const std::string& prefix, std::uint64_t step);

// The paths of dir's files named <prefix>-<step>.safetensors (step: decimal digits), sorted by
// step ascending (numerically: 2 before 10). Temporary files are ignored. A missing
// directory has no checkpoints.
std::vector<std::string> list_checkpoints(const std::string& dir, const std::string& prefix);

// Deletes all but the keep_last newest checkpoints that list_checkpoints finds (keep_last 0
// deletes them all). Throws std::runtime_error naming the file when one cannot be removed.
void prune_checkpoints(const std::string& dir, const std::string& prefix, std::size_t keep_last);

}  // namespace meshtrain
