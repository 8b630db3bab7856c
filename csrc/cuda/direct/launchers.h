// Host-side launchers shared between the direct kernels' files (fused_eval reuses the
// forward kernels).
#pragma once
#include <ATen/core/Tensor.h>

#include "checks.h"

namespace r2p1d::cuda::direct {

// y = conv(x, w, b) as a (1,kh,kw) convolution, ReLU applied when `relu`; with `stats`,
// also the per-channel batch mean and biased variance of y (returned in mean/var).
void spatial_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                     const SpatialGeom& g, bool relu, at::Tensor& y, at::Tensor* mean,
                     at::Tensor* var);

// out = conv(act(y), w, b) as a (kt,1,1) convolution, act = relu((y-mean)*scale+shift)
// when scale is defined and the identity otherwise; zero padding in activation space.
void temporal_forward(const at::Tensor& y, const at::Tensor& mean, const at::Tensor& scale,
                      const at::Tensor& shift, const at::Tensor& weight, const at::Tensor& bias, const TemporalGeom& g,
                      at::Tensor& out);

}  // namespace r2p1d::cuda::direct
