#include "meshtrain/data/npy.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "meshtrain/error.hpp"

namespace meshtrain {

// .npy stores little-endian values and we copy them straight into memory.
static_assert(std::endian::native == std::endian::little,
              "meshtrain's .npy I/O assumes a little-endian host");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;
constexpr std::size_t kAlignment = 64;  // numpy pads the header so the data starts here
// Samples of fields on a 2-D grid with channels, (N, s, s, C), are the largest we read.
constexpr std::size_t kMaxDimensions = 4;

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw ConfigError(path + ": " + what);
}

std::string system_error_text() { return std::strerror(errno); }

// Reads exactly n bytes; a short read is a truncated file (or a read error, named).
void read_exact(std::FILE* file, void* out, std::size_t n, const std::string& path, const char* what) {
  if (std::fread(out, 1, n, file) == n) return;
  if (std::ferror(file)) fail(path, std::string("cannot read ") + what + ": " + system_error_text());
  fail(path, std::string("truncated: the file ends inside the ") + what);
}

std::string format_value(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

// The header as numpy.save writes it, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::size_t> shape;
};

// A strict parser for the Python dict literal in a .npy header: exactly the keys descr,
// fortran_order and shape; string, True/False and tuple-of-integers values.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : text_(text), path_(path) {}

  NpyHeader parse() {
    NpyHeader header;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    skip_space();
    expect('{');
    skip_space();
    while (peek() != '}') {
      const std::string key = parse_string("a quoted key");
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        mark_seen(seen_descr, key);
        if (peek() != '\'' && peek() != '"') {
          fail(path_, "unsupported dtype: a structured dtype (descr is not a plain type string)");
        }
        header.descr = parse_string("a dtype string");
      } else if (key == "fortran_order") {
        mark_seen(seen_order, key);
        header.fortran_order = parse_bool();
      } else if (key == "shape") {
        mark_seen(seen_shape, key);
        header.shape = parse_shape();
      } else {
        malformed("unexpected key '" + key + "'");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
      } else if (peek() != '}') {
        malformed("expected ',' or '}'");
      }
    }
    ++pos_;
    skip_space();  // numpy pads with spaces and ends the header with '\n'
    if (pos_ != text_.size()) malformed("unexpected text after the closing '}'");
    if (!seen_descr) malformed("missing key 'descr'");
    if (!seen_order) malformed("missing key 'fortran_order'");
    if (!seen_shape) malformed("missing key 'shape'");
    return header;
  }

 private:
  [[noreturn]] void malformed(const std::string& what) const {
    fail(path_, "malformed header (" + what + " at character " + std::to_string(pos_) + "): " + excerpt());
  }

  std::string excerpt() const {
    std::string shown;
    for (char c : text_.substr(0, 120)) shown += (c >= 0x20 && c < 0x7f) ? c : '?';
    return shown;
  }

  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }

  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  void expect(char c) {
    if (peek() != c) malformed(std::string("expected '") + c + "'");
    ++pos_;
  }

  void mark_seen(bool& seen, const std::string& key) {
    if (seen) malformed("duplicate key '" + key + "'");
    seen = true;
  }

  std::string parse_string(const char* what) {
    const char quote = peek();
    if (quote != '\'' && quote != '"') malformed(std::string("expected ") + what);
    const std::size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string::npos) malformed("unterminated string");
    std::string value = text_.substr(pos_ + 1, end - pos_ - 1);
    if (value.find('\\') != std::string::npos) malformed("escape sequences are not supported");
    pos_ = end + 1;
    return value;
  }

  bool parse_bool() {
    if (text_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (text_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    malformed("expected True or False");
  }

  std::size_t parse_dimension() {
    if (peek() < '0' || peek() > '9') malformed("expected a non-negative integer");
    std::size_t value = 0;
    while (peek() >= '0' && peek() <= '9') {
      const std::size_t digit = static_cast<std::size_t>(peek() - '0');
      if (value > (std::numeric_limits<std::size_t>::max() - digit) / 10) malformed("dimension too large");
      value = value * 10 + digit;
      ++pos_;
    }
    if (peek() == 'L') ++pos_;  // files written by Python 2 spell longs as 3L
    return value;
  }

  std::vector<std::size_t> parse_shape() {
    std::vector<std::size_t> shape;
    expect('(');
    skip_space();
    while (peek() != ')') {
      shape.push_back(parse_dimension());
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
      } else if (peek() != ')') {
        malformed("expected ',' or ')' in shape");
      }
    }
    ++pos_;
    return shape;
  }

  const std::string& text_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

std::optional<std::size_t> checked_product(const std::vector<std::size_t>& dims, std::size_t factor) {
  std::size_t total = factor;
  for (std::size_t d : dims) {
    if (d != 0 && total > std::numeric_limits<std::size_t>::max() / d) return std::nullopt;
    total *= d;
  }
  return total;
}

std::string shape_text(const std::vector<std::size_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  if (shape.size() == 1) text += ",";  // Python's one-element tuple
  return text + ")";
}

// Reads count float64 values in chunks, rounding each to float32.
void read_float64(std::FILE* file, std::vector<float>& out, const std::string& path) {
  constexpr std::size_t kChunk = 1 << 16;
  std::vector<double> chunk(std::min(kChunk, out.size()));
  for (std::size_t done = 0; done < out.size();) {
    const std::size_t n = std::min(kChunk, out.size() - done);
    read_exact(file, chunk.data(), n * sizeof(double), path, "data");
    for (std::size_t i = 0; i < n; ++i) {
      const double v = chunk[i];
      if (!std::isfinite(v))
        fail(path, "holds " + format_value(v) + " at flat index " + std::to_string(done + i));
      if (std::fabs(v) > std::numeric_limits<float>::max()) {
        fail(path, "holds " + format_value(v) + " at flat index " + std::to_string(done + i) +
                       ", which is out of float32 range");
      }
      out[done + i] = static_cast<float>(v);
    }
    done += n;
  }
}

// What the preamble and header of an open .npy file say about its payload.
struct NpyLayout {
  NpyHeader header;
  std::size_t item_size = 0;
  std::size_t count = 0;  // elements
  std::size_t bytes = 0;  // of the payload
};

// The preamble (magic, version, header length: 2 bytes in version 1, 4 in 2 and 3) and the
// header text; leaves the file at the payload.
std::pair<std::string, std::size_t> read_header_text(std::FILE* file, std::uintmax_t file_size,
                                                     const std::string& path) {
  unsigned char preamble[kMagicSize + 2];
  if (file_size < sizeof preamble)
    fail(path, "not a .npy file (only " + std::to_string(file_size) + " bytes)");
  read_exact(file, preamble, sizeof preamble, path, "preamble");
  if (std::memcmp(preamble, kMagic, kMagicSize) != 0) fail(path, "not a .npy file (wrong magic bytes)");
  const int major = preamble[kMagicSize], minor = preamble[kMagicSize + 1];
  if (major < 1 || major > 3 || minor != 0) {
    fail(path, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                   " (supported: 1.0, 2.0, 3.0)");
  }
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  unsigned char length_field[4] = {0, 0, 0, 0};
  read_exact(file, length_field, length_bytes, path, "header length");
  const std::size_t header_length = length_field[0] | (length_field[1] << 8) |
                                    (std::size_t{length_field[2]} << 16) |
                                    (std::size_t{length_field[3]} << 24);
  const std::size_t data_offset = sizeof preamble + length_bytes + header_length;
  if (data_offset > file_size) {
    fail(path, "truncated: the header is " + std::to_string(header_length) + " bytes but the file has only " +
                   std::to_string(file_size - sizeof preamble - length_bytes) + " after the preamble");
  }
  std::string header_text(header_length, '\0');
  read_exact(file, header_text.data(), header_length, path, "header");
  return {header_text, data_offset};
}

// The header checked against what meshtrain reads, and against the payload's size.
NpyLayout check_layout(const NpyHeader& header, std::uintmax_t payload_bytes,
                       const std::string& path) {
  if (header.fortran_order) fail(path, "Fortran order is not supported; save with np.ascontiguousarray");
  NpyLayout layout{header};
  if (header.descr == "<f4")
    layout.item_size = 4;
  else if (header.descr == "<f8")
    layout.item_size = 8;
  else
    fail(path, "unsupported dtype '" + header.descr + "' (supported: '<f4' float32, '<f8' float64)");
  if (header.shape.empty()) {
    fail(path, "holds a 0-d array (a scalar); expected 1 to " + std::to_string(kMaxDimensions) +
                   " dimensions");
  }
  if (header.shape.size() > kMaxDimensions) {
    fail(path, "has shape " + shape_text(header.shape) + ": " + std::to_string(header.shape.size()) +
                   " dimensions, expected 1 to " + std::to_string(kMaxDimensions));
  }
  const auto count = checked_product(header.shape, 1);
  const auto expected_bytes = checked_product(header.shape, layout.item_size);
  if (!count || !expected_bytes) fail(path, "shape " + shape_text(header.shape) + " is too large");
  if (payload_bytes != *expected_bytes) {
    fail(path, std::string(payload_bytes < *expected_bytes ? "truncated: " : "") + "holds " +
                   std::to_string(payload_bytes) + " bytes of data, the header promises " +
                   std::to_string(*expected_bytes) + " (shape " + shape_text(header.shape) + ", dtype '" +
                   header.descr + "')" +
                   (payload_bytes > *expected_bytes ? ": trailing bytes after the array" : ""));
  }
  layout.count = *count;
  layout.bytes = *expected_bytes;
  return layout;
}

}  // namespace

