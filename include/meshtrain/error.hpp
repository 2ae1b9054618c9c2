#pragma once
// Error types. One error path: validate, throw a typed error, catch at the top of main,
// print once from rank 0 (ConfigError) or from the failing rank and abort (everything else).
#include <cstddef>
#include <stdexcept>
#include <string>

namespace meshtrain {

// Bad user input (flags, configs, data). Detected identically on every rank before any
// collective starts, so every rank can exit cleanly and rank 0 alone reports it.
//
// An error about a config field carries the field ("batch_size") apart from the rest of the
// message ("0: must be at least 1"), so that a program can name the flag or the TOML key
// that set it instead ("--batch-size 0: must be at least 1"). what() is "FIELD DETAIL".
class ConfigError : public std::invalid_argument {
 public:
  // A message about no particular field.
  explicit ConfigError(const std::string& message) : std::invalid_argument(message) {}
  explicit ConfigError(const char* message) : std::invalid_argument(message) {}
  ConfigError(const std::string& field, const std::string& detail)
      : std::invalid_argument(field.empty() ? detail : field + " " + detail),
        field_size_(field.size()) {}

  // Both are parts of what(), which keeps the copy of an exception free of allocations.
  std::string field() const { return std::string(what(), field_size_); }
  std::string detail() const { return what() + (field_size_ == 0 ? 0 : field_size_ + 1); }

 private:
  std::size_t field_size_ = 0;
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
