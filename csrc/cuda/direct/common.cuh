// Shared CUDA helpers: accumulation type, launch geometry, block-wide reductions (plain sums
// and Welford/Chan moments). Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h,
// which needs the cuBLAS/cuSPARSE headers a minimal toolkit lacks).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "checks.h"

namespace r2p1d::cuda::direct {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// float for float/half/bfloat16, double for double.
template <typename T>
using acc_t = at::opmath_type<T>;

// Grid-stride loops: cap the grid, the loop covers the rest (64-bit indices throughout).
inline unsigned grid_for(int64_t n, int64_t cap = 1 << 16) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, cap)));
}

// Blocks per channel for the per-channel reductions (statistics, BN gradients): enough
// to fill the GPU, few enough that their partials are cheap to merge.
inline unsigned blocks_per_channel(int64_t count, int64_t channels) {
  const int64_t want = std::max<int64_t>(1, 1024 / std::max<int64_t>(1, channels));
  return static_cast<unsigned>(std::min<int64_t>(want, (count + kThreads - 1) / kThreads));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0. `shm` holds kThreads/kWarp values.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shm) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // shm may still be read from a previous call
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / kWarp ? shm[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

// Count, mean and sum of squared deviations; merged with Chan's formula, so no long sum
// of squares cancels.
template <typename T>
struct Moments {
  T n, mean, m2;
  __device__ __forceinline__ void push(T v) {
    n += T(1);
    const T d = v - mean;
    mean += d / n;
    m2 += d * (v - mean);
  }
  __device__ __forceinline__ void merge(T nb, T mean_b, T m2_b) {
    if (nb == T(0)) return;
    const T tot = n + nb, delta = mean_b - mean, w = nb / tot;
    mean += delta * w;
    m2 += m2_b + delta * delta * n * w;
    n = tot;
  }
};

template <typename T>
__device__ __forceinline__ Moments<T> warp_moments(Moments<T> a) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const T nb = __shfl_down_sync(0xffffffffu, a.n, offset);
    const T mb = __shfl_down_sync(0xffffffffu, a.mean, offset);
    const T qb = __shfl_down_sync(0xffffffffu, a.m2, offset);
    a.merge(nb, mb, qb);
  }
  return a;
}

// Block-wide merge; the result is valid in thread 0. `shm` holds 3*kThreads/kWarp values.
template <typename T>
__device__ __forceinline__ Moments<T> block_moments(Moments<T> a, T* shm) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  a = warp_moments(a);
  __syncthreads();
  if (lane == 0) {
    shm[warp] = a.n;
    shm[warps + warp] = a.mean;
    shm[2 * warps + warp] = a.m2;
  }
  __syncthreads();
  Moments<T> b{T(0), T(0), T(0)};
  if (threadIdx.x < warps) b = {shm[threadIdx.x], shm[warps + threadIdx.x], shm[2 * warps + threadIdx.x]};
  if (warp == 0) b = warp_moments(b);
  return b;
}

inline at::Tensor to_acc(const at::Tensor& t, at::ScalarType acc) {
  return t.to(acc).contiguous();
}

inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline const at::Tensor& defined_or(const std::optional<at::Tensor>& t) {
  static const at::Tensor undefined;
  return t.has_value() ? *t : undefined;
}

}  // namespace r2p1d::cuda::direct
