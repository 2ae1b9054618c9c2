#pragma once
// Which values of the full model a rank holds, for sharded checkpoints: the layout of a
// StepEngine's local buffers (parameters, and the optimizer moments alike) against the full
// model's flat layout (Model::tensors' offsets).
#include <cstdint>
#include <vector>

namespace meshtrain {

// `length` values at `full` in the full model's flat layout, held at `local` in this rank's
// buffers. `write`: this rank saves them. Across the ranks of a run, the runs marked write
// cover every value of the model exactly once (a replicated value is saved by one of the
// ranks holding it), and a rank's runs (all of them) cover what its buffers hold.
struct HeldRun {
  std::uint64_t full = 0;
  std::uint64_t local = 0;
  std::uint64_t length = 0;
  bool write = false;
};

// The runs of [begin, end) of a buffer held whole (full == local) that a rank with index
// `part` of `parts` ranks holding the same values writes: an even split, the first ranks
// taking one value more; the rest of the buffer as runs not written.
std::vector<HeldRun> split_for_writing(std::uint64_t begin, std::uint64_t end, int part, int parts);

}  // namespace meshtrain
