// The M/N-major operand loaders: the input gradients' weights, A of both weight gradients
// (output gradients) and their B (im2col of x, and y along time with BatchNorm+ReLU), each
// with an optional column of ones for the bias gradient (loaders/common.h has the loaders'
// overview). A chunk runs along the operand's rows or columns at one k; its pieces are
// consecutive there.
#pragma once
#include "common.h"

namespace r2p1d::tc {

// The chunk with the ones column (GEMM column `ones`) in it, for a chunk starting at column
// `col` at pixel k < K: 1 in that element, zeros elsewhere. False when the chunk holds no
// ones column (ones < 0: none).
template <ElemKind EK>
R2P1D_HD bool ones_chunk(int64_t ones, int64_t col, int64_t k, int64_t K, Vec16& v) {
  using C = Chunk<EK>;
  if (ones < 0 || col + C::kV <= ones) return false;
  v = C::zero();
  if (k < K && col <= ones) C::set(v, static_cast<int>(ones - col), Elem<EK>::smem_from_float(1.f));
  return true;
}

// B of both input gradients: the forward weight read as B(col, k) with k = (tap, q), q
// fastest, at w[q * ld_q + tap * ld_tap + col]: contiguous along col (M/N-major).
// Spatial: col = input channel c, q = m, weight (M, kh, kw, C). Temporal: col = mid
// channel m, q = o, weight (O, kt, M).
template <ElemKind EK>
struct WeightMN {
  using C = Chunk<EK>;
  using Raw = RawChunk;
  static constexpr bool kKMajor = false;
  static constexpr int kEs = sizeof(typename Elem<EK>::gmem_t);
  g_ptr<EK> w;
  int64_t rows, K;  // rows: the extent along col
  int Q;
  int64_t ld_q, ld_tap;
  int width;
  bool async;
  ChannelVectors vec{};

  struct State {
    int64_t col, k;
    TapInner pos;  // (tap, q) of k
  };

  R2P1D_HD const void* base() const { return w; }
  R2P1D_HD void start(State& s, int64_t col, int64_t k) const {
    s.col = col;
    s.k = k;
    s.pos = TapInner::of(k, Q);
  }
  R2P1D_HD void advance(State& s, int dk) const {
    s.k += dk;
    s.pos.advance(dk, Q);
  }
  R2P1D_HD g_ptr<EK> at(const State& s) const { return w + s.pos.c * ld_q + s.pos.tap * ld_tap + s.col; }

  R2P1D_HD const void* source(const State& s) const { return s.k < K && s.col < rows ? at(s) : nullptr; }
  R2P1D_HD bool constant(const State&, Vec16&) const { return false; }

  R2P1D_HD Raw load(const State& s) const {
    Raw r{C::zero(), 0u};
    if (s.k >= K) return r;
    g_ptr<EK> p = at(s);
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs;
      R2P1D_UNROLL
      for (int j = 0; j < 16 / Wd; ++j) {
        Scope piece(j);
        if (s.col + j * n < rows) {
          load_piece<Wd>(r.data, j, p + j * n);
          r.valid |= low_bits(n) << (j * n);
        }
      }
    });
    return r;
  }

  R2P1D_HD Vec16 to_smem(const Raw& r, const State&, const float*) const { return C::to_smem(r.data); }
};

// ---------------------------------------------------------------------------------------
// A of both weight gradients: A(row, p) = src[p * ld + row], a channels-last tensor read
// with its channel as the GEMM row and its pixel as k (M/N-major). For the spatial weight
// gradient, src = grad_y with the statistics' share added (vec.on(): mu, ca, cb; y read
// beside it).
template <ElemKind EK>
struct MatrixMN {
  using C = Chunk<EK>;
  using Raw = RawPair;
  static constexpr bool kKMajor = false;
  static constexpr int kEs = sizeof(typename Elem<EK>::gmem_t);
  g_ptr<EK> src;
  g_ptr<EK> y;
  int64_t rows, K, ld;
  int width;
  bool async;
  ChannelVectors vec;

  struct State {
    int64_t k;
    int row;  // a channel: 32-bit (registers limit the weight gradients' tiles, tc/plan.h)
  };

  R2P1D_HD const void* base() const { return src; }
  R2P1D_HD void start(State& s, int64_t row, int64_t k) const {
    s.row = static_cast<int>(row);
    s.k = k;
  }
  R2P1D_HD void advance(State& s, int dk) const { s.k += dk; }

  R2P1D_HD const void* source(const State& s) const {
    return s.k < K && s.row < rows ? src + s.k * ld + s.row : nullptr;
  }
  R2P1D_HD bool constant(const State&, Vec16&) const { return false; }

