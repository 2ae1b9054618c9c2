#pragma once
#include <string>

namespace meshtrain::app {

// Draws the train and validation loss of a run's metrics.csv against the epoch into a PNG,
// with gnuplot (the pngcairo terminal when available, else png). Throws ConfigError for a
// missing or foreign CSV, one without epochs, or when gnuplot is missing or fails.
void plot_metrics(const std::string& csv_path, const std::string& png_path,
                  const std::string& title);

}  // namespace meshtrain::app
