#pragma once
// A Communicator decorator that counts the collectives passed through it and their bytes
// (CollectiveCall::bytes: the buffer each one reduces or distributes, as nccl-tests' "size"),
// per kind: for benchmarks and tests of what a training step communicates.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "meshtrain/comm/observing_communicator.hpp"

namespace meshtrain {

class CountingCommunicator final : public ObservingCommunicator {
 public:
  struct Tally {
    std::uint64_t calls = 0;
    std::uint64_t bytes = 0;
  };
  using ObservingCommunicator::ObservingCommunicator;

  // Per kind, since construction or the last reset().
  std::map<std::string, Tally> tallies() const {
    std::lock_guard lock(mutex_);
    return tallies_;
  }
  Tally tally(const std::string& kind) const {
    std::lock_guard lock(mutex_);
    const auto it = tallies_.find(kind);
    return it == tallies_.end() ? Tally{} : it->second;
  }
  void reset() {
    std::lock_guard lock(mutex_);
    tallies_.clear();
  }

 protected:
  // A communication thread may call it (progress = thread).
  void before(const CollectiveCall& call) override {
    std::lock_guard lock(mutex_);
    Tally& t = tallies_[std::string(call.kind)];
    ++t.calls;
    t.bytes += call.bytes;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, Tally> tallies_;
};

}  // namespace meshtrain
