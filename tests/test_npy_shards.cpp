// Data sets in .npy shards read by rows (NpyShards, NpyRowSource): a file, a directory, a
// glob; rows counted across shards; float64 shards; the plan other ranks open; every error.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "meshtrain/data/npy.hpp"
#include "meshtrain/data/npy_shards.hpp"
#include "meshtrain/data/row_source.hpp"
#include "meshtrain/error.hpp"
#include "test_support.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::testing;

// Row r of the whole data set holds r * 10 + c in column c.
std::vector<float> rows_of(std::size_t begin, std::size_t count, std::size_t columns) {
  std::vector<float> out;
  for (std::size_t r = begin; r < begin + count; ++r) {
    for (std::size_t c = 0; c < columns; ++c) out.push_back(static_cast<float>(r * 10 + c));
  }
  return out;
}

// Shards of the given row counts, files name0.npy, name1.npy, ... in dir.
void write_shards(const TempDir& dir, const std::string& name, const std::vector<std::size_t>& counts,
                  std::size_t columns) {
  std::size_t begin = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    const std::vector<float> values = rows_of(begin, counts[i], columns);
    write_npy(dir.file(name + std::to_string(i) + ".npy"), {counts[i], columns}, values.data());
    begin += counts[i];
  }
}

// A float64 .npy file of the given values.
void write_float64(const std::string& path, std::size_t rows, std::size_t columns,
                   const std::vector<double>& values) {
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(columns) + "), }";
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string file = "\x93NUMPY\x01";
  file += '\0';
  file += static_cast<char>(header.size() & 0xff);
  file += static_cast<char>(header.size() >> 8);
  file += header;
  file.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(double));
  write_file(path, file);
}

TEST(NpyShards, OneFileReadsRowsInAnyOrder) {
  TempDir dir("meshtrain-shards");
  write_shards(dir, "x", {7}, 3);
  const NpyShards shards = NpyShards::open(dir.file("x0.npy"));
  EXPECT_EQ(shards.rows(), 7u);
  EXPECT_EQ(shards.columns(), 3u);
  EXPECT_EQ(shards.files().size(), 1u);
  const std::vector<std::int64_t> rows = {6, 0, 1, 2, 5};
  std::vector<float> out(rows.size() * 3);
  shards.read_rows(rows, out.data());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (std::size_t c = 0; c < 3; ++c) EXPECT_EQ(out[i * 3 + c], static_cast<float>(rows[i] * 10 + c));
  }
}

TEST(NpyShards, RowsAreCountedAcrossTheShardsOfADirectorySortedByName) {
  TempDir dir("meshtrain-shards");
  write_shards(dir, "part", {4, 1, 0, 6}, 2);  // an empty shard is allowed
  write_file(dir.file("notes.txt"), "not data");  // only *.npy files are shards
  const NpyShards shards = NpyShards::open(dir.path().string());
  ASSERT_EQ(shards.files().size(), 4u);
  EXPECT_EQ(shards.rows(), 11u);
  EXPECT_EQ(shards.files()[1].path, dir.file("part1.npy"));
  // Every row, in a shuffled order that crosses every shard boundary, and runs of
  // consecutive rows that continue into the next shard.
  std::vector<std::int64_t> rows = {10, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6, 9, 8, 7};
  std::vector<float> out(rows.size() * 2);
  shards.read_rows(rows, out.data());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(out[i * 2], static_cast<float>(rows[i] * 10)) << "row " << rows[i];
    EXPECT_EQ(out[i * 2 + 1], static_cast<float>(rows[i] * 10 + 1)) << "row " << rows[i];
  }
  std::vector<float> range(6 * 2);
  shards.read_range(3, 6, range.data());
  EXPECT_EQ(range, rows_of(3, 6, 2));
  std::vector<float> all;
  shards.scan(4, [&](std::size_t first, std::size_t n, const float* values) {
    EXPECT_EQ(first, all.size() / 2);
    EXPECT_LE(n, 4u);
    all.insert(all.end(), values, values + n * 2);
  });
  EXPECT_EQ(all, rows_of(0, 11, 2));
}

