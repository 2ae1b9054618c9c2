#include "meshtrain/comm/checked_communicator.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <algorithm>
#include <mutex>
#include <thread>
#include <vector>

#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {

using Clock = std::chrono::steady_clock;

int world_rank() {
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

}  // namespace

// What this rank is blocked in, if anything. Written by the calling thread, read by the
// watchdog; the description is only read after `blocked_since` is seen non-zero.
struct CheckedCommunicator::Tracker {
  std::string name;
  std::chrono::milliseconds timeout{0};
  std::atomic<std::uint64_t> sequence{0};
  std::atomic<std::int64_t> blocked_since{0};  // steady-clock ns; 0 when not blocked
  std::atomic<std::uint64_t> blocked_sequence{0};
  char what[160] = {};

  void enter(std::uint64_t seq, const char* description) {
    std::snprintf(what, sizeof what, "%s", description);
    blocked_sequence.store(seq, std::memory_order_relaxed);
    blocked_since.store(Clock::now().time_since_epoch().count(), std::memory_order_release);
  }
  void leave() { blocked_since.store(0, std::memory_order_release); }
};

namespace {

// One thread per process watches every tracked communicator.
class Watchdog {
 public:
  static Watchdog& instance() {
    static Watchdog watchdog;
    return watchdog;
  }
  void add(std::shared_ptr<CheckedCommunicator::Tracker> tracker) {
    std::lock_guard lock(mutex_);
    trackers_.push_back(std::move(tracker));
    if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
  }
  void remove(const CheckedCommunicator::Tracker* tracker) {
    std::lock_guard lock(mutex_);
    std::erase_if(trackers_, [&](const auto& t) { return t.get() == tracker; });
  }
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      wake_.wait_for(lock, std::chrono::milliseconds(100));
      // SIGUSR2 dumps the flight recorder even while the training thread is stuck.
      FlightRecorder::poll_signal();
      const auto now = Clock::now().time_since_epoch().count();
      for (const auto& t : trackers_) {
        const auto since = t->blocked_since.load(std::memory_order_acquire);
        if (since == 0 || t->timeout.count() == 0) continue;
        const double waited = static_cast<double>(now - since) * 1e-9;
        if (waited * 1000.0 < static_cast<double>(t->timeout.count())) continue;
        std::fprintf(stderr,
                     "meshtrain: rank %d: watchdog: collective #%llu (%s on '%s') has not "
                     "completed after %.1f s (timeout %.1f s): another rank stopped calling "
                     "collectives or died; aborting the job\n",
                     world_rank(), static_cast<unsigned long long>(t->blocked_sequence.load()),
                     t->what, t->name.c_str(), waited,
                     static_cast<double>(t->timeout.count()) / 1000.0);
        std::fflush(stderr);
        FlightRecorder::dump_all(FlightReason::Watchdog);
        // Not MPI_Abort: this thread may not call MPI. A rank that exits without
        // MPI_Finalize makes mpirun (or srun) end the whole job.
        std::_Exit(4);
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::shared_ptr<CheckedCommunicator::Tracker>> trackers_;
  std::thread thread_;
  bool stop_ = false;
};

// Marks the tracker blocked for the lifetime of the guard.
class Blocked {
 public:
  Blocked(CheckedCommunicator::Tracker& t, std::uint64_t seq, const char* description) : t_(t) {
    t_.enter(seq, description);
  }
  ~Blocked() { t_.leave(); }

 private:
  CheckedCommunicator::Tracker& t_;
};

class CheckedWork final : public Work {
 public:
  CheckedWork(std::unique_ptr<Work> inner, std::shared_ptr<CheckedCommunicator::Tracker> t,
              std::uint64_t seq, std::string description)
      : inner_(std::move(inner)), tracker_(std::move(t)), seq_(seq),
        description_(std::move(description)) {}
  void wait() override {
    Blocked blocked(*tracker_, seq_, description_.c_str());
    inner_->wait();
  }
  bool test() override { return inner_->test(); }

 private:
  std::unique_ptr<Work> inner_;
  std::shared_ptr<CheckedCommunicator::Tracker> tracker_;
  std::uint64_t seq_;
  std::string description_;
};

// Collective kinds travel as indices into this table in the debug comparison.
constexpr const char* kKinds[] = {"allreduce",  "allreduce_async", "reduce_scatter", "all_gather",
                                  "broadcast", "scatterv",        "barrier"};

std::uint64_t kind_code(const char* kind) {
  for (std::uint64_t i = 0; i < std::size(kKinds); ++i) {
    if (std::strcmp(kKinds[i], kind) == 0) return i;
  }
  return std::size(kKinds);
}

std::string kind_name(std::uint64_t code) {
  return code < std::size(kKinds) ? kKinds[code] : "an unknown collective";
}

std::string describe(const char* kind, std::size_t count, DataType type) {
  return std::string(kind) + " of " + std::to_string(count) + " " + std::string(name_of(type));
}

}  // namespace

CollectiveChecks CollectiveChecks::from_environment(CollectiveChecks defaults) {
  if (const char* timeout = std::getenv("MESHTRAIN_COLLECTIVE_TIMEOUT")) {
    char* end = nullptr;
    const double seconds = std::strtod(timeout, &end);
    if (end == timeout || *end != '\0' || !(seconds >= 0) || seconds > 1e7) {
      throw ConfigError(std::string("MESHTRAIN_COLLECTIVE_TIMEOUT '") + timeout +
                        "': expected a number of seconds (0 turns the watchdog off)");
    }
    defaults.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000));
  }
  if (const char* debug = std::getenv("MESHTRAIN_DEBUG_COLLECTIVES")) {
    defaults.debug = std::strcmp(debug, "0") != 0 && *debug != '\0';
  }
  return defaults;
}

