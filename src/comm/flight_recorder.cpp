#include "meshtrain/comm/flight_recorder.hpp"

#include "meshtrain/comm/device_timer.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <stdexcept>
#include <vector>

#include "meshtrain/trace.hpp"

namespace meshtrain {

namespace {

thread_local const char* t_site = nullptr;

constexpr std::string_view kOpNames[] = {"allreduce", "allreduce_async", "reduce_scatter",
                                         "all_gather", "broadcast",     "scatterv",
                                         "barrier"};
constexpr std::string_view kReasonNames[] = {"live", "watchdog", "SIGUSR2", "abort", "exit"};

std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }
std::size_t header_bytes() { return align_up(sizeof(flight::Header), 64); }

// Every live recorder, for the dumps that are not tied to one (watchdog, abort, SIGUSR2).
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<FlightRecorder*>& registry() {
  static std::vector<FlightRecorder*> r;
  return r;
}

volatile std::sig_atomic_t g_dump_requested = 0;
extern "C" void request_flight_dump(int) { g_dump_requested = 1; }

void install_signal_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_handler = request_flight_dump;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &action, nullptr);
  });
}

void* map_anonymous(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  std::memset(p, 0, bytes);  // touch every page now, not on the hot path
  return p;
}

template <class T>
std::atomic_ref<T> ref(T& value) {
  return std::atomic_ref<T>(value);
}

// Non-blocking handles come from a small preallocated pool: no allocation per collective
// beyond what the wrapped backend does (a pool that runs dry falls back to the heap).
class FlightWork final : public Work {
 public:
  FlightWork(std::unique_ptr<Work> inner, FlightRecorder* recorder, std::uint64_t ticket,
             const char* group, std::int64_t enqueued, std::uint64_t seq, bool device_timed)
      : inner_(std::move(inner)), recorder_(recorder), ticket_(ticket), group_(group),
        enqueued_(enqueued), seq_(seq), device_timed_(device_timed) {}
  void wait() override {
    if (done_) return inner_->wait();
    const std::int64_t start = FlightRecorder::now_ns();
    inner_->wait();
    const std::int64_t end = FlightRecorder::now_ns();
    recorder_->add_wait_ns(end - start);
    finish(start, end);
  }
  bool test() override {
    const bool complete = inner_->test();
    if (complete && !done_) {
      const std::int64_t now = FlightRecorder::now_ns();
      finish(now, now);
    }
    return complete;
  }

  static void* operator new(std::size_t bytes);
  static void operator delete(void* p);

 private:
  void finish(std::int64_t start, std::int64_t end) {
    done_ = true;
    if (!device_timed_) {  // else the device's times fill the record in (DeviceTimer)
      recorder_->mark_start(ticket_, start);
      recorder_->complete(ticket_);
    }
    if (Tracer* tracer = Tracer::active()) {
      tracer->add(name_of(FlightOp::AllreduceAsync), group_, enqueued_, end,
                  static_cast<std::int64_t>(seq_));
    }
  }
  std::unique_ptr<Work> inner_;
  FlightRecorder* recorder_;
  std::uint64_t ticket_;
  const char* group_;
  std::int64_t enqueued_;
  std::uint64_t seq_;
  bool device_timed_;
  bool done_ = false;
};

struct WorkPool {
  static constexpr int kSlots = 256;
  alignas(std::max_align_t) unsigned char slots[kSlots][sizeof(FlightWork)];
  int free_list[kSlots];
  int free_count = kSlots;
  std::mutex mutex;
  WorkPool() {
    for (int i = 0; i < kSlots; ++i) free_list[i] = kSlots - 1 - i;
  }
  static WorkPool& instance() {
    static WorkPool pool;
    return pool;
  }
};

void* FlightWork::operator new(std::size_t bytes) {
  WorkPool& pool = WorkPool::instance();
  if (bytes == sizeof(FlightWork)) {
    std::lock_guard lock(pool.mutex);
    if (pool.free_count > 0) return pool.slots[pool.free_list[--pool.free_count]];
  }
  return ::operator new(bytes);
}

void FlightWork::operator delete(void* p) {
  WorkPool& pool = WorkPool::instance();
  auto* bytes = static_cast<unsigned char*>(p);
  auto* first = &pool.slots[0][0];
  if (bytes >= first && bytes < first + sizeof pool.slots) {
    std::lock_guard lock(pool.mutex);
    pool.free_list[pool.free_count++] =
        static_cast<int>((bytes - first) / static_cast<std::ptrdiff_t>(sizeof(FlightWork)));
    return;
  }
  ::operator delete(p);
}

}  // namespace

