// CUDA kernel of the BatchNorm running-statistics update (both kernel families use it).
// num_batches_tracked is read and incremented on the device, so momentum=None (cumulative
// average) needs no host sync.
#include "common.cuh"
#include "direct.h"

namespace r2p1d::cuda::direct {
namespace {

using at::Tensor;

template <typename scalar_t>
__global__ void running_stats_kernel(scalar_t* __restrict__ rm, scalar_t* __restrict__ rv,
                                     int64_t* __restrict__ nbt, const double* __restrict__ mean,
                                     const double* __restrict__ var, int64_t channels,
                                     double unbias, double momentum, bool cumulative) {
  const int64_t old = *nbt;
  __syncthreads();  // every thread has read the old count before it changes
  if (threadIdx.x == 0) *nbt = old + 1;
  const double f = cumulative ? 1.0 / static_cast<double>(old + 1) : momentum;
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    rm[c] = static_cast<scalar_t>((1 - f) * static_cast<double>(rm[c]) + f * mean[c]);
    rv[c] = static_cast<scalar_t>((1 - f) * static_cast<double>(rv[c]) + f * var[c] * unbias);
  }
}

}  // namespace

void update_running_stats(Tensor& running_mean, Tensor& running_var,
                               Tensor& num_batches_tracked, const Tensor& mean, const Tensor& var,
                               int64_t count, std::optional<double> momentum) {
  check_running_stats(running_mean, running_var, num_batches_tracked, mean, var, count);
  c10::cuda::CUDAGuard guard(running_mean.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor mu = mean.to(at::kDouble).contiguous(), v = var.to(at::kDouble).contiguous();
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(),
                                  "update_running_stats_cuda", [&] {
    running_stats_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        running_mean.data_ptr<scalar_t>(), running_var.data_ptr<scalar_t>(),
        num_batches_tracked.data_ptr<int64_t>(), mu.data_ptr<double>(), v.data_ptr<double>(),
        running_mean.numel(), unbias, momentum.value_or(0.0), !momentum.has_value());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace r2p1d::cuda::direct
