// The GPU side of the CTA schedule (csrc/tc/igemm.h): the executor whose steps are the calling
// thread's, the kernel, and the launch of a problem with its plan's tile shape.
#pragma once
#include <cuda_runtime.h>

#include "launch.h"
#include "tc/problems.h"

namespace r2p1d::tc {

struct DeviceExec {
  template <class Thread, class F>
  __device__ __forceinline__ void each(Thread* th, F&& f) {
    f(static_cast<int>(threadIdx.x), *th);
  }
  __device__ __forceinline__ void sync(Barrier) { __syncthreads(); }
  template <class CtaT>
  __device__ __forceinline__ void mma(const typename CtaT::Smem& s, int buf, typename CtaT::Thread* th) {
    CtaT::mma_tile(s, buf, static_cast<int>(threadIdx.x), *th);
  }
};

template <class CtaT, class Problem>
__global__ void __launch_bounds__(CtaT::kThreads, CtaT::kMinCtasPerSm) igemm_kernel(const Problem p) {
  __shared__ typename CtaT::Smem smem;
  typename CtaT::Thread th;
  DeviceExec ex;
  const TileCtx t{static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(blockIdx.y),
                  static_cast<int64_t>(blockIdx.z)};
  CtaT::run(p, t, smem, &th, ex);
}

// Launches the GEMM of `a` with its plan's tile shape; each launcher .cu file instantiates
// this for one args type, so that the GEMMs compile in parallel.
template <class Args>
cudaError_t launch_args(const Args& a, const Plan& plan, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  with_problem(a, plan, [&](const auto& p) {
    using Problem = std::decay_t<decltype(p)>;
    with_tile(plan.tile, [&](auto shape) {
      using CtaT = Cta<Problem, decltype(shape)>;
      const dim3 grid(static_cast<unsigned>(plan.grid_m), static_cast<unsigned>(plan.grid_n),
                      static_cast<unsigned>(plan.splits));
      igemm_kernel<CtaT, Problem><<<grid, CtaT::kThreads, 0, stream>>>(p);
      err = cudaGetLastError();
    });
  });
  return err;
}

}  // namespace r2p1d::tc
