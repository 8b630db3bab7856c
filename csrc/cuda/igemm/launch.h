// The GPU launchers of the six tensor-core GEMMs (csrc/tc/problems.h; one .cu file each
// here, torch-free). Each returns the launch's error code; csrc/cuda/ops_cuda.cpp checks it.
#pragma once
#include <cuda_runtime_api.h>

#include "tc/args.h"
#include "tc/plan.h"

namespace r2p1d::tc {

cudaError_t launch(const SpatialFpropArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const SpatialDgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const SpatialWgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalFpropArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalDgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalWgradArgs& a, const Plan& plan, cudaStream_t stream);

}  // namespace r2p1d::tc