namespace {

// Opens path and checks its preamble and header against its size; leaves the file at the
// payload.
std::pair<File, NpyInfo> open_npy(const std::string& path, NpyLayout& layout) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) fail(path, "cannot open: no such file");
  if (fs::is_directory(status)) fail(path, "cannot open: is a directory, not a .npy file");
  File file(std::fopen(path.c_str(), "rb"));
  if (!file) fail(path, "cannot open: " + system_error_text());
  const std::uintmax_t file_size = fs::file_size(path, ec);
  if (ec) fail(path, "cannot read its size: " + ec.message());

  const auto [header_text, data_offset] = read_header_text(file.get(), file_size, path);
  layout = check_layout(HeaderParser(header_text, path).parse(), file_size - data_offset, path);
  NpyInfo info{path, layout.header.shape, layout.header.descr, layout.item_size, data_offset};
  return {std::move(file), std::move(info)};
}

}  // namespace

NpyInfo read_npy_info(const std::string& path) {
  NpyLayout layout;
  return open_npy(path, layout).second;
}

NpyArray read_npy(const std::string& path) {
  NpyLayout layout;
  const File file = open_npy(path, layout).first;
  NpyArray array{layout.header.shape, std::vector<float>(layout.count), layout.header.descr};
  if (layout.item_size == 4) {
    read_exact(file.get(), array.data.data(), layout.bytes, path, "data");
    for (std::size_t i = 0; i < array.data.size(); ++i) {
      if (!std::isfinite(array.data[i])) {
        fail(path, "holds " + format_value(array.data[i]) + " at flat index " + std::to_string(i));
      }
    }
  } else {
    read_float64(file.get(), array.data, path);
  }
  return array;
}

