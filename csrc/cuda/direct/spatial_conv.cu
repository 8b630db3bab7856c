// Direct CUDA kernels of the spatial (1,kh,kw) convolution: one thread per output value,
// accumulating in float (double for double). The forward kernel's epilogue adds the bias
// and merges the BatchNorm statistics of its values (Welford per thread, Chan across
// threads and blocks), so y is written once and never re-read for statistics.
// Straightforward by design: speed is the tensor-core family's (csrc/tc/).
#include "common.cuh"
#include "direct.h"
#include "launchers.h"

namespace r2p1d::cuda::direct {
namespace {

using at::Tensor;

struct Dims {
  int64_t N, C, T, H, W, M, kh, kw, sh, sw, ph, pw, Ho, Wo;
};

Dims dims_of(const SpatialGeom& g) {
  return {g.N, g.C, g.T, g.H, g.W, g.M, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.Ho, g.Wo};
}

// grid (blocks_x, M): block column m computes channel m of y at positions p (n, t, oh, ow).
template <typename scalar_t, bool kStats, bool kRelu>
__global__ void spatial_forward_kernel(const scalar_t* __restrict__ x,
                                       const scalar_t* __restrict__ w,
                                       const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
                                       acc_t<scalar_t>* __restrict__ partials, Dims d) {
  using acc = acc_t<scalar_t>;
  __shared__ acc shm[3 * kThreads / kWarp];
  const int64_t m = blockIdx.y;
  const int64_t plane = d.Ho * d.Wo, count = d.N * d.T * plane;
  const scalar_t* wm = w + m * d.C * d.kh * d.kw;
  const acc b = bias ? static_cast<acc>(bias[m]) : acc(0);
  Moments<acc> mom{acc(0), acc(0), acc(0)};
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < count;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = p % d.Wo, oh = (p / d.Wo) % d.Ho, t = (p / plane) % d.T, n = p / (plane * d.T);
    acc v = b;
    for (int64_t c = 0; c < d.C; ++c) {
      const scalar_t* xc = x + ((n * d.C + c) * d.T + t) * d.H * d.W;
      const scalar_t* wc = wm + c * d.kh * d.kw;
      for (int64_t i = 0; i < d.kh; ++i) {
        const int64_t ih = oh * d.sh - d.ph + i;
        if (ih < 0 || ih >= d.H) continue;
        for (int64_t j = 0; j < d.kw; ++j) {
          const int64_t iw = ow * d.sw - d.pw + j;
          if (iw < 0 || iw >= d.W) continue;
          v += static_cast<acc>(wc[i * d.kw + j]) * static_cast<acc>(xc[ih * d.W + iw]);
        }
      }
    }
    if (kRelu) v = v > acc(0) ? v : acc(0);
    const scalar_t stored = static_cast<scalar_t>(v);
    y[((n * d.M + m) * d.T + t) * plane + oh * d.Wo + ow] = stored;
    // The statistics of the stored (for bf16/fp16, rounded) y, which the temporal op normalises.
    if (kStats) mom.push(static_cast<acc>(stored));
  }
  if (kStats) {
    mom = block_moments(mom, shm);
    if (threadIdx.x == 0) {
      acc* out = partials + 3 * (m * gridDim.x + blockIdx.x);
      out[0] = mom.n; out[1] = mom.mean; out[2] = mom.m2;
    }
  }
}

// One block per channel: merge that channel's per-block moments in a fixed order.
template <typename acc, typename stat_t>
__global__ void finalize_stats_kernel(const acc* __restrict__ partials, int64_t blocks,
                                      stat_t* __restrict__ mean, stat_t* __restrict__ var) {
  __shared__ double shm[3 * kThreads / kWarp];
  const int64_t m = blockIdx.x;
  Moments<double> mom{0, 0, 0};
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
    const acc* p = partials + 3 * (m * blocks + b);
    mom.merge(p[0], p[1], p[2]);
  }
  mom = block_moments(mom, shm);
  if (threadIdx.x == 0) {
    mean[m] = static_cast<stat_t>(mom.mean);
    var[m] = static_cast<stat_t>(mom.m2 / mom.n);
  }
}

