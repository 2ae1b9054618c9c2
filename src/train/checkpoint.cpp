#include "meshtrain/train/checkpoint.hpp"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "meshtrain/error.hpp"

namespace meshtrain {

// safetensors stores little-endian values and we copy them straight into memory.
static_assert(std::endian::native == std::endian::little,
              "meshtrain's checkpoints assume a little-endian host");

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::size_t kLengthPrefixSize = 8;
constexpr std::size_t kHeaderAlignment = 8;            // the tensor bytes start 8-byte aligned
constexpr std::uint64_t kMaxHeaderSize = 100'000'000;  // the limit the safetensors library uses
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kSuffix = ".safetensors";

// ---- CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), the one zlib.crc32 computes.

constexpr std::array<std::uint32_t, 256> make_crc_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr auto kCrcTable = make_crc_table();

constexpr std::size_t kCrcDigits = 8;

// Where the 8 digits of the whole-file checksum's value start in a header's text: after the
// one occurrence of "meshtrain.file_crc32" (quotes included), optional whitespace, ':',
// optional whitespace and '"'. A quoted key cannot occur inside a JSON string (its quotes
// would be escaped); nothing when it is missing, occurs twice, or its value is not 8
// characters in quotes.
std::optional<std::size_t> file_checksum_position(const std::string& header) {
  const std::string key = std::string("\"") + kCheckpointFileChecksumKey + "\"";
  const std::size_t at = header.find(key);
  if (at == std::string::npos || header.find(key, at + 1) != std::string::npos) return std::nullopt;
  std::size_t i = at + key.size();
  const auto skip_space = [&] {
    while (i < header.size() && (header[i] == ' ' || header[i] == '\t' || header[i] == '\n' ||
                                 header[i] == '\r'))
      ++i;
  };
  skip_space();
  if (i >= header.size() || header[i] != ':') return std::nullopt;
  ++i;
  skip_space();
  if (i >= header.size() || header[i] != '"') return std::nullopt;
  ++i;
  if (i + kCrcDigits >= header.size() || header[i + kCrcDigits] != '"') return std::nullopt;
  return i;
}

std::string crc_hex(std::uint32_t crc) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", crc);
  return text;
}

// ---- Shared helpers.

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

std::string system_error_text() { return std::strerror(errno); }

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw ConfigError(path + ": " + what);
}

std::optional<std::size_t> element_count(const std::vector<std::size_t>& shape) {
  std::size_t count = 1;
  for (std::size_t d : shape) {
    if (d != 0 && count > std::numeric_limits<std::size_t>::max() / sizeof(float) / d) return std::nullopt;
    count *= d;
  }
  return count;
}

