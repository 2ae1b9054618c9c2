#include "plot_metrics.hpp"

#include <sys/wait.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

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
  bool all_positive = true;  // log scale possible
};

MetricsSummary summarise(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open: " + std::strerror(errno));
  std::string line;
  if (!std::getline(in, line) || line != kMetricsCsvHeader) {
    throw ConfigError(path + ": not a meshtrain metrics.csv (its first line should be '" +
                      std::string(kMetricsCsvHeader) + "')");
  }
  MetricsSummary s;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto first = line.find(',');
    const auto second = line.find(',', first + 1);
    const auto third = line.find(',', second + 1);
    if (first == std::string::npos || second == std::string::npos || third == std::string::npos) {
      throw ConfigError(path + ":" + std::to_string(s.epochs + 2) + ": malformed row '" + line +
                        "'");
    }
    const double train = std::strtod(line.c_str() + first + 1, nullptr);
    const std::string val = line.substr(second + 1, third - second - 1);
    if (!(train > 0)) s.all_positive = false;
    if (!val.empty()) {
      s.has_validation = true;
      if (!(std::strtod(val.c_str(), nullptr) > 0)) s.all_positive = false;
    }
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
      "set xlabel 'epoch'\nset ylabel 'loss (mean squared error)'\n"
      "set grid\nset key top right\n" +
      std::string(s.all_positive ? "set logscale y\n" : "") +
      (s.epochs == 1 ? "set xrange [0.5:1.5]\n" : "") + "plot " + quoted(csv_path) +
      " using 1:2 skip 1 with linespoints pt 7 ps 0.6 title 'train'" +
      (s.has_validation ? ", " + quoted(csv_path) +
                              " using 1:3 skip 1 with linespoints pt 5 ps 0.6 title 'validation'"
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
