#include "meshtrain/data/npy_shards.hpp"

#include <fcntl.h>
#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {

std::string shape_text(const std::vector<std::size_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) text += ",";
  return text + ")";
}

std::string format_value(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

bool is_glob(const std::string& spec) { return spec.find_first_of("*?[") != std::string::npos; }

// Exactly bytes from offset; a short read is a file that changed after its header was checked.
void pread_exact(int fd, void* out, std::size_t bytes, std::uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(out);
  while (bytes > 0) {
    const ssize_t got = ::pread(fd, p, bytes, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(path + ": cannot read: " + std::strerror(errno));
    }
    if (got == 0) throw std::runtime_error(path + ": truncated: the file ended while reading rows");
    p += got;
    bytes -= static_cast<std::size_t>(got);
    offset += static_cast<std::uint64_t>(got);
  }
}

}  // namespace

std::vector<std::string> expand_npy_paths(const std::string& spec) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths;
  if (is_glob(spec)) {
    glob_t matches{};
    const int rc = ::glob(spec.c_str(), 0, nullptr, &matches);
    if (rc == 0) {
      for (std::size_t i = 0; i < matches.gl_pathc; ++i) paths.emplace_back(matches.gl_pathv[i]);
    }
    ::globfree(&matches);
    if (rc == GLOB_NOMATCH || paths.empty()) throw ConfigError(spec + ": no file matches the pattern");
    if (rc != 0) throw ConfigError(spec + ": cannot expand the pattern");
  } else {
    std::error_code ec;
    if (!fs::is_directory(spec, ec)) return {spec};  // a file: read_npy_info names its problems
    for (const fs::directory_entry& entry : fs::directory_iterator(spec, ec)) {
      if (entry.path().extension() == ".npy") paths.push_back(entry.path().string());
    }
    if (ec) throw ConfigError(spec + ": cannot list the directory: " + ec.message());
    if (paths.empty()) throw ConfigError(spec + ": a directory with no .npy files");
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

struct NpyShards::Descriptors {
  std::vector<int> fds;
  ~Descriptors() {
    for (int fd : fds) ::close(fd);
  }
};

NpyShards NpyShards::open(const std::string& spec) {
  std::vector<NpyInfo> files;
  for (const std::string& path : expand_npy_paths(spec)) files.push_back(read_npy_info(path));
  NpyShards shards;
  shards.build(spec, std::move(files));
  return shards;
}

void NpyShards::build(std::string spec, std::vector<NpyInfo> files) {
  spec_ = std::move(spec);
  files_ = std::move(files);
  starts_ = {0};
  for (std::size_t i = 0; i < files_.size(); ++i) {
    const NpyInfo& f = files_[i];
    std::vector<std::size_t> sample(f.shape.begin() + 1, f.shape.end());
    if (sample.empty()) sample = {1};
    if (i == 0) {
      sample_shape_ = sample;
    } else if (sample != sample_shape_) {
      throw ConfigError(f.path + ": samples of shape " + shape_text(sample) + ", but " +
                        files_.front().path + " has " + shape_text(sample_shape_) +
                        " (every shard of " + spec_ + " needs the same sample shape)");
    }
    starts_.push_back(starts_.back() + f.shape.front());
  }
  columns_ = 1;
  for (std::size_t d : sample_shape_) columns_ *= d;
  auto fds = std::make_shared<Descriptors>();
  for (const NpyInfo& f : files_) {
    const int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw ConfigError(f.path + ": cannot open: " + std::strerror(errno));
    fds->fds.push_back(fd);
  }
  fds_ = std::move(fds);
}

std::string NpyShards::plan_text() const {
  // One line for the spec, then one per file: descr, offset, rank, dims, then the path (last:
  // it may hold spaces).
  std::ostringstream out;
  out << spec_ << '\n';
  for (const NpyInfo& f : files_) {
    out << f.descr << ' ' << f.data_offset << ' ' << f.shape.size();
    for (std::size_t d : f.shape) out << ' ' << d;
    out << ' ' << f.path << '\n';
  }
  return out.str();
}

NpyShards NpyShards::from_plan(const std::string& plan_text) {
  std::istringstream in(plan_text);
  std::string spec, line;
  std::getline(in, spec);
  std::vector<NpyInfo> files;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    NpyInfo f;
    std::size_t rank = 0;
    fields >> f.descr >> f.data_offset >> rank;
    f.shape.resize(rank);
    for (std::size_t& d : f.shape) fields >> d;
    fields.get();  // the space before the path
    std::getline(fields, f.path);
    if (!fields && !fields.eof()) throw std::logic_error("NpyShards::from_plan: malformed plan");
    f.item_size = f.descr == "<f8" ? 8 : 4;
    files.push_back(std::move(f));
  }
  NpyShards shards;
  shards.build(spec, std::move(files));
  return shards;
}

