#pragma once
// The flight recorder: each rank keeps a fixed ring of its last K collectives (per group
// sequence number, operation, element type and count, bytes, group, call site, optimizer
// step, and enqueue/start/end times), so that after a hang, a dead rank or a mismatch
// `meshtrain triage DIR` can say which collective diverged and which rank is missing or
// lagging (the idea of PyTorch's NCCL flight recorder).
//
// Cheap by construction: the ring is one preallocated block (a header and K fixed-size
// records), a collective costs an atomic increment, a few stores and two clock readings, and
// nothing allocates or does I/O. Once persist(DIR) is called, the block is a MAP_SHARED
// mapping of DIR/flight-rank<R>.bin: every record is in the page cache as it is written, so the
// file survives the process however it ends (SIGKILL included) without writing anything on
// the hot path. dump(reason) stamps the reason and time in the header and msyncs it: called by
// the watchdog thread before it ends the job, from a safe point (the next step, and the
// watchdog's loop) after SIGUSR2, and when the job aborts (an exception leaving the run,
// DistributedManager::abort). The SIGUSR2 handler itself only sets a flag (async-signal-safe).
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "meshtrain/comm/device_timer.hpp"
#include "meshtrain/comm/observing_communicator.hpp"

namespace meshtrain {

enum class FlightOp : std::uint8_t {
  Allreduce, AllreduceAsync, ReduceScatter, AllGather, Broadcast, Scatterv, Barrier
};
std::string_view name_of(FlightOp op);

enum class FlightReason : std::uint32_t { Live = 0, Watchdog = 1, Signal = 2, Abort = 3, Exit = 4 };
std::string_view name_of(FlightReason reason);

// The call site of the collectives this thread issues while it lives (a static string, e.g.
// "trainer.step_flags"); nests. Cheap: a thread_local pointer.
class CollectiveSite {
 public:
  explicit CollectiveSite(const char* site);
  ~CollectiveSite();
  CollectiveSite(const CollectiveSite&) = delete;
  CollectiveSite& operator=(const CollectiveSite&) = delete;
  static const char* current();

 private:
  const char* previous_;
};

// The file layout (host byte order; version 1). Exposed for the triage and the tests. Fields
// marked (atomic_ref) are written through std::atomic_ref while others may read them.
namespace flight {
constexpr char kMagic[8] = {'M', 'T', 'F', 'L', 'I', 'G', 'H', 'T'};
constexpr std::uint32_t kVersion = 1;
constexpr int kMaxGroups = 16;
constexpr int kNameBytes = 24;
constexpr int kSiteBytes = 32;

struct Group {
  char name[kNameBytes];  // "data", "world", ...
  std::int32_t color;     // which instance of the axis (the MPI_Comm_split colour)
  std::int32_t size;      // ranks in the group
  std::int32_t rank;      // this rank's place in it
  std::int32_t unused;
};

struct Header {
  char magic[8];
  std::uint32_t version;
  std::uint32_t header_bytes;
  std::uint32_t record_bytes;
  std::uint32_t capacity;
  std::int32_t world_rank;
  std::int32_t world_size;
  std::int64_t origin_unix_ns;    // system clock when the recorder started
  std::int64_t origin_steady_ns;  // steady clock at that moment: records are steady ns
  std::uint64_t written;  // (atomic_ref) records written so far; slot = ticket % capacity
  std::int64_t step;      // (atomic_ref) the optimizer step in progress
  std::uint32_t reason;   // FlightReason of the last dump
  std::uint32_t group_count;
  std::int64_t dumped_steady_ns;
  Group groups[kMaxGroups];
};

struct Record {
  std::uint64_t ticket;  // (atomic_ref) written + 1 of this record, stored last (0: empty)
  std::uint64_t sequence;             // per group, from 1 (as the watchdog counts)
  std::int64_t step;
  std::uint64_t count;  // elements
  std::uint64_t bytes;  // as CollectiveCall::bytes
  std::int64_t enqueue_ns, start_ns;
  std::int64_t end_ns;  // (atomic_ref) 0 while not completed
  std::uint16_t group;
  std::uint8_t op;      // FlightOp
  std::uint8_t dtype;   // DataType
  std::int32_t root;    // broadcast/scatterv root, else -1
  char site[kSiteBytes];
};
}  // namespace flight

class FlightRecorder {
 public:
  // capacity records (>= 1), for world rank `world_rank` of `world_size`.
  FlightRecorder(std::size_t capacity, int world_rank, int world_size);
  ~FlightRecorder();
  FlightRecorder(const FlightRecorder&) = delete;
  FlightRecorder& operator=(const FlightRecorder&) = delete;

  // The group's index in the header (at most flight::kMaxGroups; later ones share the last).
  int add_group(std::string_view name, int color, int size, int rank);

