#include "root_io.hpp"

#include "meshtrain/error.hpp"

namespace meshtrain::app {

void on_root_sharing_errors(Communicator& comm, const std::function<void()>& work) {
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

void broadcast_matrix(Communicator& comm, HostMatrix& matrix, const std::string& label) {
  std::size_t rows = matrix.extent(0), cols = matrix.extent(1);
  broadcast_size(comm, rows);
  broadcast_size(comm, cols);
  if (comm.rank() != 0) matrix = HostMatrix(label, rows, cols);
  broadcast_floats(comm, matrix.data(), rows * cols);
}

}  // namespace meshtrain::app
