// safetensors checkpoints: round trips, the byte layout, every validation error, the checksum,
// atomic replacement, and listing/pruning by step.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "meshtrain/error.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "test_support.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::testing;
namespace fs = std::filesystem;

std::string bytes_of(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

std::uint64_t header_length_of(const std::string& file) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= std::uint64_t{static_cast<unsigned char>(file[i])} << (8 * i);
  return n;
}

// A safetensors file as another writer (e.g. Python) would produce it: length prefix, header, buffer.
std::string safetensors_file(const std::string& header, const std::string& buffer) {
  std::string file;
  for (int i = 0; i < 8; ++i) file += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return file + header + buffer;
}

Checkpoint sample_checkpoint() {
  Checkpoint c;
  c.tensors.push_back({"layers.0.kernel", {2, 3}, {1, 2, 3, 4, 5, 6}});
  c.tensors.push_back({"layers.0.bias", {3}, {-0.5f, 0.25f, 1e-20f}});
  c.tensors.push_back({"step_scale", {}, {3.5f}});
  c.tensors.push_back({"empty", {0, 4}, {}});
  c.tensors.push_back({"adam.mu", {2}, {7, 8}});
  c.metadata = {{"step", "120"}, {"optimizer", "adam"}, {"note", "unicode: \xc3\xa9\xe2\x82\xac"}};
  return c;
}

void expect_same(const Checkpoint& actual, const Checkpoint& expected) {
  ASSERT_EQ(actual.tensors.size(), expected.tensors.size());
  for (std::size_t i = 0; i < expected.tensors.size(); ++i) {
    EXPECT_EQ(actual.tensors[i].name, expected.tensors[i].name);
    EXPECT_EQ(actual.tensors[i].shape, expected.tensors[i].shape) << expected.tensors[i].name;
    EXPECT_EQ(actual.tensors[i].values, expected.tensors[i].values) << expected.tensors[i].name;
  }
  EXPECT_EQ(actual.metadata, expected.metadata);
}

// Reads bytes as a checkpoint and returns the ConfigError's message, checking it starts with the path.
std::string read_error(const std::string& bytes) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("bad.safetensors");
  write_file(path, bytes);
  const std::string message = config_error([&] { read_checkpoint(path); });
  EXPECT_TRUE(starts_with(message, path + ": ")) << message;
  return message;
}

TEST(Checkpoint, RoundTripsTensorsAndMetadataInOrder) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("model.safetensors");
  const Checkpoint written = sample_checkpoint();
  write_checkpoint_atomic(path, written);
  const Checkpoint back = read_checkpoint(path);
  expect_same(back, written);  // the checksum key is checked and not returned
  ASSERT_NE(back.find("layers.0.bias"), nullptr);
  EXPECT_EQ(back.find("layers.0.bias")->values, written.tensors[1].values);
  EXPECT_EQ(back.find("missing"), nullptr);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
}

TEST(Checkpoint, WritesTheSafetensorsByteLayout) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("layout.safetensors");
  Checkpoint c;
  c.tensors.push_back({"w", {3}, {1, 2, 3}});
  c.tensors.push_back({"b", {1, 2}, {4, 5}});
  c.metadata["step"] = "7";
  write_checkpoint_atomic(path, c);
  const std::string file = read_file(path);
  const std::uint64_t n = header_length_of(file);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(file.size(), 8 + n + 20);
  const std::string header = file.substr(8, n);
  const std::string json = header.substr(0, header.find_last_not_of(' ') + 1);
  EXPECT_EQ(header.substr(json.size()), std::string(n - json.size(), ' '));  // padded with spaces only
  EXPECT_TRUE(starts_with(json, "{\"__metadata__\":{\"step\":\"7\",\"meshtrain.crc32\":\"")) << json;
  EXPECT_TRUE(contains(json, "\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}")) << json;
  EXPECT_TRUE(contains(json, "\"b\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[12,20]}")) << json;
  EXPECT_EQ(file.substr(8 + n), bytes_of({1, 2, 3, 4, 5}));
}

