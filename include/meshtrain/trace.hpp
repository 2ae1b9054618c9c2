#pragma once
// A Chrome trace (the Trace Event Format that chrome://tracing and Perfetto read) of a run:
// steps, layers and collectives as "X" (complete) events, pid = the rank, tid = the thread.
// Off unless a Tracer is active (meshtrain train --trace FILE); then events go into one
// preallocated buffer (no allocation, no I/O while training; events beyond its capacity are
// counted and dropped) and write() puts them in a file at the end.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace meshtrain {

class Tracer {
 public:
  struct Event {
    char name[32];
    char category[16];
    std::int64_t begin_ns;  // steady clock
    std::int64_t end_ns;
    std::int64_t arg;  // -1: none
    int thread;
  };
  explicit Tracer(std::size_t capacity);
  ~Tracer();
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  // The process's active tracer (nullptr: tracing is off, and every hook costs one load).
  static Tracer* active() { return active_.load(std::memory_order_relaxed); }
  void activate() { active_.store(this); }
  void deactivate();

  void add(std::string_view name, std::string_view category, std::int64_t begin_ns,
           std::int64_t end_ns, std::int64_t arg = -1);
  std::size_t size() const;
  std::size_t dropped() const;
  // {"traceEvents": [...], "displayTimeUnit": "ms"}; ts and dur in microseconds from the
  // Unix epoch, so that ranks' files line up. std::runtime_error naming the file on failure.
  void write(const std::string& path, int pid) const;
  static std::int64_t now_ns();
  // PATH with ".rank<R>" before its extension: trace.json -> trace.rank1.json.
  static std::string rank_path(const std::string& path, int rank);

 private:
  static std::atomic<Tracer*> active_;
  std::unique_ptr<Event[]> events_;
  std::size_t capacity_;
  std::atomic<std::size_t> next_{0};
  std::int64_t origin_unix_ns_, origin_steady_ns_;
};

// Adds one event for its lifetime when tracing is on.
class TraceSpan {
 public:
  TraceSpan(const char* name, const char* category, std::int64_t arg = -1)
      : tracer_(Tracer::active()), name_(name), category_(category), arg_(arg),
        begin_(tracer_ ? Tracer::now_ns() : 0) {}
  ~TraceSpan() {
    if (tracer_) tracer_->add(name_, category_, begin_, Tracer::now_ns(), arg_);
  }
  TraceSpan(const TraceSpan&) = delete;
  TraceSpan& operator=(const TraceSpan&) = delete;

 private:
  Tracer* tracer_;
  const char* name_;
  const char* category_;
  std::int64_t arg_;
  std::int64_t begin_;
};

}  // namespace meshtrain
