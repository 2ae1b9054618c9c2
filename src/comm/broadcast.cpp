#include "meshtrain/comm/broadcast.hpp"

#include <algorithm>
#include <cstdint>

namespace meshtrain {

namespace {
// MPI counts are ints: send large buffers in pieces.
constexpr std::size_t kChunk = std::size_t{1} << 28;
}  // namespace

void broadcast_size(Communicator& comm, std::size_t& value, int root) {
  auto v = static_cast<std::int64_t>(value);
  comm.broadcast(&v, 1, DataType::Int64, root);
  value = static_cast<std::size_t>(v);
}

void broadcast_string(Communicator& comm, std::string& text, int root) {
  std::size_t length = text.size();
  broadcast_size(comm, length, root);
  std::vector<std::int32_t> chars(text.begin(), text.end());
  chars.resize(length);
  if (length > 0) comm.broadcast(chars.data(), length, DataType::Int32, root);
  text.assign(chars.begin(), chars.end());
}

void broadcast_doubles(Communicator& comm, std::vector<double>& values, int root) {
  std::size_t n = values.size();
  broadcast_size(comm, n, root);
  values.resize(n);
  if (n > 0) comm.broadcast(values.data(), n, DataType::Float64, root);
}

void broadcast_floats(Communicator& comm, float* data, std::size_t count, int root) {
  for (std::size_t done = 0; done < count; done += kChunk) {
    comm.broadcast(data + done, std::min(kChunk, count - done), DataType::Float32, root);
  }
}

}  // namespace meshtrain
