#pragma once
// Rank 0 does the file I/O; every other rank receives what it read. A ConfigError on rank 0
// (a missing or malformed file) is re-raised on every rank, so that all of them leave the
// same way before any training collective and only rank 0 reports it.
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "meshtrain/comm/broadcast.hpp"
#include "meshtrain/nn/types.hpp"

namespace meshtrain::app {

// Collective: runs work on rank 0 only; throws the same ConfigError on every rank when work
// threw one there.
void on_root_sharing_errors(Communicator& comm, const std::function<void()>& work);

// Collective: rank 0's matrix (any shape, possibly empty) on every rank.
void broadcast_matrix(Communicator& comm, HostMatrix& matrix, const std::string& label);

}  // namespace meshtrain::app
