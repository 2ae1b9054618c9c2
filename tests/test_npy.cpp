// .npy reading and writing: files built byte by byte as numpy writes them, and every error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "meshtrain/data/npy.hpp"
#include "meshtrain/error.hpp"
#include "test_support.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::testing;
namespace fs = std::filesystem;

template <class T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// A .npy file: magic, version major.minor, the header length field (2 bytes for version 1,
// 4 otherwise), dict padded with spaces and a final '\n' to a multiple of `alignment`, data.
std::string npy_file(const std::string& dict, const std::string& data, int major = 1, int minor = 0,
                     std::size_t alignment = 64) {
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  std::string header = dict;
  const std::size_t unpadded = 8 + length_bytes + header.size() + 1;
  header.append((alignment - unpadded % alignment) % alignment, ' ');
  header += '\n';
  std::string file = "\x93NUMPY";
  file += static_cast<char>(major);
  file += static_cast<char>(minor);
  for (std::size_t i = 0; i < length_bytes; ++i) file += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return file + header + data;
}

std::string dict(const std::string& descr, const std::string& shape, const std::string& order = "False") {
  return "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': " + shape + ", }";
}

// Writes bytes to a fresh file, reads it, and returns the ConfigError's message, checking
// that it starts with the path.
std::string read_error(const std::string& bytes) {
  TempDir dir("meshtrain-npy");
  const std::string path = dir.file("bad.npy");
  write_file(path, bytes);
  const std::string message = config_error([&] { read_npy(path); });
  EXPECT_TRUE(starts_with(message, path + ": ")) << message;
  return message;
}

TEST(Npy, ReadsFloat32Version1Matrix) {
  TempDir dir("meshtrain-npy");
  const std::vector<float> values = {1.0f, -2.5f, 3.25f, 0.0f, 1e-30f, 7.0f};
  write_file(dir.file("a.npy"), npy_file(dict("<f4", "(3, 2)"), bytes_of(values)));
  const NpyArray a = read_npy(dir.file("a.npy"));
  EXPECT_EQ(a.shape, (std::vector<std::size_t>{3, 2}));
  EXPECT_EQ(a.data, values);
  EXPECT_EQ(a.source_dtype, "<f4");
}

TEST(Npy, ReadsFloat64Version2VectorAndRoundsToFloat32) {
  TempDir dir("meshtrain-npy");
  const std::vector<double> values = {0.1, -1e10, 3.0, 1.0 / 3.0};
  write_file(dir.file("b.npy"), npy_file(dict("<f8", "(4,)"), bytes_of(values), 2));
  const NpyArray b = read_npy(dir.file("b.npy"));
  EXPECT_EQ(b.shape, (std::vector<std::size_t>{4}));
  EXPECT_EQ(b.source_dtype, "<f8");
  ASSERT_EQ(b.data.size(), 4u);
  for (std::size_t i = 0; i < values.size(); ++i) EXPECT_EQ(b.data[i], static_cast<float>(values[i]));

  const NpyArray column = as_matrix(b);
  EXPECT_EQ(column.shape, (std::vector<std::size_t>{4, 1}));
  EXPECT_EQ(column.data, b.data);
  EXPECT_EQ(as_matrix(read_npy(dir.file("b.npy"))).shape, (std::vector<std::size_t>{4, 1}));
}

TEST(Npy, ReadsVersion3AndLargeFloat64Matrix) {
  TempDir dir("meshtrain-npy");
  std::vector<double> values(3 * 70000);  // more than one conversion chunk
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<double>(i) * 0.5;
  write_file(dir.file("c.npy"), npy_file(dict("<f8", "(70000, 3)"), bytes_of(values), 3));
  const NpyArray c = read_npy(dir.file("c.npy"));
  EXPECT_EQ(c.shape, (std::vector<std::size_t>{70000, 3}));
  ASSERT_EQ(c.data.size(), values.size());
  EXPECT_EQ(c.data.back(), static_cast<float>(values.back()));
  EXPECT_EQ(c.data[12345], static_cast<float>(values[12345]));
}

