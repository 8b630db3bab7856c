// The GPU side of the CTA schedule (csrc/tc/igemm.h, csrc/tc/finalize.h): the executor whose
// steps are the calling thread's, the kernels, and the launch of a problem's passes with its
// plan's tile shape.
#pragma once
#include <cuda_runtime.h>

#include "launch.h"
#include "tc/finalize.h"
#include "tc/problems.h"

namespace r2p1d::tc {

struct DeviceExec {
  template <class Thread, class F>
  __device__ __forceinline__ void each(Thread* th, F&& f) {
    f(static_cast<int>(threadIdx.x), *th);
  }
  __device__ __forceinline__ void sync(Barrier) { __syncthreads(); }
  template <class CtaT>
  __device__ __forceinline__ void mma(const char* stage, int kk_end, typename CtaT::Thread* th) {
    CtaT::mma_tile(stage, kk_end, static_cast<int>(threadIdx.x), *th);
  }
};

template <class CtaT, class Problem>
__global__ void __launch_bounds__(CtaT::kThreads, CtaT::kMinCtasPerSm) igemm_kernel(const Problem p) {
  extern __shared__ __align__(128) char smem[];
  typename CtaT::Thread th;
  DeviceExec ex;
  const TileCtx t{static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(blockIdx.y),
                  static_cast<int64_t>(blockIdx.z)};
  CtaT::run(p, t, smem, &th, ex);
}

template <class CtaT, class Args>
__global__ void __launch_bounds__(CtaT::kThreads, CtaT::kMinCtasPerSm) finalize_kernel(const Args a) {
  __shared__ typename CtaT::Smem smem;
  typename CtaT::Thread th;
  DeviceExec ex;
  CtaT::run(a, static_cast<int64_t>(blockIdx.x), smem, &th, ex);
}

// Every pass of the plan of `a` (element type K) with the plan's tile shape. Dynamic shared
// memory past 48 KB needs the kernel's limit raised first.
template <ElemKind K, class Args>
cudaError_t launch_elem(const Args& a, const Plan& plan, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  with_problem_of<K>(a, plan, [&](const auto& problem) {
    using Problem = std::decay_t<decltype(problem)>;
    with_tile<kind_of<Args>()>(plan.tile, [&](auto shape) {
      using CtaT = Cta<Problem, decltype(shape)>;
      auto* kernel = &igemm_kernel<CtaT, Problem>;
      for_each_pass(problem, a.workspace, [&](const Problem& p, int64_t grid_z) {
        if (err != cudaSuccess) return;
        const int64_t smem = CtaT::smem_bytes(p);
        if (smem > 48 * 1024) {
          err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
          if (err != cudaSuccess) return;
        }
        const dim3 grid(static_cast<unsigned>(plan.grid_m), static_cast<unsigned>(plan.grid_n),
                        static_cast<unsigned>(grid_z));
        kernel<<<grid, CtaT::kThreads, static_cast<size_t>(smem), stream>>>(p);
        err = cudaGetLastError();
      });
    });
  });
  return err;
}

}  // namespace r2p1d::tc
