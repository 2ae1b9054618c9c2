#include "batch_prefetcher.hpp"

#include <stdexcept>
#include <utility>

#include "meshtrain/clock.hpp"

namespace meshtrain {

BatchPrefetcher::BatchPrefetcher(std::shared_ptr<const RowSource> source, std::size_t max_rows)
    : source_(std::move(source)), max_rows_(max_rows) {
  for (Slot& slot : slots_) {
    slot.x.resize(max_rows_ * source_->x_columns());
    slot.y.resize(max_rows_ * source_->y_columns());
    slot.rows.reserve(max_rows_);
  }
  thread_ = std::thread([this] { run(); });
}

BatchPrefetcher::~BatchPrefetcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

std::size_t BatchPrefetcher::bytes() const {
  std::size_t total = 0;
  for (const Slot& slot : slots_) {
    total += (slot.x.capacity() + slot.y.capacity()) * sizeof(float) +
             slot.rows.capacity() * sizeof(std::int64_t);
  }
  return total;
}

void BatchPrefetcher::read(Slot& slot) const {
  if (slot.rows.size() > max_rows_) throw std::logic_error("BatchPrefetcher: more rows than its buffers hold");
  source_->read(slot.rows, slot.x.data(), slot.y.data());
}

void BatchPrefetcher::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stop_ || (pending_ >= 0 && !slots_[pending_].done); });
    if (stop_) return;
    Slot& slot = slots_[pending_];
    lock.unlock();
    std::exception_ptr error;
    try {
      read(slot);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    slot.error = error;
    slot.done = true;
    changed_.notify_all();
  }
}

void BatchPrefetcher::finish_pending(std::unique_lock<std::mutex>& lock) {
  if (pending_ < 0) return;
  changed_.wait(lock, [&] { return slots_[pending_].done; });
}

void BatchPrefetcher::request(std::uint64_t key, std::vector<std::int64_t> rows) {
  std::unique_lock<std::mutex> lock(mutex_);
  finish_pending(lock);
  const int target = current_ == 0 ? 1 : 0;
  Slot& slot = slots_[target];
  slot.key = key;
  slot.rows = std::move(rows);
  slot.error = nullptr;
  slot.done = false;
  pending_ = target;
  lock.unlock();
  changed_.notify_all();
}

const BatchPrefetcher::Slot& BatchPrefetcher::take(std::uint64_t key, std::vector<std::int64_t> rows) {
  const double start = now_seconds();
  std::unique_lock<std::mutex> lock(mutex_);
  finish_pending(lock);
  int taken = -1;
  if (pending_ >= 0 && slots_[pending_].key == key) {
    taken = pending_;
  } else {  // nothing read ahead for this step (the first of an epoch, or after a restore)
    taken = current_ == 0 ? 1 : 0;
    Slot& slot = slots_[taken];
    slot.key = key;
    slot.rows = std::move(rows);
    slot.error = nullptr;
    try {
      read(slot);
    } catch (...) {
      slot.error = std::current_exception();
    }
  }
  pending_ = -1;
  current_ = taken;
  wait_seconds_ += now_seconds() - start;
  if (slots_[taken].error) std::rethrow_exception(slots_[taken].error);
  return slots_[taken];
}

}  // namespace meshtrain
