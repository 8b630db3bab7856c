// The Winograd input, output and output-gradient transforms of F(2x2, 3x3) and F(4x4, 3x3)
// (winograd/spatial.h has the algorithm): the 1-D transforms of one column, the tile-row
// kernels written so that their loops over tiles vectorise, and the parallel transforms of
// a batch of tile rows between the activations and the point planes.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "cpu/row_kernels.h"
#include "cpu/scratch.h"
#include "plan.h"

namespace r2p1d::cpu::winograd {

// The transforms, written out (factored) in the kernels below.
// F(2x2, 3x3):
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]    A^T = [1 1 1 0; 0 1 -1 -1]
// F(4x4, 3x3):
//   B^T = [4  0 -5  0 1 0;      A^T = [1 1  1 1  1 0;      A = the transpose of A^T
//          0 -4 -4  1 1 0;             0 1 -1 2 -2 0;
//          0  4 -4 -1 1 0;             0 1  1 4  4 0;
//          0 -2 -1  2 1 0;             0 1 -1 8 -8 1]
//          0  2 -1 -2 1 0;
//          0  4  0 -5 0 1]
// (the interpolation points 0, 1, -1, 2, -2 and infinity).

// The 1-D transforms of one column. F(2x2): B^T x (4 -> 4) and A g (2 -> 4).
struct Bt4 {
  template <typename T>
  void operator()(const T (&x)[4], T (&y)[4]) const {
    y[0] = x[0] - x[2];
    y[1] = x[1] + x[2];
    y[2] = x[2] - x[1];
    y[3] = x[1] - x[3];
  }
};
struct A4 {
  template <typename T>
  void operator()(const T (&g)[2], T (&t)[4]) const {
    t[0] = g[0];
    t[1] = g[0] + g[1];
    t[2] = g[0] - g[1];
    t[3] = -g[1];
  }
};
// F(4x4): B^T x (6 -> 6), A^T y (6 -> 4) and A g (4 -> 6).
struct Bt6 {
  template <typename T>
  void operator()(const T (&x)[6], T (&y)[6]) const {
    const T s = x[4] - x[2], d = x[3] - x[1];
    y[0] = T(4) * x[0] - T(5) * x[2] + x[4];
    y[1] = (x[3] + x[4]) - T(4) * (x[1] + x[2]);
    y[2] = (x[4] - x[3]) + T(4) * (x[1] - x[2]);
    y[3] = s + T(2) * d;
    y[4] = s - T(2) * d;
    y[5] = T(4) * x[1] - T(5) * x[3] + x[5];
  }
};
struct At6 {
  template <typename T>
  void operator()(const T (&y)[6], T (&o)[4]) const {
    const T s12 = y[1] + y[2], d12 = y[1] - y[2], s34 = y[3] + y[4], d34 = y[3] - y[4];
    o[0] = y[0] + s12 + s34;
    o[1] = d12 + T(2) * d34;
    o[2] = s12 + T(4) * s34;
    o[3] = d12 + T(8) * d34 + y[5];
  }
};
struct A6 {
  template <typename T>
  void operator()(const T (&g)[4], T (&t)[6]) const {
    const T s02 = g[0] + g[2], s13 = g[1] + g[3], u = g[0] + T(4) * g[2],
            w = T(2) * g[1] + T(8) * g[3];
    t[0] = g[0];
    t[1] = s02 + s13;
    t[2] = s02 - s13;
    t[3] = u + w;
    t[4] = u - w;
    t[5] = g[3];
  }
};

// Applies a 1-D transform f (In -> Out values) to n columns t: input k of column t is
// x[off[k] + Step*t], output j goes to y[j*ys + t]. The loop over columns is the one that
// vectorises: the caller passes pointers to distinct rows, which GCC cannot prove, hence
// ivdep (without it, the alias checks of six streams exceed its limit and it gives up).
template <int In, int Out, int Step, typename T, typename F>
R2P1D_INLINE void transform_columns(
    const T* __restrict x, const int64_t (&off)[In], T* __restrict y, int64_t ys, int64_t n,
    F f) {
#pragma GCC ivdep
  for (int64_t t = 0; t < n; ++t) {
    T in[In], out[Out];
    for (int k = 0; k < In; ++k) in[k] = x[off[k] + Step * t];
    f(in, out);
    for (int j = 0; j < Out; ++j) y[j * ys + t] = out[j];
  }
}

