#include "root_io.hpp"

#include <algorithm>
#include <cstdint>

#include "meshtrain/error.hpp"

namespace meshtrain::app {

namespace {
// MPI counts are ints: send large buffers in pieces.
constexpr std::size_t kChunk = std::size_t{1} << 28;

void broadcast_size(MpiCommunicator& comm, std::size_t& value) {
  auto v = static_cast<std::int64_t>(value);
  comm.broadcast(&v, 1, DataType::Int64, 0);
  value = static_cast<std::size_t>(v);
}
}  // namespace

void on_root_sharing_errors(MpiCommunicator& comm, const std::function<void()>& work) {
  std::string error;
  if (comm.rank() == 0) {
    try {
      work();
    } catch (const ConfigError& e) {
      error = e.what();
      if (error.empty()) error = "invalid input";
    }
  }
  broadcast_string(comm, error);
  if (!error.empty()) throw ConfigError(error);
}

void broadcast_string(MpiCommunicator& comm, std::string& text) {
  std::size_t length = text.size();
  broadcast_size(comm, length);
  std::vector<std::int32_t> chars(text.begin(), text.end());
  chars.resize(length);
  if (length > 0) comm.broadcast(chars.data(), length, DataType::Int32, 0);
  text.assign(chars.begin(), chars.end());
}

void broadcast_floats(MpiCommunicator& comm, float* data, std::size_t count) {
  for (std::size_t done = 0; done < count; done += kChunk) {
    comm.broadcast(data + done, std::min(kChunk, count - done), DataType::Float32, 0);
  }
}

void broadcast_doubles(MpiCommunicator& comm, std::vector<double>& values) {
  std::size_t n = values.size();
  broadcast_size(comm, n);
  values.resize(n);
  if (n > 0) comm.broadcast(values.data(), n, DataType::Float64, 0);
}

void broadcast_matrix(MpiCommunicator& comm, HostMatrix& matrix, const std::string& label) {
  std::size_t rows = matrix.extent(0), cols = matrix.extent(1);
  broadcast_size(comm, rows);
  broadcast_size(comm, cols);
  if (comm.rank() != 0) matrix = HostMatrix(label, rows, cols);
  broadcast_floats(comm, matrix.data(), rows * cols);
}

}  // namespace meshtrain::app
