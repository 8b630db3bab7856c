// The r2p1d_tc_emulate ops: the five block ops computed by the tensor-core code path run on
// the CPU emulator (emulate.h), with the same schemas as the r2p1d ops plus the GPU to plan
// for (sm_count) and an optional forced tile shape (tile: -1 chosen, 0 large, 1 small).
// Test-facing: tests/test_tc_emulated.py compares them with the float64 reference, so the
// index math, prologues, epilogues and K splits of the GPU kernels are checked by CI.
// Inputs are bfloat16, float16 or float32 (TF32) CPU tensors; outputs are channels-last.
#include <torch/library.h>

#include "../tc_ops.h"
#include "emulate.h"

namespace r2p1d::emulate {
namespace {

using at::Tensor;

HostBackend backend(int64_t sm_count, int64_t tile) {
  TORCH_CHECK_VALUE(sm_count >= 1, "r2p1d: expected sm_count >= 1, got ", sm_count);
  TORCH_CHECK_VALUE(tile >= -1 && tile <= 1, "r2p1d: expected tile -1 (chosen), 0 (large) or 1 (small), got ", tile);
  return {sm_count, tile};
}

std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats(const Tensor& x, const Tensor& weight,
                                                      const std::optional<Tensor>& bias,
                                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                                      int64_t sm_count, int64_t tile) {
  auto be = backend(sm_count, tile);
  return tc_ops::spatial_conv_stats(be, x, weight, bias, stride, padding);
}

std::tuple<Tensor, Tensor, Tensor> spatial_conv_backward(
    const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& mean,
    const std::optional<Tensor>& grad_mean, const std::optional<Tensor>& grad_var,
    at::IntArrayRef stride, at::IntArrayRef padding, std::array<bool, 3> mask, int64_t sm_count,
    int64_t tile) {
  auto be = backend(sm_count, tile);
  return tc_ops::spatial_conv_backward(be, grad_y, x, weight, y, mean, grad_mean, grad_var, stride,
                                       padding, mask);
}

Tensor temporal_conv_bnrelu(const Tensor& y, const Tensor& mean, const Tensor& scale,
                            const Tensor& shift, const Tensor& weight,
                            const std::optional<Tensor>& bias, int64_t stride, int64_t padding,
                            int64_t sm_count, int64_t tile) {
  auto be = backend(sm_count, tile);
  return tc_ops::temporal_conv_bnrelu(be, y, mean, scale, shift, weight, bias, stride, padding);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> temporal_conv_bnrelu_backward(
    const Tensor& grad_out, const Tensor& y, const Tensor& mean, const Tensor& scale,
    const Tensor& shift, const Tensor& weight, int64_t stride, int64_t padding,
    std::array<bool, 6> mask, int64_t sm_count, int64_t tile) {
  auto be = backend(sm_count, tile);
  return tc_ops::temporal_conv_bnrelu_backward(be, grad_out, y, mean, scale, shift, weight, stride,
                                               padding, mask);
}

Tensor fused_eval(const Tensor& x, const Tensor& spatial_weight,
                  const std::optional<Tensor>& spatial_bias, const Tensor& temporal_weight,
                  const std::optional<Tensor>& temporal_bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, int64_t sm_count, int64_t tile) {
  auto be = backend(sm_count, tile);
  return tc_ops::fused_eval(be, x, spatial_weight, spatial_bias, temporal_weight, temporal_bias,
                            stride, padding);
}

}  // namespace

// The plan arguments every emulated op takes after the r2p1d op's own.
#define PLAN_ARGS ", int sm_count=132, int tile=-1"

TORCH_LIBRARY(r2p1d_tc_emulate, m) {
  m.def("spatial_conv_stats(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding"
        PLAN_ARGS ") -> (Tensor y, Tensor mean, Tensor var)");
  m.def("spatial_conv_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor y, Tensor mean,"
        " Tensor? grad_mean, Tensor? grad_var, int[2] stride, int[2] padding, bool[3] output_mask"
        PLAN_ARGS ") -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def("temporal_conv_bnrelu(Tensor y, Tensor mean, Tensor scale, Tensor shift, Tensor weight,"
        " Tensor? bias, int stride, int padding" PLAN_ARGS ") -> Tensor");
  m.def("temporal_conv_bnrelu_backward(Tensor grad_out, Tensor y, Tensor mean, Tensor scale,"
        " Tensor shift, Tensor weight, int stride, int padding, bool[6] output_mask" PLAN_ARGS
        ") -> (Tensor grad_y, Tensor grad_mean, Tensor grad_scale, Tensor grad_shift,"
        " Tensor grad_weight, Tensor grad_bias)");
  m.def("fused_eval(Tensor x, Tensor spatial_weight, Tensor? spatial_bias, Tensor temporal_weight,"
        " Tensor? temporal_bias, int[3] stride, int[3] padding" PLAN_ARGS ") -> Tensor");
}

TORCH_LIBRARY_IMPL(r2p1d_tc_emulate, CPU, m) {
  m.impl("spatial_conv_stats", &spatial_conv_stats);
  m.impl("spatial_conv_backward", &spatial_conv_backward);
  m.impl("temporal_conv_bnrelu", &temporal_conv_bnrelu);
  m.impl("temporal_conv_bnrelu_backward", &temporal_conv_bnrelu_backward);
  m.impl("fused_eval", &fused_eval);
}

}  // namespace r2p1d::emulate