NpyArray as_matrix(NpyArray array) {
  if (array.shape.size() == 1) array.shape.push_back(1);
  if (array.shape.size() > 2) {
    // Row-major: each sample's trailing axes are already contiguous, so only the shape changes.
    std::size_t columns = 1;
    for (std::size_t i = 1; i < array.shape.size(); ++i) columns *= array.shape[i];
    array.shape = {array.shape[0], columns};
  }
  return array;
}

void write_npy(const std::string& path, const std::vector<std::size_t>& shape, const float* data) {
  const auto count = checked_product(shape, 1);
  if (!count) throw std::invalid_argument(path + ": shape " + shape_text(shape) + " is too large");
  if (*count > 0 && data == nullptr)
    throw std::invalid_argument(path + ": no data for shape " + shape_text(shape));

  // Keys in sorted order and the trailing ", " exactly as numpy writes them.
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
  const std::size_t preamble_size = kMagicSize + 2 + 2;
  const std::size_t unpadded = preamble_size + header.size() + 1;  // + the final '\n'
  header.append((kAlignment - unpadded % kAlignment) % kAlignment, ' ');
  header += '\n';
  if (header.size() > 0xffff)
    throw std::invalid_argument(path + ": shape " + shape_text(shape) + " has too many dimensions");

  std::string preamble(kMagic, kMagicSize);
  preamble += '\x01';
  preamble += '\x00';
  preamble += static_cast<char>(header.size() & 0xff);
  preamble += static_cast<char>(header.size() >> 8);

  const auto write_failed = [&path](const std::string& why) {
    std::remove(path.c_str());
    throw std::runtime_error(path + ": cannot write .npy file: " + why);
  };
  File file(std::fopen(path.c_str(), "wb"));
  if (!file) throw std::runtime_error(path + ": cannot open for writing: " + system_error_text());
  const bool written = std::fwrite(preamble.data(), 1, preamble.size(), file.get()) == preamble.size() &&
                       std::fwrite(header.data(), 1, header.size(), file.get()) == header.size() &&
                       (*count == 0 || std::fwrite(data, sizeof(float), *count, file.get()) == *count);
  if (!written) write_failed(system_error_text());
  if (std::fclose(file.release()) != 0) write_failed(system_error_text());
}

}  // namespace meshtrain
