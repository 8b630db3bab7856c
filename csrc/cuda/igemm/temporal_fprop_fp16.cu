// The temporal forward GEMM in float16, every tile shape (launch.h).
#include "kernel.cuh"

namespace r2p1d::tc {

template cudaError_t launch_elem<ElemKind::kF16>(const TemporalFpropArgs&, const Plan&, cudaStream_t);

}  // namespace r2p1d::tc