// Tile rows per work item of the input and output-gradient transforms: enough that the
// loops over the item's tiles (G*TW of them) fill AVX-512 vectors. One tile row alone has
// only TW tiles: 7 at R(2+1)D-18's conv3_x with F(4x4), which left the loops in their
// scalar remainders.
inline int64_t rows_per_item(int64_t TW, int64_t rows) {
  return std::clamp<int64_t>((64 + TW - 1) / TW, 1, rows);
}

// The F(RxR) input transform of G tile rows, N = R + 2. d holds each tile row's N
// zero-padded input rows (row i of tile row g at d + (g*N + i)*Wp, Wp = R*TW + 2); writes
// point xi = N*a + b of tile u = g*TW + t to v[xi*ld + u]. Three passes, each a loop over
// the U = G*TW tiles with unit-stride loads and stores:
//   split: e[(i*N + k)*U + u] = d[row i of tile row g][R*t + k], the N columns of tile u;
//   B^T down the columns: f[(a*N + k)*U + u] = sum_i B^T[a][i] e[(i*N + k)*U + u];
//   B along the rows:     v[(a*N + b)*ld + u] = sum_k B^T[b][k] f[(a*N + k)*U + u].
// e and f hold N*N*U values each.
template <int R, typename T, typename Bt>
R2P1D_INLINE void input_tile_rows_impl(
    int64_t G, const T* __restrict d, T* __restrict e, T* __restrict f, int64_t Wp, int64_t TW,
    T* __restrict v, int64_t ld, Bt bt) {
  constexpr int N = R + 2;
  const int64_t U = G * TW;
  for (int64_t g = 0; g < G; ++g)
    for (int i = 0; i < N; ++i) {
      const T* __restrict x = d + (g * N + i) * Wp;
      for (int k = 0; k < N; ++k) {
        T* __restrict p = e + (i * N + k) * U + g * TW;
        for (int64_t t = 0; t < TW; ++t) p[t] = x[R * t + k];
      }
    }
  int64_t rows[N], cols[N];
  for (int i = 0; i < N; ++i) rows[i] = i * N * U, cols[i] = i * U;
  for (int k = 0; k < N; ++k)
    transform_columns<N, N, 1>(e + k * U, rows, f + k * U, N * U, U, bt);
  for (int a = 0; a < N; ++a)
    transform_columns<N, N, 1>(f + a * N * U, cols, v + a * N * ld, ld, U, bt);
}

template <typename T>
R2P1D_MULTIVERSION void input_tile_rows(int64_t R, int64_t G, const T* __restrict d,
                                        T* __restrict e, T* __restrict f, int64_t Wp,
                                        int64_t TW, T* __restrict v, int64_t ld) {
  if (R == 2) {
    input_tile_rows_impl<2>(G, d, e, f, Wp, TW, v, ld, Bt4{});
  } else {
    input_tile_rows_impl<4>(G, d, e, f, Wp, TW, v, ld, Bt6{});
  }
}

