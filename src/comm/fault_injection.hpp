#pragma once
// Fault injection for fault-tolerance tests and drills, as a Communicator decorator, so that
// no training code knows about it. MESHTRAIN_FAULT_INJECT=KIND:RANK:STEP makes world rank
// RANK misbehave at its first collective on a training group (data, fsdp, model, replica)
// in optimizer step STEP of a run: "hang" stops there (sleeps forever), "kill" dies at once
// with SIGKILL, "extra" first calls one collective (a barrier) that the other ranks do not,
// "term" and "usr1" raise SIGTERM or SIGUSR1 in the process (a scheduler's preemption warning,
// delivered at a known step so that tests of it do not depend on timing), "usr2" raises SIGUSR2
// (the flight recorder's dump request). RANK "*" is every rank.
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "meshtrain/comm/observing_communicator.hpp"

namespace meshtrain {

struct FaultPlan {
  static constexpr int kEveryRank = -1;
  std::string kind;  // "hang", "kill", "extra", "term", "usr1" or "usr2"
  int rank = kEveryRank;
  std::int64_t step = -1;

  // The plan in MESHTRAIN_FAULT_INJECT, if set; ConfigError naming the variable and value
  // when it is malformed (the same on every rank, so checked before any work).
  static std::optional<FaultPlan> from_environment();
};

// Shared by the decorated groups of one run: armed at the planned step on the planned rank,
// fired by the first collective that follows on any of them.
class FaultTrigger {
 public:
  FaultTrigger(FaultPlan plan, int world_rank) : plan_(std::move(plan)), world_rank_(world_rank) {}
  void begin_step(std::int64_t step);
  // Misbehaves as planned when armed (once); `group` is where the collective was called.
  void before_collective(Communicator& group);

 private:
  FaultPlan plan_;
  int world_rank_;
  std::int64_t step_ = -1;
  std::atomic<bool> armed_{false};
};

class FaultInjectingCommunicator final : public ObservingCommunicator {
 public:
  FaultInjectingCommunicator(std::shared_ptr<Communicator> inner,
                             std::shared_ptr<FaultTrigger> trigger)
      : ObservingCommunicator(std::move(inner)), trigger_(std::move(trigger)) {}

 protected:
  void before(const CollectiveCall&) override { trigger_->before_collective(inner()); }

 private:
  std::shared_ptr<FaultTrigger> trigger_;
};

}  // namespace meshtrain
