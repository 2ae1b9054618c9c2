#include "meshtrain/train/memory_estimate.hpp"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include "meshtrain/build_config.hpp"
#include "meshtrain/nn/fno.hpp"
#include "meshtrain/nn/types.hpp"
#include "meshtrain/optim/optimizer.hpp"
#include "meshtrain/runtime/process_groups.hpp"
#include "meshtrain/train/checkpoint.hpp"

#if MESHTRAIN_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace meshtrain {

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

std::uint64_t add(std::uint64_t a, std::uint64_t b) { return a > kMax - b ? kMax : a + b; }
std::uint64_t mul(std::uint64_t a, std::uint64_t b) { return b != 0 && a > kMax / b ? kMax : a * b; }
std::uint64_t u(long long v) { return v < 0 ? 0 : static_cast<std::uint64_t>(v); }

// Moments the optimizer keeps per parameter (as Optimizer allocates them).
std::uint64_t moments_of(OptimizerType optimizer) {
  const OptimizerConfig c = OptimizerConfig::of(optimizer);
  if (c.type != OptimizerType::Sgd) return 2;
  return c.momentum != 0.0 ? 1 : 0;
}

// The state for `parameters` in total, of which each rank holds 1/shards, plus under
// sharding the largest layer gathered whole with its gradient.
MemoryEstimate state_of(std::uint64_t parameters, std::uint64_t largest_layer, OptimizerType optimizer,
                        const MemoryLayout& layout) {
  const std::uint64_t shards = std::max<std::uint64_t>(layout.shards, 1);
  const std::uint64_t local = parameters / shards + (parameters % shards != 0);
  const std::uint64_t gathered = shards > 1 ? mul(2, largest_layer) : 0;
  MemoryEstimate e;
  e.parameters = mul(add(local, gathered / 2), sizeof(float));
  e.gradients = mul(add(add(local, 1), gathered / 2), sizeof(float));
  e.optimizer = mul(mul(local, moments_of(optimizer)), sizeof(float));
  e.data = mul(mul(layout.samples, layout.features), sizeof(float));
  return e;
}

}  // namespace

std::uint64_t MemoryEstimate::total() const {
  return add(add(add(parameters, gradients), add(optimizer, activations)), data);
}

MemoryEstimate::Part MemoryEstimate::largest() const {
  const std::uint64_t state = add(add(parameters, gradients), optimizer);
  if (data > state && data > activations) return Part::Data;
  return activations > state ? Part::Activations : Part::State;
}

std::string MemoryEstimate::describe() const {
  return format_bytes(total()) + " (parameters " + format_bytes(parameters) + ", gradients " +
         format_bytes(gradients) + ", optimizer " + format_bytes(optimizer) + ", activations " +
         format_bytes(activations) + ", data " + format_bytes(data) + ")";
}

MemoryLayout memory_layout(const ProcessGroups& groups, int batch_size, std::size_t samples,
                           std::size_t features) {
  MemoryLayout layout;
  const std::uint64_t batch = std::min<std::uint64_t>(u(batch_size), samples);
  const auto parts = static_cast<std::uint64_t>(std::max(groups.batch_parts(), 1));
  layout.rows = static_cast<std::size_t>(std::max<std::uint64_t>((batch + parts - 1) / parts, 1));
  if (groups.has_model())
    layout.shards = static_cast<std::size_t>(groups.model().size());
  else if (!groups.has_data() && groups.has_shard())
    layout.shards = static_cast<std::size_t>(groups.shard().size());
  layout.samples = samples;
  layout.features = features;
  return layout;
}

MemoryEstimate estimate_mlp_memory(const std::vector<int>& widths, OptimizerType optimizer,
                                   const MemoryLayout& layout) {
  std::uint64_t parameters = 0, largest = 0, outputs = 0, widest = 0;
  for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
    const std::uint64_t layer = add(mul(u(widths[l]), u(widths[l + 1])), u(widths[l + 1]));
    parameters = add(parameters, layer);
    largest = std::max(largest, layer);
  }
  for (int w : widths) {
    outputs = add(outputs, u(w));
    widest = std::max(widest, u(w));
  }
  MemoryEstimate e = state_of(parameters, largest, optimizer, layout);
  // Every layer's output (kept for backward) and its pre-activation, plus two buffers of
  // the widest layer for the gradients flowing back.
  e.activations = mul(mul(layout.rows, add(mul(2, outputs), mul(2, widest))), sizeof(float));
  return e;
}

MemoryEstimate estimate_fno_memory(const FnoConfig& c, OptimizerType optimizer, const MemoryLayout& layout) {
  const std::uint64_t w = u(c.width), p = u(c.projection), in = u(c.in_channels) + 2,
                      out = u(c.out_channels), points = mul(u(c.s1), u(c.s2));
  // Per Fourier layer: the complex weights of two corner blocks of modes, a 1x1 mixer.
  const std::uint64_t spectral = mul(mul(mul(4, mul(u(c.modes1), u(c.modes2))), w), w);
  const std::uint64_t fourier = add(spectral, add(mul(w, w), w));
  const std::uint64_t lift = add(mul(in, w), w);
  const std::uint64_t project = add(add(mul(w, p), p), add(mul(p, out), out));
  const std::uint64_t parameters = add(add(lift, mul(u(c.layers), fourier)), project);
  const std::uint64_t largest = std::max({lift, fourier, add(mul(w, p), p), add(mul(p, out), out)});
  MemoryEstimate e = state_of(parameters, largest, optimizer, layout);
  // Per sample and grid point: the channels of every layer's output, its spectra and
  // pre-activations (about six of width per Fourier layer), the projection, and the
  // gradient buffers.
  const std::uint64_t channels =
      add(add(in, mul(mul(6, u(c.layers)), w)), add(mul(4, std::max(w, p)), add(mul(2, p), out)));
  e.activations = mul(mul(mul(layout.rows, points), channels), sizeof(float));
  return e;
}

AvailableMemory host_memory_per_rank(int ranks_on_node) {
  std::uint64_t available = 0;
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    std::istringstream fields(line);
    std::string key;
    std::uint64_t kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") available = mul(kib, 1024);
  }
  if (available == 0) {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    available = mul(u(pages), u(page));
  }
  const int ranks = std::max(ranks_on_node, 1);
  return {available / static_cast<std::uint64_t>(ranks),
          "of memory available to each of this node's " + std::to_string(ranks) + " rank(s)"};
}

AvailableMemory available_memory_per_rank(int ranks_on_node) {
  if constexpr (!Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) {
#if MESHTRAIN_HAS_CUDA
    // Each rank owns one GPU (more ranks than GPUs on a node is refused at start-up).
    int device = 0;
    std::size_t free = 0, total = 0;
    if (cudaGetDevice(&device) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess) {
      return {free, "free on this rank's GPU (device " + std::to_string(device) + ")"};
    }
    (void)cudaGetLastError();
#endif
    return {};  // device memory of a kind this build cannot ask: not checked
  }
  return host_memory_per_rank(ranks_on_node);
}

std::optional<std::string> memory_shortfall(const MemoryEstimate& estimate,
                                            const AvailableMemory& available) {
  if (available.bytes == 0 || estimate.total() <= available.bytes) return std::nullopt;
  return "training needs about " + estimate.describe() + " per rank, more than the " +
         format_bytes(available.bytes) + " " + available.what;
}

}  // namespace meshtrain