// Output transform of S tiles in a row: y[xi * ld + t] holds point xi of tile t; writes
// the R output rows (R*S values each) to out. The R*R outputs of each tile are first
// computed into separate contiguous arrays (quad, R*R*S values), so the loops vectorise;
// for R = 4 in two passes (A^T along the point rows into r, R*6*S values, then along
// the columns), each a loop over tiles with unit-stride loads.
template <typename T>
R2P1D_MULTIVERSION void output_tile_row(int64_t R, const T* __restrict y, int64_t ld, int64_t S,
                                        T* __restrict quad, T* __restrict r, T* __restrict out) {
  if (R == 2) {
    for (int64_t t = 0; t < S; ++t) {
      // A^T Y: two rows of four; then (A^T Y) A: two columns.
      T r0[4], r1[4];
      for (int j = 0; j < 4; ++j) {
        const T y0 = y[j * ld + t], y1 = y[(4 + j) * ld + t], y2 = y[(8 + j) * ld + t],
                y3 = y[(12 + j) * ld + t];
        r0[j] = y0 + y1 + y2;
        r1[j] = y1 - y2 - y3;
      }
      quad[t] = r0[0] + r0[1] + r0[2];
      quad[S + t] = r0[1] - r0[2] - r0[3];
      quad[2 * S + t] = r1[0] + r1[1] + r1[2];
      quad[3 * S + t] = r1[1] - r1[2] - r1[3];
    }
  } else {
    // r[(i*6 + j)*S + t] = (A^T Y)[i][j] of tile t, then quad[(i*4 + j')*S + t].
    const int64_t points[6] = {0, 6 * ld, 12 * ld, 18 * ld, 24 * ld, 30 * ld};
    for (int64_t j = 0; j < 6; ++j)
      transform_columns<6, 4, 1>(y + j * ld, points, r + j * S, 6 * S, S, At6{});
    const int64_t cols[6] = {0, S, 2 * S, 3 * S, 4 * S, 5 * S};
    for (int64_t i = 0; i < 4; ++i)
      transform_columns<6, 4, 1>(r + 6 * i * S, cols, quad + 4 * i * S, S, S, At6{});
  }
  // Interleave: output row i of tile t is quad[(R*i + j)*S + t] for j < R.
  for (int64_t i = 0; i < R; ++i) {
    const T* __restrict q0 = quad + R * i * S;
    T* __restrict o = out + i * R * S;
    if (R == 2) {
#pragma GCC ivdep
      for (int64_t t = 0; t < S; ++t) {
        o[2 * t] = q0[t];
        o[2 * t + 1] = q0[S + t];
      }
    } else {
#pragma GCC ivdep
      for (int64_t t = 0; t < S; ++t)
        for (int j = 0; j < 4; ++j) o[4 * t + j] = q0[j * S + t];
    }
  }
}

// The output-gradient transform (A dY A^T) of G tile rows for the weight gradient. g holds
// the R zero-padded output-gradient rows of each tile row, row rr of tile row q at
// g + (rr*G + q)*W (W = R*TW), so that value j of tile u = q*TW + t of that row is at
// rr*G*W + R*u + j; writes point xi of tile u to v[xi*ld + u]. A down the columns into c
// (R*N*U values), then along the rows.
template <int R, typename T, typename A>
R2P1D_INLINE void grad_tile_rows_impl(
    int64_t G, const T* __restrict g, int64_t TW, T* __restrict c, T* __restrict v,
    int64_t ld, A a) {
  constexpr int N = R + 2;
  const int64_t U = G * TW, W = R * TW;
  int64_t rows[R], cols[R];
  for (int r = 0; r < R; ++r) rows[r] = r * G * W, cols[r] = r * U;
  // c[(i*R + j)*U + u] = (A dY)[i][j] of tile u.
  for (int j = 0; j < R; ++j)
    transform_columns<R, N, R>(g + j, rows, c + j * U, R * U, U, a);
  for (int i = 0; i < N; ++i)
    transform_columns<R, N, 1>(c + i * R * U, cols, v + i * N * ld, ld, U, a);
}

template <typename T>
R2P1D_MULTIVERSION void grad_tile_rows(int64_t R, int64_t G, const T* __restrict g,
                                       int64_t TW, T* __restrict c, T* __restrict v,
                                       int64_t ld) {
  if (R == 2) {
    grad_tile_rows_impl<2>(G, g, TW, c, v, ld, A4{});
  } else {
    grad_tile_rows_impl<4>(G, g, TW, c, v, ld, A6{});
  }
}