TEST(Npy, ReadsThreeAndFourDimensionsAndFlattensThemPerSample) {
  TempDir dir("meshtrain-npy");
  std::vector<float> values(2 * 3 * 4);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) - 5.0f;
  write_file(dir.file("t.npy"), npy_file(dict("<f4", "(2, 3, 4)"), bytes_of(values)));
  const NpyArray t = read_npy(dir.file("t.npy"));
  EXPECT_EQ(t.shape, (std::vector<std::size_t>{2, 3, 4}));
  EXPECT_EQ(t.data, values);
  const NpyArray t_matrix = as_matrix(t);
  EXPECT_EQ(t_matrix.shape, (std::vector<std::size_t>{2, 12}));
  EXPECT_EQ(t_matrix.data, values);

  // (N, s, s, C) as a field generator writes it, float64 on disk.
  std::vector<double> field(2 * 3 * 3 * 1);
  for (std::size_t i = 0; i < field.size(); ++i) field[i] = 0.25 * static_cast<double>(i);
  write_file(dir.file("f.npy"), npy_file(dict("<f8", "(2, 3, 3, 1)"), bytes_of(field), 2));
  const NpyArray f = read_npy(dir.file("f.npy"));
  EXPECT_EQ(f.shape, (std::vector<std::size_t>{2, 3, 3, 1}));
  ASSERT_EQ(f.data.size(), field.size());
  for (std::size_t i = 0; i < field.size(); ++i) EXPECT_EQ(f.data[i], static_cast<float>(field[i]));
  EXPECT_EQ(as_matrix(f).shape, (std::vector<std::size_t>{2, 9}));

  // A zero-size axis is a well-formed empty array, as in 2-D.
  write_file(dir.file("e.npy"), npy_file(dict("<f4", "(0, 3, 3, 1)"), ""));
  EXPECT_EQ(as_matrix(read_npy(dir.file("e.npy"))).shape, (std::vector<std::size_t>{0, 9}));
}

TEST(Npy, WriteNpyRoundTripsFourDimensions) {
  TempDir dir("meshtrain-npy");
  std::vector<float> values(3 * 2 * 2 * 1);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 1.0f / static_cast<float>(i + 1);
  const std::string path = dir.file("w4.npy");
  write_npy(path, {3, 2, 2, 1}, values.data());
  EXPECT_TRUE(contains(read_file(path), "'shape': (3, 2, 2, 1), }"));
  const NpyArray back = read_npy(path);
  EXPECT_EQ(back.shape, (std::vector<std::size_t>{3, 2, 2, 1}));
  EXPECT_EQ(back.data, values);
}

TEST(Npy, AcceptsHeaderVariantsOtherWritersProduce) {
  TempDir dir("meshtrain-npy");
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  // Keys in another order, double quotes, no trailing comma, Python 2 longs, 16-byte alignment.
  write_file(dir.file("v.npy"),
             npy_file("{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \"<f4\"}", bytes_of(values),
                      1, 0, 16));
  const NpyArray v = read_npy(dir.file("v.npy"));
  EXPECT_EQ(v.shape, (std::vector<std::size_t>{2, 3}));
  EXPECT_EQ(v.data, values);
}

TEST(Npy, AcceptsEmptyArrays) {
  TempDir dir("meshtrain-npy");
  write_file(dir.file("e.npy"), npy_file(dict("<f4", "(0, 3)"), ""));
  const NpyArray e = read_npy(dir.file("e.npy"));
  EXPECT_EQ(e.shape, (std::vector<std::size_t>{0, 3}));
  EXPECT_TRUE(e.data.empty());
}

TEST(Npy, WriteNpyProducesNumpysExactHeaderAndReadsBack) {
  TempDir dir("meshtrain-npy");
  const std::vector<float> values = {1.5f, -2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  const std::string path = dir.file("w.npy");
  write_npy(path, {3, 2}, values.data());
  const std::string bytes = read_file(path);
  const std::string expected_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }";
  ASSERT_EQ(bytes.size(), 128u + values.size() * sizeof(float));  // 10 + 60 + padding = 128
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_EQ(static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8), 118);
  EXPECT_EQ(bytes.substr(10, expected_dict.size()), expected_dict);
  EXPECT_EQ(bytes[127], '\n');
  EXPECT_EQ(bytes.substr(10 + expected_dict.size(), 117 - expected_dict.size()),
            std::string(117 - expected_dict.size(), ' '));
  EXPECT_EQ(bytes.substr(128), bytes_of(values));

  const NpyArray back = read_npy(path);
  EXPECT_EQ(back.shape, (std::vector<std::size_t>{3, 2}));
  EXPECT_EQ(back.data, values);
  EXPECT_EQ(back.source_dtype, "<f4");
}

