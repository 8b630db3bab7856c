// Operand loaders of the implicit GEMMs: how element (mn, k) of an operand is found in an
// NDHWC tensor, with the BatchNorm+ReLU or gradient prologue applied on its way to shared
// memory. k_major.h holds the operands gathered along K (A of both forwards and both input
// gradients, the forward weights), mn_major.h those read along M/N (both weight gradients'
// operands, the input gradients' weights); this file what they share: the prologues and the
// K positions they walk.
//
// Every GEMM here is C[m][n] = sum_k A(m, k) * B(n, k). A loader moves chunks (Chunk<EK>::kV
// consecutive elements, 16 bytes) along its operand's contiguous direction: along k for a
// K-major operand (kKMajor = true: the chunk is (mn, k..k+kV-1)), along m/n otherwise (the
// chunk is (mn..mn+kV-1, k)). Each thread keeps a State per chunk it owns: what does not
// change along k is computed once (start), and the k position advances by whole tiles with
// additions only (advance), so the main loop has no divisions.
//
// A loader gives each chunk one of two ways (tc/igemm.h runs both):
//   - `source`: where cp.async copies it from, 16 bytes at once (null: zeros), for operands
//     read as they are (`async`: no prologue, 16-byte pieces);
//   - `load` then `to_smem`: the raw bytes into registers (pieces of `width` bytes), kept
//     there while the current tile's MMAs run, then the prologue (BatchNorm+ReLU, the
//     statistics' share) applied and the chunk converted as it is stored.
// Out-of-range and padding elements are zero in the operand's own space: a padded time step
// of the activation contributes 0, not relu(shift) (docs/kernels.md, the padding rule).
#pragma once
#include "tc/chunk.h"

namespace r2p1d::tc {

template <ElemKind K>
using g_ptr = const typename Elem<K>::gmem_t*;

// The per-channel vectors of a prologue, staged in shared memory once per CTA (tc/igemm.h):
// kCount vectors of `channels` floats, each `pitch` = channels rounded up to 8 apart (so
// that a chunk's 4 or 8 consecutive channels are whole 16-byte loads, inside the vector's
// room even past its last channel).
struct ChannelVectors {
  static constexpr int kCount = 3;
  const float* src[kCount];  // global: mean/scale/shift or mu/ca/cb; src[0] null: no prologue
  int channels;
  R2P1D_HD bool on() const { return src[0] != nullptr; }
  R2P1D_HD int pitch() const { return (channels + 7) & ~7; }
  R2P1D_HD int floats() const { return on() ? kCount * pitch() : 0; }
};

// Vector v's entries c..c+n-1 from the staged vectors `s` (n = 4 or 8, c a multiple of 4):
// 16-byte shared loads.
template <int n>
R2P1D_HD void staged_entries(const float* s, int pitch, int v, int c, float (&out)[n]) {
  R2P1D_UNROLL
  for (int q = 0; q < n / 4; ++q) {
    const Vec16 x = lds16(s + v * pitch + c + 4 * q);
    R2P1D_UNROLL
    for (int i = 0; i < 4; ++i) out[4 * q + i] = bits_float(x.w[i]);
  }
}

// relu((v - mean[c]) * scale[c] + shift[c]), the BatchNorm+ReLU activation in centred form,
// from the staged vectors (mean, scale, shift).
R2P1D_HD float bn_relu(float v, float mean, float scale, float shift) {
  const float p = fma_rn(v - mean, scale, shift);
  return p > 0.f ? p : 0.f;
}

// The gradient reaching the spatial output y: g + ca[c] + cb[c] * (y - mu[c]), the batch
// statistics' share (see spatial_conv_backward in csrc/schemas.h), from the staged vectors
// (mu, ca, cb).
R2P1D_HD float grad_total(float g, float y, float mu, float ca, float cb) { return fma_rn(cb, y - mu, g + ca); }

// Applies f(element value, element index) to each valid element of a raw chunk and returns
// the chunk in shared-memory form (invalid elements zero).
template <ElemKind EK, class F>
R2P1D_HD Vec16 map_valid(const Vec16& g, uint32_t valid, F f) {
  using C = Chunk<EK>;
  Vec16 out = C::zero();
  R2P1D_UNROLL
  for (int e = 0; e < C::kV; ++e)
    if (valid & (1u << e)) C::set(out, e, Elem<EK>::smem_from_float(f(Elem<EK>::to_float(C::get(g, e)), e)));
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
  // k += dk, with additions only (the main loop's K step; several wraps when inner < dk).
  R2P1D_HD void advance(int dk, int inner) {
    c += dk;
    while (c >= inner) {
      c -= inner;
      ++tap;
    }
  }
  // k += n for a piece of n elements, n <= inner (one wrap at most).
  R2P1D_HD void step(int n, int inner) {
    c += n;
    if (c >= inner) {
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
  R2P1D_HD void next_tap(int kw) {
    if (++s == kw) {
      s = 0;
      ++r;
    }
  }
  // k += dk, with additions only (the main loop's K step).
  R2P1D_HD void advance(int dk, int inner, int kw) {
    c += dk;
    while (c >= inner) {
      c -= inner;
      next_tap(kw);
    }
  }
  // k += n for a piece of n elements, n <= inner (one wrap at most).
  R2P1D_HD void step(int n, int inner, int kw) {
    c += n;
    if (c >= inner) {
      c -= inner;
      next_tap(kw);
    }
  }
};

}  // namespace r2p1d::tc
