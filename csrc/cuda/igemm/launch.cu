// The launchers' dispatch on the element type (each element type's GEMMs are instantiated in
// their own file, launch.h), and the finalize kernels.
#include "kernel.cuh"

namespace r2p1d::tc {

// Instantiated in the <gemm>_<elem>.cu files.
extern template cudaError_t launch_elem<ElemKind::kBF16>(const SpatialFpropArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kF16>(const SpatialFpropArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kTF32>(const SpatialFpropArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kBF16>(const SpatialDgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kF16>(const SpatialDgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kTF32>(const SpatialDgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kBF16>(const SpatialWgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kF16>(const SpatialWgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kTF32>(const SpatialWgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kBF16>(const TemporalFpropArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kF16>(const TemporalFpropArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kTF32>(const TemporalFpropArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kBF16>(const TemporalDgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kF16>(const TemporalDgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kTF32>(const TemporalDgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kBF16>(const TemporalWgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kF16>(const TemporalWgradArgs&, const Plan&, cudaStream_t);
extern template cudaError_t launch_elem<ElemKind::kTF32>(const TemporalWgradArgs&, const Plan&, cudaStream_t);

namespace {

template <class Args>
cudaError_t dispatch(const Args& a, const Plan& plan, cudaStream_t stream) {
  switch (a.elem) {
    case ElemKind::kBF16: return launch_elem<ElemKind::kBF16>(a, plan, stream);
    case ElemKind::kF16: return launch_elem<ElemKind::kF16>(a, plan, stream);
    case ElemKind::kTF32: return launch_elem<ElemKind::kTF32>(a, plan, stream);
  }
  return cudaErrorInvalidValue;
}

template <class CtaT, class Args>
cudaError_t launch_finalize(const Args& a, cudaStream_t stream) {
  if (a.channels == 0) return cudaSuccess;
  finalize_kernel<CtaT, Args><<<static_cast<unsigned>(a.channels), CtaT::kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch(const SpatialFpropArgs& a, const Plan& p, cudaStream_t s) { return dispatch(a, p, s); }
cudaError_t launch(const SpatialDgradArgs& a, const Plan& p, cudaStream_t s) { return dispatch(a, p, s); }
cudaError_t launch(const SpatialWgradArgs& a, const Plan& p, cudaStream_t s) { return dispatch(a, p, s); }
cudaError_t launch(const TemporalFpropArgs& a, const Plan& p, cudaStream_t s) { return dispatch(a, p, s); }
cudaError_t launch(const TemporalDgradArgs& a, const Plan& p, cudaStream_t s) { return dispatch(a, p, s); }
cudaError_t launch(const TemporalWgradArgs& a, const Plan& p, cudaStream_t s) { return dispatch(a, p, s); }
cudaError_t launch(const MomentsArgs& a, cudaStream_t s) { return launch_finalize<MomentsFinalize>(a, s); }
cudaError_t launch(const SumsArgs& a, cudaStream_t s) { return launch_finalize<SumsFinalize>(a, s); }

}  // namespace r2p1d::tc