// Input transform of a batch's tile rows [r0, r1) (global tile row r = frame * TH + tile
// row) and channels [c0, c1): V[xi * pv + (c - c0) * S + (r - r0) * TW + t] = (B^T d B)[xi]
// for the input patch d of tile (r, t). in_row(f, c, ih, dst) writes the W values of row
// ih of channel c of frame f to dst.
template <typename T, typename InRow>
void input_transform(const Plan& p, const Batch& batch, int64_t c0, int64_t c1, InRow&& in_row,
                     T* V, int64_t pv) {
  const int64_t r0 = batch.r0, nr = batch.r1 - batch.r0, ld = batch.S;
  const int64_t Wp = p.padded_width(), G = rows_per_item(p.TW, nr);
  const int64_t groups = (nr + G - 1) / G;
  const int64_t n_rows = G * p.N * Wp, n_e = p.N * p.N * G * p.TW;
  const PerThread<T> buffers(n_rows + 2 * n_e);
  at::parallel_for(0, groups * (c1 - c0), 4, [&](int64_t begin, int64_t end) {
    T* const rows = buffers.mine();
    T *const e = rows + n_rows, *const f = e + n_e;
    for (int64_t item = begin; item < end; ++item) {
      // Channel-major items: consecutive items read consecutive rows of one plane and
      // write consecutive columns of V (sequential memory, few TLB misses).
      const int64_t c = c0 + item / groups, first = (item % groups) * G;
      const int64_t count = std::min(G, nr - first);
      for (int64_t g = 0; g < count; ++g) {
        const int64_t r = r0 + first + g, fr = r / p.TH, a = r % p.TH;
        // The N input rows of this tile row, zero-padded to Wp columns.
        for (int64_t i = 0; i < p.N; ++i) {
          T* row = rows + (g * p.N + i) * Wp;
          const int64_t ih = p.R * a - p.ph + i;
          if (ih >= 0 && ih < p.H) {
            std::fill(row, row + p.pw, T(0));
            in_row(fr, c, ih, row + p.pw);
            std::fill(row + p.pw + p.W, row + Wp, T(0));
          } else {
            std::fill(row, row + Wp, T(0));
          }
        }
      }
      input_tile_rows<T>(p.R, count, rows, e, f, Wp, p.TW,
                         V + (c - c0) * ld + first * p.TW, pv);
    }
  });
}

// Output transform of a batch's channels [m0, m1), point xi of channel m's tiles at
// Y + xi * py + (m - m0) * S: every output row goes to out_row(f, m, oh, row), then the
// batch's values of channel m, contiguous, to out_channel(m, values, n). With nullptr for
// out_channel (inference: no statistics), rows are handed over where the transform wrote
// them, without the copy that makes them contiguous.
template <typename T, typename OutRow, typename OutChannel>
void output_transform(const Plan& p, const Batch& batch, int64_t m0, int64_t m1, const T* Y,
                      int64_t py, OutRow&& out_row, OutChannel&& out_channel) {
  constexpr bool contiguous = !std::is_same_v<std::decay_t<OutChannel>, std::nullptr_t>;
  const int64_t r0 = batch.r0, r1 = batch.r1, S = batch.S;
  const int64_t n_out = p.R * p.R * S, n_rt = p.R * p.N * S;
  const PerThread<T> buffers(2 * n_out + n_rt + (contiguous ? p.R * (r1 - r0) * p.Wo : 0));
  at::parallel_for(m0, m1, 1, [&](int64_t begin, int64_t end) {
    T* const out = buffers.mine();
    T *const quad = out + n_out, *const rt = quad + n_out, *const chan = rt + n_rt;
    for (int64_t m = begin; m < end; ++m) {
      // All of the channel's tiles in this batch in one call (its S tiles are contiguous
      // in Y): R "rows" of R*S values, the rows of every tile side by side.
      output_tile_row<T>(p.R, Y + (m - m0) * S, py, S, quad, rt, out);
      int64_t n = 0;  // values of channel m so far in this batch
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t f = r / p.TH, a = r % p.TH;
        for (int64_t i = 0; i < p.R && p.R * a + i < p.Ho; ++i, n += p.Wo) {
          const T* row = out + i * p.R * S + p.R * (r - r0) * p.TW;
          if constexpr (contiguous) {
            row = std::copy_n(row, p.Wo, chan + n) - p.Wo;
          }
          out_row(f, m, p.R * a + i, row);
        }
      }
      if constexpr (contiguous) out_channel(m, static_cast<const T*>(chan), n);
    }
  });
}

}  // namespace r2p1d::cpu::winograd
