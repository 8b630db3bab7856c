// The emulator's spatial_fprop GEMM (every element type and tile shape; csrc/emulate/emulate.h): one
// file per GEMM, so that the emulator's instantiations compile in parallel.
#include "emulate/emulate.h"

namespace r2p1d::emulate {

template void HostBackend::run<tc::SpatialFpropArgs>(const tc::SpatialFpropArgs&, const tc::Plan&, tc_ops::Tensors) const;

}  // namespace r2p1d::emulate