std::string shape_text(const std::vector<std::size_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// ---- Writing.

void validate_for_writing(const std::string& path, const Checkpoint& checkpoint) {
  const auto invalid = [&path](const std::string& what) {
    throw std::invalid_argument(path + ": cannot write checkpoint: " + what);
  };
  std::set<std::string> names;
  for (const CheckpointTensor& t : checkpoint.tensors) {
    if (t.name.empty()) invalid("a tensor has an empty name");
    if (t.name == kMetadataKey) invalid(std::string("the tensor name '") + kMetadataKey + "' is reserved");
    if (!names.insert(t.name).second) invalid("duplicate tensor name '" + t.name + "'");
    const auto count = element_count(t.shape);
    if (!count) invalid("tensor '" + t.name + "' has a shape too large: " + shape_text(t.shape));
    if (*count != t.values.size()) {
      invalid("tensor '" + t.name + "' has shape " + shape_text(t.shape) + " (" + std::to_string(*count) +
              " values) but holds " + std::to_string(t.values.size()));
    }
  }
  for (const char* reserved : {kCheckpointChecksumKey, kCheckpointFileChecksumKey}) {
    if (checkpoint.metadata.count(reserved))
      invalid(std::string("the metadata key '") + reserved + "' is reserved");
    if (names.count(reserved)) invalid(std::string("the tensor name '") + reserved + "' is reserved");
  }
}

// The JSON header, space-padded so that the byte buffer starts 8-byte aligned.
std::string build_header(const std::string& path, const Checkpoint& checkpoint, std::uint32_t crc) {
  nlohmann::ordered_json header;
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
  for (const auto& [key, value] : checkpoint.metadata) metadata[key] = value;
  metadata[kCheckpointChecksumKey] = crc_hex(crc);
  metadata[kCheckpointFileChecksumKey] = std::string(kCrcDigits, '0');  // see write_checkpoint_atomic
  header[kMetadataKey] = std::move(metadata);
  std::size_t offset = 0;
  for (const CheckpointTensor& t : checkpoint.tensors) {
    const std::size_t bytes = t.values.size() * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // names or metadata that are not valid UTF-8
    throw std::invalid_argument(path + ": cannot write checkpoint: " + e.what());
  }
  text.append((kHeaderAlignment - text.size() % kHeaderAlignment) % kHeaderAlignment, ' ');
  return text;
}

// A file created for writing that is closed and removed when destroyed, unless commit()
// was called after it was closed and renamed.
class TemporaryFile {
 public:
  explicit TemporaryFile(std::string path)
      : path_(std::move(path)), file_(std::fopen(path_.c_str(), "wb")), created_(file_ != nullptr) {}
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  ~TemporaryFile() {
    if (file_) std::fclose(file_);
    if (created_ && !committed_) std::remove(path_.c_str());
  }
  std::FILE* get() const { return file_; }
  bool close() {
    const bool closed = std::fclose(file_) == 0;
    file_ = nullptr;
    return closed;
  }
  void commit() { committed_ = true; }

 private:
  std::string path_;
  std::FILE* file_;
  bool created_;  // never remove a file someone else put there
  bool committed_ = false;
};

// Makes the rename durable: the directory entry itself must reach the disk.
void sync_directory(const std::string& path) {
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    throw std::runtime_error(path + ": cannot open its directory to sync it: " + system_error_text());
  const int synced = ::fsync(fd);
  const int saved_errno = errno;
  ::close(fd);
  errno = saved_errno;
  if (synced != 0) throw std::runtime_error(path + ": cannot sync its directory: " + system_error_text());
}

// ---- Reading.

struct TensorEntry {
  std::string name;
  std::vector<std::size_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

// Parses the header, refusing duplicate keys in any object (nlohmann::json keeps the last).
json parse_header(const std::string& path, const std::string& text) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  const json::parser_callback_t track_keys = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      open_objects.pop_back();
    } else if (event == json::parse_event_t::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, track_keys);
  } catch (const json::parse_error& e) {
    fail(path, std::string("invalid JSON header: ") + e.what());
  }
  if (!duplicate.empty()) fail(path, "the header names '" + duplicate + "' twice");
  if (!header.is_object()) fail(path, "the header is not a JSON object");
  return header;
}

std::vector<std::uint64_t> unsigned_array(const std::string& path, const std::string& tensor,
                                          const json& value, const char* field) {
  const auto bad = [&] {
    fail(path, "tensor '" + tensor + "': '" + field + "' must be an array of non-negative integers, got " +
                   value.dump());
  };
  if (!value.is_array()) bad();
  std::vector<std::uint64_t> numbers;
  for (const json& v : value) {
    if (!v.is_number_unsigned()) bad();
    numbers.push_back(v.get<std::uint64_t>());
  }
  return numbers;
}

TensorEntry parse_tensor_entry(const std::string& path, const std::string& name, const json& value) {
  if (!value.is_object()) fail(path, "tensor '" + name + "': expected an object, got " + value.dump());
  for (const auto& [key, unused] : value.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail(path, "tensor '" + name + "': unknown key '" + key + "'");
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) fail(path, "tensor '" + name + "': missing '" + key + "'");
  }
  const json& dtype = value.at("dtype");
  if (!dtype.is_string()) fail(path, "tensor '" + name + "': 'dtype' must be a string, got " + dtype.dump());
  if (dtype != "F32")
    fail(path, "tensor '" + name + "': unsupported dtype " + dtype.dump() + " (only F32 is supported)");

  TensorEntry entry{name, {}, 0, 0};
  for (std::uint64_t d : unsigned_array(path, name, value.at("shape"), "shape")) entry.shape.push_back(d);
  const auto offsets = unsigned_array(path, name, value.at("data_offsets"), "data_offsets");
  if (offsets.size() != 2) fail(path, "tensor '" + name + "': 'data_offsets' must be [begin, end]");
  entry.begin = offsets[0];
  entry.end = offsets[1];
  const std::string offsets_text =
      "data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "]";
  if (entry.begin > entry.end)
    fail(path, "tensor '" + name + "': " + offsets_text + " end before they begin");
  const auto count = element_count(entry.shape);
  if (!count) fail(path, "tensor '" + name + "': shape " + shape_text(entry.shape) + " is too large");
  if (entry.end - entry.begin != *count * sizeof(float)) {
    fail(path, "tensor '" + name + "': shape " + shape_text(entry.shape) + " needs " +
                   std::to_string(*count * sizeof(float)) + " bytes as F32 but " + offsets_text + " span " +
                   std::to_string(entry.end - entry.begin));
  }
  return entry;
}

