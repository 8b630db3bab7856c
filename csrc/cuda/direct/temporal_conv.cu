// Direct CUDA kernels of the temporal (kt,1,1) convolution over relu((y-mean)*scale+shift):
// the activation is applied as y is loaded (prologue) and recomputed in backward, so it
// never exists in memory. Float (double) accumulation; speed is the tensor-core family's
// (csrc/tc/).
#include "common.cuh"
#include "direct.h"
#include "launchers.h"

namespace r2p1d::cuda::direct {
namespace {

using at::Tensor;

struct TDims {
  int64_t N, M, T, HW, O, kt, st, pt, To;
};

TDims dims_of(const TemporalGeom& g) {
  return {g.N, g.M, g.T, g.HW, g.O, g.kt, g.st, g.pt, g.To};
}

// The per-channel BatchNorm vectors in the accumulation type.
template <typename acc>
struct Bn {
  const acc *mean, *scale, *shift;
  __device__ __forceinline__ acc pre(acc v, int64_t m) const { return (v - mean[m]) * scale[m] + shift[m]; }
  __device__ __forceinline__ acc act(acc v, int64_t m) const {
    const acc p = pre(v, m);
    return p > acc(0) ? p : acc(0);
  }
};

// One thread per output value (n, o, to, hw).
template <typename scalar_t, bool kBN>
__global__ void temporal_forward_kernel(const scalar_t* __restrict__ y, Bn<acc_t<scalar_t>> bn,
                                        const scalar_t* __restrict__ w,
                                        const scalar_t* __restrict__ bias,
                                        scalar_t* __restrict__ out, TDims d) {
  using acc = acc_t<scalar_t>;
  const int64_t total = d.N * d.O * d.To * d.HW;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t hw = idx % d.HW, to = (idx / d.HW) % d.To, o = (idx / (d.HW * d.To)) % d.O;
    const int64_t n = idx / (d.HW * d.To * d.O);
    acc v = bias ? static_cast<acc>(bias[o]) : acc(0);
    for (int64_t k = 0; k < d.kt; ++k) {
      const int64_t ti = to * d.st - d.pt + k;
      if (ti < 0 || ti >= d.T) continue;  // zero padding of the activation
      for (int64_t m = 0; m < d.M; ++m) {
        acc z = static_cast<acc>(y[((n * d.M + m) * d.T + ti) * d.HW + hw]);
        if (kBN) z = bn.act(z, m);
        v += static_cast<acc>(w[(o * d.M + m) * d.kt + k]) * z;
      }
    }
    out[idx] = static_cast<scalar_t>(v);
  }
}

// grid (blocks_x, M): thread per intermediate value of channel m. Computes the gradient
// reaching z (a sum over taps and output channels), masks it by relu', writes grad_y, and
// merges sum(gpre*(y-mean)) and sum(gpre) per block for the BatchNorm vectors' gradients.
template <typename scalar_t>
__global__ void temporal_grad_y_kernel(const scalar_t* __restrict__ go,
                                       const scalar_t* __restrict__ y, Bn<acc_t<scalar_t>> bn,
                                       const scalar_t* __restrict__ w, scalar_t* __restrict__ gy,
                                       acc_t<scalar_t>* __restrict__ partials, TDims d) {
  using acc = acc_t<scalar_t>;
  __shared__ acc shm[kThreads / kWarp];
  const int64_t m = blockIdx.y, count = d.N * d.T * d.HW;
  acc s_scale = 0, s_shift = 0;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < count;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t hw = p % d.HW, ti = (p / d.HW) % d.T, n = p / (d.HW * d.T);
    acc gz = 0;
    for (int64_t k = 0; k < d.kt; ++k) {
      const int64_t num = ti + d.pt - k;
      if (num < 0 || num % d.st != 0 || num / d.st >= d.To) continue;
      const int64_t to = num / d.st;
      for (int64_t o = 0; o < d.O; ++o)
        gz += static_cast<acc>(w[(o * d.M + m) * d.kt + k]) *
              static_cast<acc>(go[((n * d.O + o) * d.To + to) * d.HW + hw]);
    }
    const int64_t yi = ((n * d.M + m) * d.T + ti) * d.HW + hw;
    const acc yv = static_cast<acc>(y[yi]);
    const acc gpre = bn.pre(yv, m) > acc(0) ? gz : acc(0);
    if (gy) gy[yi] = static_cast<scalar_t>(gpre * bn.scale[m]);
    s_scale += gpre * (yv - bn.mean[m]);
    s_shift += gpre;
  }
  s_scale = block_sum(s_scale, shm);
  s_shift = block_sum(s_shift, shm);
  if (threadIdx.x == 0) {
    partials[2 * (m * gridDim.x + blockIdx.x)] = s_scale;
    partials[2 * (m * gridDim.x + blockIdx.x) + 1] = s_shift;
  }
}

