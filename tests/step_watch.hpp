#pragma once
// What a training step may do with memory (issue 13): allocate nothing, and move between the
// host and the execution space's memory only the scalars that must reach the host (a loss, a
// norm: at most 8 bytes each). Fills from a host value are kernels, not transfers.
//
// A buffer counts as device memory when its space is the execution space's: on CUDA the
// space alone tells; on the host back ends the buffer must also lie in a live Kokkos
// allocation (a std::vector or a stack array lies in none), so a copy between a device view
// and a host container is caught on every back end. A copy into a Kokkos host view is caught
// where that view's space differs from the execution space's (CUDA).
#include <Kokkos_Core.hpp>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "meshtrain/nn/types.hpp"

namespace meshtrain::testing {

class StepWatch {
 public:
  // Watches from here on (create it before what it must know as device memory), until
  // destroyed; counts only between begin() and end().
  StepWatch() {
    current() = this;
    Kokkos::Tools::Experimental::set_allocate_data_callback(&StepWatch::on_allocate);
    Kokkos::Tools::Experimental::set_deallocate_data_callback(&StepWatch::on_deallocate);
    Kokkos::Tools::Experimental::set_begin_deep_copy_callback(&StepWatch::on_copy);
  }
  ~StepWatch() {
    Kokkos::Tools::Experimental::set_begin_deep_copy_callback(nullptr);
    Kokkos::Tools::Experimental::set_deallocate_data_callback(nullptr);
    Kokkos::Tools::Experimental::set_allocate_data_callback(nullptr);
    current() = nullptr;
  }
  StepWatch(const StepWatch&) = delete;
  StepWatch& operator=(const StepWatch&) = delete;

  void begin() {
    const std::lock_guard lock(mutex_);
    watching_ = true;
    allocations_ = 0;
    transfers_.clear();
  }
  void end() {
    const std::lock_guard lock(mutex_);
    watching_ = false;
  }
  std::int64_t allocations() const { return allocations_; }
  // "SPACE:dst <- SPACE:src (N bytes)" for each transfer larger than a scalar.
  const std::vector<std::string>& transfers() const { return transfers_; }
  std::string transfer_list() const {
    std::string list;
    for (const std::string& t : transfers_) list += "\n  " + t;
    return list;
  }

  // Whether the watch sees what it must: one allocation and one device-to-host copy into a
  // std::vector. Leaves the counts cleared.
  bool sees_an_allocation_and_a_transfer() {
    begin();
    {
      Vector probe("meshtrain::step_watch_probe", 8);
      std::vector<float> host(8);
      Kokkos::deep_copy(Kokkos::View<float*, Kokkos::HostSpace, Unmanaged>(host.data(), 8), probe);
    }
    end();
    const bool seen = allocations_ == 1 && transfers_.size() == 1;
    begin();
    end();
    return seen;
  }

 private:
  // Kokkos reports a view's allocation from its header, with the view's bytes; the data
  // follows the header. An empty view's is reported with the header's size instead (its
  // bytes being 0), so that size is taken as the header alone: a view of exactly that many
  // bytes would then look like host memory and fail a test loudly, never pass one wrongly.
  // Kokkos' own scratch ("Kokkos::Serial::scratch_mem", "[unlabeled]") has no header and
  // holds no view: it is counted, not kept (a range past its end could hold a host buffer).
  static constexpr std::uintptr_t kHeader = sizeof(Kokkos::Impl::SharedAllocationHeader);
  static constexpr bool kHostMemory =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;

  static StepWatch*& current() {
    static StepWatch* watch = nullptr;
    return watch;
  }
  static void on_allocate(const Kokkos_Profiling_SpaceHandle, const char* label,
                          const void* ptr, const std::uint64_t size) {
    StepWatch& w = *current();
    const std::lock_guard lock(w.mutex_);
    if (w.watching_) ++w.allocations_;
    const std::string_view name(label);
    if (name.starts_with("Kokkos::") || name == "[unlabeled]") return;
    const auto start = reinterpret_cast<std::uintptr_t>(ptr);
    w.live_[start] = start + kHeader + (size == kHeader ? 0 : size);
  }
  static void on_deallocate(const Kokkos_Profiling_SpaceHandle, const char*, const void* ptr,
                            const std::uint64_t) {
    StepWatch& w = *current();
    const std::lock_guard lock(w.mutex_);
    w.live_.erase(reinterpret_cast<std::uintptr_t>(ptr));
  }
  bool on_device(const Kokkos_Profiling_SpaceHandle space, const void* ptr) const {
    if (std::string_view(space.name) != MemSpace::name()) return false;
    if constexpr (!kHostMemory) return true;
    const auto p = reinterpret_cast<std::uintptr_t>(ptr);
    auto it = live_.upper_bound(p);
    return it != live_.begin() && p < std::prev(it)->second;
  }
  static std::string describe(const Kokkos_Profiling_SpaceHandle space, const char* label) {
    return std::string(space.name) + ":" + (*label ? label : "(unlabelled view)");
  }
  static void on_copy(const Kokkos_Profiling_SpaceHandle dst_space, const char* dst_name,
                      const void* dst, const Kokkos_Profiling_SpaceHandle src_space,
                      const char* src_name, const void* src, const std::uint64_t bytes) {
    StepWatch& w = *current();
    const std::lock_guard lock(w.mutex_);
    if (!w.watching_ || bytes <= sizeof(double)) return;
    const std::string_view from(src_name);
    if (from == "Scalar" || from == "(none)") return;  // a fill from a host value
    if (w.on_device(dst_space, dst) == w.on_device(src_space, src)) return;
    w.transfers_.push_back(describe(dst_space, dst_name) + " <- " +
                           describe(src_space, src_name) + " (" + std::to_string(bytes) +
                           " bytes)");
  }

  std::mutex mutex_;
  std::map<std::uintptr_t, std::uintptr_t> live_;  // allocation start -> end, header included
  bool watching_ = false;
  std::int64_t allocations_ = 0;
  std::vector<std::string> transfers_;
};

}  // namespace meshtrain::testing
