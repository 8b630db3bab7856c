// GPU instantiation of the spatial dgrad GEMM (csrc/tc/problems.h) for bf16, fp16 and TF32; one file
// per GEMM so that they compile in parallel.
#include "kernel.cuh"

namespace r2p1d::tc {

cudaError_t launch(const SpatialDgradArgs& a, const Plan& plan, cudaStream_t stream) {
  return launch_args(a, plan, stream);
}

}  // namespace r2p1d::tc
