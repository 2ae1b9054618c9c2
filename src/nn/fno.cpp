#include "meshtrain/nn/fno.hpp"

#include <memory>
#include <string>
#include <vector>

#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {
void check_positive(const char* field, int value) {
  if (value < 1) throw ConfigError(field, std::to_string(value) + ": must be at least 1");
}
}  // namespace

void validate(const FnoConfig& c) {
  check_positive("s1", c.s1);
  check_positive("s2", c.s2);
  check_positive("in_channels", c.in_channels);
  check_positive("out_channels", c.out_channels);
  check_positive("modes1", c.modes1);
  check_positive("modes2", c.modes2);
  check_positive("width", c.width);
  check_positive("layers", c.layers);
  check_positive("projection", c.projection);
  // The modes' upper bounds are SpectralConv2d's, checked when it is built.
}

Model make_fno2d(const FnoConfig& c) {
  validate(c);
  const auto s1 = static_cast<std::size_t>(c.s1);
  const auto s2 = static_cast<std::size_t>(c.s2);
  const auto width = static_cast<std::size_t>(c.width);
  const auto projection = static_cast<std::size_t>(c.projection);
  const std::size_t points = s1 * s2;
  const auto in = static_cast<std::size_t>(c.in_channels);
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::make_unique<GridCoordinates2d>(s1, s2, in));
  layers.push_back(std::make_unique<Pointwise>(in + 2, width, points, Activation::Identity));
  for (int l = 0; l < c.layers; ++l) {
    const Activation act = l + 1 < c.layers ? Activation::Gelu : Activation::Identity;
    layers.push_back(std::make_unique<FourierLayer2d>(
        width, width, s1, s2, static_cast<std::size_t>(c.modes1),
        static_cast<std::size_t>(c.modes2), act));
  }
  layers.push_back(std::make_unique<Pointwise>(width, projection, points, Activation::Gelu));
  layers.push_back(std::make_unique<Pointwise>(
      projection, static_cast<std::size_t>(c.out_channels), points, Activation::Identity));
  return Model(std::move(layers), c.seed);
}

}  // namespace meshtrain