TEST(NpyShards, AGlobMatchesItsFilesSortedByName) {
  TempDir dir("meshtrain-shards");
  write_shards(dir, "x", {2, 3, 4}, 1);
  write_shards(dir, "y", {5}, 1);
  const NpyShards shards = NpyShards::open(dir.file("x*.npy"));
  EXPECT_EQ(shards.files().size(), 3u);
  EXPECT_EQ(shards.rows(), 9u);
  std::vector<float> out(9);
  shards.read_range(0, 9, out.data());
  EXPECT_EQ(out, rows_of(0, 9, 1));
  EXPECT_EQ(expand_npy_paths(dir.file("x?.npy")),
            (std::vector<std::string>{dir.file("x0.npy"), dir.file("x1.npy"), dir.file("x2.npy")}));
}

TEST(NpyShards, FieldsAndOneDimensionalArrays) {
  TempDir dir("meshtrain-shards");
  const std::vector<float> a = rows_of(0, 2 * 3 * 3, 1), b = rows_of(0, 5, 1);
  write_npy(dir.file("f0.npy"), {2, 3, 3, 1}, a.data());
  write_npy(dir.file("f1.npy"), {1, 3, 3, 1}, a.data());
  write_npy(dir.file("v.npy"), {5}, b.data());
  const NpyShards fields = NpyShards::open(dir.file("f*.npy"));
  EXPECT_EQ(fields.sample_shape(), (std::vector<std::size_t>{3, 3, 1}));
  EXPECT_EQ(fields.columns(), 9u);
  EXPECT_EQ(fields.rows(), 3u);
  const NpyShards vector = NpyShards::open(dir.file("v.npy"));
  EXPECT_EQ(vector.sample_shape(), (std::vector<std::size_t>{1}));
  EXPECT_EQ(vector.columns(), 1u);
}

TEST(NpyShards, Float64ShardsAreRoundedToFloat32) {
  TempDir dir("meshtrain-shards");
  write_float64(dir.file("a.npy"), 2, 2, {0.1, 1.0 / 3.0, 2.5, -7.0});
  write_shards(dir, "b", {1}, 2);  // float32 after it: row 2 holds 0, 1
  const NpyShards shards = NpyShards::open(dir.file("[ab]*.npy"));
  std::vector<float> out(3 * 2);
  shards.read_rows(std::vector<std::int64_t>{1, 0, 2}, out.data());
  EXPECT_EQ(out, (std::vector<float>{2.5f, -7.0f, 0.1f, static_cast<float>(1.0 / 3.0), 0.0f, 1.0f}));
  shards.check_values();
}

TEST(NpyShards, ThePlanOpensTheSameShards) {
  TempDir dir("meshtrain-shards");
  write_shards(dir, "with space ", {3, 2}, 2);
  const NpyShards shards = NpyShards::open(dir.path().string());
  const NpyShards other = NpyShards::from_plan(shards.plan_text());
  EXPECT_EQ(other.spec(), shards.spec());
  EXPECT_EQ(other.rows(), 5u);
  ASSERT_EQ(other.files().size(), 2u);
  EXPECT_EQ(other.files()[1].path, dir.file("with space 1.npy"));
  std::vector<float> a(10), b(10);
  shards.read_range(0, 5, a.data());
  other.read_range(0, 5, b.data());
  EXPECT_EQ(a, b);
}