std::string_view name_of(FlightOp op) {
  const auto i = static_cast<std::size_t>(op);
  return i < std::size(kOpNames) ? kOpNames[i] : std::string_view("unknown");
}

std::string_view name_of(FlightReason reason) {
  const auto i = static_cast<std::size_t>(reason);
  return i < std::size(kReasonNames) ? kReasonNames[i] : std::string_view("unknown");
}

CollectiveSite::CollectiveSite(const char* site) : previous_(t_site) { t_site = site; }
CollectiveSite::~CollectiveSite() { t_site = previous_; }
const char* CollectiveSite::current() { return t_site; }

std::int64_t FlightRecorder::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::size_t FlightRecorder::bytes() const {
  return header_bytes() + capacity_ * sizeof(flight::Record);
}

FlightRecorder::FlightRecorder(std::size_t capacity, int world_rank, int world_size)
    : capacity_(std::max<std::size_t>(capacity, 1)) {
  block_ = map_anonymous(bytes());
  header_ = new (block_) flight::Header{};
  records_ = reinterpret_cast<flight::Record*>(static_cast<char*>(block_) + header_bytes());
  std::memcpy(header_->magic, flight::kMagic, sizeof flight::kMagic);
  header_->version = flight::kVersion;
  header_->header_bytes = static_cast<std::uint32_t>(header_bytes());
  header_->record_bytes = sizeof(flight::Record);
  header_->capacity = static_cast<std::uint32_t>(capacity_);
  header_->world_rank = world_rank;
  header_->world_size = world_size;
  header_->origin_unix_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
  header_->origin_steady_ns = now_ns();
  header_->step = -1;
  install_signal_handler();
  std::lock_guard lock(registry_mutex());
  registry().push_back(this);
}

FlightRecorder::~FlightRecorder() {
  {
    std::lock_guard lock(registry_mutex());
    std::erase(registry(), this);
  }
  if (mapped_) {
    // An exception on its way out of the run is an abort; otherwise the run ended.
    if (header_->reason == static_cast<std::uint32_t>(FlightReason::Live)) {
      header_->reason = static_cast<std::uint32_t>(std::uncaught_exceptions() > 0
                                                       ? FlightReason::Abort
                                                       : FlightReason::Exit);
      header_->dumped_steady_ns = now_ns();
    }
    ::msync(block_, bytes(), MS_ASYNC);
  }
  ::munmap(block_, bytes());
}

int FlightRecorder::add_group(std::string_view name, int color, int size, int rank) {
  static std::mutex mutex;
  std::lock_guard lock(mutex);
  const auto index = std::min<std::uint32_t>(header_->group_count, flight::kMaxGroups - 1);
  flight::Group& g = header_->groups[index];
  std::memset(g.name, 0, sizeof g.name);
  std::memcpy(g.name, name.data(), std::min<std::size_t>(name.size(), sizeof g.name - 1));
  g.color = color;
  g.size = size;
  g.rank = rank;
  header_->group_count = std::min<std::uint32_t>(header_->group_count + 1, flight::kMaxGroups);
  return static_cast<int>(index);
}

void FlightRecorder::set_step(std::int64_t step) {
  ref(header_->step).store(step, std::memory_order_relaxed);
}

std::uint64_t FlightRecorder::begin(int group, std::uint64_t sequence, FlightOp op, DataType type,
                                    std::size_t count, std::size_t bytes, int root,
                                    std::int64_t now) {
  const std::uint64_t t = ref(header_->written).fetch_add(1, std::memory_order_relaxed);
  flight::Record& r = records_[t % capacity_];
  ref(r.ticket).store(0, std::memory_order_release);
  r.sequence = sequence;
  r.step = ref(header_->step).load(std::memory_order_relaxed);
  r.count = count;
  r.bytes = bytes;
  r.enqueue_ns = now;
  r.start_ns = now;
  ref(r.end_ns).store(0, std::memory_order_relaxed);
  r.group = static_cast<std::uint16_t>(group);
  r.op = static_cast<std::uint8_t>(op);
  r.dtype = static_cast<std::uint8_t>(type);
  r.root = root;
  const char* site = t_site ? t_site : "";
  std::size_t i = 0;
  for (; i + 1 < sizeof r.site && site[i]; ++i) r.site[i] = site[i];
  r.site[i] = '\0';
  ref(r.ticket).store(t + 1, std::memory_order_release);
  return t + 1;
}

void FlightRecorder::complete(std::uint64_t ticket) {
  flight::Record& r = records_[(ticket - 1) % capacity_];
  if (ref(r.ticket).load(std::memory_order_acquire) != ticket) return;  // overwritten since
  ref(r.end_ns).store(now_ns(), std::memory_order_release);
}