  R2P1D_HD Raw load(const State& s) const {
    Raw r{C::zero(), C::zero(), 0u};
    if (s.k >= K) return r;
    const int64_t off = s.k * ld + s.row;
    const bool share = vec.on();
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs;
      R2P1D_UNROLL
      for (int j = 0; j < 16 / Wd; ++j) {
        Scope piece(j);
        if (s.row + j * n < rows) {
          load_piece<Wd>(r.data, j, src + off + j * n);
          if (share) load_piece<Wd>(r.aux, j, y + off + j * n);
          r.valid |= low_bits(n) << (j * n);
        }
      }
    });
    return r;
  }

  // The statistics' share: channels row..row+kV-1, whole 16-byte loads of the staged vectors
  // (row is a multiple of kV, and the vectors have room past their last channel).
  R2P1D_HD Vec16 to_smem(const Raw& r, const State& s, const float* staged) const {
    if (!vec.on()) return C::to_smem(r.data);
    if (r.valid == 0) return C::zero();  // rows past the channels: no vector entries to read
    constexpr int kV = C::kV;
    const int pitch = vec.pitch();
    const int c0 = static_cast<int>(s.row);
    float mu[kV], ca[kV], cb[kV];
    staged_entries<kV>(staged, pitch, 0, c0, mu);
    staged_entries<kV>(staged, pitch, 1, c0, ca);
    staged_entries<kV>(staged, pitch, 2, c0, cb);
    return map_valid<EK>(r.data, r.valid, [&](float g, int e) {
      return grad_total(g, Elem<EK>::to_float(C::get(r.aux, e)), mu[e], ca[e], cb[e]);
    });
  }
};

// ---------------------------------------------------------------------------------------
// B of the spatial weight gradient: B(col, p) = im2col of x, col = (r, s, c) with c
// fastest, p = output pixel (frame, oh, ow). With the bias gradient, column taps*C is all
// ones (`ones`; -1: none), so that the same GEMM gives sum over p of A. M/N-major.
template <ElemKind EK>
struct Im2colMN {
  using C = Chunk<EK>;
  using Raw = RawChunk;
  static constexpr bool kKMajor = false;
  static constexpr int kEs = sizeof(typename Elem<EK>::gmem_t);
  g_ptr<EK> x;
  int64_t rows, K, ones;  // rows: GEMM columns (taps*C, + 1 with ones); K: output pixels
  int H, W, Cin, kw, sh, sw, ph, pw, Ho, Wo;
  int width;
  bool async;
  ChannelVectors vec{};

  struct State {
    int64_t col, k, frame;
    TapPos pos;  // (r, s, c) of the column
    int oh, ow;
  };

  R2P1D_HD const void* base() const { return x; }

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

  // Columns of x: all but the ones column.
  R2P1D_HD int64_t x_cols() const { return ones >= 0 ? ones : rows; }

  R2P1D_HD const void* source(const State& st) const {
    return st.k < K && st.col < x_cols() ? at(st, st.pos) : nullptr;
  }
  R2P1D_HD bool constant(const State& st, Vec16& v) const { return ones_chunk<EK>(ones, st.col, st.k, K, v); }

  R2P1D_HD Raw load(const State& st) const {
    Raw r{C::zero(), 0u};
    if (st.k >= K) return r;
    const int64_t xc = x_cols();
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs;
      TapPos t = st.pos;
      R2P1D_UNROLL
      for (int j = 0; j < 16 / Wd; ++j) {
        Scope piece(j);
        if (st.col + j * n < xc) {
          if (g_ptr<EK> q = at(st, t)) {
            load_piece<Wd>(r.data, j, q);
            r.valid |= low_bits(n) << (j * n);
          }
        }
        if (j + 1 < 16 / Wd) t.step(n, Cin, kw);
      }
    });
    return r;
  }

  R2P1D_HD Vec16 to_smem(const Raw& r, const State& st, const float*) const {
    Vec16 v = C::to_smem(r.data);
    Vec16 one;
    if (ones_chunk<EK>(ones, st.col, st.k, K, one)) {
      R2P1D_UNROLL
      for (int i = 0; i < 4; ++i) v.w[i] |= one.w[i];  // the ones column is past every x column
    }
    return v;
  }
};

// ---------------------------------------------------------------------------------------
// B of the temporal weight gradient: B(col, p) = relu(bn(y)) at (n, to*st - pt + tap, hw,
// m), col = (tap, m) with m fastest, p = output position (n, to, hw); with the bias
// gradient, column kt*M is all ones. M/N-major, always through registers (the prologue).
template <ElemKind EK>
struct TemporalMN {
  using C = Chunk<EK>;
  using Raw = RawChunk;
  static constexpr bool kKMajor = false;
  static constexpr int kEs = sizeof(typename Elem<EK>::gmem_t);
  g_ptr<EK> y;
  int64_t rows, K, ones;  // rows: GEMM columns (kt*M, + 1 with ones); K = N*To*HW
  int T, HW, M, To, st, pt;
  int width;
  bool async;  // never: BatchNorm+ReLU is applied on the way
  ChannelVectors vec;

  // 32-bit where the value is bounded by a dimension (a column, a sample index): registers
  // are what limits this loader's tiles (tc/plan.h).
  struct State {
    int64_t k;
    int col, n;
    TapInner pos;  // (tap, m) of the column
    int to, hw;
  };

  R2P1D_HD const void* base() const { return y; }

