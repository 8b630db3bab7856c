// The bfloat16 CPU kernels of the block's ops (bfloat16 tensors in and out, float32
// accumulation on the CPU's bfloat16 units: gemm.h). The ops' CPU entry points
// (csrc/cpu/*_cpu.cpp) send bfloat16 input here when path() is not kFloat32; the
// arguments are the ops' own, already checked.
#pragma once
#include <ATen/ATen.h>

#include "checks.h"
#include "cpu/bf16/path.h"

namespace r2p1d::cpu::bf16 {

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_conv_stats(
    Path path, const SpatialGeom& g, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias);

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_conv_backward(
    Path path, const SpatialGeom& g, const at::Tensor& grad_y, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& y, const at::Tensor& mean,
    const std::optional<at::Tensor>& grad_mean, const std::optional<at::Tensor>& grad_var,
    std::array<bool, 3> mask);

at::Tensor temporal_conv_bnrelu(Path path, const TemporalGeom& g, const at::Tensor& y,
                                const at::Tensor& mean, const at::Tensor& scale,
                                const at::Tensor& shift, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
temporal_conv_bnrelu_backward(Path path, const TemporalGeom& g, const at::Tensor& grad_out,
                              const at::Tensor& y, const at::Tensor& mean,
                              const at::Tensor& scale, const at::Tensor& shift,
                              const at::Tensor& weight, std::array<bool, 6> mask);

at::Tensor fused_eval(Path path, const SpatialGeom& g, const TemporalGeom& tg, const at::Tensor& x,
                      const at::Tensor& spatial_weight, const std::optional<at::Tensor>& spatial_bias,
                      const at::Tensor& temporal_weight,
                      const std::optional<at::Tensor>& temporal_bias,
                      const std::optional<at::Tensor>& residual, bool relu);

// Whether an op on x takes these kernels: x is bfloat16 and path() (set into `chosen`) is
// not kFloat32. Otherwise a bfloat16 op runs the float32 kernels on converted copies (the
// module says so once per process: r2p1d_ext/module.py).
inline bool takes_bf16_kernels(const at::Tensor& x, Path& chosen) {
  if (x.scalar_type() != at::kBFloat16) return false;
  chosen = path();
  return chosen != Path::kFloat32;
}

}  // namespace r2p1d::cpu::bf16
