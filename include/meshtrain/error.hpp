#pragma once
// Error types. One error path: validate, throw a typed error, catch at the top of main,
// print once from rank 0 (ConfigError) or from the failing rank and abort (everything else).
#include <stdexcept>
#include <string>

namespace meshtrain {

// Bad user input (flags, configs, data). Detected identically on every rank before any
// collective starts, so every rank can exit cleanly and rank 0 alone reports it.
class ConfigError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A failed MPI, NCCL or CUDA call. Carries the call, the rank and the code in its message.
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A condition of the run itself (a NaN loss under nonfinite = "abort"), detected identically
// on every rank at the same step: every rank can stop cleanly and rank 0 alone reports it.
class TrainingError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace meshtrain