TEST(Checkpoint, ChecksumIsZlibCrc32OfTheBuffer) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("crc.safetensors");
  write_checkpoint_atomic(path, Checkpoint{{{"x", {3}, {1, 2, 3}}}, {}});
  // python3 -c "import zlib,struct; print('%08x' % zlib.crc32(struct.pack('<3f', 1, 2, 3)))"
  EXPECT_TRUE(contains(read_file(path), "\"meshtrain.crc32\":\"b20e96b1\""));
}

TEST(Checkpoint, WholeFileChecksumCoversHeaderMetadataAndData) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("whole.safetensors");
  write_checkpoint_atomic(path, sample_checkpoint());
  const std::string good = read_file(path);
  const std::string key = std::string("\"") + kCheckpointFileChecksumKey + "\":\"";
  const std::size_t at = good.find(key);
  ASSERT_NE(at, std::string::npos);
  // The stored value is the CRC-32 of the file with its own 8 digits as '0's.
  std::string blanked = good;
  blanked.replace(at + key.size(), 8, "00000000");
  char expected[9];
  std::snprintf(expected, sizeof expected, "%08x", crc32(blanked.data(), blanked.size()));
  EXPECT_EQ(good.substr(at + key.size(), 8), expected);
  const Checkpoint back = read_checkpoint(path);
  EXPECT_FALSE(back.header_unverified);
  EXPECT_EQ(back.metadata.count(kCheckpointFileChecksumKey), 0u);  // checked, not returned

  // One byte of a metadata value, of a tensor's shape, of the length prefix's padding: each
  // refused, naming the file.
  // One byte of a metadata value, or the key's own name: refused, naming the file.
  for (const auto& [edit, replacement] :
       {std::pair<std::string, char>{"\"step\":\"120\"", '1'}, {"\"optimizer\":\"adam\"", 'n'},
        {"\"step\":\"120\"", ' '}}) {
    std::string edited = good;
    const std::size_t where = edited.find(edit);
    ASSERT_NE(where, std::string::npos) << edit;
    edited[where + edit.size() - 2] = replacement;
    write_file(path, edited);
    const std::string message = config_error([&] { read_checkpoint(path); });
    EXPECT_TRUE(starts_with(message, path + ": corrupt: checksum mismatch over the header")) << message;
  }
  // Digits of the checksum itself.
  std::string edited = good;
  edited[at + key.size()] = edited[at + key.size()] == 'a' ? 'b' : 'a';
  write_file(path, edited);
  EXPECT_TRUE(contains(config_error([&] { read_checkpoint(path); }), "checksum mismatch"));
  // A checksum that is not 8 hex digits.
  edited = good;
  edited[at + key.size()] = 'g';
  write_file(path, edited);
  EXPECT_TRUE(contains(config_error([&] { read_checkpoint(path); }),
                       "metadata 'meshtrain.file_crc32' is not 8 hex digits"));

  // The metadata alone, without reading the data.
  write_file(path, good);
  const auto metadata = read_checkpoint_metadata(path);
  EXPECT_EQ(metadata.at("step"), "120");
}

TEST(Checkpoint, ReadsEarlierFilesThatChecksummedOnlyTheData) {
  // As meshtrain wrote them before the whole-file checksum: meshtrain.crc32 of the data only.
  // python3 -c "import zlib,struct; print('%08x' % zlib.crc32(struct.pack('<3f', 1, 2, 3)))"
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("v1.safetensors");
  const std::string header =
      R"({"__metadata__":{"step":"7","meshtrain.crc32":"b20e96b1"},"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  write_file(path, safetensors_file(header, bytes_of({1, 2, 3})));
  const Checkpoint c = read_checkpoint(path);
  EXPECT_TRUE(c.header_unverified);
  EXPECT_EQ(c.metadata, (std::map<std::string, std::string>{{"step", "7"}}));
  write_file(path, safetensors_file(header, bytes_of({1, 2, 4})));
  EXPECT_TRUE(contains(config_error([&] { read_checkpoint(path); }), "corrupt: checksum mismatch (the header"));
}

