#include "run_report.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <system_error>
#include <vector>

#include "meshtrain/error.hpp"

namespace meshtrain::app {

namespace {

namespace fs = std::filesystem;

std::string printf_string(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

std::string json_number(double v, const char* format) {
  return std::isfinite(v) ? printf_string(format, v) : "null";
}

std::string csv_number(double v, const char* format) {
  return std::isfinite(v) ? printf_string(format, v) : "";
}

// The epoch a metrics line is about: the CSV's first column, the JSON object's "epoch".
// -1 for the CSV header and anything unreadable.
long epoch_of_line(const std::string& line, bool json) {
  std::size_t at = 0;
  if (json) {
    constexpr std::string_view key = "\"epoch\":";
    at = line.find(key);
    if (at == std::string::npos) return -1;
    at += key.size();
  }
  const char* begin = line.c_str() + at;
  char* end = nullptr;
  const long epoch = std::strtol(begin, &end, 10);
  return end == begin ? -1 : epoch;
}

// Keeps the header and the rows of epochs 1..completed, rewriting the file in place.
void keep_completed_rows(const std::string& path, int completed, bool json) {
  std::ifstream in(path);
  if (!in) return;
  std::vector<std::string> kept;
  for (std::string line; std::getline(in, line);) {
    const long epoch = epoch_of_line(line, json);
    if ((!json && kept.empty() && line.starts_with("epoch,")) ||
        (epoch >= 1 && epoch <= completed)) {
      kept.push_back(line);
    }
  }
  in.close();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& line : kept) out << line << '\n';
    if (!out) throw ConfigError(path + ": cannot rewrite: " + std::strerror(errno));
  }
  fs::rename(tmp, path);
}

std::FILE* open_for_append(const std::string& path, bool fresh) {
  std::FILE* f = std::fopen(path.c_str(), fresh ? "w" : "a");
  if (!f) throw ConfigError(path + ": cannot open for writing: " + std::strerror(errno));
  return f;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "-";
  if (seconds < 60) return printf_string("%.2f s", seconds);
  const long total = std::lround(seconds);
  char buffer[32];
  if (total < 3600) {
    std::snprintf(buffer, sizeof buffer, "%ldm%02lds", total / 60, total % 60);
  } else {
    std::snprintf(buffer, sizeof buffer, "%ldh%02ldm%02lds", total / 3600, (total / 60) % 60,
                  total % 60);
  }
  return buffer;
}

ProgressPrinter::ProgressPrinter(bool bar, int first_epoch)
    : bar_(bar), first_epoch_(first_epoch) {}

void ProgressPrinter::epoch(const EpochReport& r) {
  const int done = r.epoch + 1;
  const int done_here = done - first_epoch_;
  const double eta = done_here > 0 ? r.elapsed_seconds / done_here * (r.num_epochs - done) : NAN;
  const std::string val =
      std::isfinite(r.validation_loss) ? printf_string("%.6f", r.validation_loss) : "-";
  const std::string test =
      std::isfinite(r.test_loss) ? printf_string(", test loss %.6f", r.test_loss) : "";
  if (bar_shown_) std::printf("\r\033[K");
  const std::string norm =
      std::isfinite(r.gradient_norm) ? printf_string(", grad norm %.6g", r.gradient_norm) : "";
  std::printf("epoch %d/%d: train loss %.6f, val loss %s%s, lr %.6g%s, %.0f samples/s, "
              "elapsed %s, ETA %s\n",
              done, r.num_epochs, r.train_loss, val.c_str(), test.c_str(), r.learning_rate,
              norm.c_str(), r.samples_per_second,
              format_duration(r.elapsed_seconds).c_str(), format_duration(eta).c_str());
  if (!bar_ && r.straggler_rank >= 0) {
    const double ms = 1e3;
    std::printf("  straggler: rank %d, %.3f ms behind rank %d (computed %.3f ms against %.3f ms; "
                "waited in collectives %.3f ms against %.3f ms)\n",
                r.straggler_rank, r.straggler_behind_seconds * ms, r.fastest_rank,
                r.straggler_compute_seconds * ms, r.fastest_compute_seconds * ms,
                r.straggler_wait_seconds * ms, r.fastest_wait_seconds * ms);
  }
  if (bar_) {
    constexpr int width = 30;
    const int filled = r.num_epochs > 0 ? width * done / r.num_epochs : width;
    std::printf("[%s%s] %d/%d epochs, ETA %s", std::string(filled, '#').c_str(),
                std::string(width - filled, '-').c_str(), done, r.num_epochs,
                format_duration(eta).c_str());
    bar_shown_ = true;
  }
  std::fflush(stdout);
}

void ProgressPrinter::finish() {
  if (bar_shown_) std::printf("\r\033[K");
  bar_shown_ = false;
  std::fflush(stdout);
}

std::vector<std::string> MetricsFiles::existing(const std::string& dir) {
  std::vector<std::string> found;
  for (const char* name : {"metrics.jsonl", "metrics.csv"}) {
    const fs::path path = fs::path(dir) / name;
    std::error_code ec;
    if (fs::is_regular_file(path, ec) && fs::file_size(path, ec) > 0 && !ec) found.push_back(path.string());
  }
  return found;
}

MetricsFiles::MetricsFiles(const std::string& dir, int completed_epochs)
    : jsonl_path_((fs::path(dir) / "metrics.jsonl").string()),  // names as in existing()
      csv_path_((fs::path(dir) / "metrics.csv").string()) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    throw ConfigError(dir + ": cannot create the output directory" +
                      (ec ? ": " + ec.message() : ""));
  }
  const bool fresh = completed_epochs == 0 || !fs::exists(csv_path_);
  if (!fresh) {
    keep_completed_rows(csv_path_, completed_epochs, false);
    keep_completed_rows(jsonl_path_, completed_epochs, true);
  }
  jsonl_ = open_for_append(jsonl_path_, fresh);
  csv_ = open_for_append(csv_path_, fresh);
  if (fresh) std::fprintf(csv_, "%s\n", kMetricsCsvHeader);
  std::fflush(csv_);
}