// Sorts the entries by offset and checks that they tile [0, buffer_size) exactly.
void check_layout(const std::string& path, std::vector<TensorEntry>& entries, std::uint64_t buffer_size) {
  for (const TensorEntry& e : entries) {
    if (e.end > buffer_size) {
      fail(path, "tensor '" + e.name + "': data_offsets [" + std::to_string(e.begin) + ", " +
                     std::to_string(e.end) + "] run past the end of the " + std::to_string(buffer_size) +
                     "-byte buffer (truncated file?)");
    }
  }
  std::sort(entries.begin(), entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  std::uint64_t covered = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry& e : entries) {
    if (e.begin < covered) fail(path, "tensors '" + previous->name + "' and '" + e.name + "' overlap");
    if (e.begin > covered) {
      fail(path, "no tensor covers bytes [" + std::to_string(covered) + ", " + std::to_string(e.begin) +
                     ") of the buffer");
    }
    covered = e.end;
    previous = &e;
  }
  if (covered != buffer_size) {
    fail(path, "trailing bytes: the tensors cover " + std::to_string(covered) + " bytes of the " +
                   std::to_string(buffer_size) + "-byte buffer");
  }
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& value) {
  if (!value.is_object())
    fail(path, std::string("'") + kMetadataKey + "' must be an object, got " + value.dump());
  std::map<std::string, std::string> metadata;
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string()) fail(path, "metadata '" + key + "' must be a string, got " + v.dump());
    metadata[key] = v.get<std::string>();
  }
  return metadata;
}

std::uint32_t parse_crc(const std::string& path, const char* key, const std::string& text) {
  std::uint32_t crc = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), crc, 16);
  if (text.size() != kCrcDigits || ec != std::errc() || end != text.data() + text.size()) {
    fail(path, std::string("metadata '") + key + "' is not 8 hex digits: '" + text + "'");
  }
  return crc;
}

void read_exact(std::FILE* file, void* out, std::size_t n, const std::string& path) {
  if (std::fread(out, 1, n, file) == n) return;
  if (std::ferror(file)) fail(path, "cannot read: " + system_error_text());
  fail(path, "truncated: the file ended while reading it");
}

