// The spatial weight gradient GEMM in bfloat16, every tile shape (launch.h).
#include "kernel.cuh"

namespace r2p1d::tc {

template cudaError_t launch_elem<ElemKind::kBF16>(const SpatialWgradArgs&, const Plan&, cudaStream_t);

}  // namespace r2p1d::tc
