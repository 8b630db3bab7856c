// The K-major operand loaders: A of the spatial forward (im2col of x), of the temporal
// forward and input gradient (along time), of the spatial input gradient (grad_y gathered),
// and the forward weights (loaders/common.h has the loaders' overview). Pieces of a chunk
// are consecutive along K: each lies inside one tap (the host picks a width that divides the
// channel run), and the next piece's tap and channel are walked from the previous one.
#pragma once
#include "common.h"

namespace r2p1d::tc {

// The channel of each element of a chunk whose pieces (n elements each) start at the walked
// positions of a TapInner/TapPos `p` over `inner` channels (narrow pieces only).
template <int kV, int n, class Pos, class... Extent>
R2P1D_HD void piece_channels(Pos p, int inner, int (&ch)[kV], Extent... kw) {
  R2P1D_UNROLL
  for (int j = 0; j < kV / n; ++j) {
    R2P1D_UNROLL
    for (int i = 0; i < n; ++i) ch[j * n + i] = p.c + i;
    if (j + 1 < kV / n) p.step(n, inner, kw...);
  }
}

// A of the spatial forward: im2col of x (frames, H, W, C) for output pixel `row` =
// (frame, oh, ow) and k = (r, s, c), c fastest. K-major.
template <ElemKind EK>
struct Im2colK {
  using C = Chunk<EK>;
  using Raw = RawChunk;
  static constexpr bool kKMajor = true;
  static constexpr int kEs = sizeof(typename Elem<EK>::gmem_t);
  g_ptr<EK> x;
  int64_t rows, K;
  int H, W, Cin, kw, sh, sw, ph, pw, Ho, Wo;
  int width;   // bytes per global load: 16, 8, 4 or 2
  bool async;  // chunks copied by cp.async (width 16)
  ChannelVectors vec{};

  struct State {
    int64_t frame;  // -1: row out of range
    int ih0, iw0;
    TapPos pos;  // (r, s, c) of k
    int64_t k;
  };

  R2P1D_HD const void* base() const { return x; }

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

  R2P1D_HD g_ptr<EK> at(const State& st, const TapPos& p) const {
    const int ih = st.ih0 + p.r, iw = st.iw0 + p.s;
    if (ih < 0 || ih >= H || iw < 0 || iw >= W) return nullptr;
    return x + ((st.frame * H + ih) * W + iw) * Cin + p.c;
  }

  R2P1D_HD const void* source(const State& st) const {
    return st.frame < 0 || st.k >= K ? nullptr : at(st, st.pos);
  }
  R2P1D_HD bool constant(const State&, Vec16&) const { return false; }

  R2P1D_HD Raw load(const State& st) const {
    Raw r{C::zero(), 0u};
    if (st.frame < 0) return r;
    with_width<kEs>(mutated(Mutation::kVectorLoads) ? 16 : width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs;
      TapPos p = st.pos;
      R2P1D_UNROLL
      for (int j = 0; j < 16 / Wd; ++j) {
        Scope piece(j);
        if (st.k + j * n < K) {
          if (g_ptr<EK> q = at(st, p)) {
            load_piece<Wd>(r.data, j, q);
            r.valid |= low_bits(n) << (j * n);
          }
        }
        if (j + 1 < 16 / Wd) p.step(n, Cin, kw);
      }
    });
    return r;
  }

  R2P1D_HD Vec16 to_smem(const Raw& r, const State&, const float*) const { return C::to_smem(r.data); }
};

// ---------------------------------------------------------------------------------------
// A of the temporal forward and of the temporal input gradient: row = (n, t, hw) of the
// output, k = (tap, c), c fastest, from src (N, Tsrc, HW, Cs). Forward: source step
// t*st - pt + tap, with BatchNorm+ReLU applied (vec.on(): mean, scale, shift). Transposed
// (the input gradient of a temporal conv, src = grad_out): source step (t + pt - tap) / st
// where it divides.
template <ElemKind EK>
struct TemporalK {
  using C = Chunk<EK>;
  using Raw = RawChunk;
  static constexpr bool kKMajor = true;
  static constexpr int kEs = sizeof(typename Elem<EK>::gmem_t);
  g_ptr<EK> src;
  int64_t rows, K;
  int Trow, Tsrc, HW, Cs, st, pt;
  bool transposed;
  int width;
  bool async;
  ChannelVectors vec;

