// The r2p1d_tc_emulate ops: the five block ops computed by the tensor-core code path run on
// the CPU emulator (emulate.h), with the r2p1d ops' schemas (csrc/schemas.h) plus the GPU
// to plan for (sm_count) and an optional forced tile shape (tile: -1 chosen, 0 large, 1
// small). Test-facing: tests/test_tc_emulated.py compares them with the float64 reference,
// so the index math, prologues, epilogues and K splits of the GPU kernels are checked by CI.
// Inputs are bfloat16, float16 or float32 (TF32) CPU tensors; outputs are channels-last.
#include <torch/library.h>

#include "emulate.h"
#include "schemas.h"
#include "tc_ops.h"

namespace r2p1d::emulate {
namespace {

using at::Tensor;

HostBackend backend(int64_t sm_count, int64_t tile) {
  TORCH_CHECK_VALUE(sm_count >= 1, "r2p1d: expected sm_count >= 1, got ", sm_count);
  const int most = std::max(tc::kPixelTiles, tc::kWgradTiles);
  TORCH_CHECK_VALUE(tile >= -1 && tile < most, "r2p1d: expected tile -1 (chosen) or a tile index 0-", most - 1,
                    " (0: 128x128, 1: 64x64; csrc/tc/plan.h), got ", tile);
  return {sm_count, tile};
}

// The five block ops on the emulator: plan arguments in, the tensor-core ops of tc_ops.h on
// the host backend.
struct Emulated {
  static std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats(
      const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, at::IntArrayRef stride,
      at::IntArrayRef padding, int64_t sm_count, int64_t tile) {
    auto be = backend(sm_count, tile);
    return tc_ops::spatial_conv_stats(be, x, weight, bias, stride, padding);
  }

  static std::tuple<Tensor, Tensor, Tensor> spatial_conv_backward(
      const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& mean,
      const std::optional<Tensor>& grad_mean, const std::optional<Tensor>& grad_var, at::IntArrayRef stride,
      at::IntArrayRef padding, std::array<bool, 3> mask, int64_t sm_count, int64_t tile) {
    auto be = backend(sm_count, tile);
    return tc_ops::spatial_conv_backward(be, grad_y, x, weight, y, mean, grad_mean, grad_var, stride,
                                         padding, mask);
  }

  static Tensor temporal_conv_bnrelu(const Tensor& y, const Tensor& mean, const Tensor& scale,
                                     const Tensor& shift, const Tensor& weight,
                                     const std::optional<Tensor>& bias, int64_t stride, int64_t padding,
                                     int64_t sm_count, int64_t tile) {
    auto be = backend(sm_count, tile);
    return tc_ops::temporal_conv_bnrelu(be, y, mean, scale, shift, weight, bias, stride, padding);
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> temporal_conv_bnrelu_backward(
      const Tensor& grad_out, const Tensor& y, const Tensor& mean, const Tensor& scale, const Tensor& shift,
      const Tensor& weight, int64_t stride, int64_t padding, std::array<bool, 6> mask, int64_t sm_count,
      int64_t tile) {
    auto be = backend(sm_count, tile);
    return tc_ops::temporal_conv_bnrelu_backward(be, grad_out, y, mean, scale, shift, weight, stride,
                                                 padding, mask);
  }

  static Tensor fused_eval(const Tensor& x, const Tensor& spatial_weight,
                           const std::optional<Tensor>& spatial_bias, const Tensor& temporal_weight,
                           const std::optional<Tensor>& temporal_bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, const std::optional<Tensor>& residual, bool relu,
                           int64_t sm_count, int64_t tile) {
    auto be = backend(sm_count, tile);
    return tc_ops::fused_eval(be, x, spatial_weight, spatial_bias, temporal_weight, temporal_bias, stride,
                              padding, residual, relu);
  }
};

}  // namespace

TORCH_LIBRARY(r2p1d_tc_emulate, m) {
  // The plan arguments every emulated op takes after the r2p1d op's own.
  for (const auto& op : schemas::kBlockOps)
    m.def(torch::schema(schemas::text(op, ", int sm_count=132, int tile=-1").c_str()));
}

TORCH_LIBRARY_IMPL(r2p1d_tc_emulate, CPU, m) { schemas::impl_block_ops<Emulated>(m); }

// The counts (counters.h) of every launch run with R2P1D_EMULATOR_COUNTERS=on since the last
// call, as a JSON list; for bench/tc_report.py.
TORCH_LIBRARY_FRAGMENT(r2p1d_tc_emulate, m) {
  m.def("counters() -> str", [] { return CountRegistry::get().take(); });
}

}  // namespace r2p1d::emulate
