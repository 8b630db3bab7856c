// The B operand of a (1, kh, kw) convolution as an implicit GEMM: B(k, n) with k = (c, i, j)
// (input channel, kernel row and column) and n = (frame of the group, oh, ow) is the input
// value x[c, oh*sh - ph + i, ow*sw - pw + j] of that frame, zero in the padding. The GEMM's
// packing reads it straight from the frames, so no im2col matrix (kh*kw times the input)
// is written and read again: a panel's columns are a few runs along output rows, each a
// contiguous (stride 1) or strided stretch of one input row.
#pragma once
#include <algorithm>
#include <vector>

#include "cpu/bf16/gemm.h"

namespace r2p1d::cpu::bf16 {

// Where frame f = (n, t) of an NCDHW tensor (C channels, T steps, `plane` values per frame)
// starts: ConvPacker's frame offsets (the offset of frame_channel(x, ..., f, 0) in
// csrc/cpu/frame_gemm.h).
inline int64_t frame_offset(int64_t f, int64_t C, int64_t T, int64_t plane) {
  return (f / T * C * T + f % T) * plane;
}

struct ConvGeom {
  int64_t C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo;
};

class ConvPacker final : public BPacker {
 public:
  // Frame q of the group starts at x + frame_base[q]; channel c of it at + c*chan_stride.
  ConvPacker(const uint16_t* x, int64_t chan_stride, std::vector<int64_t> frame_base, const ConvGeom& g)
      : BPacker(g.C * g.kh * g.kw, static_cast<int64_t>(frame_base.size()) * g.Ho * g.Wo),
        x_(x), chan_stride_(chan_stride), frame_base_(std::move(frame_base)), g_(g) {}

  void pairs(int64_t k, int64_t n0, int64_t nv, uint32_t* out) const override {
    panel(k, std::min<int64_t>(2, rows - k), 2, n0, nv, nv, out);
  }

  // Panel by panel: each decodes its columns once (panel()) and reads whole runs of input
  // rows already.
  void panels(int64_t k0, int64_t kc, int64_t kcp, int64_t n0, int64_t cols, int64_t NR,
              int64_t stride, uint32_t* out) const override {
    for (int64_t g = 0; g * NR < cols; ++g)
      panel(k0, kc, kcp, n0 + g * NR, std::min(NR, cols - g * NR), NR, out + g * stride);
  }

 private:
  // One panel (as BPacker::panels lays each out): its columns decoded once into runs along
  // output rows, then each pair of rows (c, i, j), (c, i, j+1)... read from those runs.
  void panel(int64_t k0, int64_t kc, int64_t kcp, int64_t n0, int64_t nv, int64_t NR,
             uint32_t* out) const {
    const ConvGeom& g = g_;
    const int64_t plane = g.Ho * g.Wo;
    Run runs[kMaxCols];
    int nr = 0;
    for (int64_t n = n0; n < n0 + nv; ++nr) {
      const int64_t f = n / plane, q = n % plane, oh = q / g.Wo, ow = q % g.Wo;
      const int64_t len = std::min(g.Wo - ow, n0 + nv - n);
      runs[nr] = {frame_base_[f], oh * g.sh - g.ph, ow, len, n - n0};
      n += len;
    }
    uint16_t r0[kMaxCols], r1[kMaxCols];
    for (int64_t p = 0; p < kcp / 2; ++p, out += NR) {
      const int64_t k = k0 + 2 * p;
      if (2 * p >= kc) {
        std::fill(out, out + NR, 0u);
        continue;
      }
      row(runs, nr, k, r0);
      if (2 * p + 1 < kc && k + 1 < rows) {
        row(runs, nr, k + 1, r1);
      } else {
        std::fill(r1, r1 + nv, uint16_t(0));
      }
      for (int64_t n = 0; n < nv; ++n) out[n] = uint32_t(r0[n]) | (uint32_t(r1[n]) << 16);
      std::fill(out + nv, out + NR, 0u);
    }
  }

  static constexpr int64_t kMaxCols = 64;  // the widest micro-kernel panel (NR)

  // A stretch of one output row: frame offset, first input row (tap 0), first output
  // column, length, and where it starts in the panel.
  struct Run {
    int64_t frame, ih0, ow, len, at;
  };

  void row(const Run* runs, int nr, int64_t k, uint16_t* dst) const {
    const ConvGeom& g = g_;
    const int64_t c = k / (g.kh * g.kw), i = (k / g.kw) % g.kh, shift = k % g.kw - g.pw;
    // Output columns ow in [lo, hi) read inside an input row (iw = ow*sw + shift in [0, W)).
    const int64_t lo = shift >= 0 ? 0 : (-shift + g.sw - 1) / g.sw;
    const int64_t hi = g.W - shift <= 0 ? 0 : (g.W - shift + g.sw - 1) / g.sw;
    for (int r = 0; r < nr; ++r) {
      const Run& run = runs[r];
      uint16_t* d = dst + run.at;
      const int64_t ih = run.ih0 + i;
      if (ih < 0 || ih >= g.H) {
        std::fill(d, d + run.len, uint16_t(0));
        continue;
      }
      const uint16_t* xrow = x_ + run.frame + c * chan_stride_ + ih * g.W;
      const int64_t a = std::clamp<int64_t>(lo - run.ow, 0, run.len);
      const int64_t b = std::clamp<int64_t>(hi - run.ow, a, run.len);
      // Plain loops: these stretches are a few dozen values, too short for memmove's call.
      for (int64_t t = 0; t < a; ++t) d[t] = 0;
      if (g.sw == 1) {
        const uint16_t* src = xrow + run.ow + shift;
        for (int64_t t = a; t < b; ++t) d[t] = src[t];
      } else {
        for (int64_t t = a; t < b; ++t) d[t] = xrow[(run.ow + t) * g.sw + shift];
      }
      for (int64_t t = b; t < run.len; ++t) d[t] = 0;
    }
  }

  const uint16_t* x_;
  int64_t chan_stride_;
  std::vector<int64_t> frame_base_;
  ConvGeom g_;
};

}  // namespace r2p1d::cpu::bf16
