#pragma once
// Broadcasts of host values of any length over a Communicator: the receivers learn the
// length from the root. Collective; every rank must call them in the same order.
#include <cstddef>
#include <string>
#include <vector>

#include "meshtrain/comm/communicator.hpp"

namespace meshtrain {

void broadcast_size(Communicator& comm, std::size_t& value, int root = 0);
void broadcast_string(Communicator& comm, std::string& text, int root = 0);
void broadcast_doubles(Communicator& comm, std::vector<double>& values, int root = 0);
// count floats (the same count on every rank), in pieces that fit an MPI count.
void broadcast_floats(Communicator& comm, float* data, std::size_t count, int root = 0);

}  // namespace meshtrain
