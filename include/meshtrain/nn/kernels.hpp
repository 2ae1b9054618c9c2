#pragma once
// The model's kernels, one Kokkos kernel (or one gemm) each. Shapes: x (n x in),
// kernel W (in x out), bias b (out), y and dy (n x out).
#include <cstddef>
#include <string>

#include "meshtrain/choices.hpp"  // Activation, parse_activation, name_of
#include "meshtrain/nn/types.hpp"

namespace meshtrain {

// How a gemm computes. Fp32: an fp32 gemm. Bf16 (training.compute_dtype = "bf16"): both
// operands rounded to bf16 (nearest even) and the products summed in fp32, which is what
// cuBLAS's bf16 GEMM with fp32 accumulation computes; the output stays fp32. Here the rounded
// operands are written to `scratch` (gemm_scratch_floats of the gemm) and go through the fp32
// gemm: a product of two bf16 values is exact in fp32, so only the order of the fp32 sums can
// differ from a bf16 GEMM.
struct GemmPrecision {
  Dtype dtype = Dtype::Fp32;
  float* scratch = nullptr;  // needed for Bf16
};
// The scratch a Bf16 gemm of operands with a and b elements needs (0 for Fp32).
inline std::size_t gemm_scratch_floats(Dtype dtype, std::size_t a, std::size_t b) {
  return dtype == Dtype::Bf16 ? a + b : 0;
}

// y = act(x W + b): one gemm, then bias and activation fused in one kernel.
void linear_forward(ConstMatrixRef x, ConstMatrixRef w, ConstVectorRef b, MatrixRef y,
                    Activation activation, const GemmPrecision& precision = {});

// y = x W: one gemm.
void matmul(ConstMatrixRef x, ConstMatrixRef w, MatrixRef y, const GemmPrecision& precision = {});

// y = act(y + b) in place: the second half of linear_forward, for a row-parallel layer whose
// gemm result must be summed across ranks before the bias and activation.
void bias_activation(MatrixRef y, ConstVectorRef b, Activation activation);

// y += x W: one gemm, adding to what y holds (a second path into the same output).
void matmul_add(ConstMatrixRef x, ConstMatrixRef w, MatrixRef y);

// y = act(z), elementwise (z and y may be the same view).
void activation_forward(ConstMatrixRef z, MatrixRef y, Activation activation);

// Whether act'(z) must be taken from the pre-activation z: GELU's derivative cannot be
// recovered from its output (it is not monotonic), unlike those of relu, tanh and identity.
constexpr bool needs_preactivation(Activation activation) { return activation == Activation::Gelu; }

// dy <- dy * act'(.) in place, with the derivative taken from the activation's output y.
// Throws std::logic_error for an activation that needs_preactivation.
void activation_backward(ConstMatrixRef y, MatrixRef dy, Activation activation);

// dy <- dy * act'(z) in place, with the derivative taken from the pre-activation z.
void activation_backward_from_input(ConstMatrixRef z, MatrixRef dy, Activation activation);

// Given dz = dL/d(xW + b): dW = x^T dz, db = sum over rows of dz and, if dx is non-empty,
// dx = dz W^T. Overwrites dW, db and dx.
void linear_backward(ConstMatrixRef x, ConstMatrixRef w, ConstMatrixRef dz, MatrixRef dw,
                     VectorRef db, MatrixRef dx, const GemmPrecision& precision = {});

// db = sum over rows of dz (the bias gradient), one parallel reduction per block of columns.
// Each column is summed row by row in order where a team has one thread (Serial, OpenMP).
void bias_gradient(ConstMatrixRef dz, VectorRef db);

// dx = dz W^T: the part of linear_backward that the layer below needs, split out so that a
// layer's parameter gradients can be handed to the all-reduce before it runs.
void linear_backward_input(ConstMatrixRef dz, ConstMatrixRef w, MatrixRef dx,
                           const GemmPrecision& precision = {});

// dx += dz W^T: the same, adding to what dx holds.
void linear_backward_input_add(ConstMatrixRef dz, ConstMatrixRef w, MatrixRef dx);

// Mean squared error over a global batch of which (pred, target) is this rank's shard:
// dpred = 2 (pred - target) * scale and loss_out() = scale * sum (pred - target)^2, where
// scale = 1 / (global rows * columns). Summing both over the shards gives the global mean
// and its gradient. loss_out is written on the device, without a host synchronisation.
void mse_loss_grad(ConstMatrixRef pred, ConstMatrixRef target, float scale, MatrixRef dpred,
                   Kokkos::View<float, MemSpace, Unmanaged> loss_out);

// Relative L2 error over a global batch of which (pred, target) is this rank's shard: each
// sample (row) contributes scale * ||pred_i - target_i|| / ||target_i|| to loss_out() and
// dpred_i = scale * (pred_i - target_i) / (||pred_i - target_i|| ||target_i||), where
// scale = 1 / global rows (every target row must have a non-zero norm). Summing over the
// shards gives the global mean and its gradient, as for mse_loss_grad.
void relative_l2_loss_grad(ConstMatrixRef pred, ConstMatrixRef target, float scale,
                           MatrixRef dpred, Kokkos::View<float, MemSpace, Unmanaged> loss_out);

}  // namespace meshtrain