TEST(Checkpoint, ReservedChecksumNamesAreRefusedOnWriting) {
  TempDir dir("meshtrain-ckpt");
  for (const char* name : {kCheckpointChecksumKey, kCheckpointFileChecksumKey}) {
    Checkpoint c{{{name, {1}, {1}}}, {}};
    EXPECT_THROW(write_checkpoint_atomic(dir.file("r.safetensors"), c), std::invalid_argument) << name;
    Checkpoint m{{{"x", {1}, {1}}}, {{name, "00000000"}}};
    EXPECT_THROW(write_checkpoint_atomic(dir.file("r.safetensors"), m), std::invalid_argument) << name;
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Checkpoint, ReadsFilesFromOtherWritersWithoutChecksum) {
  // As safetensors.numpy.save_file writes them: no checksum, tensors in any header order.
  const std::string header =
      R"({"__metadata__":{"format":"np"},"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("b":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}  )";
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("py.safetensors");
  write_file(path, safetensors_file(header, bytes_of({9, 1, 2})));
  const Checkpoint c = read_checkpoint(path);
  ASSERT_EQ(c.tensors.size(), 2u);
  EXPECT_EQ(c.tensors[0].name, "b");  // file order
  EXPECT_EQ(c.tensors[0].shape, std::vector<std::size_t>{});
  EXPECT_EQ(c.tensors[0].values, std::vector<float>{9});
  EXPECT_EQ(c.tensors[1].name, "a");
  EXPECT_EQ(c.tensors[1].values, (std::vector<float>{1, 2}));
  EXPECT_EQ(c.metadata, (std::map<std::string, std::string>{{"format", "np"}}));

  write_file(path, safetensors_file("{}", ""));  // no tensors at all is a valid file
  EXPECT_TRUE(read_checkpoint(path).tensors.empty());
}

TEST(Checkpoint, RejectsInvalidHeaders) {
  const std::string four = bytes_of({1});
  const std::string eight = bytes_of({1, 2});
  const std::string twelve = bytes_of({1, 2, 3});
  struct Case {
    std::string header, buffer, expected;
  };
  const std::vector<Case> cases = {
      {R"({"a":)", four, "invalid JSON header"},
      {"\xff\xfe", four, "invalid JSON header"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x)", four, "invalid JSON header"},
      {"[1, 2]", four, "the header is not a JSON object"},
      {R"({"a":[1]})", four, "tensor 'a': expected an object"},
      {R"({"a":{"shape":[1],"data_offsets":[0,4]}})", four, "tensor 'a': missing 'dtype'"},
      {R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", four, "tensor 'a': missing 'shape'"},
      {R"({"a":{"dtype":"F32","shape":[1]}})", four, "tensor 'a': missing 'data_offsets'"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}})", four,
       "tensor 'a': unknown key 'extra'"},
      {R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", eight,
       R"(unsupported dtype "F64" (only F32)"},
      {R"({"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", four, "'dtype' must be a string"},
      {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four,
       "'shape' must be an array of non-negative integers"},
      {R"({"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", four,
       "'shape' must be an array of non-negative integers"},
      {R"({"a":{"dtype":"F32","shape":3,"data_offsets":[0,4]}})", four, "'shape' must be an array"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", four,
       "'data_offsets' must be [begin, end]"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", four,
       "data_offsets [4, 0] end before they begin"},
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight,
       "tensor 'a': shape [3] needs 12 bytes as F32 but data_offsets [0, 8] span 8"},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", four, "is too large"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", four,
       "run past the end of the 4-byte buffer"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       twelve, "tensors 'a' and 'b' overlap"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
       twelve, "no tensor covers bytes [4, 8)"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight, "no tensor covers bytes [0, 4)"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight,
       "trailing bytes: the tensors cover 4 bytes of the 8-byte buffer"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       eight, "the header names 'a' twice"},
      {R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four,
       "the header names 'dtype' twice"},
      {R"({"__metadata__":{"step":3},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four,
       "metadata 'step' must be a string, got 3"},
      {R"({"__metadata__":["x"],"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four,
       "'__metadata__' must be an object"},
      {R"({"__metadata__":{"meshtrain.crc32":"xyz"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       four, "metadata 'meshtrain.crc32' is not 8 hex digits: 'xyz'"},
      {R"({"__metadata__":{"meshtrain.crc32":"00000000"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       four, "corrupt: checksum mismatch"},
  };
  for (const Case& c : cases) {
    const std::string message = read_error(safetensors_file(c.header, c.buffer));
    EXPECT_TRUE(contains(message, c.expected)) << c.header << "\n  -> " << message;
  }
}

