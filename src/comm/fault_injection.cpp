#include "comm/fault_injection.hpp"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "meshtrain/error.hpp"

namespace meshtrain {

std::optional<FaultPlan> FaultPlan::from_environment() {
  const char* text = std::getenv("MESHTRAIN_FAULT_INJECT");
  if (!text || !*text) return std::nullopt;
  FaultPlan plan;
  char kind[16] = {};
  long long step = -1;
  if (std::sscanf(text, "%15[a-z]:%d:%lld", kind, &plan.rank, &step) != 3 ||
      (std::string(kind) != "hang" && std::string(kind) != "kill" &&
       std::string(kind) != "extra") ||
      plan.rank < 0 || step < 0) {
    throw ConfigError(std::string("MESHTRAIN_FAULT_INJECT '") + text +
                      "': expected KIND:RANK:STEP with KIND hang, kill or extra");
  }
  plan.kind = kind;
  plan.step = step;
  return plan;
}

void FaultTrigger::begin_step(std::int64_t step) {
  step_ = step;
  if (plan_.rank == world_rank_ && plan_.step == step) armed_ = true;
}

void FaultTrigger::before_collective(Communicator& group) {
  if (!armed_.exchange(false)) return;
  std::fprintf(stderr, "meshtrain: rank %d: injected fault '%s' at step %lld\n", world_rank_,
               plan_.kind.c_str(), static_cast<long long>(step_));
  std::fflush(stderr);
  if (plan_.kind == "kill") std::raise(SIGKILL);
  if (plan_.kind == "extra") {
    group.barrier();  // where the other ranks are about to run their own collective
    return;
  }
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace meshtrain
