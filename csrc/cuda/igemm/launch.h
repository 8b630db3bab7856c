// The GPU launchers of the six tensor-core GEMMs (csrc/tc/problems.h) and of the finalize
// steps (csrc/tc/finalize.h), torch-free. `launch` runs every pass of a plan (a split K's
// partials, then their sum through the epilogue) on `stream` and returns the first error;
// csrc/cuda/ops_cuda.cpp checks it. launch_elem<K> is one element type's instantiation:
// one small .cu file per GEMM and element type (<gemm>_<elem>.cu), so that they compile in
// parallel; launch.cu dispatches.
#pragma once
#include <cuda_runtime_api.h>

#include "tc/args.h"
#include "tc/plan.h"

namespace r2p1d::tc {

template <ElemKind K, class Args>
cudaError_t launch_elem(const Args& a, const Plan& plan, cudaStream_t stream);

cudaError_t launch(const SpatialFpropArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const SpatialDgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const SpatialWgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalFpropArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalDgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalWgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const MomentsArgs& a, cudaStream_t stream);
cudaError_t launch(const SumsArgs& a, cudaStream_t stream);

}  // namespace r2p1d::tc
