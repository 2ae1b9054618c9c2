#pragma once
// What a training run will allocate on each rank, estimated from its description before
// anything is allocated, so that a model too large for the machine is one clear error
// instead of a failure inside Kokkos' allocator on every rank.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "meshtrain/choices.hpp"


namespace meshtrain {

struct FnoConfig;
class ProcessGroups;

// Bytes per rank; every figure saturates at UINT64_MAX instead of overflowing.
struct MemoryEstimate {
  std::uint64_t parameters = 0;
  std::uint64_t gradients = 0;
  std::uint64_t optimizer = 0;
  std::uint64_t activations = 0;  // the layers' outputs, scratch and gradients for one batch
  std::uint64_t data = 0;         // the training data's device copy
  std::uint64_t total() const;
  // What needs the most: the model's state (parameters, gradients, optimizer), the
  // activations (the batch) or the data; for naming the setting to change.
  enum class Part { State, Activations, Data };
  Part largest() const;
  // "1.2 GiB (parameters 0.4 GiB, gradients ..., optimizer ..., activations ..., data ...)"
  std::string describe() const;
};

// How the run lays out its state: rows is the most rows of a global batch one rank
// computes; shards the number of ranks the parameters are split over (FSDP's shard axis,
// tensor parallelism's model axis; 1 under data parallelism); samples and features the
// training data's.
struct MemoryLayout {
  std::size_t rows = 1;
  std::size_t shards = 1;
  std::size_t samples = 0;
  std::size_t features = 0;  // inputs + outputs per sample
};

// The layout of a run over groups: its batch split over groups.batch_parts(), its
// parameters over the shard axis (fsdp) or the model axis (tensor parallelism).
MemoryLayout memory_layout(const ProcessGroups& groups, int batch_size, std::size_t samples,
                           std::size_t features);

// An MLP of these widths trained with optimizer.
MemoryEstimate estimate_mlp_memory(const std::vector<int>& widths, OptimizerType optimizer,
                                   const MemoryLayout& layout);

// make_fno2d(config) trained with optimizer (layouts as estimate_mlp_memory).
MemoryEstimate estimate_fno_memory(const FnoConfig& config, OptimizerType optimizer,
                                   const MemoryLayout& layout);

// Memory a rank may use, and how a message names it ("of memory available to each of this
// node's 2 rank(s)", "free on this rank's GPU (device 3)"); 0 bytes when unknown (nothing is
// checked then).
struct AvailableMemory {
  std::uint64_t bytes = 0;
  std::string what;
};

// Host memory: MemAvailable from /proc/meminfo (else physical memory from sysconf) divided by
// the node's ranks (Kokkos' Serial and OpenMP back ends allocate there).
AvailableMemory host_memory_per_rank(int ranks_on_node);

// Where the training state lives: on a back end whose memory the host cannot read (CUDA),
// what is free on the GPU this rank owns (cudaMemGetInfo on the bound device; call it after
// DistributedManager has bound it); else host_memory_per_rank.
AvailableMemory available_memory_per_rank(int ranks_on_node);

// When estimate needs more than available.bytes per rank: "training needs about X per rank
// (...), more than the Y <available.what>"; else nothing (also when the bytes are unknown).
std::optional<std::string> memory_shortfall(const MemoryEstimate& estimate,
                                            const AvailableMemory& available);

}  // namespace meshtrain