  R2P1D_HD void start(State& s, int64_t col, int64_t k) const {
    s.col = static_cast<int>(col);
    s.k = k;
    s.pos = TapInner::of(col, M);
    const int64_t q = k / HW;
    s.hw = static_cast<int>(k - q * HW);
    s.to = static_cast<int>(q % To);
    s.n = static_cast<int>(q / To);
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

  // Offset of channel 0 of tap `tap` at the state's position in y, or -1 in the temporal
  // padding.
  R2P1D_HD int64_t tap_offset(const State& s, int tap) const {
    const int ti = s.to * st - pt + tap;
    if (ti < 0 || ti >= T) return -1;
    return ((static_cast<int64_t>(s.n) * T + ti) * HW + s.hw) * static_cast<int64_t>(M);
  }
  R2P1D_HD int64_t offset(const State& s, const TapInner& t) const {
    const int64_t base = tap_offset(s, t.tap);
    return base < 0 ? -1 : base + t.c;
  }

  R2P1D_HD int64_t y_cols() const { return ones >= 0 ? ones : rows; }

  R2P1D_HD const void* source(const State& s) const {
    if (s.k >= K || s.col >= y_cols()) return nullptr;
    const int64_t off = offset(s, s.pos);
    return off < 0 ? nullptr : y + off;
  }
  R2P1D_HD bool constant(const State& s, Vec16& v) const { return ones_chunk<EK>(ones, s.col, s.k, K, v); }

  R2P1D_HD Raw load(const State& s) const {
    Raw r{C::zero(), 0u};
    if (s.k >= K) return r;
    const int64_t yc = y_cols();
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs;
      // The tap's offset is recomputed only when a piece crosses into the next tap: the
      // narrow pieces then cost an addition each (and few registers, tc/plan.h).
      TapInner t = s.pos;
      int64_t base = tap_offset(s, t.tap);
      if constexpr (Wd == 2) {
        // Eight 2-byte pieces in a loop that is not unrolled, each shifted in at the top of
        // the chunk (piece j ends at element j): unrolled, this path alone cost the 128x128
        // tile of this GEMM 70 registers and a spill (ptxas -v, tests/test_tc_resources.py).
        R2P1D_NO_UNROLL
        for (int j = 0; j < 8; ++j) {
          Scope piece(j);
          uint32_t h = 0;
          if (s.col + j < yc && base >= 0) {
            h = load_half(y + base + t.c);
            r.valid |= 1u << j;
          }
          R2P1D_UNROLL
          for (int i = 0; i < 3; ++i) r.data.w[i] = (r.data.w[i] >> 16) | (r.data.w[i + 1] << 16);
          r.data.w[3] = (r.data.w[3] >> 16) | (h << 16);
          const int tap = t.tap;
          t.step(1, M);
          if (t.tap != tap) base = tap_offset(s, t.tap);
        }
      } else {
        R2P1D_UNROLL
        for (int j = 0; j < 16 / Wd; ++j) {
          Scope piece(j);
          if (s.col + j * n < yc && base >= 0) {
            load_piece<Wd>(r.data, j, y + base + t.c);
            r.valid |= low_bits(n) << (j * n);
          }
          if (j + 1 < 16 / Wd) {
            const int tap = t.tap;
            t.step(n, M);
            if (t.tap != tap) base = tap_offset(s, t.tap);
          }
        }
      }
    });
    return r;
  }

  // BatchNorm+ReLU from the staged (mean, scale, shift), then the ones column.
  R2P1D_HD Vec16 to_smem(const Raw& r, const State& s, const float* staged) const {
    constexpr int kV = C::kV;
    const int pitch = vec.pitch();
    Vec16 v = C::zero();
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value;
      if constexpr (Wd == 16) {
        // Four channels at a time: 12 staged floats live, not 24 (registers, tc/plan.h).
        R2P1D_UNROLL
        for (int q = 0; q < kV / 4; ++q) {
          float mean[4], scale[4], shift[4];
          staged_entries<4>(staged, pitch, 0, s.pos.c + 4 * q, mean);
          staged_entries<4>(staged, pitch, 1, s.pos.c + 4 * q, scale);
          staged_entries<4>(staged, pitch, 2, s.pos.c + 4 * q, shift);
          const Vec16 part = map_valid<EK>(r.data, r.valid & (0xfu << (4 * q)), [&](float x, int e) {
            return bn_relu(x, mean[e & 3], scale[e & 3], shift[e & 3]);
          });
          R2P1D_UNROLL
          for (int i = 0; i < 4; ++i) v.w[i] |= part.w[i];
        }
      } else {
        int ch[kV];
        piece_channels<kV, Wd / kEs>(s.pos, M, ch);
        v = map_valid<EK>(r.data, r.valid, [&](float x, int e) {
          return bn_relu(x, mem_load(staged + ch[e]), mem_load(staged + pitch + ch[e]),
                         mem_load(staged + 2 * pitch + ch[e]));
        });
      }
    });
    Vec16 one;
    if (ones_chunk<EK>(ones, s.col, s.k, K, one)) {
      R2P1D_UNROLL
      for (int i = 0; i < 4; ++i) v.w[i] |= one.w[i];
    }
    return v;
  }
};

}  // namespace r2p1d::tc
