#pragma once
// NumPy .npy files: the format numpy.save writes
// (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace meshtrain {

// An array read from a .npy file, converted to float32, row-major (C order).
struct NpyArray {
  std::vector<std::size_t> shape;  // one to four dimensions
  std::vector<float> data;         // product(shape) values
  std::string source_dtype;        // the dtype on disk: "<f4" or "<f8"
};

// Reads a .npy file of format version 1.0, 2.0 or 3.0 holding a C-order array of one to four
// dimensions (e.g. fields on a grid, (N, s, s, C)) with dtype '<f4' or '<f8'. float64 values
// are rounded to float32.
// Every problem (missing file, bad magic or version, malformed header, Fortran order, other
// dtypes, truncated or over-long data, NaN or Inf, a float64 value out of float32 range,
// 0 or more than 4 dimensions) throws ConfigError whose message starts with the path.
// A dimension of size 0 is accepted: an empty array is a well-formed file, and whether an
// empty data set is usable is the caller's decision.
NpyArray read_npy(const std::string& path);

// What a .npy file's header says, checked as read_npy checks it (magic, version, header,
// Fortran order, dtype '<f4' or '<f8', 1 to 4 dimensions, the payload's size against the
// shape), without reading the payload: for readers that take rows of it (NpyShards).
struct NpyInfo {
  std::string path;
  std::vector<std::size_t> shape;
  std::string descr;           // "<f4" or "<f8"
  std::size_t item_size = 0;   // 4 or 8
  std::uint64_t data_offset = 0;  // where the payload starts
};
NpyInfo read_npy_info(const std::string& path);

// A 1-D array of shape (n,) as the column (n, 1); a 2-D array is returned unchanged; one of
// 3 or 4 dimensions (n, d1, d2[, d3]) as (n, d1 * d2 [* d3]), each sample's values in order.
NpyArray as_matrix(NpyArray array);

// Writes data (product(shape) float32 values, row-major) as a '<f4', C-order .npy file of
// format version 1.0, its header padded so that the data starts at a multiple of 64 bytes
// as numpy does. Throws std::runtime_error naming the path and the system error on failure.
void write_npy(const std::string& path, const std::vector<std::size_t>& shape, const float* data);

}  // namespace meshtrain
