#pragma once
// Rank 0 does the file I/O; every other rank receives what it read. A ConfigError on rank 0
// (a missing or malformed file) is re-raised on every rank, so that all of them leave the
// same way before any training collective and only rank 0 reports it.
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/nn/types.hpp"

namespace meshtrain::app {

// Collective: runs work on rank 0 only; throws the same ConfigError on every rank when work
// threw one there.
void on_root_sharing_errors(MpiCommunicator& comm, const std::function<void()>& work);

// Collective: rank 0's matrix (any shape, possibly empty) on every rank.
void broadcast_matrix(MpiCommunicator& comm, HostMatrix& matrix, const std::string& label);
void broadcast_floats(MpiCommunicator& comm, float* data, std::size_t count);
void broadcast_doubles(MpiCommunicator& comm, std::vector<double>& values);
void broadcast_string(MpiCommunicator& comm, std::string& text);

}  // namespace meshtrain::app