// The gradient reaching y: grad_y plus the statistics' share (see spatial_conv_backward);
// grad_y alone when there is none (ca == nullptr).
template <typename scalar_t, typename acc>
__device__ __forceinline__ acc total_grad(const scalar_t* gy, const scalar_t* y, int64_t idx,
                                          int64_t m, const acc* ca, const acc* cb, const acc* mu) {
  const acc g = static_cast<acc>(gy[idx]);
  return ca ? g + ca[m] + cb[m] * (static_cast<acc>(y[idx]) - mu[m]) : g;
}

// One thread per input value: gather every output position whose window covers it.
template <typename scalar_t>
__global__ void spatial_grad_input_kernel(const scalar_t* __restrict__ gy,
                                          const scalar_t* __restrict__ y,
                                          const scalar_t* __restrict__ w,
                                          const acc_t<scalar_t>* __restrict__ ca,
                                          const acc_t<scalar_t>* __restrict__ cb,
                                          const acc_t<scalar_t>* __restrict__ mu,
                                          scalar_t* __restrict__ gx, Dims d) {
  using acc = acc_t<scalar_t>;
  const int64_t total = d.N * d.C * d.T * d.H * d.W, plane = d.Ho * d.Wo;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = idx % d.W, ih = (idx / d.W) % d.H, t = (idx / (d.H * d.W)) % d.T;
    const int64_t c = (idx / (d.T * d.H * d.W)) % d.C, n = idx / (d.C * d.T * d.H * d.W);
    acc v = 0;
    for (int64_t i = 0; i < d.kh; ++i) {
      const int64_t oh_num = ih + d.ph - i;
      if (oh_num < 0 || oh_num % d.sh != 0 || oh_num / d.sh >= d.Ho) continue;
      const int64_t oh = oh_num / d.sh;
      for (int64_t j = 0; j < d.kw; ++j) {
        const int64_t ow_num = iw + d.pw - j;
        if (ow_num < 0 || ow_num % d.sw != 0 || ow_num / d.sw >= d.Wo) continue;
        const int64_t ow = ow_num / d.sw;
        for (int64_t m = 0; m < d.M; ++m) {
          const int64_t yi = ((n * d.M + m) * d.T + t) * plane + oh * d.Wo + ow;
          v += static_cast<acc>(w[((m * d.C + c) * d.kh + i) * d.kw + j]) *
               total_grad(gy, y, yi, m, ca, cb, mu);
        }
      }
    }
    gx[idx] = static_cast<scalar_t>(v);
  }
}

