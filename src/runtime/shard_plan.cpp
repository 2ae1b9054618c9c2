#include "meshtrain/runtime/shard_plan.hpp"

#include <span>
#include <string>

#include "meshtrain/error.hpp"
#include "meshtrain/comm/communicator.hpp"

namespace meshtrain {

ShardPlan make_shard_plan(int global_batch, int parts) {
  if (parts < 1) throw ConfigError("shard plan: parts " + std::to_string(parts) + " must be >= 1");
  if (global_batch < 0) {
    throw ConfigError("shard plan: global batch " + std::to_string(global_batch) + " is negative");
  }
  ShardPlan plan;
  plan.global_batch = global_batch;
  plan.counts.resize(parts);
  plan.offsets.resize(parts);
  const int base = global_batch / parts;
  const int extra = global_batch % parts;
  int offset = 0;
  for (int r = 0; r < parts; ++r) {
    plan.counts[r] = base + (r < extra ? 1 : 0);
    plan.offsets[r] = offset;
    offset += plan.counts[r];
  }
  return plan;
}

ShardPlan shard_batch(Communicator& comm, int global_batch, int parts) {
  ShardPlan plan;
  if (comm.rank() == 0) plan = make_shard_plan(global_batch, parts);
  plan.counts.resize(parts);
  plan.offsets.resize(parts);
  comm.broadcast(std::span<int>(plan.counts), 0);
  comm.broadcast(std::span<int>(plan.offsets), 0);
  plan.global_batch = global_batch;
  return plan;
}

}  // namespace meshtrain
