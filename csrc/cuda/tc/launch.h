// The GPU launchers of the six tensor-core GEMMs (one .cu file each, torch-free). Each
// returns the launch's error code; the torch-facing host code checks it.
#pragma once
#include <cuda_runtime_api.h>

#include "args.h"
#include "plan.h"

namespace r2p1d::tc {

cudaError_t launch(const SpatialFpropArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const SpatialDgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const SpatialWgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalFpropArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalDgradArgs& a, const Plan& plan, cudaStream_t stream);
cudaError_t launch(const TemporalWgradArgs& a, const Plan& plan, cudaStream_t stream);

}  // namespace r2p1d::tc