  struct State {
    int64_t base;  // offset of (n, 0, hw, 0) in src; -1: row out of range
    int t;
    TapInner pos;  // (tap, c) of k
    int64_t k;
  };

  R2P1D_HD const void* base() const { return src; }

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

  R2P1D_HD g_ptr<EK> at(const State& s, const TapInner& p) const {
    const int ti = source_step(s.t, p.tap);
    return ti < 0 ? nullptr : src + s.base + static_cast<int64_t>(ti) * HW * Cs + p.c;
  }

  R2P1D_HD const void* source(const State& s) const {
    return s.base < 0 || s.k >= K ? nullptr : at(s, s.pos);
  }
  R2P1D_HD bool constant(const State&, Vec16&) const { return false; }

  R2P1D_HD Raw load(const State& s) const {
    Raw r{C::zero(), 0u};
    if (s.base < 0) return r;
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs;
      TapInner p = s.pos;
      R2P1D_UNROLL
      for (int j = 0; j < 16 / Wd; ++j) {
        Scope piece(j);
        if (s.k + j * n < K) {
          if (g_ptr<EK> q = at(s, p)) {
            load_piece<Wd>(r.data, j, q);
            r.valid |= low_bits(n) << (j * n);
          }
        }
        if (j + 1 < 16 / Wd) p.step(n, Cs);
      }
    });
    return r;
  }

  // BatchNorm+ReLU from the staged (mean, scale, shift), when on.
  R2P1D_HD Vec16 to_smem(const Raw& r, const State& s, const float* staged) const {
    if (!vec.on()) return C::to_smem(r.data);
    constexpr int kV = C::kV;
    const int pitch = vec.pitch();
    Vec16 out = C::zero();
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value;
      if constexpr (Wd == 16) {  // one tap, channels c0..c0+kV-1: whole 16-byte vector loads
        float mean[kV], scale[kV], shift[kV];
        staged_entries<kV>(staged, pitch, 0, s.pos.c, mean);
        staged_entries<kV>(staged, pitch, 1, s.pos.c, scale);
        staged_entries<kV>(staged, pitch, 2, s.pos.c, shift);
        out = map_valid<EK>(r.data, r.valid, [&](float v, int e) { return bn_relu(v, mean[e], scale[e], shift[e]); });
      } else {
        int ch[kV];
        piece_channels<kV, Wd / kEs>(s.pos, Cs, ch);
        out = map_valid<EK>(r.data, r.valid, [&](float v, int e) {
          return bn_relu(v, mem_load(staged + ch[e]), mem_load(staged + pitch + ch[e]),
                         mem_load(staged + 2 * pitch + ch[e]));
        });
      }
    });
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// A of the spatial input gradient: row = input pixel (frame, h, w), k = (r, s, m), m
// fastest; the element is the total gradient of y at the output pixel whose window puts
// tap (r, s) on (h, w): oh = (h + ph - r) / sh where it divides and lies inside. With the
// statistics' share on (vec.on(): mu, ca, cb), y is read beside grad_y.
template <ElemKind EK>
struct SpatialDgradK {
  using C = Chunk<EK>;
  using Raw = RawPair;
  static constexpr bool kKMajor = true;
  static constexpr int kEs = sizeof(typename Elem<EK>::gmem_t);
  g_ptr<EK> gy;
  g_ptr<EK> y;  // read with the share
  int64_t rows, K;
  int H, W, M, kw, sh, sw, ph, pw, Ho, Wo;
  int width;
  bool async;
  ChannelVectors vec;

  struct State {
    int64_t frame;  // -1: row out of range
    int h, w;
    TapPos pos;  // (r, s, m) of k
    int64_t k;
  };

  R2P1D_HD const void* base() const { return gy; }

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
  R2P1D_HD int64_t offset(const State& st, const TapPos& p) const {
    const int oh_num = st.h + ph - p.r, ow_num = st.w + pw - p.s;
    if (oh_num < 0 || ow_num < 0 || oh_num % sh != 0 || ow_num % sw != 0) return -1;
    const int oh = oh_num / sh, ow = ow_num / sw;
    if (oh >= Ho || ow >= Wo) return -1;
    return ((st.frame * Ho + oh) * Wo + ow) * M + p.c;
  }

