// The K-major operand loaders: A of the spatial forward (im2col of x), of the temporal
// forward and input gradient (along time), of the spatial input gradient (grad_y gathered),
// and the forward weights (loaders/common.h has the loaders' overview).
#pragma once
#include "common.h"

namespace r2p1d::tc {

// A of the spatial forward: im2col of x (frames, H, W, C) for output pixel `row` =
// (frame, oh, ow) and k = (r, s, c), c fastest. K-major.
template <ElemKind EK>
struct Im2colK {
  using C = Chunk<EK>;
  static constexpr bool kKMajor = true;
  g_ptr<EK> x;
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

  R2P1D_HD void advance(State& st, int dk) const {
    st.k += dk;
    st.pos.advance(dk, Cin, kw);
  }

  R2P1D_HD g_ptr<EK> at(const State& st, int r, int s, int c) const {
    const int ih = st.ih0 + r, iw = st.iw0 + s;
    if (ih < 0 || ih >= H || iw < 0 || iw >= W) return nullptr;
    return x + ((st.frame * H + ih) * W + iw) * Cin + c;
  }

  R2P1D_HD Vec16 load(const State& st) const {
    if (st.frame < 0) return C::zero();
    if (vec || mutated(Mutation::kVectorLoads)) {
      if (st.k >= K) return C::zero();
      g_ptr<EK> p = at(st, st.pos.r, st.pos.s, st.pos.c);
      return p ? C::to_smem(load16(p)) : C::zero();
    }
    Vec16 out = C::zero();
    R2P1D_UNROLL  // constant indices: the chunk stays in registers
    for (int e = 0; e < C::kV; ++e) {
      if (st.k + e >= K) break;
      const TapPos pe = TapPos::of(st.k + e, Cin, kw);
      g_ptr<EK> p = at(st, pe.r, pe.s, pe.c);
      if (p) C::set(out, e, Elem<EK>::to_smem(ldg(p)));
    }
    return out;
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
  static constexpr bool kKMajor = true;
  g_ptr<EK> src;
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

  R2P1D_HD void advance(State& s, int dk) const {
    s.k += dk;
    s.pos.advance(dk, Cs);
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

  R2P1D_HD g_ptr<EK> at(const State& s, int tap, int c) const {
    const int ti = source_step(s.t, tap);
    return ti < 0 ? nullptr : src + s.base + static_cast<int64_t>(ti) * HW * Cs + c;
  }

  R2P1D_HD Vec16 load(const State& s) const {
    if (s.base < 0) return C::zero();
    if (vec) {
      if (s.k >= K) return C::zero();
      g_ptr<EK> p = at(s, s.pos.tap, s.pos.c);
      if (!p) return C::zero();
      const Vec16 g = load16(p);
      if (!bn.on()) return C::to_smem(g);
      const int c0 = s.pos.c;
      return map_chunk<EK>(g, [&](float v, int e) { return bn(v, c0 + e); });
    }
    Vec16 out = C::zero();
    R2P1D_UNROLL  // constant indices: the chunk stays in registers
    for (int e = 0; e < C::kV; ++e) {
      if (s.k + e >= K) break;
      const TapInner pe = TapInner::of(s.k + e, Cs);
      g_ptr<EK> p = at(s, pe.tap, pe.c);
      if (!p) continue;
      const float v = Elem<EK>::to_float(ldg(p));
      C::set(out, e, Elem<EK>::smem_from_float(bn.on() ? bn(v, pe.c) : v));
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// A of the spatial input gradient: row = input pixel (frame, h, w), k = (r, s, m), m
// fastest; the element is the total gradient of y at the output pixel whose window puts
// tap (r, s) on (h, w): oh = (h + ph - r) / sh where it divides and lies inside.
template <ElemKind EK>
struct SpatialDgradK {
  using C = Chunk<EK>;
  static constexpr bool kKMajor = true;
  g_ptr<EK> gy;
  g_ptr<EK> y;  // read with `total`
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

  R2P1D_HD void advance(State& st, int dk) const {
    st.k += dk;
    st.pos.advance(dk, M, kw);
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
    R2P1D_UNROLL  // constant indices: the chunk stays in registers
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
};

// ---------------------------------------------------------------------------------------
// A dense row-major matrix (rows, K), K-major: the weights of both forwards, in
// channels-last order ((M, kh, kw, C) and (O, kt, M)).
template <ElemKind EK>
struct DenseK {
  using C = Chunk<EK>;
  static constexpr bool kKMajor = true;
  g_ptr<EK> w;
  int64_t rows, K;
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
    if (s.row >= rows + mutated(Mutation::kRowBound)) return C::zero();
    g_ptr<EK> p = w + s.row * K + s.k;
    if (vec) return s.k < K ? C::to_smem(load16(p)) : C::zero();
    Vec16 out = C::zero();
    R2P1D_UNROLL  // constant indices: the chunk stays in registers
    for (int e = 0; e < C::kV; ++e) {
      if (s.k + e >= K) break;
      C::set(out, e, Elem<EK>::to_smem(ldg(p + e)));
    }
    return out;
  }
};

}  // namespace r2p1d::tc