  // Hot path. begin() returns the record's ticket for complete().
  std::uint64_t begin(int group, std::uint64_t sequence, FlightOp op, DataType type,
                      std::size_t count, std::size_t bytes, int root, std::int64_t now_ns);
  void complete(std::uint64_t ticket);
  // Completed at ns (the device's end, from a DeviceTimer) instead of now.
  void complete_at(std::uint64_t ticket, std::int64_t ns);
  // A non-blocking collective's start: when this rank first waited on it (or, on a device
  // stream, when it started there).
  void mark_start(std::uint64_t ticket, std::int64_t ns);
  void set_step(std::int64_t step);

  // Seconds this rank spent blocked in collectives since the last call (blocking calls and
  // waits on non-blocking ones), for the per-epoch straggler report.
  double take_wait_seconds();
  void add_wait_ns(std::int64_t ns) { wait_ns_.fetch_add(ns, std::memory_order_relaxed); }

  // Maps the ring onto DIR/flight-rank<R>.bin (created or replaced), copying what it holds.
  // Throws std::runtime_error naming the file. Call while no collective is in flight.
  void persist(const std::string& dir);
  const std::string& path() const { return path_; }  // empty until persist()
  // Stamps the reason and msyncs the file; prints one line to stderr naming it. Safe from any
  // thread (not from a signal handler).
  void dump(FlightReason reason);
  // Writes the ring as a file at `path` (tests, and a snapshot without persist()).
  void write_copy(const std::string& path) const;

  std::size_t capacity() const { return capacity_; }
  std::size_t file_bytes() const { return bytes(); }  // what persist() writes
  const flight::Header& header() const { return *header_; }
  static std::int64_t now_ns();

  // SIGUSR2: the handler sets a flag; poll_signal() (the trainer's steps, the watchdog) dumps
  // every live recorder when it is set. Installed once by the first recorder.
  static void poll_signal();
  // Dumps every live recorder (the watchdog before it exits, DistributedManager::abort).
  static void dump_all(FlightReason reason);

 private:
  std::size_t bytes() const;
  std::size_t capacity_;
  void* block_ = nullptr;
  bool mapped_ = false;
  flight::Header* header_ = nullptr;
  flight::Record* records_ = nullptr;
  std::string path_;
  std::atomic<std::int64_t> wait_ns_{0};
};

// Records every collective through it in `recorder` under group `group` (its own sequence
// numbers, counted as CheckedCommunicator counts them).
class FlightRecordingCommunicator final : public Communicator {
 public:
  FlightRecordingCommunicator(std::shared_ptr<Communicator> inner,
                              std::shared_ptr<FlightRecorder> recorder, int group);

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }
  bool callable_from_another_thread() const override {
    return inner_->callable_from_another_thread();
  }
  DeviceTimer* device_timer() override { return inner_->device_timer(); }
  bool order_after_stream(void* cuda_stream) override {
    return inner_->order_after_stream(cuda_stream);
  }

  void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) override;
  std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                        ReduceOp op) override;
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override;
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override;
  void broadcast(void* buf, std::size_t count, DataType type, int root) override;
  void scatterv(const void* send, std::span<const int> counts, std::span<const int> displs,
                void* recv, int recv_count, DataType type, int root) override;
  void barrier() override;

  using Communicator::allreduce;
  using Communicator::broadcast;

 private:
  std::uint64_t begin(FlightOp op, DataType type, std::size_t count, std::size_t bytes, int root,
                      std::int64_t now);
  void end(std::uint64_t ticket, std::int64_t started, FlightOp op, std::uint64_t seq);
  // With a device timer (NCCL: device_timer.hpp), a record's start and end are the
  // collective's on the device, filled in when a later call polls the timer and finds it
  // done; until then its end stays 0 (not completed), which is what a hang leaves.
  std::uint64_t mark_before();
  void mark_after(std::uint64_t handle, std::uint64_t ticket);
  void poll_device();
  static constexpr std::size_t kMaxPending = 4096;

  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<FlightRecorder> recorder_;
  int group_;
  std::string name_;  // the group's, for the trace
  std::atomic<std::uint64_t> sequence_{0};
  // The sequence number begin() just issued, read back by the calling thread (the ranks' one
  // thread that calls a group's collectives at a time, as MPI_THREAD_SERIALIZED requires).
  std::uint64_t last_seq_ = 0;
  DeviceTimer* timer_ = nullptr;
  std::deque<std::pair<std::uint64_t, std::uint64_t>> pending_;  // (timer handle, ticket)
};

// One rank's dump as read back.
struct FlightDump {
  std::string path;
  flight::Header header;
  std::vector<flight::Group> groups;
  std::vector<flight::Record> records;  // valid ones, oldest first
};
// Reads a dump; std::runtime_error naming the file when it is not one.
FlightDump read_flight_dump(const std::string& path);

struct TriageReport {
  // 0: consistent; 1: found a culprit; 2: no dumps (or none readable).
  int code = 0;
  std::vector<int> culprits;   // world ranks
  std::string finding;         // the one-line verdict
  std::vector<std::string> details;  // per-rank summaries and notes
};
TriageReport triage_flight_dumps(const std::vector<FlightDump>& dumps);
// Every flight-rank*.bin in dir (a report with code 2 when there are none).
TriageReport triage_flight_directory(const std::string& dir);

}  // namespace meshtrain