MetricsFiles::~MetricsFiles() {
  if (jsonl_) std::fclose(jsonl_);
  if (csv_) std::fclose(csv_);
}

void MetricsFiles::append(const EpochReport& r) {
  const int epoch = r.epoch + 1;
  const auto step = static_cast<long long>(r.step);
  const auto skipped = static_cast<long long>(r.skipped_steps);
  const int jsonl_written = std::fprintf(jsonl_,
               "{\"epoch\": %d, \"train_loss\": %s, \"val_loss\": %s, \"test_loss\": %s, "
               "\"step\": %lld, "
               "\"skipped_steps\": %lld, \"epoch_seconds\": %.6f, \"elapsed_seconds\": %.6f, "
               "\"samples_per_second\": %.1f, \"learning_rate\": %s, \"grad_norm\": %s, "
               "\"straggler_rank\": %s, \"straggler_behind_seconds\": %s}\n",
               epoch, json_number(r.train_loss, "%.17g").c_str(),
               json_number(r.validation_loss, "%.17g").c_str(),
               json_number(r.test_loss, "%.17g").c_str(), step, skipped, r.epoch_seconds,
               r.elapsed_seconds, r.samples_per_second,
               json_number(r.learning_rate, "%.17g").c_str(),
               json_number(r.gradient_norm, "%.9g").c_str(),
               r.straggler_rank >= 0 ? std::to_string(r.straggler_rank).c_str() : "null",
               r.straggler_rank >= 0 ? json_number(r.straggler_behind_seconds, "%.9g").c_str()
                                     : "null");
  const int csv_written = std::fprintf(csv_, "%d,%s,%s,%s,%lld,%lld,%.6f,%.6f,%.1f,%s,%s\n", epoch,
               csv_number(r.train_loss, "%.17g").c_str(),
               csv_number(r.validation_loss, "%.17g").c_str(),
               csv_number(r.test_loss, "%.17g").c_str(), step, skipped, r.epoch_seconds,
               r.elapsed_seconds, r.samples_per_second,
               csv_number(r.learning_rate, "%.17g").c_str(),
               csv_number(r.gradient_norm, "%.9g").c_str());
  // A full disk shows at the latest when the lines are flushed.
  const auto check = [](std::FILE* f, int written, const std::string& path) {
    if (written < 0 || std::fflush(f) != 0 || std::ferror(f)) {
      throw std::runtime_error(path + ": cannot write the metrics: " + std::strerror(errno));
    }
  };
  check(jsonl_, jsonl_written, jsonl_path_);
  check(csv_, csv_written, csv_path_);
}

}  // namespace meshtrain::app
