// The direct family's inference op: BatchNorm is already folded into the spatial weights,
// so the block is relu(spatial conv) followed by a plain temporal conv. This straightforward
// version writes the activation once to a temporary (no BatchNorm pass, no separate ReLU
// pass); the residual add and the ReLU of a whole-network inference (docs/inference.md) are
// elementwise passes after it (the CPU kernel does them in its output loop).
#include "common.cuh"
#include "direct.h"
#include "launchers.h"

namespace r2p1d::cuda::direct {

using at::Tensor;

Tensor fused_eval(const Tensor& x, const Tensor& spatial_weight, const std::optional<Tensor>& spatial_bias,
                  const Tensor& temporal_weight, const std::optional<Tensor>& temporal_bias,
                  at::IntArrayRef stride, at::IntArrayRef padding, const std::optional<Tensor>& residual,
                  bool relu) {
  const auto geom = check_fused_eval(x, spatial_weight, spatial_bias, temporal_weight,
                                     temporal_bias, stride, padding);
  const SpatialGeom& g = geom.first;
  const TemporalGeom& tg = geom.second;
  check_residual(x, residual, {g.N, tg.O, tg.To, g.Ho, g.Wo});
  c10::cuda::CUDAGuard guard(x.device());
  Tensor z = at::empty({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  spatial_forward(x, spatial_weight, defined_or(spatial_bias), g, /*relu=*/true, z, nullptr,
                  nullptr);
  Tensor out = at::empty({g.N, tg.O, tg.To, g.Ho, g.Wo}, x.options());
  temporal_forward(z, Tensor(), Tensor(), Tensor(), temporal_weight, defined_or(temporal_bias), tg, out);
  add_residual_relu(out, residual, relu);
  return out;
}

}  // namespace r2p1d::cuda::direct
