#pragma once
// What rank 0 reports during a run: a line per epoch (with a progress bar redrawn in place
// on a terminal) and the metrics files.
#include <cstdio>
#include <string>
#include <vector>

#include "meshtrain/train/trainer.hpp"

namespace meshtrain::app {

// "0.42 s", "3m07s", "1h02m09s".
std::string format_duration(double seconds);

class ProgressPrinter {
 public:
  // first_epoch: the 0-based epoch this process starts in (after a resume), for the ETA.
  ProgressPrinter(bool bar, int first_epoch);
  // "epoch 3/20: train loss 4.123456, val loss -, lr 0.001, 123456 samples/s, elapsed 0.01 s,
  // ETA 0.05 s"
  void epoch(const EpochReport& report);
  void finish();  // removes the bar

 private:
  bool bar_;
  int first_epoch_;
  bool bar_shown_ = false;
};

// metrics.jsonl (one JSON object per epoch) and metrics.csv (a header and one row per epoch)
// in dir, each line flushed as it is written. Columns: epoch (1-based), train_loss, val_loss
// (empty in the CSV, null in JSON, when not evaluated), step, skipped_steps, epoch_seconds,
// elapsed_seconds (since this process started training), samples_per_second, learning_rate
// (the schedule's rate at the epoch's last step), grad_norm (with clipping: the gradient norm
// before clipping at the epoch's last step; empty / null without).
class MetricsFiles {
 public:
  // A fresh run (completed_epochs 0) starts both files anew. A resumed run keeps the rows of
  // the epochs its checkpoint had completed and drops later ones (written after that
  // checkpoint by the interrupted run), so the files hold one row per epoch of the run.
  // Throws ConfigError when dir or the files cannot be created.
  MetricsFiles(const std::string& dir, int completed_epochs);
  ~MetricsFiles();
  MetricsFiles(const MetricsFiles&) = delete;
  MetricsFiles& operator=(const MetricsFiles&) = delete;

  // std::runtime_error naming the file when a line cannot be written (a full disk).
  void append(const EpochReport& report);
  // The metrics files in dir that hold something (an earlier run's, which a fresh run
  // would start anew).
  static std::vector<std::string> existing(const std::string& dir);
  std::string csv_path() const { return csv_path_; }

 private:
  std::string jsonl_path_;
  std::string csv_path_;
  std::FILE* jsonl_ = nullptr;
  std::FILE* csv_ = nullptr;
};

inline constexpr const char* kMetricsCsvHeader =
    "epoch,train_loss,val_loss,test_loss,step,skipped_steps,epoch_seconds,elapsed_seconds,"
    "samples_per_second,learning_rate,grad_norm";

}  // namespace meshtrain::app