void NpyShards::read_contiguous(std::size_t file, std::size_t begin, std::size_t count,
                                float* out) const {
  const NpyInfo& f = files_[file];
  const std::size_t values = count * columns_;
  const std::uint64_t offset = f.data_offset + static_cast<std::uint64_t>(begin) * columns_ * f.item_size;
  if (f.item_size == 4) {
    pread_exact(fds_->fds[file], out, values * sizeof(float), offset, f.path);
    return;
  }
  constexpr std::size_t kChunk = 1 << 14;
  double chunk[kChunk];
  for (std::size_t done = 0; done < values;) {
    const std::size_t n = std::min(kChunk, values - done);
    pread_exact(fds_->fds[file], chunk, n * sizeof(double), offset + done * sizeof(double), f.path);
    for (std::size_t i = 0; i < n; ++i) out[done + i] = static_cast<float>(chunk[i]);
    done += n;
  }
}

void NpyShards::read_rows(std::span<const std::int64_t> rows, float* out) const {
  for (std::size_t i = 0; i < rows.size();) {
    const auto row = static_cast<std::uint64_t>(rows[i]);
    if (rows[i] < 0 || row >= starts_.back()) {
      throw std::out_of_range(spec_ + ": row " + std::to_string(rows[i]) + " of " +
                              std::to_string(starts_.back()));
    }
    const auto file = static_cast<std::size_t>(
        std::upper_bound(starts_.begin(), starts_.end(), row) - starts_.begin() - 1);
    std::size_t run = 1;  // consecutive rows in the same shard: one read
    while (i + run < rows.size() && static_cast<std::uint64_t>(rows[i + run]) == row + run &&
           row + run < starts_[file + 1]) {
      ++run;
    }
    read_contiguous(file, static_cast<std::size_t>(row - starts_[file]), run, out + i * columns_);
    i += run;
  }
}

void NpyShards::read_range(std::size_t begin, std::size_t count, float* out) const {
  std::size_t done = 0;
  while (done < count) {
    const std::uint64_t row = begin + done;
    if (row >= starts_.back()) throw std::out_of_range(spec_ + ": row " + std::to_string(row));
    const auto file = static_cast<std::size_t>(
        std::upper_bound(starts_.begin(), starts_.end(), row) - starts_.begin() - 1);
    const auto n = static_cast<std::size_t>(
        std::min<std::uint64_t>(count - done, starts_[file + 1] - row));
    read_contiguous(file, static_cast<std::size_t>(row - starts_[file]), n, out + done * columns_);
    done += n;
  }
}

std::size_t NpyShards::chunk(std::size_t chunk_rows) const {
  if (chunk_rows > 0) return chunk_rows;
  constexpr std::size_t kChunkBytes = std::size_t{1} << 20;
  return std::max<std::size_t>(1, kChunkBytes / (std::max<std::size_t>(columns_, 1) * sizeof(double)));
}

void NpyShards::scan(std::size_t chunk_rows,
                     const std::function<void(std::size_t, std::size_t, const float*)>& visit) const {
  chunk_rows = chunk(chunk_rows);
  std::vector<float> buffer(chunk_rows * columns_);
  for (std::size_t row = 0; row < rows(); row += chunk_rows) {
    const std::size_t n = std::min(chunk_rows, rows() - row);
    read_range(row, n, buffer.data());
    visit(row, n, buffer.data());
  }
}

void NpyShards::check_values(std::size_t chunk_rows) const {
  chunk_rows = chunk(chunk_rows);
  std::vector<double> buffer(chunk_rows * columns_);
  for (std::size_t file = 0; file < files_.size(); ++file) {
    const NpyInfo& f = files_[file];
    const std::size_t rows_here = f.shape.front();
    for (std::size_t row = 0; row < rows_here; row += chunk_rows) {
      const std::size_t values = std::min(chunk_rows, rows_here - row) * columns_;
      const std::uint64_t offset = f.data_offset + std::uint64_t{row} * columns_ * f.item_size;
      if (f.item_size == 4) {
        auto* floats = reinterpret_cast<float*>(buffer.data());
        pread_exact(fds_->fds[file], floats, values * sizeof(float), offset, f.path);
        for (std::size_t i = 0; i < values; ++i) {
          if (!std::isfinite(floats[i])) {
            throw ConfigError(f.path + ": holds " + format_value(floats[i]) + " at flat index " +
                              std::to_string(row * columns_ + i));
          }
        }
      } else {
        pread_exact(fds_->fds[file], buffer.data(), values * sizeof(double), offset, f.path);
        for (std::size_t i = 0; i < values; ++i) {
          const double v = buffer[i];
          const std::string at = " at flat index " + std::to_string(row * columns_ + i);
          if (!std::isfinite(v)) throw ConfigError(f.path + ": holds " + format_value(v) + at);
          if (std::fabs(v) > std::numeric_limits<float>::max()) {
            throw ConfigError(f.path + ": holds " + format_value(v) + at +
                              ", which is out of float32 range");
          }
        }
      }
    }
  }
}

}  // namespace meshtrain