// <prefix>-<step>.safetensors -> step
std::optional<std::uint64_t> step_of(const std::string& filename, const std::string& prefix) {
  const std::string head = prefix + "-";
  const std::size_t suffix_size = std::strlen(kSuffix);
  if (filename.size() <= head.size() + suffix_size) return std::nullopt;
  if (filename.compare(0, head.size(), head) != 0) return std::nullopt;
  if (filename.compare(filename.size() - suffix_size, suffix_size, kSuffix) != 0) return std::nullopt;
  const char* first = filename.data() + head.size();
  const char* last = filename.data() + filename.size() - suffix_size;
  if (!std::all_of(first, last, [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  std::uint64_t step = 0;
  const auto [end, ec] = std::from_chars(first, last, step);
  if (ec != std::errc() || end != last) return std::nullopt;
  return step;
}

}  // namespace

const CheckpointTensor* Checkpoint::find(const std::string& name) const {
  for (const CheckpointTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t crc) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = kCrcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

void write_checkpoint_atomic(const std::string& path, const Checkpoint& checkpoint) {
  validate_for_writing(path, checkpoint);
  std::uint32_t data_crc = 0;
  for (const CheckpointTensor& t : checkpoint.tensors)
    data_crc = crc32(t.values.data(), t.values.size() * sizeof(float), data_crc);
  std::string header = build_header(path, checkpoint, data_crc);
  unsigned char length_prefix[kLengthPrefixSize];
  for (std::size_t i = 0; i < kLengthPrefixSize; ++i)
    length_prefix[i] = static_cast<unsigned char>(std::uint64_t{header.size()} >> (8 * i));
  // The whole file's CRC, computed with its own digits as "00000000" (as build_header wrote
  // them), then put in their place.
  const auto file_crc_at = file_checksum_position(header);
  if (!file_crc_at) throw std::logic_error(path + ": the header lost its file checksum field");
  std::uint32_t file_crc = crc32(length_prefix, sizeof length_prefix);
  file_crc = crc32(header.data(), header.size(), file_crc);
  for (const CheckpointTensor& t : checkpoint.tensors)
    file_crc = crc32(t.values.data(), t.values.size() * sizeof(float), file_crc);
  header.replace(*file_crc_at, kCrcDigits, crc_hex(file_crc));

  const std::string temporary_path = path + ".tmp." + std::to_string(::getpid());
  const auto write_failed = [&](const std::string& step) {
    const std::string reason = system_error_text();
    throw std::runtime_error(path + ": cannot write checkpoint (" + step + " " + temporary_path +
                             "): " + reason);
  };
  TemporaryFile temporary(temporary_path);
  std::FILE* file = temporary.get();
  if (!file) write_failed("creating");
  bool written = std::fwrite(length_prefix, 1, sizeof length_prefix, file) == sizeof length_prefix &&
                 std::fwrite(header.data(), 1, header.size(), file) == header.size();
  for (const CheckpointTensor& t : checkpoint.tensors) {
    written = written && (t.values.empty() || std::fwrite(t.values.data(), sizeof(float), t.values.size(),
                                                          file) == t.values.size());
  }
  if (!written || std::fflush(file) != 0) write_failed("writing");
  if (::fsync(::fileno(file)) != 0) write_failed("syncing");
  if (!temporary.close()) write_failed("closing");
  if (std::rename(temporary_path.c_str(), path.c_str()) != 0) write_failed("renaming");
  temporary.commit();
  sync_directory(path);
}

namespace {

// An open checkpoint file positioned after its header, with the header parsed.
struct OpenedCheckpoint {
  File file;
  std::uintmax_t size = 0;
  unsigned char length_prefix[kLengthPrefixSize] = {};
  std::string header_text;
  json header;
};

OpenedCheckpoint open_checkpoint(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) fail(path, "cannot open: no such file");
  if (fs::is_directory(status)) fail(path, "cannot open: is a directory, not a checkpoint");
  OpenedCheckpoint opened;
  opened.file.reset(std::fopen(path.c_str(), "rb"));
  if (!opened.file) fail(path, "cannot open: " + system_error_text());
  opened.size = fs::file_size(path, ec);
  if (ec) fail(path, "cannot read its size: " + ec.message());

  if (opened.size < kLengthPrefixSize)
    fail(path, "too short to be a safetensors file (" + std::to_string(opened.size) + " bytes)");
  read_exact(opened.file.get(), opened.length_prefix, kLengthPrefixSize, path);
  std::uint64_t header_size = 0;
  for (std::size_t i = 0; i < kLengthPrefixSize; ++i)
    header_size |= std::uint64_t{opened.length_prefix[i]} << (8 * i);
  if (header_size > opened.size - kLengthPrefixSize) {
    fail(path, "header length " + std::to_string(header_size) + " runs past the end of the file (" +
                   std::to_string(opened.size) + " bytes)");
  }
  if (header_size > kMaxHeaderSize)
    fail(path, "header length " + std::to_string(header_size) + " is implausibly large");
  opened.header_text.assign(header_size, '\0');
  read_exact(opened.file.get(), opened.header_text.data(), opened.header_text.size(), path);
  opened.header = parse_header(path, opened.header_text);
  return opened;
}

std::map<std::string, std::string> metadata_of(const std::string& path, const json& header) {
  const auto it = header.find(kMetadataKey);
  return it == header.end() ? std::map<std::string, std::string>{} : parse_metadata(path, *it);
}

// Removes the stored CRC under key from metadata and returns it, if there is one.
std::optional<std::uint32_t> take_crc(const std::string& path, std::map<std::string, std::string>& metadata,
                                      const char* key) {
  const auto stored = metadata.find(key);
  if (stored == metadata.end()) return std::nullopt;
  const std::uint32_t crc = parse_crc(path, key, stored->second);
  metadata.erase(stored);
  return crc;
}

// The tensor entries of an opened file, checked to tile its data (sorted by offset).
std::vector<TensorEntry> checked_entries(const std::string& path, const OpenedCheckpoint& opened) {
  std::vector<TensorEntry> entries;
  for (const auto& [key, value] : opened.header.items()) {
    if (key != kMetadataKey) entries.push_back(parse_tensor_entry(path, key, value));
  }
  check_layout(path, entries, opened.size - kLengthPrefixSize - opened.header_text.size());
  return entries;
}

// The whole-file CRC of the length prefix and the header with its own digits blanked: the
// start of what the stored value covers (the data follows).
std::uint32_t header_file_crc(const std::string& path, const OpenedCheckpoint& opened) {
  const auto at = file_checksum_position(opened.header_text);
  if (!at) {
    fail(path, std::string("corrupt: metadata '") + kCheckpointFileChecksumKey +
                   "' cannot be found in the header's text");
  }
  std::string blanked = opened.header_text;
  blanked.replace(*at, kCrcDigits, std::string(kCrcDigits, '0'));
  return crc32(blanked.data(), blanked.size(), crc32(opened.length_prefix, kLengthPrefixSize));
}

void check_file_crc(const std::string& path, std::uint32_t stored, std::uint32_t computed) {
  if (stored != computed) {
    fail(path, "corrupt: checksum mismatch over the header, metadata and data (the header records " +
                   crc_hex(stored) + ", the file hashes to " + crc_hex(computed) + ")");
  }
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path) {
  OpenedCheckpoint opened = open_checkpoint(path);
  Checkpoint checkpoint;
  std::vector<TensorEntry> entries = checked_entries(path, opened);
  checkpoint.metadata = metadata_of(path, opened.header);

  const auto stored_file_crc = take_crc(path, checkpoint.metadata, kCheckpointFileChecksumKey);
  const auto stored_data_crc = take_crc(path, checkpoint.metadata, kCheckpointChecksumKey);
  std::uint32_t file_crc = stored_file_crc ? header_file_crc(path, opened) : 0;

  // The entries tile the buffer in order, so one sequential pass reads every tensor.
  std::uint32_t data_crc = 0;
  for (TensorEntry& e : entries) {
    CheckpointTensor tensor{std::move(e.name), std::move(e.shape),
                            std::vector<float>((e.end - e.begin) / sizeof(float))};
    read_exact(opened.file.get(), tensor.values.data(), e.end - e.begin, path);
    data_crc = crc32(tensor.values.data(), e.end - e.begin, data_crc);
    if (stored_file_crc) file_crc = crc32(tensor.values.data(), e.end - e.begin, file_crc);
    checkpoint.tensors.push_back(std::move(tensor));
  }
  if (stored_file_crc) check_file_crc(path, *stored_file_crc, file_crc);
  if (stored_data_crc && *stored_data_crc != data_crc) {
    fail(path, "corrupt: checksum mismatch (the header records " + crc_hex(*stored_data_crc) +
                   ", the data hashes to " + crc_hex(data_crc) + ")");
  }
  checkpoint.header_unverified = !stored_file_crc;
  return checkpoint;
}

CheckpointLayout read_checkpoint_layout(const std::string& path) {
  OpenedCheckpoint opened = open_checkpoint(path);
  std::vector<TensorEntry> entries = checked_entries(path, opened);
  const std::uint64_t data_start = kLengthPrefixSize + opened.header_text.size();
  CheckpointLayout layout;
  layout.metadata = metadata_of(path, opened.header);
  layout.metadata.erase(kCheckpointFileChecksumKey);
  layout.metadata.erase(kCheckpointChecksumKey);
  layout.file_size = opened.size;
  for (TensorEntry& e : entries) {
    layout.tensors.push_back({std::move(e.name), std::move(e.shape), data_start + e.begin, e.end - e.begin});
  }
  return layout;
}

const CheckpointLayout::Tensor* CheckpointLayout::find(const std::string& name) const {
  for (const Tensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

void verify_checkpoint_file(const std::string& path) {
  OpenedCheckpoint opened = open_checkpoint(path);
  checked_entries(path, opened);
  std::map<std::string, std::string> metadata = metadata_of(path, opened.header);
  const auto stored = take_crc(path, metadata, kCheckpointFileChecksumKey);
  if (!stored) fail(path, std::string("no whole-file checksum (metadata '") + kCheckpointFileChecksumKey + "')");
  std::uint32_t crc = header_file_crc(path, opened);
  std::vector<unsigned char> chunk(std::size_t{1} << 20);
  for (std::uint64_t left = opened.size - kLengthPrefixSize - opened.header_text.size(); left > 0;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, chunk.size()));
    read_exact(opened.file.get(), chunk.data(), n, path);
    crc = crc32(chunk.data(), n, crc);
    left -= n;
  }
  check_file_crc(path, *stored, crc);
}

std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path) {
  const OpenedCheckpoint opened = open_checkpoint(path);
  for (const auto& [key, value] : opened.header.items()) {
    if (key != kMetadataKey) parse_tensor_entry(path, key, value);
  }
  return metadata_of(path, opened.header);
}

std::string checkpoint_path(const std::string& dir, const std::string& prefix, std::uint64_t step) {
  return (fs::path(dir) / (prefix + "-" + std::to_string(step) + kSuffix)).string();
}

std::vector<std::string> list_checkpoints(const std::string& dir, const std::string& prefix) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec == std::errc::no_such_file_or_directory) return {};
  if (ec) throw std::runtime_error(dir + ": cannot list checkpoints: " + ec.message());
  std::vector<std::pair<std::uint64_t, std::string>> found;
  for (const fs::directory_entry& entry : it) {
    const std::string name = entry.path().filename().string();
    const auto step = step_of(name, prefix);
    if (step && entry.is_regular_file(ec)) found.emplace_back(*step, entry.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [step, p] : found) paths.push_back(std::move(p));
  return paths;
}

void prune_checkpoints(const std::string& dir, const std::string& prefix, std::size_t keep_last) {
  const std::vector<std::string> paths = list_checkpoints(dir, prefix);
  if (paths.size() <= keep_last) return;
  for (std::size_t i = 0; i < paths.size() - keep_last; ++i) {
    std::error_code ec;
    if (!fs::remove(paths[i], ec) && ec)
      throw std::runtime_error(paths[i] + ": cannot remove old checkpoint: " + ec.message());
  }
}

std::string format_bytes(std::uint64_t bytes) {
  char text[64];
  const double b = static_cast<double>(bytes);
  if (bytes >= (std::uint64_t{1} << 30))
    std::snprintf(text, sizeof text, "%.1f GiB", b / (1u << 30));
  else if (bytes >= (std::uint64_t{1} << 20))
    std::snprintf(text, sizeof text, "%.1f MiB", b / (1u << 20));
  else if (bytes >= 1024)
    std::snprintf(text, sizeof text, "%.1f KiB", b / 1024);
  else
    std::snprintf(text, sizeof text, "%llu bytes", static_cast<unsigned long long>(bytes));
  return text;
}

void prepare_output_directory(const std::string& label, const std::string& dir,
                              std::uint64_t bytes_needed, const std::string& needed_for,
                              std::optional<std::uint64_t> free_bytes) {
  const auto refuse = [&](const std::string& why) { throw ConfigError(label + ": " + dir + ": " + why); };
  if (dir.empty()) refuse("empty path");
  std::error_code ec;
  fs::create_directories(dir, ec);
  const bool is_dir = fs::is_directory(dir);
  if (ec || !is_dir) {
    refuse(std::string("cannot create the directory") +
           (ec ? ": " + ec.message() : fs::exists(dir) ? ": a file of that name is in the way" : ""));
  }
  const std::string probe =
      (fs::path(dir) / (".meshtrain-probe." + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) refuse("cannot create a file in the directory: " + system_error_text());
  const bool written = ::write(fd, "probe\n", 6) == 6;
  const std::string write_error = written ? "" : system_error_text();
  ::close(fd);
  if (::unlink(probe.c_str()) != 0) refuse("cannot remove the probe file " + probe + ": " + system_error_text());
  if (!written) refuse("cannot write a file in the directory: " + write_error);
  if (!free_bytes) {
    struct statvfs st {};
    if (::statvfs(dir.c_str(), &st) != 0) refuse("cannot read the free space: " + system_error_text());
    free_bytes = static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
  }
  if (*free_bytes < bytes_needed) {
    refuse("only " + format_bytes(*free_bytes) + " free, but this run needs about " +
           format_bytes(bytes_needed) + " there (" + needed_for + ")");
  }
}

}  // namespace meshtrain