TEST(Npy, WriteNpyAlignsEveryHeaderLengthTo64Bytes) {
  TempDir dir("meshtrain-npy");
  const std::string path = dir.file("aligned.npy");
  // Shapes whose text lengths differ, to hit many paddings; zero rows keep the files empty.
  std::vector<std::vector<std::size_t>> shapes = {{0}, {0, 1}};
  for (std::size_t digits = 1, cols = 1; digits <= 19; ++digits, cols *= 10) shapes.push_back({0, cols});
  for (const auto& shape : shapes) {
    write_npy(path, shape, nullptr);
    const std::string bytes = read_file(path);
    const std::size_t header_length =
        static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    EXPECT_EQ((10 + header_length) % 64, 0u) << bytes;
    EXPECT_EQ(bytes.size(), 10 + header_length);
    EXPECT_EQ(read_npy(path).shape, shape);
  }
  const std::vector<float> one = {42.0f};
  write_npy(path, {1}, one.data());
  EXPECT_TRUE(contains(read_file(path), "'shape': (1,), }"));
  EXPECT_EQ(read_npy(path).data, one);
}

TEST(Npy, WriteNpyReportsTheSystemError) {
  TempDir dir("meshtrain-npy");
  const std::string path = dir.file("missing-dir/w.npy");
  const float value = 1.0f;
  try {
    write_npy(path, {1}, &value);
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(starts_with(e.what(), path + ": ")) << e.what();
    EXPECT_TRUE(contains(e.what(), "No such file or directory")) << e.what();
  }
}

TEST(Npy, RejectsMissingFilesAndDirectories) {
  TempDir dir("meshtrain-npy");
  const std::string missing = dir.file("nope.npy");
  std::string message = config_error([&] { read_npy(missing); });
  EXPECT_EQ(message, missing + ": cannot open: no such file");
  const std::string folder = dir.file("");
  message = config_error([&] { read_npy(folder); });
  EXPECT_TRUE(starts_with(message, folder + ": ")) << message;
  EXPECT_TRUE(contains(message, "is a directory")) << message;
}

TEST(Npy, RejectsWrongMagicAndShortFiles) {
  EXPECT_TRUE(contains(read_error("\x93NUM"), "not a .npy file (only 4 bytes)"));
  std::string file = npy_file(dict("<f4", "(1,)"), bytes_of(std::vector<float>{1}));
  file[1] = 'M';
  EXPECT_TRUE(contains(read_error(file), "not a .npy file (wrong magic bytes)"));
  EXPECT_TRUE(contains(read_error("PK\x03\x04 this is a zip file"), "wrong magic bytes"));
}

TEST(Npy, RejectsUnsupportedVersions) {
  const std::string data = bytes_of(std::vector<float>{1});
  EXPECT_TRUE(
      contains(read_error(npy_file(dict("<f4", "(1,)"), data, 4)), "unsupported .npy format version 4.0"));
  EXPECT_TRUE(
      contains(read_error(npy_file(dict("<f4", "(1,)"), data, 1, 1)), "unsupported .npy format version 1.1"));
  EXPECT_TRUE(
      contains(read_error(npy_file(dict("<f4", "(1,)"), data, 0)), "unsupported .npy format version 0.0"));
}

TEST(Npy, RejectsAHeaderLongerThanTheFile) {
  const std::string file = npy_file(dict("<f4", "(1,)"), "");
  const std::string message = read_error(file.substr(0, 40));
  EXPECT_TRUE(contains(message, "truncated: the header is 118 bytes but the file has only 30")) << message;
}