TEST(Checkpoint, RejectsShortFilesAndBadHeaderLengths) {
  EXPECT_TRUE(contains(read_error("abc"), "too short to be a safetensors file (3 bytes)"));
  std::string file = safetensors_file("{}", "");
  file[0] = 100;
  EXPECT_TRUE(contains(read_error(file), "header length 100 runs past the end of the file (10 bytes)"));
  file = safetensors_file("{}", "");
  file[7] = '\x7f';  // a huge length, as a text file's first bytes would give
  EXPECT_TRUE(contains(read_error(file), "runs past the end of the file"));

  TempDir dir("meshtrain-ckpt");
  const std::string missing = dir.file("missing.safetensors");
  EXPECT_EQ(config_error([&] { read_checkpoint(missing); }), missing + ": cannot open: no such file");
}

TEST(Checkpoint, DetectsTruncationAndCorruption) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("c.safetensors");
  write_checkpoint_atomic(path, sample_checkpoint());
  const std::string good = read_file(path);
  const std::uint64_t n = header_length_of(good);

  write_file(path, good.substr(0, good.size() - 4));
  std::string message = config_error([&] { read_checkpoint(path); });
  EXPECT_TRUE(starts_with(message, path + ": ")) << message;
  EXPECT_TRUE(contains(message, "run past the end of the 44-byte buffer (truncated file?)")) << message;

  write_file(path, good.substr(0, 8 + n / 2));
  EXPECT_TRUE(contains(config_error([&] { read_checkpoint(path); }), "runs past the end of the file"));

  write_file(path, good + "x");
  EXPECT_TRUE(contains(config_error([&] { read_checkpoint(path); }), "trailing bytes"));

  std::string flipped = good;
  flipped[8 + n + 5] ^= 0x10;  // one bit of a kernel value
  write_file(path, flipped);
  message = config_error([&] { read_checkpoint(path); });
  EXPECT_TRUE(contains(message, "corrupt: checksum mismatch")) << message;

  flipped = good;
  flipped[8] ^= 0x01;  // '{' becomes 'z'
  write_file(path, flipped);
  EXPECT_TRUE(contains(config_error([&] { read_checkpoint(path); }), "invalid JSON header"));

  flipped = good;
  const std::size_t offsets = flipped.find("\"data_offsets\":[0,24]");
  ASSERT_NE(offsets, std::string::npos);
  flipped[offsets + std::strlen("\"data_offsets\":[0,")] = '1';  // [0,24] becomes [0,14]
  write_file(path, flipped);
  message = config_error([&] { read_checkpoint(path); });
  EXPECT_TRUE(contains(message, "shape [2, 3] needs 24 bytes as F32 but data_offsets [0, 14] span 14"))
      << message;

  write_file(path, good);
  expect_same(read_checkpoint(path), sample_checkpoint());
}

TEST(Checkpoint, AtomicWriteReplacesTheOldFileAndLeavesNoTemporary) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("latest.safetensors");
  Checkpoint first{{{"w", {2}, {1, 2}}}, {{"step", "1"}}};
  Checkpoint second{{{"w", {3}, {3, 4, 5}}, {"b", {1}, {6}}}, {{"step", "2"}}};
  write_checkpoint_atomic(path, first);
  write_checkpoint_atomic(path, second);
  expect_same(read_checkpoint(path), second);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"latest.safetensors"});
}