TEST(NpyShards, EveryProblemNamesTheFileOrThePath) {
  TempDir dir("meshtrain-shards");
  // A pattern that matches nothing, an empty directory.
  std::string m = config_error([&] { NpyShards::open(dir.file("none*.npy")); });
  EXPECT_EQ(m, dir.file("none*.npy") + ": no file matches the pattern");
  m = config_error([&] { NpyShards::open(dir.path().string()); });
  EXPECT_EQ(m, dir.path().string() + ": a directory with no .npy files");
  m = config_error([&] { NpyShards::open(dir.file("missing.npy")); });
  EXPECT_TRUE(starts_with(m, dir.file("missing.npy") + ": cannot open")) << m;
  // Shards whose samples differ.
  write_shards(dir, "x", {2}, 3);
  write_shards(dir, "y", {2}, 4);
  m = config_error([&] { NpyShards::open(dir.path().string()); });
  EXPECT_TRUE(starts_with(m, dir.file("y0.npy") + ": samples of shape (4,), but " +
                                 dir.file("x0.npy") + " has (3,)"))
      << m;
  // Another dtype, Fortran order, a truncated payload: read_npy's checks, naming the shard.
  TempDir bad("meshtrain-shards");
  write_shards(bad, "a", {2}, 3);
  std::string text = read_file(bad.file("a0.npy"));
  write_file(bad.file("b.npy"), text.substr(0, text.size() - 4));
  m = config_error([&] { NpyShards::open(bad.path().string()); });
  EXPECT_TRUE(starts_with(m, bad.file("b.npy") + ": truncated")) << m;
  std::string f2 = text;
  f2.replace(f2.find("<f4"), 3, "<f2");
  write_file(bad.file("b.npy"), f2);
  m = config_error([&] { NpyShards::open(bad.path().string()); });
  EXPECT_TRUE(starts_with(m, bad.file("b.npy") + ": unsupported dtype '<f2'")) << m;
  std::string big_endian = text;
  big_endian.replace(big_endian.find("<f4"), 3, ">f4");
  write_file(bad.file("b.npy"), big_endian);
  m = config_error([&] { NpyShards::open(bad.path().string()); });
  EXPECT_TRUE(starts_with(m, bad.file("b.npy") + ": unsupported dtype '>f4'")) << m;
  std::string fortran = text;
  fortran.replace(fortran.find("False"), 5, "True ");
  write_file(bad.file("b.npy"), fortran);
  m = config_error([&] { NpyShards::open(bad.path().string()); });
  EXPECT_TRUE(starts_with(m, bad.file("b.npy") + ": Fortran order")) << m;
}

TEST(NpyShards, ANanIsFoundInTheShardThatHoldsIt) {
  TempDir dir("meshtrain-shards");
  write_shards(dir, "x", {3, 2}, 2);
  std::vector<float> values = rows_of(0, 2, 2);
  values[3] = std::numeric_limits<float>::infinity();
  write_npy(dir.file("x1.npy"), {2, 2}, values.data());
  const NpyShards shards = NpyShards::open(dir.path().string());  // headers only: fine
  const std::string m = config_error([&] { shards.check_values(1); });
  EXPECT_EQ(m, dir.file("x1.npy") + ": holds inf at flat index 3");
  write_float64(dir.file("x1.npy"), 1, 2, {1.0, 1e300});
  const std::string range = config_error([&] { NpyShards::open(dir.path().string()).check_values(); });
  EXPECT_EQ(range, dir.file("x1.npy") + ": holds 1.0000000000000001e+300 at flat index 1, which is out of float32 range");
}

TEST(NpyRowSource, ReadsXAndYRowsAndEncodesTheInputs) {
  TempDir dir("meshtrain-shards");
  write_shards(dir, "x", {2, 3}, 2);
  write_shards(dir, "y", {5}, 1);
  NpyRowSource source(NpyShards::open(dir.file("x*.npy")), NpyShards::open(dir.file("y0.npy")));
  EXPECT_EQ(source.rows(), 5u);
  const std::vector<std::int64_t> rows = {4, 1};
  std::vector<float> x(4), y(2);
  source.read(rows, x.data(), y.data());
  EXPECT_EQ(x, (std::vector<float>{40, 41, 10, 11}));
  EXPECT_EQ(y, (std::vector<float>{40, 10}));
  source.encode_inputs({1.0f, 2.0f}, {2.0f, 0.5f});
  source.read(rows, x.data(), y.data());
  EXPECT_EQ(x, (std::vector<float>{(40.0f - 1.0f) / 2.0f, (41.0f - 2.0f) / 0.5f, (10.0f - 1.0f) / 2.0f,
                                   (11.0f - 2.0f) / 0.5f}));
  EXPECT_EQ(y, (std::vector<float>{40, 10}));
  // Another row count, another feature count.
  write_shards(dir, "z", {4}, 1);
  const std::string m = config_error(
      [&] { NpyRowSource(NpyShards::open(dir.file("x*.npy")), NpyShards::open(dir.file("z0.npy"))); });
  EXPECT_EQ(m, dir.file("z0.npy") + ": 4 samples, but " + dir.file("x*.npy") + " has 5");
  EXPECT_THROW(source.encode_inputs({1.0f}, {1.0f}), ConfigError);
}

}  // namespace