TEST(Npy, RejectsMalformedHeaders) {
  const std::string data = bytes_of(std::vector<float>{1, 2});
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not a dict", "expected '{'"},
      {"{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"},
      {"{'descr': '<f4', 'shape': (2,)}", "missing key 'fortran_order'"},
      {"{'fortran_order': False, 'shape': (2,)}", "missing key 'descr'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", "unexpected key 'extra'"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", "duplicate key 'descr'"},
      {"{'descr': '<f4', 'fortran_order': false, 'shape': (2,)}", "expected True or False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}", "expected a non-negative integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", "expected a non-negative integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2]}", "expected '('"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,) 'x': 1}", "expected ',' or '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} junk",
       "unexpected text after the closing '}'"},
      {"{'descr: '<f4', 'fortran_order': False, 'shape': (2,)}", "expected ':'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", "expected ',' or '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
       "dimension too large"},
  };
  for (const auto& [header, expected] : cases) {
    const std::string message = read_error(npy_file(header, data));
    EXPECT_TRUE(contains(message, "malformed header")) << header << " -> " << message;
    EXPECT_TRUE(contains(message, expected)) << header << " -> " << message;
  }
}

TEST(Npy, RejectsFortranOrder) {
  const std::string message =
      read_error(npy_file(dict("<f4", "(2, 2)", "True"), bytes_of(std::vector<float>{1, 2, 3, 4})));
  EXPECT_TRUE(contains(message, "Fortran order is not supported; save with np.ascontiguousarray")) << message;
}

TEST(Npy, RejectsOtherDtypesNamingThem) {
  for (const std::string descr : {">f4", ">f8", "<i4", "|u1", "<f2", "<c8", "|b1"}) {
    const std::string message = read_error(npy_file(dict(descr, "(4,)"), std::string(64, '\0')));
    EXPECT_TRUE(contains(message, "unsupported dtype '" + descr + "'")) << message;
  }
  const std::string structured = "{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1,), }";
  EXPECT_TRUE(contains(read_error(npy_file(structured, std::string(4, '\0'))),
                       "unsupported dtype: a structured dtype"));
}

TEST(Npy, RejectsTruncatedAndOverlongData) {
  const std::string data = bytes_of(std::vector<float>{1, 2, 3, 4, 5, 6});
  std::string message = read_error(npy_file(dict("<f4", "(3, 2)"), data.substr(0, 20)));
  EXPECT_TRUE(contains(message, "truncated: holds 20 bytes of data, the header promises 24")) << message;
  message = read_error(npy_file(dict("<f8", "(3, 2)"), data));
  EXPECT_TRUE(contains(message, "truncated: holds 24 bytes of data, the header promises 48")) << message;
  message = read_error(npy_file(dict("<f4", "(3, 2)"), data + "junk"));
  EXPECT_TRUE(contains(message, "holds 28 bytes of data, the header promises 24")) << message;
  EXPECT_TRUE(contains(message, "trailing bytes")) << message;
  EXPECT_FALSE(contains(message, "truncated")) << message;
}

TEST(Npy, RejectsNanAndInfNamingTheFirstIndex) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::string message =
      read_error(npy_file(dict("<f4", "(2, 3)"), bytes_of(std::vector<float>{1, 2, 3, nan, 5, nan})));
  EXPECT_TRUE(contains(message, "holds nan at flat index 3")) << message;
  message = read_error(npy_file(dict("<f4", "(2,)"), bytes_of(std::vector<float>{-inf, 1})));
  EXPECT_TRUE(contains(message, "holds -inf at flat index 0")) << message;
  message = read_error(npy_file(
      dict("<f8", "(3,)"), bytes_of(std::vector<double>{1, 2, std::numeric_limits<double>::infinity()})));
  EXPECT_TRUE(contains(message, "holds inf at flat index 2")) << message;
  message = read_error(npy_file(dict("<f8", "(2,)"), bytes_of(std::vector<double>{1, -1e300})));
  EXPECT_TRUE(
      contains(message, "holds -1.0000000000000001e+300 at flat index 1, which is out of float32 range"))
      << message;
}

TEST(Npy, RejectsScalarsAndMoreThanFourDimensions) {
  std::string message =
      read_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", std::string(4, '\0')));
  EXPECT_TRUE(contains(message, "0-d array (a scalar); expected 1 to 4 dimensions")) << message;
  message = read_error(npy_file(dict("<f4", "(2, 1, 1, 1, 2)"), std::string(16, '\0')));
  EXPECT_TRUE(contains(message, "has shape (2, 1, 1, 1, 2): 5 dimensions, expected 1 to 4")) << message;
  message = read_error(npy_file(dict("<f4", "(4294967296, 4294967296)"), ""));
  EXPECT_TRUE(contains(message, "is too large")) << message;
}

}  // namespace
