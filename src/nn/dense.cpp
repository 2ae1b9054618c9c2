#include "meshtrain/nn/dense.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace meshtrain {

namespace {
// Flax's lecun_normal: variance_scaling(1, "fan_in", "truncated_normal"); the truncated
// normal on [-2, 2] has this standard deviation, which Flax divides out.
constexpr double kTruncatedNormalStd = 0.87962566103423978;
}  // namespace

Dense::Dense(std::size_t in, std::size_t out, Activation activation)
    : in_(in), out_(out), activation_(activation) {
  add_tensor("kernel", {in, out}, {"", ""});
  add_tensor("bias", {out}, {""});
}

MatrixRef Dense::kernel(const float* block) const {
  return MatrixRef(const_cast<float*>(block), in_, out_);
}

VectorRef Dense::bias(const float* block) const {
  return VectorRef(const_cast<float*>(block) + in_ * out_, out_);
}

void Dense::initialize(float* block, Random& rng) const {
  const double std = std::sqrt(1.0 / static_cast<double>(in_)) / kTruncatedNormalStd;
  for (std::size_t i = 0; i < in_ * out_; ++i) {
    block[i] = static_cast<float>(rng.truncated_normal() * std);
  }
}

std::size_t Dense::scratch_size(std::size_t max_rows) const {
  return needs_preactivation(activation_) ? max_rows * out_ : 0;
}

std::size_t Dense::gemm_scratch_size(std::size_t max_rows) const {
  // The operands of x W (forward), x^T dz (kernel gradient) and dz W^T (input gradient).
  const std::size_t x = max_rows * in_, w = in_ * out_, dz = max_rows * out_;
  return std::max({x + w, x + dz, dz + w});
}

void Dense::forward(const LayerPass& pass, ConstMatrixRef x, const float* params,
                    MatrixRef y) const {
  if (needs_preactivation(activation_)) {
    matmul(x, kernel(params), y, pass.gemm);
    if (computes_as_ == ParallelRole::Row) pass.reduce_output(y);
    bias_activation(y, bias(params), Activation::Identity);
    const MatrixRef z(pass.scratch, y.extent(0), out_);
    Kokkos::deep_copy(ExecSpace(), z, y);
    activation_forward(z, y, activation_);
    return;
  }
  if (computes_as_ == ParallelRole::Row) {
    // Partial products over this rank's input features, summed before bias and activation.
    matmul(x, kernel(params), y, pass.gemm);
    pass.reduce_output(y);
    bias_activation(y, bias(params), activation_);
  } else {
    linear_forward(x, kernel(params), bias(params), y, activation_, pass.gemm);
  }
}

void Dense::backward_parameters(const LayerPass& pass, ConstMatrixRef x, ConstMatrixRef y,
                                MatrixRef dy, const float* params, float* grads) const {
  if (needs_preactivation(activation_)) {
    activation_backward_from_input(ConstMatrixRef(pass.scratch, y.extent(0), out_), dy,
                                   activation_);
  } else {
    activation_backward(y, dy, activation_);
  }
  pass.progress();
  linear_backward(x, kernel(params), dy, kernel(grads), bias(grads), MatrixRef(), pass.gemm);
}

void Dense::backward_input(const LayerPass& pass, ConstMatrixRef dy, const float* params,
                           MatrixRef dx) const {
  linear_backward_input(dy, kernel(params), dx, pass.gemm);
  pass.progress();
  // A column-parallel layer's input gradient is a partial sum over its output slices.
  if (computes_as_ == ParallelRole::Column) pass.reduce_input_gradient(dx);
}

ParallelRole Dense::parallel_role(const std::string& axis) const {
  const std::vector<std::string>& k = tensors()[0].partition;
  if (k == std::vector<std::string>{"", axis}) return ParallelRole::Column;
  if (k == std::vector<std::string>{axis, ""}) return ParallelRole::Row;
  return ParallelRole::Replicated;
}

void Dense::set_parallel_role(ParallelRole role, const std::string& axis) {
  switch (role) {
    case ParallelRole::Replicated:
      set_partition(0, {"", ""});
      set_partition(1, {""});
      break;
    case ParallelRole::Column:
      set_partition(0, {"", axis});
      set_partition(1, {axis});
      break;
    case ParallelRole::Row:
      set_partition(0, {axis, ""});
      set_partition(1, {""});
      break;
  }
}

