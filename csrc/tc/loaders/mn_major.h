// The M/N-major operand loaders: the input gradients' weights, A of both weight gradients
// (output gradients) and their B (im2col of x, and y along time with BatchNorm+ReLU), each
// with a ones column for the bias gradient (loaders/common.h has the loaders' overview).
#pragma once
#include "common.h"

namespace r2p1d::tc {

// B of both input gradients: the forward weight read as B(col, k) with k = (tap, q), q
// fastest, at w[q * ld_q + tap * ld_tap + col]: contiguous along col (M/N-major).
// Spatial: col = input channel c, q = m, weight (M, kh, kw, C). Temporal: col = mid
// channel m, q = o, weight (O, kt, M).
template <ElemKind EK>
struct WeightMN {
  using C = Chunk<EK>;
  static constexpr bool kKMajor = false;
  g_ptr<EK> w;
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

  R2P1D_HD void advance(State& s, int dk) const {
    s.k += dk;
    s.pos.advance(dk, Q);
  }

  R2P1D_HD Vec16 load(const State& s) const {
    if (s.k >= K) return C::zero();
    g_ptr<EK> p = w + s.pos.c * ld_q + s.pos.tap * ld_tap + s.col;
    if (vec) return s.col < rows ? C::to_smem(load16(p)) : C::zero();
    Vec16 out = C::zero();
    R2P1D_UNROLL  // constant indices: the chunk stays in registers
    for (int e = 0; e < C::kV; ++e) {
      if (s.col + e >= rows) break;
      C::set(out, e, Elem<EK>::to_smem(ldg(p + e)));
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// A of both weight gradients: A(row, p) = src[p * ld + row], a channels-last tensor read
// with its channel as the GEMM row and its pixel as k (M/N-major). For the spatial weight
// gradient, src = grad_y with the statistics' share added (total.on(), y read beside it).
template <ElemKind EK>
struct MatrixMN {
  using C = Chunk<EK>;
  static constexpr bool kKMajor = false;
  g_ptr<EK> src;
  g_ptr<EK> y;
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

  R2P1D_HD void advance(State& s, int dk) const { s.k += dk; }

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
    R2P1D_UNROLL  // constant indices: the chunk stays in registers
    for (int e = 0; e < C::kV; ++e) {
      if (s.row + e >= rows) break;
      float v = Elem<EK>::to_float(ldg(src + off + e));
      if (total.on()) v = total(v, Elem<EK>::to_float(ldg(y + off + e)), s.row + e);
      C::set(out, e, Elem<EK>::smem_from_float(v));
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// B of the spatial weight gradient: B(col, p) = im2col of x, col = (r, s, c) with c
// fastest, p = output pixel (frame, oh, ow). The extra column col == taps*C is all ones,
// so that the same GEMM gives the bias gradient (sum over p of A). M/N-major.
template <ElemKind EK>
struct Im2colMN {
  using C = Chunk<EK>;
  static constexpr bool kKMajor = false;
  g_ptr<EK> x;
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

  // Where tap t reads x at the state's output pixel, or nullptr in the padding.
  R2P1D_HD g_ptr<EK> at(const State& st, const TapPos& t) const {
    const int ih = st.oh * sh - ph + t.r, iw = st.ow * sw - pw + t.s;
    if (ih < 0 || ih >= H || iw < 0 || iw >= W) return nullptr;
    return x + ((st.frame * H + ih) * W + iw) * Cin + t.c;
  }

  // Element (col, p) at the state's pixel, col at (r, s, c) = t: 1 for the ones column,
  // 0 outside.
  R2P1D_HD float element(const State& st, int64_t col, const TapPos& t) const {
    const int64_t ones = rows - 1;
    if (col >= ones) return col == ones ? 1.f : 0.f;
    g_ptr<EK> p = at(st, t);
    return p ? Elem<EK>::to_float(ldg(p)) : 0.f;
  }

  R2P1D_HD Vec16 load(const State& st) const {
    if (st.k >= K) return C::zero();
    if (vec && st.col < rows - 1) {  // the chunk is one (r, s) and kV channels
      g_ptr<EK> p = at(st, st.pos);
      return p ? C::to_smem(load16(p)) : C::zero();
    }
    Vec16 out = C::zero();
    TapPos t = st.pos;  // walked column by column: no division per element
    R2P1D_UNROLL  // constant indices: the chunk stays in registers
    for (int e = 0; e < C::kV; ++e) {
      if (st.col + e >= rows) break;
      C::set(out, e, Elem<EK>::smem_from_float(element(st, st.col + e, t)));
      t.advance(1, Cin, kw);
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// B of the temporal weight gradient: B(col, p) = relu(bn(y)) at (n, to*st - pt + tap, hw,
// m), col = (tap, m) with m fastest, p = output position (n, to, hw); the extra column
// col == kt*M is all ones (the bias gradient). M/N-major.
template <ElemKind EK>
struct TemporalMN {
  using C = Chunk<EK>;
  static constexpr bool kKMajor = false;
  g_ptr<EK> y;
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

  // Offset of (tap, m) at the state's position in y, or -1 in the temporal padding.
  R2P1D_HD int64_t offset(const State& s, int tap, int m) const {
    const int ti = s.to * st - pt + tap;
    if (ti < 0 || ti >= T) return -1;
    return ((s.n * T + ti) * HW + s.hw) * static_cast<int64_t>(M) + m;
  }

  // Element (col, p) at the state's position, col at (tap, m) = t: 1 for the ones column.
  R2P1D_HD float element(const State& s, int64_t col, const TapInner& t) const {
    const int64_t ones = rows - 1;
    if (col >= ones) return col == ones ? 1.f : 0.f;
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
    TapInner t = s.pos;  // walked column by column: no division per element
    R2P1D_UNROLL  // constant indices: the chunk stays in registers
    for (int e = 0; e < C::kV; ++e) {
      if (s.col + e >= rows) break;
      C::set(out, e, Elem<EK>::smem_from_float(element(s, s.col + e, t)));
      t.advance(1, M);
    }
    return out;
  }
};

}  // namespace r2p1d::tc
