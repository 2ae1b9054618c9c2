#include "comm/fault_injection.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <thread>

#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
constexpr const char* kKinds[] = {"hang", "kill", "extra", "term", "usr1", "usr2"};

// "RANK" (a number) or "*" (every rank, -1).
bool parse_rank(const std::string& text, int& rank) {
  if (text == "*") {
    rank = FaultPlan::kEveryRank;
    return true;
  }
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < 0 || value > 1 << 30) return false;
  rank = static_cast<int>(value);
  return true;
}
}  // namespace

std::optional<FaultPlan> FaultPlan::from_environment() {
  const char* text = std::getenv("MESHTRAIN_FAULT_INJECT");
  if (!text || !*text) return std::nullopt;
  const std::string value = text;
  const auto first = value.find(':');
  const auto second = first == std::string::npos ? first : value.find(':', first + 1);
  FaultPlan plan;
  bool ok = second != std::string::npos && value.find(':', second + 1) == std::string::npos;
  if (ok) {
    plan.kind = value.substr(0, first);
    ok = std::find(std::begin(kKinds), std::end(kKinds), plan.kind) != std::end(kKinds) &&
         parse_rank(value.substr(first + 1, second - first - 1), plan.rank);
    const std::string step = value.substr(second + 1);
    char* end = nullptr;
    const long long parsed = std::strtoll(step.c_str(), &end, 10);
    ok = ok && !step.empty() && *end == '\0' && parsed >= 0;
    plan.step = parsed;
  }
  if (!ok) {
    throw ConfigError("MESHTRAIN_FAULT_INJECT", "'" + value +
                                                    "': expected KIND:RANK:STEP with KIND hang, "
                                                    "kill, extra, term, usr1 or usr2 and RANK a rank or *");
  }
  return plan;
}

void FaultTrigger::begin_step(std::int64_t step) {
  step_ = step;
  const bool here = plan_.rank == FaultPlan::kEveryRank || plan_.rank == world_rank_;
  if (here && plan_.step == step) armed_ = true;
}

void FaultTrigger::before_collective(Communicator& group) {
  if (!armed_.exchange(false)) return;
  std::fprintf(stderr, "meshtrain: rank %d: injected fault '%s' at step %lld\n", world_rank_,
               plan_.kind.c_str(), static_cast<long long>(step_));
  std::fflush(stderr);
  if (plan_.kind == "kill") std::raise(SIGKILL);
  // A scheduler's warning at a known step: the program's handler raises its stop flag, which
  // every rank agrees on when this step ends.
  if (plan_.kind == "term" || plan_.kind == "usr1" || plan_.kind == "usr2") {
    std::raise(plan_.kind == "term" ? SIGTERM : plan_.kind == "usr1" ? SIGUSR1 : SIGUSR2);
    return;
  }
  if (plan_.kind == "extra") {
    group.barrier();  // where the other ranks are about to run their own collective
    return;
  }
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace meshtrain
