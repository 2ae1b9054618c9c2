#include "meshtrain/data/dataset.hpp"

#include <string>

#include "meshtrain/data/random.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
constexpr std::uint64_t kDataStream = 2;
}

ReferenceData make_reference_data(int samples, int dim, std::uint64_t seed) {
  if (samples < 1) throw ConfigError("samples", std::to_string(samples) + ": must be at least 1");
  if (dim < 1) throw ConfigError("dim", std::to_string(dim) + ": must be at least 1");
  ReferenceData data{HostMatrix("meshtrain::x", samples, dim), HostMatrix("meshtrain::y", samples, 1)};
  Random rng(derive_seed(seed, kDataStream));
  for (int i = 0; i < samples; ++i) {
    double sum = 0.0;
    for (int j = 0; j < dim; ++j) {
      const float v = static_cast<float>(rng.normal());
      data.x(i, j) = v;
      sum += static_cast<double>(v) * v;
    }
    data.y(i, 0) = static_cast<float>(sum);
  }
  return data;
}

}  // namespace meshtrain
