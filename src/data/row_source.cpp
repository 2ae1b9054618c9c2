#include "meshtrain/data/row_source.hpp"

#include <utility>

#include "meshtrain/error.hpp"

namespace meshtrain {

NpyRowSource::NpyRowSource(NpyShards x, NpyShards y) : x_(std::move(x)), y_(std::move(y)) {
  if (x_.rows() != y_.rows()) {
    throw ConfigError(y_.spec() + ": " + std::to_string(y_.rows()) + " samples, but " +
                      x_.spec() + " has " + std::to_string(x_.rows()));
  }
}

void NpyRowSource::encode_inputs(std::vector<float> mean, std::vector<float> scale) {
  if (mean.size() != x_.columns() || scale.size() != x_.columns()) {
    throw ConfigError("data of " + std::to_string(x_.columns()) + " features, statistics of " +
                      std::to_string(mean.size()));
  }
  mean_ = std::move(mean);
  scale_ = std::move(scale);
}

void NpyRowSource::read(std::span<const std::int64_t> rows, float* x, float* y) const {
  x_.read_rows(rows, x);
  y_.read_rows(rows, y);
  if (mean_.empty()) return;
  const std::size_t features = mean_.size();
  for (std::size_t r = 0; r < rows.size(); ++r) {
    float* row = x + r * features;
    for (std::size_t f = 0; f < features; ++f) row[f] = (row[f] - mean_[f]) / scale_[f];
  }
}

}  // namespace meshtrain
