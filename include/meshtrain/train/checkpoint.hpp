#pragma once
// Checkpoints in the safetensors format (https://github.com/huggingface/safetensors):
// an 8-byte little-endian header length N, N bytes of JSON header, then the raw tensor bytes.
// Files are readable by safetensors.numpy.load_file / safetensors.torch.load_file, and files
// written by those (F32 only) are readable here.
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
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
  // Set by read_checkpoint when no checksum covered the header and metadata: a file of
  // another writer, or one meshtrain wrote before the whole-file checksum (which only
  // checksummed the tensor data). A checkpoint made in memory is intact.
  bool header_unverified = false;

  // The tensor called name, or nullptr.
  const CheckpointTensor* find(const std::string& name) const;
};

// The metadata key under which the writer stores the CRC-32 (IEEE, as zlib.crc32 computes it)
// of the byte buffer, as 8 lowercase hex digits. Reserved: the writer sets it, the reader
// checks it and does not return it in Checkpoint::metadata.
inline constexpr const char* kCheckpointChecksumKey = "meshtrain.crc32";

// The metadata key of the whole file's CRC-32, as 8 lowercase hex digits: the CRC of the
// file's bytes (length prefix, JSON header, tensor data) with the 8 digits of this value
// replaced by '0's. The writer writes the header with "00000000" there, computes the CRC and
// puts its digits in their place (same length, so nothing moves); a reader finds the value
// in the header text, blanks it and recomputes. Reserved like kCheckpointChecksumKey.
// Files written before it existed have only kCheckpointChecksumKey and still load.
inline constexpr const char* kCheckpointFileChecksumKey = "meshtrain.file_crc32";

// CRC-32 (IEEE, zlib.crc32's) of size bytes at data, continuing from crc (0 to start).
std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t crc = 0);

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
// starts with the path. Files without the checksum keys are accepted (header_unverified).
Checkpoint read_checkpoint(const std::string& path);

// The metadata of the safetensors file at path, reading only its header (no checksum is
// checked: the data is not read). ConfigError as read_checkpoint for a malformed header.
std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path);

// Where the tensors of a safetensors file are, from its header alone (checked as
// read_checkpoint checks it; no checksum is checked: see verify_checkpoint_file), for
// reading parts of the tensors with pread. The checksum keys are not in metadata.
struct CheckpointLayout {
  struct Tensor {
    std::string name;
    std::vector<std::size_t> shape;
    std::uint64_t offset = 0;  // of its first byte in the file
    std::uint64_t bytes = 0;
  };
  std::map<std::string, std::string> metadata;
  std::vector<Tensor> tensors;  // in file order
  std::uint64_t file_size = 0;
  const Tensor* find(const std::string& name) const;  // nullptr when absent
};
CheckpointLayout read_checkpoint_layout(const std::string& path);

// Reads the whole file a chunk at a time (never holding it) and checks its whole-file
// checksum, which it must have. ConfigError starting with the path otherwise.
void verify_checkpoint_file(const std::string& path);

// dir/<prefix>-<step>.safetensors
std::string checkpoint_path(const std::string& dir, const std::string& prefix, std::uint64_t step);

// The paths of dir's files named <prefix>-<step>.safetensors (step: decimal digits), sorted by
// step ascending (numerically: 2 before 10). Temporary files are ignored. A missing
// directory has no checkpoints.
std::vector<std::string> list_checkpoints(const std::string& dir, const std::string& prefix);

// Makes sure files can be written in dir before a run relies on it: creates dir (and its
// parents) when missing, checks that it is a directory, creates and removes a probe file in
// it, and checks that its file system has at least bytes_needed bytes free for an
// unprivileged user (statvfs: f_bavail * f_frsize; free_bytes replaces that figure, for
// tests). Throws ConfigError "LABEL: DIR: why" (label: the key or flag that named dir;
// needed_for says what the bytes are for, e.g. "4 checkpoints of 1.2 MiB").
void prepare_output_directory(const std::string& label, const std::string& dir,
                              std::uint64_t bytes_needed, const std::string& needed_for,
                              std::optional<std::uint64_t> free_bytes = std::nullopt);

// "1.5 GiB", "12.0 MiB", "512 bytes": for messages.
std::string format_bytes(std::uint64_t bytes);

// Deletes all but the keep_last newest checkpoints that list_checkpoints finds (keep_last 0
// deletes them all). Throws std::runtime_error naming the file when one cannot be removed.
void prune_checkpoints(const std::string& dir, const std::string& prefix, std::size_t keep_last);

}  // namespace meshtrain