void FlightRecorder::complete_at(std::uint64_t ticket, std::int64_t ns) {
  flight::Record& r = records_[(ticket - 1) % capacity_];
  if (ref(r.ticket).load(std::memory_order_acquire) != ticket) return;
  ref(r.end_ns).store(std::max<std::int64_t>(ns, 1), std::memory_order_release);
}

void FlightRecorder::mark_start(std::uint64_t ticket, std::int64_t ns) {
  flight::Record& r = records_[(ticket - 1) % capacity_];
  if (ref(r.ticket).load(std::memory_order_acquire) == ticket) r.start_ns = ns;
}

double FlightRecorder::take_wait_seconds() {
  return static_cast<double>(wait_ns_.exchange(0, std::memory_order_relaxed)) * 1e-9;
}

void FlightRecorder::persist(const std::string& dir) {
  const std::string path =
      dir + "/flight-rank" + std::to_string(header_->world_rank) + ".bin";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot create the flight recorder's file: " +
                                       std::strerror(errno));
  // Allocated now, so that a file system that fills up later cannot make a store into the
  // mapping fail (SIGBUS).
  if (const int e = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes())); e != 0) {
    ::close(fd);
    ::unlink(path.c_str());
    throw std::runtime_error(path + ": cannot allocate the flight recorder's file (" +
                             std::to_string(bytes()) + " bytes): " + std::strerror(e));
  }
  void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) {
    throw std::runtime_error(path + ": cannot map the flight recorder's file: " +
                             std::strerror(e));
  }
  std::memcpy(p, block_, bytes());  // also faults every page in, before any step
  void* old = block_;
  block_ = p;
  header_ = static_cast<flight::Header*>(p);
  records_ = reinterpret_cast<flight::Record*>(static_cast<char*>(p) + header_bytes());
  ::munmap(old, bytes());
  mapped_ = true;
  path_ = path;
}

void FlightRecorder::dump(FlightReason reason) {
  header_->reason = static_cast<std::uint32_t>(reason);
  ref(header_->dumped_steady_ns).store(now_ns(), std::memory_order_relaxed);
  if (!mapped_) return;  // nowhere to write: the recorder was never given a directory
  ::msync(block_, bytes(), MS_SYNC);
  std::fprintf(stderr, "meshtrain: rank %d: flight recorder (%s): %llu collectives, the last %zu in %s\n",
               header_->world_rank, std::string(name_of(reason)).c_str(),
               static_cast<unsigned long long>(ref(header_->written).load()),
               std::min<std::size_t>(capacity_, ref(header_->written).load()), path_.c_str());
  std::fflush(stderr);
}

void FlightRecorder::write_copy(const std::string& path) const {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error(path + ": cannot write: " + std::strerror(errno));
  const bool ok = std::fwrite(block_, 1, bytes(), f) == bytes();
  if (std::fclose(f) != 0 || !ok) throw std::runtime_error(path + ": cannot write");
}

void FlightRecorder::poll_signal() {
  if (!g_dump_requested) return;
  g_dump_requested = 0;
  dump_all(FlightReason::Signal);
}

void FlightRecorder::dump_all(FlightReason reason) {
  std::lock_guard lock(registry_mutex());
  for (FlightRecorder* r : registry()) r->dump(reason);
}

FlightRecordingCommunicator::FlightRecordingCommunicator(std::shared_ptr<Communicator> inner,
                                                         std::shared_ptr<FlightRecorder> recorder,
                                                         int group)
    : inner_(std::move(inner)), recorder_(std::move(recorder)), group_(group),
      name_(recorder_->header().groups[group].name), timer_(inner_->device_timer()) {}

std::uint64_t FlightRecordingCommunicator::mark_before() { return timer_ ? timer_->before() : 0; }

void FlightRecordingCommunicator::mark_after(std::uint64_t handle, std::uint64_t ticket) {
  if (!timer_) return;
  timer_->after(handle);
  if (pending_.size() >= kMaxPending) {  // not polled for long: the host's time stands in
    recorder_->complete(pending_.front().second);
    pending_.pop_front();
  }
  pending_.emplace_back(handle, ticket);
  poll_device();
}

void FlightRecordingCommunicator::poll_device() {
  if (!timer_) return;
  timer_->poll([this](std::uint64_t handle, std::int64_t start, std::int64_t end) {
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->first != handle) continue;
      recorder_->mark_start(it->second, start);
      recorder_->complete_at(it->second, end);
      pending_.erase(it);
      return;
    }
  });
}

std::uint64_t FlightRecordingCommunicator::begin(FlightOp op, DataType type, std::size_t count,
                                                 std::size_t bytes, int root,
                                                 std::int64_t now) {
  last_seq_ = sequence_.fetch_add(1, std::memory_order_relaxed) + 1;
  return recorder_->begin(group_, last_seq_, op, type, count, bytes, root, now);
}