// One block per weight value (m, c, i, j), reducing over every output position; with
// c == C (an extra block column) the block computes the bias gradient of channel m.
template <typename scalar_t>
__global__ void spatial_grad_weight_kernel(const scalar_t* __restrict__ gy,
                                           const scalar_t* __restrict__ y,
                                           const scalar_t* __restrict__ x,
                                           const acc_t<scalar_t>* __restrict__ ca,
                                           const acc_t<scalar_t>* __restrict__ cb,
                                           const acc_t<scalar_t>* __restrict__ mu,
                                           scalar_t* __restrict__ gw, scalar_t* __restrict__ gb,
                                           Dims d) {
  using acc = acc_t<scalar_t>;
  __shared__ acc shm[kThreads / kWarp];
  const int64_t taps = d.kh * d.kw;
  const int64_t m = blockIdx.x / (d.C * taps + 1), r = blockIdx.x % (d.C * taps + 1);
  const bool is_bias = r == d.C * taps;
  const int64_t c = r / taps, i = (r % taps) / d.kw, j = r % d.kw;
  const int64_t plane = d.Ho * d.Wo, count = d.N * d.T * plane;
  acc v = 0;
  for (int64_t p = threadIdx.x; p < count; p += blockDim.x) {
    const int64_t ow = p % d.Wo, oh = (p / d.Wo) % d.Ho, t = (p / plane) % d.T, n = p / (plane * d.T);
    const int64_t yi = ((n * d.M + m) * d.T + t) * plane + oh * d.Wo + ow;
    if (is_bias) {
      v += total_grad(gy, y, yi, m, ca, cb, mu);
      continue;
    }
    const int64_t ih = oh * d.sh - d.ph + i, iw = ow * d.sw - d.pw + j;
    if (ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) continue;
    v += total_grad(gy, y, yi, m, ca, cb, mu) *
         static_cast<acc>(x[(((n * d.C + c) * d.T + t) * d.H + ih) * d.W + iw]);
  }
  v = block_sum(v, shm);
  if (threadIdx.x != 0) return;
  if (is_bias) {
    if (gb) gb[m] = static_cast<scalar_t>(v);
  } else if (gw) {
    gw[((m * d.C + c) * d.kh + i) * d.kw + j] = static_cast<scalar_t>(v);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats(const Tensor& x, const Tensor& weight,
                                                      const std::optional<Tensor>& bias,
                                                      at::IntArrayRef stride, at::IntArrayRef padding) {
  const SpatialGeom g = check_spatial(x, weight, bias, stride, padding);
  c10::cuda::CUDAGuard guard(x.device());
  Tensor y = at::empty({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  Tensor mean, var;
  spatial_forward(x, weight, defined_or(bias), g, /*relu=*/false, y, &mean, &var);
  return {y, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> spatial_conv_backward(
    const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& y,
    const Tensor& mean, const std::optional<Tensor>& grad_mean,
    const std::optional<Tensor>& grad_var, at::IntArrayRef stride, at::IntArrayRef padding,
    std::array<bool, 3> mask) {
  const SpatialGeom g = check_spatial_backward(grad_y, x, weight, y, mean, grad_mean, grad_var,
                                               stride, padding);
  c10::cuda::CUDAGuard guard(x.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor xc = x.contiguous(), gyc = grad_y.contiguous(), yc = y.contiguous();
  const Tensor wc = weight.contiguous();
  const auto acc_dt = acc_type_of(x.scalar_type());
  const auto coeffs = statistics_share(grad_mean, grad_var, mean, g.count(), acc_dt);
  const Tensor &ca = coeffs.first, &cb = coeffs.second;  // undefined: no statistics' share
  const Tensor mu = to_acc(mean, acc_dt);
  Tensor grad_x = mask[0] ? at::empty_like(xc) : Tensor();
  Tensor grad_w = mask[1] ? at::empty_like(wc) : Tensor();
  Tensor grad_b = mask[2] ? at::empty({g.M}, x.options()) : Tensor();
  const Dims d = dims_of(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "spatial_conv_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc* cap = ca.defined() ? ca.data_ptr<acc>() : nullptr;
    const acc* cbp = cb.defined() ? cb.data_ptr<acc>() : nullptr;
    const acc* mup = mu.data_ptr<acc>();
    if (mask[0]) {
      spatial_grad_input_kernel<scalar_t><<<grid_for(xc.numel()), kThreads, 0, stream>>>(
          gyc.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), cap, cbp,
          mup, grad_x.data_ptr<scalar_t>(), d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (mask[1] || mask[2]) {
      const int64_t blocks = g.M * (g.C * g.kh * g.kw + 1);
      spatial_grad_weight_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          gyc.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), cap, cbp,
          mup, mask[1] ? grad_w.data_ptr<scalar_t>() : nullptr,
          mask[2] ? grad_b.data_ptr<scalar_t>() : nullptr, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_x, grad_w, grad_b};
}

void spatial_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                     const SpatialGeom& g, bool relu, Tensor& y, Tensor* mean, Tensor* var) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor xc = x.contiguous(), wc = weight.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  const bool stats = mean != nullptr;
  const auto acc_dt = acc_type_of(x.scalar_type());
  const unsigned bx = stats ? blocks_per_channel(g.count(), g.M) : grid_for(g.count(), 4096);
  Tensor partials = stats ? at::empty({g.M, bx, 3}, x.options().dtype(acc_dt)) : Tensor();
  const dim3 grid(bx, static_cast<unsigned>(g.M));
  const Dims d = dims_of(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatial_forward", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* bp = bc.defined() ? bc.data_ptr<scalar_t>() : nullptr;
    acc* pp = stats ? partials.data_ptr<acc>() : nullptr;
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(xc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), bp,
                                            y.data_ptr<scalar_t>(), pp, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (stats) {
      TORCH_INTERNAL_ASSERT(!relu);
      launch(spatial_forward_kernel<scalar_t, true, false>);
      *mean = at::empty({g.M}, x.options().dtype(acc_dt));
      *var = at::empty({g.M}, x.options().dtype(acc_dt));
      finalize_stats_kernel<acc, acc><<<g.M, kThreads, 0, stream>>>(
          pp, bx, mean->data_ptr<acc>(), var->data_ptr<acc>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else if (relu) {
      launch(spatial_forward_kernel<scalar_t, false, true>);
    } else {
      launch(spatial_forward_kernel<scalar_t, false, false>);
    }
  });
}

}  // namespace r2p1d::cuda::direct