TEST(Checkpoint, FailedWriteKeepsTheOldFileAndRemovesTheTemporary) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full to simulate a full disk";
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("latest.safetensors");
  const Checkpoint old_checkpoint{{{"w", {2}, {1, 2}}}, {{"step", "1"}}};
  write_checkpoint_atomic(path, old_checkpoint);
  const std::string old_bytes = read_file(path);

  // The temporary name is path.tmp.<pid>; pointing it at /dev/full makes every write fail
  // with ENOSPC, as a full disk would.
  const std::string temporary = path + ".tmp." + std::to_string(::getpid());
  fs::create_symlink("/dev/full", temporary);
  const std::string message = error_of<std::runtime_error>([&] {
    write_checkpoint_atomic(path, Checkpoint{{{"w", {1000}, std::vector<float>(1000, 3.0f)}}, {}});
  });
  EXPECT_TRUE(starts_with(message, path + ": ")) << message;
  EXPECT_TRUE(contains(message, "No space left on device")) << message;
  EXPECT_EQ(read_file(path), old_bytes);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"latest.safetensors"});
}

TEST(Checkpoint, FailedRenameRemovesTheTemporary) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("occupied");
  fs::create_directories(fs::path(path) / "child");  // rename cannot replace a non-empty directory
  const std::string message = error_of<std::runtime_error>([&] {
    write_checkpoint_atomic(path, Checkpoint{{{"w", {1}, {1}}}, {}});
  });
  EXPECT_TRUE(starts_with(message, path + ": ")) << message;
  EXPECT_TRUE(contains(message, "renaming")) << message;
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"occupied"});
}

TEST(Checkpoint, WriteIntoAMissingDirectoryFailsCleanly) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("no-such-dir/ckpt.safetensors");
  const std::string message = error_of<std::runtime_error>([&] {
    write_checkpoint_atomic(path, Checkpoint{{{"w", {1}, {1}}}, {}});
  });
  EXPECT_TRUE(starts_with(message, path + ": ")) << message;
  EXPECT_TRUE(contains(message, "No such file or directory")) << message;
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Checkpoint, RefusesToWriteInconsistentCheckpoints) {
  TempDir dir("meshtrain-ckpt");
  const std::string path = dir.file("x.safetensors");
  const std::vector<std::pair<Checkpoint, std::string>> cases = {
      {Checkpoint{{{"w", {2, 2}, {1, 2, 3}}}, {}}, "tensor 'w' has shape [2, 2] (4 values) but holds 3"},
      {Checkpoint{{{"w", {1}, {1}}, {"w", {1}, {2}}}, {}}, "duplicate tensor name 'w'"},
      {Checkpoint{{{"", {1}, {1}}}, {}}, "empty name"},
      {Checkpoint{{{"__metadata__", {1}, {1}}}, {}}, "'__metadata__' is reserved"},
      {Checkpoint{{}, {{"meshtrain.crc32", "0"}}}, "'meshtrain.crc32' is reserved"},
      {Checkpoint{{{"bad\xff", {1}, {1}}}, {}}, "UTF-8"},
  };
  for (const auto& [checkpoint, expected] : cases) {
    const std::string message =
        error_of<std::invalid_argument>([&] { write_checkpoint_atomic(path, checkpoint); });
    EXPECT_TRUE(starts_with(message, path + ": ")) << message;
    EXPECT_TRUE(contains(message, expected)) << message;
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Checkpoint, ListsCheckpointsByNumericStepAndPrunesTheOldest) {
  TempDir dir("meshtrain-ckpt");
  for (const char* name : {"ckpt-10.safetensors", "ckpt-2.safetensors", "ckpt-1.safetensors",
                           "ckpt-10.safetensors.tmp.123", "other-3.safetensors", "ckpt-x.safetensors",
                           "ckpt-.safetensors", "ckpt-5.safetensors.bak", "ckpt-3-4.safetensors"}) {
    write_file(dir.file(name), "");
  }
  fs::create_directories(dir.file("ckpt-7.safetensors"));  // a directory is not a checkpoint
  const std::string d = dir.path().string();
  EXPECT_EQ(checkpoint_path(d, "ckpt", 10), dir.file("ckpt-10.safetensors"));
  EXPECT_EQ(list_checkpoints(d, "ckpt"),
            (std::vector<std::string>{dir.file("ckpt-1.safetensors"), dir.file("ckpt-2.safetensors"),
                                      dir.file("ckpt-10.safetensors")}));
  EXPECT_EQ(list_checkpoints(d, "other"), std::vector<std::string>{dir.file("other-3.safetensors")});

  prune_checkpoints(d, "ckpt", 2);
  EXPECT_EQ(list_checkpoints(d, "ckpt"),
            (std::vector<std::string>{dir.file("ckpt-2.safetensors"), dir.file("ckpt-10.safetensors")}));
  prune_checkpoints(d, "ckpt", 5);
  EXPECT_EQ(list_checkpoints(d, "ckpt").size(), 2u);
  prune_checkpoints(d, "ckpt", 0);
  EXPECT_TRUE(list_checkpoints(d, "ckpt").empty());
  EXPECT_TRUE(fs::exists(dir.file("ckpt-10.safetensors.tmp.123")));  // only checkpoints are pruned
  EXPECT_TRUE(fs::exists(dir.file("other-3.safetensors")));

  EXPECT_TRUE(list_checkpoints(dir.file("missing"), "ckpt").empty());
}

}  // namespace