CheckedCommunicator::CheckedCommunicator(std::shared_ptr<Communicator> inner, MPI_Comm comm,
                                         std::string name, CollectiveChecks checks)
    : inner_(std::move(inner)), tracker_(std::make_shared<Tracker>()), checks_(checks) {
  tracker_->name = std::move(name);
  tracker_->timeout = checks.timeout;
  if (checks_.debug) check_mpi(MPI_Comm_dup(comm, &debug_comm_), "MPI_Comm_dup");
  if (checks_.timeout.count() > 0) Watchdog::instance().add(tracker_);
}

CheckedCommunicator::~CheckedCommunicator() {
  if (checks_.timeout.count() > 0) Watchdog::instance().remove(tracker_.get());
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (debug_comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&debug_comm_);
}

std::uint64_t CheckedCommunicator::sequence() const { return tracker_->sequence.load(); }

std::uint64_t CheckedCommunicator::begin(const char* kind, std::size_t count, DataType type) {
  const std::uint64_t seq = tracker_->sequence.fetch_add(1) + 1;
  if (!checks_.debug) return seq;
  // Compare what every rank is about to call; this all-gather is itself watched.
  const std::uint64_t mine[4] = {seq, kind_code(kind), static_cast<std::uint64_t>(type), count};
  std::vector<std::uint64_t> all(4 * static_cast<std::size_t>(size()));
  {
    Blocked blocked(*tracker_, seq, "debug comparison before collective");
    check_mpi(MPI_Allgather(mine, 4, MPI_UINT64_T, all.data(), 4, MPI_UINT64_T, debug_comm_),
              "MPI_Allgather(debug comparison)");
  }
  for (int r = 0; r < size(); ++r) {
    const std::uint64_t* theirs = all.data() + 4 * r;
    if (std::equal(theirs, theirs + 4, mine)) continue;
    throw CommError("collective mismatch on '" + tracker_->name + "': rank " +
                    std::to_string(rank()) + " calls #" + std::to_string(seq) + " " +
                    describe(kind, count, type) + ", but rank " + std::to_string(r) +
                    " calls #" + std::to_string(theirs[0]) + " " +
                    describe(kind_name(theirs[1]).c_str(), theirs[3],
                             static_cast<DataType>(std::min<std::uint64_t>(
                                 theirs[2], static_cast<std::uint64_t>(DataType::BFloat16)))));
  }
  return seq;
}

void CheckedCommunicator::allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) {
  const auto seq = begin("allreduce", count, type);
  Blocked blocked(*tracker_, seq, describe("allreduce", count, type).c_str());
  inner_->allreduce(buf, count, type, op);
}

std::unique_ptr<Work> CheckedCommunicator::allreduce_async(void* buf, std::size_t count,
                                                           DataType type, ReduceOp op) {
  const auto seq = begin("allreduce_async", count, type);
  return std::make_unique<CheckedWork>(inner_->allreduce_async(buf, count, type, op), tracker_,
                                       seq, describe("allreduce_async", count, type));
}

void CheckedCommunicator::reduce_scatter(const void* send, void* recv, std::size_t count,
                                         DataType type, ReduceOp op) {
  const auto seq = begin("reduce_scatter", count, type);
  Blocked blocked(*tracker_, seq, describe("reduce_scatter", count, type).c_str());
  inner_->reduce_scatter(send, recv, count, type, op);
}

void CheckedCommunicator::all_gather(const void* send, void* recv, std::size_t count,
                                     DataType type) {
  const auto seq = begin("all_gather", count, type);
  Blocked blocked(*tracker_, seq, describe("all_gather", count, type).c_str());
  inner_->all_gather(send, recv, count, type);
}

void CheckedCommunicator::broadcast(void* buf, std::size_t count, DataType type, int root) {
  const auto seq = begin("broadcast", count, type);
  Blocked blocked(*tracker_, seq, describe("broadcast", count, type).c_str());
  inner_->broadcast(buf, count, type, root);
}

void CheckedCommunicator::scatterv(const void* send, std::span<const int> counts,
                                   std::span<const int> displs, void* recv, int recv_count,
                                   DataType type, int root) {
  // Counts legitimately differ per rank (and only the root knows them): compare the kind.
  const auto seq = begin("scatterv", 0, type);
  Blocked blocked(*tracker_, seq, describe("scatterv", static_cast<std::size_t>(recv_count), type).c_str());
  inner_->scatterv(send, counts, displs, recv, recv_count, type, root);
}

void CheckedCommunicator::barrier() {
  const auto seq = begin("barrier", 0, DataType::Int32);
  Blocked blocked(*tracker_, seq, "barrier");
  inner_->barrier();
}

}  // namespace meshtrain