void FlightRecordingCommunicator::end(std::uint64_t ticket, std::int64_t started, FlightOp op,
                                      std::uint64_t seq) {
  if (!timer_) recorder_->complete(ticket);  // else when the device says it ended
  const std::int64_t now = FlightRecorder::now_ns();
  recorder_->add_wait_ns(now - started);
  if (Tracer* tracer = Tracer::active()) {
    tracer->add(name_of(op), name_, started, now, static_cast<std::int64_t>(seq));
  }
}

void FlightRecordingCommunicator::allreduce(void* buf, std::size_t count, DataType type,
                                            ReduceOp op) {
  const std::int64_t start = FlightRecorder::now_ns();
  const auto t = begin(FlightOp::Allreduce, type, count, count * size_of(type), -1, start);
  const std::uint64_t seq = last_seq_;
  const std::uint64_t mark = mark_before();
  inner_->allreduce(buf, count, type, op);
  mark_after(mark, t);
  end(t, start, FlightOp::Allreduce, seq);
}

std::unique_ptr<Work> FlightRecordingCommunicator::allreduce_async(void* buf, std::size_t count,
                                                                   DataType type, ReduceOp op) {
  const std::int64_t start = FlightRecorder::now_ns();
  const auto t = begin(FlightOp::AllreduceAsync, type, count, count * size_of(type), -1, start);
  const std::uint64_t seq = last_seq_;
  const std::uint64_t mark = mark_before();
  auto inner = inner_->allreduce_async(buf, count, type, op);
  mark_after(mark, t);
  return std::make_unique<FlightWork>(std::move(inner), recorder_.get(), t, name_.c_str(), start, seq,
                                      timer_ != nullptr);
}

void FlightRecordingCommunicator::reduce_scatter(const void* send, void* recv, std::size_t count,
                                                 DataType type, ReduceOp op) {
  const std::int64_t start = FlightRecorder::now_ns();
  const auto n = count * static_cast<std::size_t>(size());
  const auto t = begin(FlightOp::ReduceScatter, type, n, n * size_of(type), -1, start);
  const std::uint64_t seq = last_seq_;
  const std::uint64_t mark = mark_before();
  inner_->reduce_scatter(send, recv, count, type, op);
  mark_after(mark, t);
  end(t, start, FlightOp::ReduceScatter, seq);
}

void FlightRecordingCommunicator::all_gather(const void* send, void* recv, std::size_t count,
                                             DataType type) {
  const std::int64_t start = FlightRecorder::now_ns();
  const auto n = count * static_cast<std::size_t>(size());
  const auto t = begin(FlightOp::AllGather, type, n, n * size_of(type), -1, start);
  const std::uint64_t seq = last_seq_;
  const std::uint64_t mark = mark_before();
  inner_->all_gather(send, recv, count, type);
  mark_after(mark, t);
  end(t, start, FlightOp::AllGather, seq);
}

void FlightRecordingCommunicator::broadcast(void* buf, std::size_t count, DataType type,
                                            int root) {
  const std::int64_t start = FlightRecorder::now_ns();
  const auto t = begin(FlightOp::Broadcast, type, count, count * size_of(type), root, start);
  const std::uint64_t seq = last_seq_;
  const std::uint64_t mark = mark_before();
  inner_->broadcast(buf, count, type, root);
  mark_after(mark, t);
  end(t, start, FlightOp::Broadcast, seq);
}

void FlightRecordingCommunicator::scatterv(const void* send, std::span<const int> counts,
                                           std::span<const int> displs, void* recv,
                                           int recv_count, DataType type, int root) {
  const std::int64_t start = FlightRecorder::now_ns();
  const auto n = static_cast<std::size_t>(recv_count);
  const auto t = begin(FlightOp::Scatterv, type, n, n * size_of(type), root, start);
  const std::uint64_t seq = last_seq_;
  const std::uint64_t mark = mark_before();
  inner_->scatterv(send, counts, displs, recv, recv_count, type, root);
  mark_after(mark, t);
  end(t, start, FlightOp::Scatterv, seq);
}

void FlightRecordingCommunicator::barrier() {
  const std::int64_t start = FlightRecorder::now_ns();
  const auto t = begin(FlightOp::Barrier, DataType::Int32, 0, 0, -1, start);
  const std::uint64_t seq = last_seq_;
  const std::uint64_t mark = mark_before();
  inner_->barrier();
  mark_after(mark, t);
  end(t, start, FlightOp::Barrier, seq);
}

}  // namespace meshtrain