namespace {

TEST(Checkpoint, PrepareOutputDirectoryCreatesProbesAndChecksTheSpace) {
  TempDir dir("meshtrain-ckpt");
  const std::string made = dir.file("a/b/c");
  prepare_output_directory("checkpoint.dir", made, 100, "x", 1000);
  EXPECT_TRUE(fs::is_directory(made));
  EXPECT_TRUE(TempDir::entries_of(made).empty());  // the probe is gone
  prepare_output_directory("checkpoint.dir", made, 0, "x");  // the real free space

  // Not enough space, by the injected figure: the message names the key, the directory, both
  // amounts and what the space is for.
  std::string message =
      config_error([&] { prepare_output_directory("run.toml:3: checkpoint.dir", made, 5u << 20, "4 checkpoints", 1u << 20); });
  EXPECT_EQ(message, "run.toml:3: checkpoint.dir: " + made +
                         ": only 1.0 MiB free, but this run needs about 5.0 MiB there (4 checkpoints)");
  // Exactly enough is enough.
  prepare_output_directory("checkpoint.dir", made, 1u << 20, "x", 1u << 20);

  const std::string file = dir.file("a-file");
  write_file(file, "x");
  message = config_error([&] { prepare_output_directory("output.dir", file + "/sub", 0, ""); });
  EXPECT_TRUE(starts_with(message, "output.dir: " + file + "/sub: cannot create the directory")) << message;
  message = config_error([&] { prepare_output_directory("output.dir", file, 0, ""); });
  EXPECT_TRUE(starts_with(message, "output.dir: " + file + ": cannot create the directory")) << message;
  // A directory nobody may create files in, root included.
  message = config_error([&] { prepare_output_directory("output.dir", "/proc/self", 0, ""); });
  EXPECT_TRUE(starts_with(message, "output.dir: /proc/self: cannot create a file in the directory: ")) << message;
  message = config_error([&] { prepare_output_directory("output.dir", "", 0, ""); });
  EXPECT_EQ(message, "output.dir: : empty path");
}

TEST(Checkpoint, FormatBytes) {
  EXPECT_EQ(format_bytes(512), "512 bytes");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(3u << 20), "3.0 MiB");
  EXPECT_EQ(format_bytes(std::uint64_t{5} << 30), "5.0 GiB");
}

}  // namespace
