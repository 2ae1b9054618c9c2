#include "plot_metrics.hpp"

#include <sys/wait.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "meshtrain/error.hpp"
#include "run_report.hpp"

namespace meshtrain::app {

namespace {

// A gnuplot single-quoted string: '' stands for a quote.
std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

// Text pasted into gnuplot's script must be one line: a newline would end the quoted string
// and start a command of the user's choosing (gnuplot's `system` runs a shell).
void check_one_line(const std::string& what, const std::string& text) {
  for (const unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) {
      std::string shown;  // the text as one line: newlines as \n, other controls as ?
      for (const unsigned char d : text) {
        if (d == '\n') {
          shown += "\\n";
        } else {
          shown += d < 0x20 || d == 0x7f ? '?' : static_cast<char>(d);
        }
      }
      throw ConfigError(what + " '" + shown + "': contains a control character; give one line");
    }
  }
}

// gnuplot writes to its standard output when it cannot open the output file; find out first,
// with the same file, so that an unwritable PNG is an error instead of bytes on a terminal.
void check_writable(const std::string& png_path) {
  std::ofstream probe(png_path, std::ios::binary | std::ios::trunc);
  if (!probe) {
    throw ConfigError("-o " + png_path + ": cannot write the plot: " + std::strerror(errno));
  }
}

bool is_png(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  return in.read(magic, sizeof magic) && std::memcmp(magic, "\x89PNG\r\n\x1a\n", 8) == 0;
}

struct MetricsSummary {
  int epochs = 0;
  bool has_validation = false;
  bool has_test = false;
  int test_column = 0;       // 1-based, for gnuplot; 0 in files from before test sets
  bool all_positive = true;  // log scale possible
};

std::vector<std::string> split_commas(const std::string& line) {
  std::vector<std::string> fields;
  std::size_t start = 0;
  for (;;) {
    const auto comma = line.find(',', start);
    fields.push_back(line.substr(start, comma == std::string::npos ? comma : comma - start));
    if (comma == std::string::npos) return fields;
    start = comma + 1;
  }
}

// Files of this version (kMetricsCsvHeader) and of earlier ones (no test_loss column) both
// begin with epoch, train_loss, val_loss; test_loss is found by its name.
MetricsSummary summarise(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open: " + std::strerror(errno));
  std::string line;
  const bool read = static_cast<bool>(std::getline(in, line));
  const std::vector<std::string> names = split_commas(line);
  if (!read || names.size() < 4 || names[0] != "epoch" || names[1] != "train_loss" ||
      names[2] != "val_loss") {
    throw ConfigError(path + ": not a meshtrain metrics.csv (its first line should be '" +
                      std::string(kMetricsCsvHeader) + "')");
  }
  MetricsSummary s;
  for (std::size_t c = 3; c < names.size(); ++c) {
    if (names[c] == "test_loss") s.test_column = static_cast<int>(c) + 1;
  }
  auto loss = [&s](const std::string& text, bool& present) {
    if (text.empty()) return;
    present = true;
    if (!(std::strtod(text.c_str(), nullptr) > 0)) s.all_positive = false;
  };
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const std::vector<std::string> fields = split_commas(line);
    if (fields.size() != names.size()) {
      throw ConfigError(path + ":" + std::to_string(s.epochs + 2) + ": malformed row '" + line +
                        "'");
    }
    bool train = false;
    loss(fields[1], train);
    if (!train) s.all_positive = false;
    loss(fields[2], s.has_validation);
    if (s.test_column > 0) loss(fields[static_cast<std::size_t>(s.test_column - 1)], s.has_test);
    ++s.epochs;
  }
  if (s.epochs == 0) throw ConfigError(path + ": no epochs to plot");
  return s;
}

}  // namespace

void plot_metrics(const std::string& csv_path, const std::string& png_path,
                  const std::string& title) {
  check_one_line("--title", title);
  check_one_line("-o", png_path);
  check_one_line("metrics file", csv_path);
  const MetricsSummary s = summarise(csv_path);
  check_writable(png_path);
  std::string script =
      "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 900,560 "
      "enhanced font ',11' } else { set terminal png size 900,560 }\n"
      "set output " +
      quoted(png_path) +
      "\n"
      "set datafile separator ','\n"
      "set title " +
      quoted(title) +
      " noenhanced\n"
      "set xlabel 'epoch'\nset ylabel 'loss'\n"
      "set grid\nset key top right\n" +
      std::string(s.all_positive ? "set logscale y\n" : "") +
      (s.epochs == 1 ? "set xrange [0.5:1.5]\n" : "") + "plot " + quoted(csv_path) +
      " using 1:2 skip 1 with linespoints pt 7 ps 0.6 title 'train'" +
      (s.has_validation ? ", " + quoted(csv_path) +
                              " using 1:3 skip 1 with linespoints pt 5 ps 0.6 title 'validation'"
                        : std::string()) +
      (s.has_test ? ", " + quoted(csv_path) + " using 1:" + std::to_string(s.test_column) +
                        " skip 1 with linespoints pt 9 ps 0.6 title 'test'"
                  : std::string()) +
      "\n";
  // Its standard output is never the plot: gnuplot only writes there when it failed.
  std::FILE* gnuplot = popen("gnuplot > /dev/null", "w");
  if (!gnuplot) throw ConfigError(std::string("cannot start gnuplot: ") + std::strerror(errno));
  std::fputs(script.c_str(), gnuplot);
  const int status = pclose(gnuplot);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const bool missing = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 127;
    throw ConfigError(missing ? std::string("gnuplot not found; install it (Debian: gnuplot-nox)")
                              : "gnuplot failed to draw " + png_path + " from " + csv_path);
  }
  if (!is_png(png_path)) {
    throw ConfigError("gnuplot did not write a PNG to " + png_path + " from " + csv_path);
  }
}

}  // namespace meshtrain::app
