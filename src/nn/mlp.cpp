#include "meshtrain/nn/mlp.hpp"

#include <string>

#include "meshtrain/error.hpp"

namespace meshtrain {

namespace {

std::vector<DenseSpec> dense_specs(const std::vector<int>& widths, Activation hidden) {
  std::string listed = "[";
  for (std::size_t i = 0; i < widths.size(); ++i) listed += (i ? ", " : "") + std::to_string(widths[i]);
  listed += "]";
  if (widths.size() < 2) {
    throw ConfigError("model widths", listed + ": need at least an input and an output");
  }
  for (int w : widths) {
    if (w < 1) {
      throw ConfigError("model widths", listed + ": width " + std::to_string(w) + " must be >= 1");
    }
  }
  std::vector<DenseSpec> specs;
  for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
    const bool last = l + 2 == widths.size();
    specs.push_back({widths[l], widths[l + 1], last ? Activation::Identity : hidden});
  }
  return specs;
}

std::vector<std::unique_ptr<Layer>> dense_layers(const std::vector<DenseSpec>& specs) {
  std::vector<std::unique_ptr<Layer>> layers;
  for (const DenseSpec& d : specs) {
    layers.push_back(std::make_unique<Dense>(static_cast<std::size_t>(d.in),
                                             static_cast<std::size_t>(d.out), d.activation));
  }
  return layers;
}

}  // namespace

Mlp::Mlp(std::vector<int> widths, Activation hidden, std::uint64_t seed)
    : Mlp(widths, dense_specs(widths, hidden), seed) {}

Mlp::Mlp(std::vector<int> widths, std::vector<DenseSpec> dense, std::uint64_t seed)
    : Model(dense_layers(dense), seed), widths_(std::move(widths)), dense_(std::move(dense)) {}

Mlp::Mlp(Model model, std::vector<int> widths, std::vector<DenseSpec> dense)
    : Model(std::move(model)), widths_(std::move(widths)), dense_(std::move(dense)) {}

Mlp Mlp::simple_pde_model(std::uint64_t seed) { return Mlp({4, 64, 1}, Activation::ReLU, seed); }

MatrixRef Mlp::kernel(float* flat, std::size_t l) const {
  const TensorSpec& t = tensors()[first_tensor(l)];
  return MatrixRef(flat + t.offset, t.shape[0], t.shape[1]);
}

VectorRef Mlp::bias(float* flat, std::size_t l) const {
  const TensorSpec& t = tensors()[first_tensor(l) + 1];
  return VectorRef(flat + t.offset, t.size);
}

Mlp Mlp::clone() const { return Mlp(Model::clone(), widths_, dense_); }

}  // namespace meshtrain
