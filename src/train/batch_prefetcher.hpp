#pragma once
// The trainer's reader of batches from a RowSource: the rows of the next step are read by a
// background thread while the current step computes (double buffering on the host). Internal
// to train/.
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "meshtrain/data/row_source.hpp"

namespace meshtrain {

class BatchPrefetcher {
 public:
  struct Slot {
    std::vector<float> x, y;  // capacity max_rows rows each
    std::vector<std::int64_t> rows;
    std::uint64_t key = 0;
    bool done = true;
    std::exception_ptr error;
  };

  BatchPrefetcher(std::shared_ptr<const RowSource> source, std::size_t max_rows);
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  // Starts reading `rows` (at most max_rows) for `key` in the background, into the buffer
  // that take() did not hand out last. A request not taken yet is finished and dropped.
  void request(std::uint64_t key, std::vector<std::int64_t> rows);
  // The rows of `key`: the pending request's when it is for key (waiting until it is read),
  // else `rows` read now. Valid until the next take(). The time spent here is the step's
  // wait for data. Rethrows a read's failure.
  const Slot& take(std::uint64_t key, std::vector<std::int64_t> rows);

  double wait_seconds() const { return wait_seconds_; }
  void reset_wait() { wait_seconds_ = 0.0; }
  std::size_t bytes() const;  // of its two buffers

 private:
  void run();
  void read(Slot& slot) const;
  void finish_pending(std::unique_lock<std::mutex>& lock);  // waits for the pending read

  std::shared_ptr<const RowSource> source_;
  std::size_t max_rows_;
  Slot slots_[2];
  int current_ = -1;  // handed out by the last take()
  int pending_ = -1;  // being read (or read and not taken)
  bool stop_ = false;
  double wait_seconds_ = 0.0;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::thread thread_;
};

}  // namespace meshtrain
