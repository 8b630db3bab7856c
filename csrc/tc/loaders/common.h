// Operand loaders of the implicit GEMMs: how element (mn, k) of an operand is found in an
// NDHWC tensor, with the BatchNorm+ReLU or gradient prologue applied as it is loaded.
// k_major.h holds the operands gathered along K (A of both forwards and both input
// gradients, the forward weights), mn_major.h those read along M/N (both weight gradients'
// operands, the input gradients' weights); this file what they share: the prologues they
// apply and the K positions they advance.
//
// Every GEMM here is C[m][n] = sum_k A(m, k) * B(n, k). A loader moves chunks (Chunk<EK>::kV
// consecutive elements, 16 bytes) along its operand's contiguous direction: along k for a
// K-major operand (kKMajor = true: the chunk is (mn, k..k+kV-1)), along m/n otherwise (the
// chunk is (mn..mn+kV-1, k)). Each thread keeps a State per chunk it owns: the parts of the
// address that do not change along k are computed once (start), and the k position is
// advanced by whole tiles with additions only (advance), so the main loop has no divisions.
//
// `vec` (set by the plan, tc/plan.h) says that a chunk is one aligned 16-byte load that
// lies wholly inside or wholly outside the operand: the contiguous extent is a multiple of
// kV and the pointers are 16-byte aligned. Without it each element is found
// and bounds-checked on its own (odd channel counts such as the stem's 3 inputs, or 45,
// 230, 921 mid channels), which is slower and equally correct.
//
// Out-of-range and padding elements are zero in the operand's own space: a padded time
// step of the activation contributes 0, not relu(shift) (docs/kernels.md, the padding rule).
#pragma once
#include "tc/chunk.h"

namespace r2p1d::tc {

template <ElemKind K>
using g_ptr = const typename Elem<K>::gmem_t*;

// relu((v - mean[c]) * scale[c] + shift[c]), the BatchNorm+ReLU activation in centred form.
struct BnRelu {
  const float* mean = nullptr;
  const float* scale = nullptr;
  const float* shift = nullptr;
  R2P1D_HD bool on() const { return mean != nullptr; }
  R2P1D_HD float pre(float v, int64_t c) const {
    return fma_rn(v - ldg(mean + c), ldg(scale + c), ldg(shift + c));
  }
  R2P1D_HD float operator()(float v, int64_t c) const {
    const float p = pre(v, c);
    return p > 0.f ? p : 0.f;
  }
};

// The gradient reaching the spatial output y: g + ca[c] + cb[c] * (y - mu[c]), the batch
// statistics' share (see spatial_conv_backward in csrc/schemas.h) added while loading.
struct GradTotal {
  const float* mu = nullptr;
  const float* ca = nullptr;
  const float* cb = nullptr;
  R2P1D_HD bool on() const { return mu != nullptr; }
  R2P1D_HD float operator()(float g, float y, int64_t c) const {
    return fma_rn(ldg(cb + c), y - ldg(mu + c), g + ldg(ca + c));
  }
};

// Applies `f(value, element index)` to each element of a loaded chunk.
template <ElemKind EK, class F>
R2P1D_HD Vec16 map_chunk(const Vec16& g, F f) {
  using C = Chunk<EK>;
  Vec16 out = C::zero();
  R2P1D_UNROLL
  for (int e = 0; e < C::kV; ++e) C::set(out, e, Elem<EK>::smem_from_float(f(Elem<EK>::to_float(C::get(g, e)), e)));
  return out;
}

// A K position (tap, c): c fastest over `inner` values, then the tap (the temporal GEMMs'
// (tap, channel) and the dgrad weights' (tap, q)).
struct TapInner {
  int tap, c;
  R2P1D_HD static TapInner of(int64_t k, int inner) {
    const int64_t tap = k / inner;
    return {static_cast<int>(tap), static_cast<int>(k - tap * inner)};
  }
  // k += dk, with additions only (the main loop's K step).
  R2P1D_HD void advance(int dk, int inner) {
    c += dk;
    while (c >= inner) {
      c -= inner;
      ++tap;
    }
  }
};

// A K position (r, s, c): c fastest over `inner` values, then s over `kw` taps, then r.
struct TapPos {
  int r, s, c;
  R2P1D_HD static TapPos of(int64_t k, int inner, int kw) {
    const int64_t tap = k / inner;
    return {static_cast<int>(tap / kw), static_cast<int>(tap % kw), static_cast<int>(k - tap * inner)};
  }
  // k += dk, with additions only (the main loop's K step).
  R2P1D_HD void advance(int dk, int inner, int kw) {
    c += dk;
    while (c >= inner) {
      c -= inner;
      if (++s == kw) {
        s = 0;
        ++r;
      }
    }
  }
};

}  // namespace r2p1d::tc
