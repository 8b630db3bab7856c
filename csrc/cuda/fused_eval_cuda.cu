// CUDA inference path: BatchNorm is already folded into the spatial weights, so the block
// is relu(spatial conv) followed by a plain temporal conv. This straightforward version
// writes the activation once to a temporary (no BatchNorm pass, no separate ReLU pass);
// the back-to-back kernel that keeps it on chip belongs to the GPU speed issue.
#include <torch/library.h>

#include "common.cuh"
#include "launchers.h"
#include "tc_ops_cuda.h"

namespace r2p1d::cuda {
namespace {

using at::Tensor;

Tensor direct_fused_eval(const Tensor& x, const Tensor& spatial_weight,
                         const std::optional<Tensor>& spatial_bias, const Tensor& temporal_weight,
                         const std::optional<Tensor>& temporal_bias, const SpatialGeom& g,
                         const TemporalGeom& tg) {
  c10::cuda::CUDAGuard guard(x.device());
  Tensor z = at::empty({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  spatial_forward(x, spatial_weight, defined_or(spatial_bias), g, /*relu=*/true, z, nullptr,
                  nullptr);
  Tensor out = at::empty({g.N, tg.O, tg.To, g.Ho, g.Wo}, x.options());
  temporal_forward(z, Tensor(), Tensor(), Tensor(), temporal_weight, defined_or(temporal_bias), tg, out);
  return as_channels_last(out);
}

Tensor fused_eval_cuda(const Tensor& x, const Tensor& spatial_weight,
                       const std::optional<Tensor>& spatial_bias, const Tensor& temporal_weight,
                       const std::optional<Tensor>& temporal_bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, const std::optional<Tensor>& residual, bool relu) {
  const auto geom = check_fused_eval(x, spatial_weight, spatial_bias, temporal_weight,
                                     temporal_bias, stride, padding);
  const SpatialGeom& g = geom.first;
  const TemporalGeom& tg = geom.second;
  check_residual(x, residual, {g.N, tg.O, tg.To, g.Ho, g.Wo});
  Tensor out = use_tensor_cores(x.scalar_type(), x.device())
                   ? tc_fused_eval(x, spatial_weight, spatial_bias, temporal_weight, temporal_bias,
                                   stride, padding)
                   : direct_fused_eval(x, spatial_weight, spatial_bias, temporal_weight,
                                       temporal_bias, g, tg);
  // The residual add and ReLU of a whole-network inference (docs/inference.md): separate
  // elementwise passes on the GPU for now; the CPU kernel does them in its output loop.
  if (residual.has_value() && residual->defined()) out.add_(*residual);
  if (relu) out.relu_();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CUDA, m) { m.impl("fused_eval", &fused_eval_cuda); }

}  // namespace r2p1d::cuda
