// Operand loaders of the implicit GEMMs: how element (mn, k) of an operand is found in an
// NDHWC tensor, with the BatchNorm+ReLU or gradient prologue applied as it is loaded.
//
// Every GEMM here is C[m][n] = sum_k A(m, k) * B(n, k). A loader moves chunks (Chunk<EK>::kV
// consecutive elements, 16 bytes) along its operand's contiguous direction: along k for a
// K-major operand (kKMajor = true: the chunk is (mn, k..k+kV-1)), along m/n otherwise (the
// chunk is (mn..mn+kV-1, k)). Each thread keeps a State per chunk it owns: the parts of the
// address that do not change along k are computed once (start), and the k position is
// advanced by whole tiles with additions only (advance), so the main loop has no divisions.
//
// `vec` (set by the plan, csrc/cuda/tc/plan.h) says that a chunk is one aligned 16-byte
// load that lies wholly inside or wholly outside the operand: the contiguous extent is a
// multiple of kV and the pointers are 16-byte aligned. Without it each element is found
// and bounds-checked on its own (odd channel counts such as the stem's 3 inputs, or 45,
// 230, 921 mid channels), which is slower and equally correct.
//
// Out-of-range and padding elements are zero in the operand's own space: a padded time
// step of the activation contributes 0, not relu(shift) (shared/DESIGN.md's pitfall).
#pragma once
#include "chunk.h"

