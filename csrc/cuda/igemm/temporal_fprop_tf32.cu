// The temporal forward GEMM in float32 as TF32, every tile shape (launch.h).
#include "kernel.cuh"

namespace r2p1d::tc {

template cudaError_t launch_elem<ElemKind::kTF32>(const TemporalFpropArgs&, const Plan&, cudaStream_t);

}  // namespace r2p1d::tc
