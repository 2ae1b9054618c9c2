#include "meshtrain/nn/layer.hpp"

#include <stdexcept>

#include "meshtrain/error.hpp"

namespace meshtrain {

void LayerPass::reduce_output(MatrixRef partial) const {
  if (!hooks.reduce_output) {
    throw std::logic_error("layer " + std::to_string(index) +
                           ": a row-parallel product needs the reduce_output hook");
  }
  hooks.reduce_output(index, partial);
}

void LayerPass::reduce_input_gradient(MatrixRef partial) const {
  if (!hooks.reduce_input_gradient) {
    throw std::logic_error("layer " + std::to_string(index) +
                           ": a column-parallel input gradient needs the reduce_input_gradient "
                           "hook");
  }
  hooks.reduce_input_gradient(index, partial);
}

std::size_t Layer::num_parameters() const {
  return tensors_.empty() ? 0 : tensors_.back().offset + tensors_.back().size;
}

void Layer::add_tensor(std::string name, std::vector<std::size_t> shape,
                       std::vector<std::string> partition) {
  std::size_t size = 1;
  for (std::size_t d : shape) size *= d;
  tensors_.push_back({std::move(name), std::move(shape), num_parameters(), size,
                      std::move(partition)});
}

std::vector<ShardRun> Layer::shard_runs(const std::string& axis, int /*parts*/, int /*rank*/) const {
  if (parallel_role(axis) != ParallelRole::Replicated) {
    throw std::logic_error(describe() + ": split over " + axis + " without shard_runs");
  }
  if (num_parameters() == 0) return {};
  return {ShardRun{0, 0, num_parameters(), true}};
}

void Layer::set_partition(std::size_t tensor, std::vector<std::string> partition) {
  TensorSpec& t = tensors_.at(tensor);
  if (partition.size() != t.shape.size()) {
    throw ConfigError("partition of " + t.name + ": " + std::to_string(partition.size()) +
                      " entries for a " + std::to_string(t.shape.size()) + "-D tensor");
  }
  t.partition = std::move(partition);
}

}  // namespace meshtrain
