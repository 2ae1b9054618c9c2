#pragma once
// Small helpers shared by the test suites: exception messages, string checks, and files in
// a temporary directory.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/error.hpp"
#include "meshtrain/runtime/distributed_manager.hpp"
#include "meshtrain/train/training_config.hpp"

namespace meshtrain::testing {

// Runs f, which must throw Error; returns the error (Error("") and a test failure otherwise).
template <class Error, class F>
Error thrown(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected another exception type, got: " << e.what();
    return Error("");
  }
  ADD_FAILURE() << "expected an exception, nothing was thrown";
  return Error("");
}

// Its message.
template <class Error, class F>
std::string error_of(F&& f) {
  return thrown<Error>(std::forward<F>(f)).what();
}

template <class F>
std::string config_error(F&& f) {
  return error_of<ConfigError>(std::forward<F>(f));
}

// The ConfigError itself, for its field() and detail().
template <class F>
ConfigError config_error_object(F&& f) {
  return thrown<ConfigError>(std::forward<F>(f));
}

// The process groups of config over base (e.g. MPI_COMM_SELF: a 1-rank reference run on
// every rank of a multi-rank test), from the runtime as a program gets them.
inline std::shared_ptr<ProcessGroups> groups_over(MPI_Comm base, const DistributedConfig& config) {
  return DistributedManager::current().process_groups(config, base);
}
inline std::shared_ptr<ProcessGroups> groups_over(MPI_Comm base, const TrainingConfig& config) {
  return groups_over(base, config.distributed_config);
}

inline int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}
inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// A fresh directory under the system's temporary directory, removed with its contents.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "meshtrain-test") {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            (prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const { return entries_of(path_); }
  // The sorted names in any directory.
  static std::vector<std::string> entries_of(const std::filesystem::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace meshtrain::testing
