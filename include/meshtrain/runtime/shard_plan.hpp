#pragma once
#include <vector>

namespace meshtrain {

// How one global batch is split across the "data" axis: shard r holds rows
// [offsets[r], offsets[r] + counts[r]) of the batch. Shards differ by at most one row and the
// first global_batch % parts shards take the extra row (32 over 3 ranks: 11, 11, 10).
struct ShardPlan {
  int global_batch = 0;
  std::vector<int> counts;
  std::vector<int> offsets;

  int parts() const { return static_cast<int>(counts.size()); }
  bool operator==(const ShardPlan&) const = default;
};

// The plan as arithmetic, identical wherever it is computed.
ShardPlan make_shard_plan(int global_batch, int parts);

class Communicator;
// Collective over comm: comm's rank 0 computes the plan for `parts` shards and broadcasts it,
// so that rank 0's plan is the one every rank follows.
ShardPlan shard_batch(Communicator& comm, int global_batch, int parts);

}  // namespace meshtrain