namespace r2p1d::tc {

// relu((v - mean[c]) * scale[c] + shift[c]), the BatchNorm+ReLU activation in centred form.
struct BnRelu {
  const float* mean = nullptr;
  const float* scale = nullptr;
  const float* shift = nullptr;
  R2P1D_HD bool on() const { return mean != nullptr; }
  R2P1D_HD float pre(float v, int64_t c) const {
    return (v - ldg(mean + c)) * ldg(scale + c) + ldg(shift + c);
  }
  R2P1D_HD float operator()(float v, int64_t c) const {
    const float p = pre(v, c);
    return p > 0.f ? p : 0.f;
  }
};

// The gradient reaching the spatial output y: g + ca[c] + cb[c] * (y - mu[c]), the batch
// statistics' share (see spatial_conv_backward in csrc/r2p1d.cpp) added while loading.
struct GradTotal {
  const float* mu = nullptr;
  const float* ca = nullptr;
  const float* cb = nullptr;
  R2P1D_HD bool on() const { return mu != nullptr; }
  R2P1D_HD float operator()(float g, float y, int64_t c) const {
    return g + ldg(ca + c) + ldg(cb + c) * (y - ldg(mu + c));
  }
};

// Applies `f(value, element index)` to each element of a loaded chunk.
template <ElemKind EK, class F>
R2P1D_HD Vec16 map_chunk(const Vec16& g, F f) {
  using C = Chunk<EK>;
  Vec16 out = C::zero();
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

// ---------------------------------------------------------------------------------------
// A of the spatial forward: im2col of x (frames, H, W, C) for output pixel `row` =
// (frame, oh, ow) and k = (r, s, c), c fastest. K-major.
template <ElemKind EK>
struct Im2colK {
  using C = Chunk<EK>;
  using g_t = typename C::g_t;
  static constexpr bool kKMajor = true;
  const g_t* x;
  int64_t rows, K;
  int H, W, Cin, kw, sh, sw, ph, pw, Ho, Wo;
  bool vec;

  struct State {
    int64_t frame;  // -1: row out of range
    int ih0, iw0;
    TapPos pos;  // (r, s, c) of k
    int64_t k;
  };

  R2P1D_HD void start(State& st, int64_t row, int64_t k) const {
    st.k = k;
    st.frame = -1;
    if (row < rows) {
      const int64_t q = row / Wo;
      st.iw0 = static_cast<int>(row - q * Wo) * sw - pw;
      st.ih0 = static_cast<int>(q % Ho) * sh - ph;
      st.frame = q / Ho;
    }
    st.pos = TapPos::of(k, Cin, kw);
  }

  R2P1D_HD const g_t* at(const State& st, int r, int s, int c) const {
    const int ih = st.ih0 + r, iw = st.iw0 + s;
    if (ih < 0 || ih >= H || iw < 0 || iw >= W) return nullptr;
    return x + ((st.frame * H + ih) * W + iw) * Cin + c;
  }

  R2P1D_HD Vec16 load(const State& st) const {
    if (st.frame < 0) return C::zero();
    if (vec) {
      if (st.k >= K) return C::zero();
      const g_t* p = at(st, st.pos.r, st.pos.s, st.pos.c);
      return p ? C::to_smem(load16(p)) : C::zero();
    }
    Vec16 out = C::zero();
    for (int e = 0; e < C::kV; ++e) {
      if (st.k + e >= K) break;
      const TapPos pe = TapPos::of(st.k + e, Cin, kw);
      const g_t* p = at(st, pe.r, pe.s, pe.c);
      if (p) C::set(out, e, Elem<EK>::to_smem(ldg(p)));
    }
    return out;
  }

  R2P1D_HD void advance(State& st, int dk) const {
    st.k += dk;
    st.pos.advance(dk, Cin, kw);
  }
};

// ---------------------------------------------------------------------------------------
// A of the temporal forward and of the temporal input gradient: row = (n, t, hw) of the
// output, k = (tap, c), c fastest, from src (N, Tsrc, HW, Cs). Forward: source step
// t*st - pt + tap, with BatchNorm+ReLU applied (bn.on()). Transposed (the input gradient
// of a temporal conv, src = grad_out): source step (t + pt - tap) / st where it divides.
template <ElemKind EK>
struct TemporalK {
  using C = Chunk<EK>;
  using g_t = typename C::g_t;
  static constexpr bool kKMajor = true;
  const g_t* src;
  int64_t rows, K;
  int Trow, Tsrc, HW, Cs, st, pt;
  bool transposed, vec;
  BnRelu bn;

  struct State {
    int64_t base;  // offset of (n, 0, hw, 0) in src; -1: row out of range
    int t;
    TapInner pos;  // (tap, c) of k
    int64_t k;
  };

  R2P1D_HD void start(State& s, int64_t row, int64_t k) const {
    s.k = k;
    s.base = -1;
    if (row < rows) {
      const int64_t q = row / HW;
      const int64_t hw = row - q * HW;
      s.t = static_cast<int>(q % Trow);
      s.base = ((q / Trow) * Tsrc * HW + hw) * Cs;
    }
    s.pos = TapInner::of(k, Cs);
  }

  // The source time step of tap `tap`, or -1 where it is padding (or, transposed, where
  // no output step reaches it).
  R2P1D_HD int source_step(int t, int tap) const {
    if (!transposed) {
      const int ti = t * st - pt + tap;
      return ti >= 0 && ti < Tsrc ? ti : -1;
    }
    const int num = t + pt - tap;
    if (num < 0 || num % st != 0) return -1;
    return num / st < Tsrc ? num / st : -1;
  }

  R2P1D_HD const g_t* at(const State& s, int tap, int c) const {
    const int ti = source_step(s.t, tap);
    return ti < 0 ? nullptr : src + s.base + static_cast<int64_t>(ti) * HW * Cs + c;
  }

  R2P1D_HD Vec16 load(const State& s) const {
    if (s.base < 0) return C::zero();
    if (vec) {
      if (s.k >= K) return C::zero();
      const g_t* p = at(s, s.pos.tap, s.pos.c);
      if (!p) return C::zero();
      const Vec16 g = load16(p);
      if (!bn.on()) return C::to_smem(g);
      const int c0 = s.pos.c;
      return map_chunk<EK>(g, [&](float v, int e) { return bn(v, c0 + e); });
    }
    Vec16 out = C::zero();
    for (int e = 0; e < C::kV; ++e) {
      if (s.k + e >= K) break;
      const TapInner pe = TapInner::of(s.k + e, Cs);
      const g_t* p = at(s, pe.tap, pe.c);
      if (!p) continue;
      const float v = Elem<EK>::to_float(ldg(p));
      C::set(out, e, Elem<EK>::smem_from_float(bn.on() ? bn(v, pe.c) : v));
    }
    return out;
  }

  R2P1D_HD void advance(State& s, int dk) const {
    s.k += dk;
    s.pos.advance(dk, Cs);
  }
};

// ---------------------------------------------------------------------------------------
// A of the spatial input gradient: row = input pixel (frame, h, w), k = (r, s, m), m
// fastest; the element is the total gradient of y at the output pixel whose window puts
// tap (r, s) on (h, w): oh = (h + ph - r) / sh where it divides and lies inside.
template <ElemKind EK>
struct SpatialDgradK {
  using C = Chunk<EK>;
  using g_t = typename C::g_t;
  static constexpr bool kKMajor = true;
  const g_t* gy;
  const g_t* y;  // read with `total`
  GradTotal total;
  int64_t rows, K;
  int H, W, M, kw, sh, sw, ph, pw, Ho, Wo;
  bool vec;

  struct State {
    int64_t frame;  // -1: row out of range
    int h, w;
    TapPos pos;  // (r, s, m) of k
    int64_t k;
  };

  R2P1D_HD void start(State& st, int64_t row, int64_t k) const {
    st.k = k;
    st.frame = -1;
    if (row < rows) {
      const int64_t q = row / W;
      st.w = static_cast<int>(row - q * W);
      st.h = static_cast<int>(q % H);
      st.frame = q / H;
    }
    st.pos = TapPos::of(k, M, kw);
  }

  // Offset of (oh, ow, m) in gy, or -1 where tap (r, s) reaches no output pixel.
  R2P1D_HD int64_t offset(const State& st, int r, int s, int m) const {
    const int oh_num = st.h + ph - r, ow_num = st.w + pw - s;
    if (oh_num < 0 || ow_num < 0 || oh_num % sh != 0 || ow_num % sw != 0) return -1;
    const int oh = oh_num / sh, ow = ow_num / sw;
    if (oh >= Ho || ow >= Wo) return -1;
    return ((st.frame * Ho + oh) * Wo + ow) * M + m;
  }

  R2P1D_HD Vec16 load(const State& st) const {
    if (st.frame < 0) return C::zero();
    if (vec) {
      if (st.k >= K) return C::zero();
      const int64_t off = offset(st, st.pos.r, st.pos.s, st.pos.c);
      if (off < 0) return C::zero();
      const Vec16 g = load16(gy + off);
      if (!total.on()) return C::to_smem(g);
      const Vec16 yv = load16(y + off);
      const int m0 = st.pos.c;
      return map_chunk<EK>(g, [&](float v, int e) {
        return total(v, Elem<EK>::to_float(C::get(yv, e)), m0 + e);
      });
    }
    Vec16 out = C::zero();
    for (int e = 0; e < C::kV; ++e) {
      if (st.k + e >= K) break;
      const TapPos pe = TapPos::of(st.k + e, M, kw);
      const int64_t off = offset(st, pe.r, pe.s, pe.c);
      if (off < 0) continue;
      float v = Elem<EK>::to_float(ldg(gy + off));
      if (total.on()) v = total(v, Elem<EK>::to_float(ldg(y + off)), pe.c);
      C::set(out, e, Elem<EK>::smem_from_float(v));
    }
    return out;
  }

  R2P1D_HD void advance(State& st, int dk) const {
    st.k += dk;
    st.pos.advance(dk, M, kw);
  }
};

// ---------------------------------------------------------------------------------------
// A dense row-major matrix (rows, K), K-major: the weights of both forwards, in
// channels-last order ((M, kh, kw, C) and (O, kt, M)).
template <ElemKind EK>
struct DenseK {
  using C = Chunk<EK>;
  using g_t = typename C::g_t;
  static constexpr bool kKMajor = true;
  const g_t* w;
  int64_t rows, K;
  bool vec;

  struct State {
    int64_t row, k;
  };

  R2P1D_HD void start(State& s, int64_t row, int64_t k) const {
    s.row = row;
    s.k = k;
  }

  R2P1D_HD Vec16 load(const State& s) const {
    if (s.row >= rows) return C::zero();
    const g_t* p = w + s.row * K + s.k;
    if (vec) return s.k < K ? C::to_smem(load16(p)) : C::zero();
    Vec16 out = C::zero();
    for (int e = 0; e < C::kV && s.k + e < K; ++e) C::set(out, e, Elem<EK>::to_smem(ldg(p + e)));
    return out;
  }

  R2P1D_HD void advance(State& s, int dk) const { s.k += dk; }
};

// ---------------------------------------------------------------------------------------
// B of both input gradients: the forward weight read as B(col, k) with k = (tap, q), q
// fastest, at w[q * ld_q + tap * ld_tap + col]: contiguous along col (M/N-major).
// Spatial: col = input channel c, q = m, weight (M, kh, kw, C). Temporal: col = mid
// channel m, q = o, weight (O, kt, M).
template <ElemKind EK>
struct WeightMN {
  using C = Chunk<EK>;
  using g_t = typename C::g_t;
  static constexpr bool kKMajor = false;
  const g_t* w;
  int64_t rows, K;  // rows: the extent along col
  int Q;
  int64_t ld_q, ld_tap;
  bool vec;

  struct State {
    int64_t col, k;
    TapInner pos;  // (tap, q) of k
  };

  R2P1D_HD void start(State& s, int64_t col, int64_t k) const {
    s.col = col;
    s.k = k;
    s.pos = TapInner::of(k, Q);
  }

  R2P1D_HD Vec16 load(const State& s) const {
    if (s.k >= K) return C::zero();
    const g_t* p = w + s.pos.c * ld_q + s.pos.tap * ld_tap + s.col;
    if (vec) return s.col < rows ? C::to_smem(load16(p)) : C::zero();
    Vec16 out = C::zero();
    for (int e = 0; e < C::kV && s.col + e < rows; ++e) C::set(out, e, Elem<EK>::to_smem(ldg(p + e)));
    return out;
  }

  R2P1D_HD void advance(State& s, int dk) const {
    s.k += dk;
    s.pos.advance(dk, Q);
  }
};

// ---------------------------------------------------------------------------------------
// A of both weight gradients: A(row, p) = src[p * ld + row], a channels-last tensor read
// with its channel as the GEMM row and its pixel as k (M/N-major). For the spatial weight
// gradient, src = grad_y with the statistics' share added (total.on(), y read beside it).
template <ElemKind EK>
struct MatrixMN {
  using C = Chunk<EK>;
  using g_t = typename C::g_t;
  static constexpr bool kKMajor = false;
  const g_t* src;
  const g_t* y;
  GradTotal total;
  int64_t rows, K, ld;
  bool vec;

  struct State {
    int64_t row, k;
  };

  R2P1D_HD void start(State& s, int64_t row, int64_t k) const {
    s.row = row;
    s.k = k;
  }

  R2P1D_HD Vec16 load(const State& s) const {
    if (s.k >= K) return C::zero();
    const int64_t off = s.k * ld + s.row;
    if (vec) {
      if (s.row >= rows) return C::zero();
      const Vec16 g = load16(src + off);
      if (!total.on()) return C::to_smem(g);
      const Vec16 yv = load16(y + off);
      const int64_t c0 = s.row;
      return map_chunk<EK>(g, [&](float v, int e) { return total(v, Elem<EK>::to_float(C::get(yv, e)), c0 + e); });
    }
    Vec16 out = C::zero();
    for (int e = 0; e < C::kV && s.row + e < rows; ++e) {
      float v = Elem<EK>::to_float(ldg(src + off + e));
      if (total.on()) v = total(v, Elem<EK>::to_float(ldg(y + off + e)), s.row + e);
      C::set(out, e, Elem<EK>::smem_from_float(v));
    }
    return out;
  }

  R2P1D_HD void advance(State& s, int dk) const { s.k += dk; }
};

// ---------------------------------------------------------------------------------------
// B of the spatial weight gradient: B(col, p) = im2col of x, col = (r, s, c) with c
// fastest, p = output pixel (frame, oh, ow). The extra column col == taps*C is all ones,
// so that the same GEMM gives the bias gradient (sum over p of A). M/N-major.
template <ElemKind EK>
struct Im2colMN {
  using C = Chunk<EK>;
  using g_t = typename C::g_t;
  static constexpr bool kKMajor = false;
  const g_t* x;
  int64_t rows, K;  // rows = taps*C + 1 columns, K = output pixels
  int H, W, Cin, kw, sh, sw, ph, pw, Ho, Wo;
  bool vec;

  struct State {
    int64_t col, k, frame;
    TapPos pos;  // (r, s, c) of the column
    int oh, ow;
  };

  R2P1D_HD void start(State& st, int64_t col, int64_t k) const {
    st.col = col;
    st.k = k;
    st.pos = TapPos::of(col, Cin, kw);
    const int64_t q = k / Wo;
    st.ow = static_cast<int>(k - q * Wo);
    st.oh = static_cast<int>(q % Ho);
    st.frame = q / Ho;
  }

  // Where tap t reads x at the state's output pixel, or nullptr in the padding.
  R2P1D_HD const g_t* at(const State& st, const TapPos& t) const {
    const int ih = st.oh * sh - ph + t.r, iw = st.ow * sw - pw + t.s;
    if (ih < 0 || ih >= H || iw < 0 || iw >= W) return nullptr;
    return x + ((st.frame * H + ih) * W + iw) * Cin + t.c;
  }

  // Element (col, p) at the state's pixel: 1 for the ones column, 0 outside.
  R2P1D_HD float element(const State& st, int64_t col) const {
    const int64_t ones = rows - 1;
    if (col >= ones) return col == ones ? 1.f : 0.f;
    const g_t* p = at(st, TapPos::of(col, Cin, kw));
    return p ? Elem<EK>::to_float(ldg(p)) : 0.f;
  }

  R2P1D_HD Vec16 load(const State& st) const {
    if (st.k >= K) return C::zero();
    if (vec && st.col < rows - 1) {  // the chunk is one (r, s) and kV channels
      const g_t* p = at(st, st.pos);
      return p ? C::to_smem(load16(p)) : C::zero();
    }
    Vec16 out = C::zero();
    for (int e = 0; e < C::kV && st.col + e < rows; ++e) C::set(out, e, Elem<EK>::smem_from_float(element(st, st.col + e)));
    return out;
  }

  R2P1D_HD void advance(State& st, int dk) const {
    st.k += dk;
    st.ow += dk;
    while (st.ow >= Wo) {
      st.ow -= Wo;
      if (++st.oh == Ho) {
        st.oh = 0;
        ++st.frame;
      }
    }
  }
};

// ---------------------------------------------------------------------------------------
// B of the temporal weight gradient: B(col, p) = relu(bn(y)) at (n, to*st - pt + tap, hw,
// m), col = (tap, m) with m fastest, p = output position (n, to, hw); the extra column
// col == kt*M is all ones (the bias gradient). M/N-major.
template <ElemKind EK>
struct TemporalMN {
  using C = Chunk<EK>;
  using g_t = typename C::g_t;
  static constexpr bool kKMajor = false;
  const g_t* y;
  BnRelu bn;
  int64_t rows, K;  // rows = kt*M + 1 columns, K = N*To*HW
  int T, HW, M, To, st, pt;
  bool vec;

  struct State {
    int64_t col, k, n;
    TapInner pos;  // (tap, m) of the column
    int to, hw;
  };

  R2P1D_HD void start(State& s, int64_t col, int64_t k) const {
    s.col = col;
    s.k = k;
    s.pos = TapInner::of(col, M);
    const int64_t q = k / HW;
    s.hw = static_cast<int>(k - q * HW);
    s.to = static_cast<int>(q % To);
    s.n = q / To;
  }

  // Offset of (tap, m) at the state's position in y, or -1 in the temporal padding.
  R2P1D_HD int64_t offset(const State& s, int tap, int m) const {
    const int ti = s.to * st - pt + tap;
    if (ti < 0 || ti >= T) return -1;
    return ((s.n * T + ti) * HW + s.hw) * static_cast<int64_t>(M) + m;
  }

  R2P1D_HD float element(const State& s, int64_t col) const {
    const int64_t ones = rows - 1;
    if (col >= ones) return col == ones ? 1.f : 0.f;
    const TapInner t = TapInner::of(col, M);
    const int64_t off = offset(s, t.tap, t.c);
    return off < 0 ? 0.f : bn(Elem<EK>::to_float(ldg(y + off)), t.c);
  }

  R2P1D_HD Vec16 load(const State& s) const {
    if (s.k >= K) return C::zero();
    if (vec && s.col < rows - 1) {
      const int64_t off = offset(s, s.pos.tap, s.pos.c);
      if (off < 0) return C::zero();
      const int m0 = s.pos.c;
      return map_chunk<EK>(load16(y + off), [&](float v, int e) { return bn(v, m0 + e); });
    }
    Vec16 out = C::zero();
    for (int e = 0; e < C::kV && s.col + e < rows; ++e) C::set(out, e, Elem<EK>::smem_from_float(element(s, s.col + e)));
    return out;
  }

  R2P1D_HD void advance(State& s, int dk) const {
    s.k += dk;
    s.hw += dk;
    while (s.hw >= HW) {
      s.hw -= HW;
      if (++s.to == To) {
        s.to = 0;
        ++s.n;
      }
    }
  }
};

}  // namespace r2p1d::tc