// One block per channel: sum its per-block partials in a fixed order;
// grad_mean = -scale * grad_shift.
template <typename acc>
__global__ void finalize_bn_grad_kernel(const acc* __restrict__ partials, int64_t blocks,
                                        const acc* __restrict__ scale, acc* __restrict__ grad_mean,
                                        acc* __restrict__ grad_scale, acc* __restrict__ grad_shift) {
  __shared__ acc shm[kThreads / kWarp];
  const int64_t m = blockIdx.x;
  acc a = 0, b = 0;
  for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x) {
    a += partials[2 * (m * blocks + i)];
    b += partials[2 * (m * blocks + i) + 1];
  }
  a = block_sum(a, shm);
  b = block_sum(b, shm);
  if (threadIdx.x == 0) {
    if (grad_mean) grad_mean[m] = -scale[m] * b;
    if (grad_scale) grad_scale[m] = a;
    if (grad_shift) grad_shift[m] = b;
  }
}

// One block per weight value (o, m, k), reducing over output positions with the activation
// recomputed from y; block (o, M*kt) computes the bias gradient of channel o.
template <typename scalar_t>
__global__ void temporal_grad_weight_kernel(const scalar_t* __restrict__ go,
                                            const scalar_t* __restrict__ y, Bn<acc_t<scalar_t>> bn,
                                            scalar_t* __restrict__ gw, scalar_t* __restrict__ gb,
                                            TDims d) {
  using acc = acc_t<scalar_t>;
  __shared__ acc shm[kThreads / kWarp];
  const int64_t per_o = d.M * d.kt + 1;
  const int64_t o = blockIdx.x / per_o, r = blockIdx.x % per_o;
  const bool is_bias = r == d.M * d.kt;
  const int64_t m = r / d.kt, k = r % d.kt;
  const int64_t count = d.N * d.To * d.HW;
  acc v = 0;
  for (int64_t p = threadIdx.x; p < count; p += blockDim.x) {
    const int64_t hw = p % d.HW, to = (p / d.HW) % d.To, n = p / (d.HW * d.To);
    const acc g = static_cast<acc>(go[((n * d.O + o) * d.To + to) * d.HW + hw]);
    if (is_bias) {
      v += g;
      continue;
    }
    const int64_t ti = to * d.st - d.pt + k;
    if (ti < 0 || ti >= d.T) continue;
    v += g * bn.act(static_cast<acc>(y[((n * d.M + m) * d.T + ti) * d.HW + hw]), m);
  }
  v = block_sum(v, shm);
  if (threadIdx.x != 0) return;
  if (is_bias) {
    if (gb) gb[o] = static_cast<scalar_t>(v);
  } else if (gw) {
    gw[(o * d.M + m) * d.kt + k] = static_cast<scalar_t>(v);
  }
}

}  // namespace

