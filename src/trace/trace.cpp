#include "meshtrain/trace.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace meshtrain {

std::atomic<Tracer*> Tracer::active_{nullptr};

namespace {
std::atomic<int> g_threads{0};
thread_local int t_thread = -1;

int thread_id() {
  if (t_thread < 0) t_thread = g_threads.fetch_add(1);
  return t_thread;
}

void copy_name(char* out, std::size_t size, std::string_view in) {
  const std::size_t n = std::min(in.size(), size - 1);
  std::memcpy(out, in.data(), n);
  out[n] = '\0';
}

// JSON string contents: the names are ours (letters, digits, '.', '_', ' '), but be safe.
std::string escaped(const char* s) {
  std::string out;
  for (; *s; ++s) {
    if (*s == '"' || *s == '\\') out += '\\';
    if (static_cast<unsigned char>(*s) >= 0x20) out += *s;
  }
  return out;
}
}  // namespace

std::int64_t Tracer::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Tracer::Tracer(std::size_t capacity)
    : events_(new Event[std::max<std::size_t>(capacity, 1)]), capacity_(std::max<std::size_t>(capacity, 1)) {
  std::memset(static_cast<void*>(events_.get()), 0, capacity_ * sizeof(Event));  // touch now
  origin_unix_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  origin_steady_ns_ = now_ns();
}

Tracer::~Tracer() { deactivate(); }

void Tracer::deactivate() {
  Tracer* self = this;
  active_.compare_exchange_strong(self, nullptr);
}

void Tracer::add(std::string_view name, std::string_view category, std::int64_t begin_ns,
                 std::int64_t end_ns, std::int64_t arg) {
  const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
  if (i >= capacity_) return;  // counted as dropped
  Event& e = events_[i];
  copy_name(e.name, sizeof e.name, name);
  copy_name(e.category, sizeof e.category, category);
  e.begin_ns = begin_ns;
  e.end_ns = end_ns;
  e.arg = arg;
  e.thread = thread_id();
}

std::size_t Tracer::size() const { return std::min(next_.load(), capacity_); }
std::size_t Tracer::dropped() const {
  const std::size_t n = next_.load();
  return n > capacity_ ? n - capacity_ : 0;
}

std::string Tracer::rank_path(const std::string& path, int rank) {
  const auto slash = path.rfind('/');
  const auto dot = path.rfind('.');
  const std::string tag = ".rank" + std::to_string(rank);
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash) ||
      dot == (slash == std::string::npos ? 0 : slash + 1)) {
    return path + tag;
  }
  return path.substr(0, dot) + tag + path.substr(dot);
}

void Tracer::write(const std::string& path, int pid) const {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw std::runtime_error(path + ": cannot write the trace: " + std::strerror(errno));
  std::fprintf(f, "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n");
  std::fprintf(f, "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": %d, \"tid\": 0, "
                  "\"args\": {\"name\": \"rank %d\"}}", pid, pid);
  const std::size_t n = size();
  for (std::size_t i = 0; i < n; ++i) {
    const Event& e = events_[i];
    const double ts = static_cast<double>(origin_unix_ns_ + (e.begin_ns - origin_steady_ns_)) / 1e3;
    const double dur = static_cast<double>(std::max<std::int64_t>(e.end_ns - e.begin_ns, 0)) / 1e3;
    std::fprintf(f, ",\n{\"name\": \"%s\", \"cat\": \"%s\", \"ph\": \"X\", \"ts\": %.3f, "
                    "\"dur\": %.3f, \"pid\": %d, \"tid\": %d",
                 escaped(e.name).c_str(), escaped(e.category).c_str(), ts, dur, pid, e.thread);
    if (e.arg >= 0) std::fprintf(f, ", \"args\": {\"n\": %lld}", static_cast<long long>(e.arg));
    std::fprintf(f, "}");
  }
  std::fprintf(f, "\n]}\n");
  if (std::fclose(f) != 0) {
    throw std::runtime_error(path + ": cannot write the trace: " + std::strerror(errno));
  }
}

}  // namespace meshtrain