  R2P1D_HD const void* source(const State& st) const {
    if (st.frame < 0 || st.k >= K) return nullptr;
    const int64_t off = offset(st, st.pos);
    return off < 0 ? nullptr : gy + off;
  }
  R2P1D_HD bool constant(const State&, Vec16&) const { return false; }

  R2P1D_HD Raw load(const State& st) const {
    Raw r{C::zero(), C::zero(), 0u};
    if (st.frame < 0) return r;
    const bool share = vec.on();
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs;
      TapPos p = st.pos;
      R2P1D_UNROLL
      for (int j = 0; j < 16 / Wd; ++j) {
        Scope piece(j);
        if (st.k + j * n < K) {
          const int64_t off = offset(st, p);
          if (off >= 0) {
            load_piece<Wd>(r.data, j, gy + off);
            if (share) load_piece<Wd>(r.aux, j, y + off);
            r.valid |= low_bits(n) << (j * n);
          }
        }
        if (j + 1 < 16 / Wd) p.step(n, M, kw);
      }
    });
    return r;
  }

  // The statistics' share from the staged (mu, ca, cb), when on.
  R2P1D_HD Vec16 to_smem(const Raw& r, const State& s, const float* staged) const {
    if (!vec.on()) return C::to_smem(r.data);
    constexpr int kV = C::kV;
    const int pitch = vec.pitch();
    Vec16 out = C::zero();
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value;
      if constexpr (Wd == 16) {
        float mu[kV], ca[kV], cb[kV];
        staged_entries<kV>(staged, pitch, 0, s.pos.c, mu);
        staged_entries<kV>(staged, pitch, 1, s.pos.c, ca);
        staged_entries<kV>(staged, pitch, 2, s.pos.c, cb);
        out = map_valid<EK>(r.data, r.valid, [&](float g, int e) {
          return grad_total(g, Elem<EK>::to_float(C::get(r.aux, e)), mu[e], ca[e], cb[e]);
        });
      } else {
        int ch[kV];
        piece_channels<kV, Wd / kEs>(s.pos, M, ch, kw);
        out = map_valid<EK>(r.data, r.valid, [&](float g, int e) {
          return grad_total(g, Elem<EK>::to_float(C::get(r.aux, e)), mem_load(staged + ch[e]),
                            mem_load(staged + pitch + ch[e]), mem_load(staged + 2 * pitch + ch[e]));
        });
      }
    });
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// A dense row-major matrix (rows, K), K-major: the weights of both forwards, in
// channels-last order ((M, kh, kw, C) and (O, kt, M)).
template <ElemKind EK>
struct DenseK {
  using C = Chunk<EK>;
  using Raw = RawChunk;
  static constexpr bool kKMajor = true;
  static constexpr int kEs = sizeof(typename Elem<EK>::gmem_t);
  g_ptr<EK> w;
  int64_t rows, K;
  int width;
  bool async;
  ChannelVectors vec{};

  struct State {
    int64_t row, k;
  };

  R2P1D_HD const void* base() const { return w; }
  R2P1D_HD void start(State& s, int64_t row, int64_t k) const {
    s.row = row;
    s.k = k;
  }
  R2P1D_HD void advance(State& s, int dk) const { s.k += dk; }

  R2P1D_HD bool row_inside(const State& s) const { return s.row < rows + mutated(Mutation::kRowBound); }

  R2P1D_HD const void* source(const State& s) const {
    return row_inside(s) && s.k < K ? w + s.row * K + s.k : nullptr;
  }
  R2P1D_HD bool constant(const State&, Vec16&) const { return false; }

  R2P1D_HD Raw load(const State& s) const {
    Raw r{C::zero(), 0u};
    if (!row_inside(s)) return r;
    g_ptr<EK> p = w + s.row * K + s.k;
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs;
      R2P1D_UNROLL
      for (int j = 0; j < 16 / Wd; ++j) {
        Scope piece(j);
        if (s.k + j * n < K) {
          load_piece<Wd>(r.data, j, p + j * n);
          r.valid |= low_bits(n) << (j * n);
        }
      }
    });
    return r;
  }

  R2P1D_HD Vec16 to_smem(const Raw& r, const State&, const float*) const { return C::to_smem(r.data); }
};

}  // namespace r2p1d::tc