std::unique_ptr<Layer> Dense::shard(const std::string& axis, int parts) const {
  const ParallelRole role = parallel_role(axis);
  const auto m = static_cast<std::size_t>(parts);
  auto local = std::make_unique<Dense>(role == ParallelRole::Row ? in_ / m : in_,
                                       role == ParallelRole::Column ? out_ / m : out_,
                                       activation_);
  local->computes_as_ = role;
  for (std::size_t t = 0; t < tensors().size(); ++t) {
    local->set_partition(t, tensors()[t].partition);
  }
  return local;
}

std::vector<ShardRun> Dense::shard_runs(const std::string& axis, int parts, int rank) const {
  const ParallelRole role = parallel_role(axis);
  const auto m = static_cast<std::size_t>(parts);
  const auto r = static_cast<std::size_t>(rank);
  std::vector<ShardRun> runs;
  switch (role) {
    case ParallelRole::Replicated:
      runs.push_back({0, 0, in_ * out_ + out_, true});
      break;
    case ParallelRole::Row: {  // rows [r in/m, (r+1) in/m) of the kernel; the bias whole
      const std::size_t in = in_ / m;
      runs.push_back({r * in * out_, 0, in * out_, false});
      runs.push_back({in_ * out_, in * out_, out_, true});
      break;
    }
    case ParallelRole::Column: {  // columns [r out/m, (r+1) out/m) of every row; the bias's
      const std::size_t out = out_ / m;
      for (std::size_t i = 0; i < in_; ++i) runs.push_back({i * out_ + r * out, i * out, out, false});
      runs.push_back({in_ * out_ + r * out, in_ * out, out, false});
      break;
    }
  }
  return runs;
}

void Dense::take_shard(const float* full, float* shard, const std::string& axis, int parts,
                       int rank) const {
  const ParallelRole role = parallel_role(axis);
  const auto m = static_cast<std::size_t>(parts);
  const auto r = static_cast<std::size_t>(rank);
  const std::size_t in = role == ParallelRole::Row ? in_ / m : in_;
  const std::size_t out = role == ParallelRole::Column ? out_ / m : out_;
  for (std::size_t i = 0; i < in; ++i) {
    for (std::size_t j = 0; j < out; ++j) {
      const std::size_t fi = role == ParallelRole::Row ? r * in + i : i;
      const std::size_t fj = role == ParallelRole::Column ? r * out + j : j;
      shard[i * out + j] = full[fi * out_ + fj];
    }
  }
  const std::size_t bias_from = role == ParallelRole::Column ? r * out : 0;
  std::copy(full + in_ * out_ + bias_from, full + in_ * out_ + bias_from + out, shard + in * out);
}

void Dense::join_shards(const float* shards, float* full, const std::string& axis, int parts,
                        int rank) const {
  const ParallelRole role = parallel_role(axis);
  const auto m = static_cast<std::size_t>(parts);
  const std::size_t in = role == ParallelRole::Row ? in_ / m : in_;
  const std::size_t out = role == ParallelRole::Column ? out_ / m : out_;
  const std::size_t size = in * out + out;
  float* b = full + in_ * out_;
  for (std::size_t r = 0; r < m; ++r) {
    const float* rk = shards + r * size;
    const float* rb = rk + in * out;
    for (std::size_t i = 0; i < in; ++i) {
      for (std::size_t j = 0; j < out; ++j) {
        const std::size_t fi = role == ParallelRole::Row ? r * in + i : i;
        const std::size_t fj = role == ParallelRole::Column ? r * out + j : j;
        full[fi * out_ + fj] = rk[i * out + j];
      }
    }
    if (role == ParallelRole::Column) std::copy(rb, rb + out, b + r * out);
  }
  // A row-parallel (or replicated) layer's bias is the same on every rank.
  if (role != ParallelRole::Column) {
    const float* own = shards + static_cast<std::size_t>(rank) * size + in * out;
    std::copy(own, own + out, b);
  }
}

std::string Dense::describe() const {
  return "dense(" + std::to_string(in_) + ", " + std::to_string(out_) + ", " +
         name_of(activation_) + ")";
}

}  // namespace meshtrain
