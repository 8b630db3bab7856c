// normalize_clips on CUDA: one elementwise pass from the uint8 NTHWC batch (as the loader
// pinned and copied it) to the network's dtype, channels_last_3d. Four bytes per thread and
// step (a 32-bit load) where the input is 4-byte aligned, which cudaMalloc'd tensors are.
#include <cstdint>

#include "common.cuh"
#include "direct.h"
#include "normalize_clips.h"

namespace r2p1d::cuda::direct {
namespace {

using data::ClipConstants;

template <typename scalar_t>
__device__ __forceinline__ void store(scalar_t* dst, int64_t i, uint8_t x, const ClipConstants& k) {
  const int64_t j = i % k.channels;
  dst[i] = static_cast<scalar_t>((static_cast<float>(x) - k.mean255[j]) / k.std255[j]);
}

template <typename scalar_t>
__global__ void normalize_clips_kernel(const uint8_t* __restrict__ src, scalar_t* __restrict__ dst, int64_t n,
                                       ClipConstants k) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t words = n / 4;
  const uchar4* src4 = reinterpret_cast<const uchar4*>(src);
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < words; w += stride) {
    const uchar4 v = src4[w];
    store(dst, 4 * w, v.x, k);
    store(dst, 4 * w + 1, v.y, k);
    store(dst, 4 * w + 2, v.z, k);
    store(dst, 4 * w + 3, v.w, k);
  }
  for (int64_t i = 4 * words + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    store(dst, i, src[i], k);
}

}  // namespace

at::Tensor normalize_clips(const at::Tensor& clips, at::ArrayRef<double> mean, at::ArrayRef<double> std,
                                at::ScalarType dtype) {
  const ClipConstants k = data::check_normalize_clips(clips, mean, std, dtype);
  c10::cuda::CUDAGuard guard(clips.device());
  at::Tensor in = clips.contiguous();
  if (reinterpret_cast<uintptr_t>(in.data_ptr()) % 4 != 0) in = in.clone();  // a view at an odd offset
  at::Tensor out = data::empty_normalized(in, dtype);
  const int64_t n = in.numel();
  if (n == 0) return out;
  const unsigned blocks = grid_for(n / 4 + 1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "normalize_clips_cuda", [&] {
    normalize_clips_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(in.data_ptr<uint8_t>(),
                                                                       out.data_ptr<scalar_t>(), n, k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace r2p1d::cuda::direct