Tensor temporal_conv_bnrelu(const Tensor& y, const Tensor& mean, const Tensor& scale,
                            const Tensor& shift, const Tensor& weight,
                            const std::optional<Tensor>& bias, int64_t stride, int64_t padding) {
  const TemporalGeom g = check_temporal(y, mean, scale, shift, weight, bias, stride, padding);
  c10::cuda::CUDAGuard guard(y.device());
  Tensor out = at::empty({g.N, g.O, g.To, y.size(3), y.size(4)}, y.options());
  temporal_forward(y, mean, scale, shift, weight, defined_or(bias), g, out);
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> temporal_conv_bnrelu_backward(
    const Tensor& grad_out, const Tensor& y, const Tensor& mean, const Tensor& scale,
    const Tensor& shift, const Tensor& weight, int64_t stride, int64_t padding,
    std::array<bool, 6> mask) {
  const TemporalGeom g = check_temporal_backward(grad_out, y, mean, scale, shift, weight, stride,
                                                 padding);
  c10::cuda::CUDAGuard guard(y.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor go = grad_out.contiguous(), yc = y.contiguous(), wc = weight.contiguous();
  const auto acc_dt = acc_type_of(y.scalar_type());
  const Tensor mu = to_acc(mean, acc_dt), sc = to_acc(scale, acc_dt), sh = to_acc(shift, acc_dt);
  Tensor grad_y = mask[0] ? at::empty_like(yc) : Tensor();
  Tensor grad_mean = mask[1] ? at::empty({g.M}, y.options().dtype(acc_dt)) : Tensor();
  Tensor grad_scale = mask[2] ? at::empty({g.M}, y.options().dtype(acc_dt)) : Tensor();
  Tensor grad_shift = mask[3] ? at::empty({g.M}, y.options().dtype(acc_dt)) : Tensor();
  Tensor grad_w = mask[4] ? at::empty_like(wc) : Tensor();
  Tensor grad_b = mask[5] ? at::empty({g.O}, y.options()) : Tensor();
  const TDims d = dims_of(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(),
                                  "temporal_conv_bnrelu_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const Bn<acc> bn{mu.data_ptr<acc>(), sc.data_ptr<acc>(), sh.data_ptr<acc>()};
    if (mask[0] || mask[1] || mask[2] || mask[3]) {
      const unsigned bx = blocks_per_channel(g.N * g.T * g.HW, g.M);
      Tensor partials = at::empty({g.M, bx, 2}, y.options().dtype(acc_dt));
      temporal_grad_y_kernel<scalar_t><<<dim3(bx, g.M), kThreads, 0, stream>>>(
          go.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(), bn, wc.data_ptr<scalar_t>(),
          mask[0] ? grad_y.data_ptr<scalar_t>() : nullptr, partials.data_ptr<acc>(), d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      finalize_bn_grad_kernel<acc><<<g.M, kThreads, 0, stream>>>(
          partials.data_ptr<acc>(), bx, bn.scale, mask[1] ? grad_mean.data_ptr<acc>() : nullptr,
          mask[2] ? grad_scale.data_ptr<acc>() : nullptr,
          mask[3] ? grad_shift.data_ptr<acc>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (mask[4] || mask[5]) {
      temporal_grad_weight_kernel<scalar_t><<<g.O * (g.M * g.kt + 1), kThreads, 0, stream>>>(
          go.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(), bn,
          mask[4] ? grad_w.data_ptr<scalar_t>() : nullptr,
          mask[5] ? grad_b.data_ptr<scalar_t>() : nullptr, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (mask[1]) grad_mean = grad_mean.to(mean.scalar_type());
  if (mask[2]) grad_scale = grad_scale.to(scale.scalar_type());
  if (mask[3]) grad_shift = grad_shift.to(shift.scalar_type());
  return {grad_y, grad_mean, grad_scale, grad_shift, grad_w, grad_b};
}

void temporal_forward(const Tensor& y, const Tensor& mean, const Tensor& scale,
                      const Tensor& shift, const Tensor& weight, const Tensor& bias,
                      const TemporalGeom& g, Tensor& out) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor yc = y.contiguous(), wc = weight.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  const bool bn = scale.defined();
  const auto acc_dt = acc_type_of(y.scalar_type());
  const Tensor mu = bn ? to_acc(mean, acc_dt) : Tensor();
  const Tensor sc = bn ? to_acc(scale, acc_dt) : Tensor(), sh = bn ? to_acc(shift, acc_dt) : Tensor();
  const TDims d = dims_of(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "temporal_forward", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* bp = bc.defined() ? bc.data_ptr<scalar_t>() : nullptr;
    const Bn<acc> vecs{bn ? mu.data_ptr<acc>() : nullptr, bn ? sc.data_ptr<acc>() : nullptr,
                       bn ? sh.data_ptr<acc>() : nullptr};
    auto kernel = bn ? temporal_forward_kernel<scalar_t, true> : temporal_forward_kernel<scalar_t, false>;
    kernel<<<grid_for(out.numel()), kThreads, 0, stream>>>(yc.data_ptr<scalar_t>(), vecs,
                                                         wc.data_ptr<scalar_t>(), bp,
                                                         out.data_ptr<scalar_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace r2p1d::cuda::direct
