// Winograd F(RxR, 3x3) for the spatial (1,3,3) stride-1 convolution on the CPU, with
// output tiles of R = 2 or R = 4. Per output value and (in, out) channel pair a 3x3
// convolution costs 9 multiply-adds directly, 4 with F(2x2) (16 points per 2x2 tile) and
// 2.25 with F(4x4) (36 points per 4x4 tile). The spatial products are three quarters of a
// (2+1)D block's FLOPs. F(2x2)'s transforms only add, subtract and halve (float32 error
// ~5e-7 of the result's norm on R(2+1)D-18 shapes, against ~3e-7 for the direct path);
// F(4x4)'s multiply by up to 8 and by 1/6 and 1/24 (~3e-6), the trade every Winograd
// library makes for it. tests/test_winograd.py holds both to 1e-5.
//
//   forward:  Y = A^T [ (G g G^T) (.) (B^T d B) ] A       d: input tile, g: 3x3 filter
//   weight gradient (the exact adjoint):  dg = G^T [ sum_tiles (A dY A^T) (.) (B^T d B) ] G
//   input gradient: the forward transform applied to the output gradient with the flipped,
//   transposed filter and padding 2-p.
//
// Tiles of all frames are processed in batches of whole tile rows. A batch runs in three
// parallel phases: input transform into V[P][C][S], P GEMMs (ATen matrix products, one
// per Winograd point) into Y[P][M][S], and the output transform, which hands each output
// row to an epilogue (bias, statistics, ReLU, store). The output phase runs per channel
// and batches run in order, so anything an epilogue accumulates per channel is summed in
// an order that does not depend on the thread count.
//
// The weight's rows (the block's mid channels, its larger side) are taken in chunks where
// the scratch would outweigh the activations: the transformed filters, and the
// transformed tiles on the mid-channel side (Y in the forward, V in the input gradient,
// the output-gradient tiles in the weight gradient), then exist one chunk at a time.
// Whole, they were 30 MB against 5 MB of activations at R(2+1)D-18's conv4_x.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "row_kernels.h"
#include "scratch.h"

namespace r2p1d::cpu::winograd {

// The R2P1D_WINOGRAD environment variable (read at every call, for benchmarks and
// tests): "2" or "4" forces that tile size, "off" the im2col path; unset or "auto" lets
// tile_size() choose.
inline int64_t setting() {
  const char* env = std::getenv("R2P1D_WINOGRAD");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return 0;
  if (std::strcmp(env, "2") == 0) return 2;
  if (std::strcmp(env, "4") == 0) return 4;
  if (std::strcmp(env, "off") == 0) return -1;
  TORCH_CHECK_VALUE(false, "r2p1d: expected R2P1D_WINOGRAD to be auto, 2, 4 or off, but got '",
                    env, "'");
}

// Whether the spatial convolution can take the Winograd path.
inline bool applies(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  return kh == 3 && kw == 3 && sh == 1 && sw == 1 && ph <= 2 && pw <= 2 && setting() >= 0;
}

// Whether Winograd pays for itself in inference (fused_eval), where nothing amortises the
// filter transform over a backward pass: it writes P*M*C values per call (16/9 of the
// weight for F(2x2)), while the GEMMs it shortens shrink with the tile count. Measured on
// R(2+1)D-18's conv5_x (512 -> 1152 channels, 7x7 frames; bench/NOTES.md): 16 tiles (one
// frame) 3.0-3.6 ms against im2col's 2.2-2.8; 64 tiles (four frames) a tie. A forced
// R2P1D_WINOGRAD tile size always takes it.
inline bool pays_in_inference(int64_t F, int64_t Ho, int64_t Wo) {
  return setting() > 0 || F * ((Ho + 1) / 2) * ((Wo + 1) / 2) >= 64;
}

// The output tile size for F frames of Ho x Wo outputs. F(4x4) does 1.78x fewer
// multiply-adds than F(2x2) on frames whose sides are multiples of 4, fewer on others (the
// last tiles are part padding); it is taken where it saves at least a quarter of them and
// has enough tiles (GEMM columns, at least 128) for efficient GEMMs: R(2+1)D-18's
// conv2_x-conv4_x at batch 4. Its transformed filters are 4x the weights (F(2x2): 1.8x),
// but never whole in memory where they would outweigh the activations (chunk_rows).
// Measured in bench/NOTES.md (items 10 and 18).
inline int64_t tile_size(int64_t F, int64_t Ho, int64_t Wo) {
  if (const int64_t forced = setting(); forced > 0) return forced;
  const int64_t tiles2 = F * ((Ho + 1) / 2) * ((Wo + 1) / 2);
  const int64_t tiles4 = F * ((Ho + 3) / 4) * ((Wo + 3) / 4);
  return tiles4 >= 128 && 4 * 36 * tiles4 <= 3 * 16 * tiles2 ? 4 : 2;
}

// The shape of one spatial 3x3 stride-1 convolution of F frames with R x R output tiles.
struct Plan {
  int64_t F, C, H, W;  // input frames, channels, size
  int64_t M, ph, pw;   // output channels, padding
  int64_t R, N, P;     // output tile size, input tile size R + 2, points N * N
  int64_t Ho, Wo;      // output size
  int64_t TH, TW;      // tiles per frame (rows, columns)
  Plan(int64_t F_, int64_t C_, int64_t H_, int64_t W_, int64_t M_, int64_t ph_, int64_t pw_,
       int64_t R_)
      : F(F_), C(C_), H(H_), W(W_), M(M_), ph(ph_), pw(pw_), R(R_), N(R_ + 2),
        P((R_ + 2) * (R_ + 2)), Ho(H_ + 2 * ph_ - 2), Wo(W_ + 2 * pw_ - 2),
        TH((Ho + R_ - 1) / R_), TW((Wo + R_ - 1) / R_) {
    TORCH_INTERNAL_ASSERT(R == 2 || R == 4, "r2p1d: Winograd tile size must be 2 or 4");
  }
  int64_t tile_rows() const { return F * TH; }
  int64_t padded_width() const { return R * TW + 2; }  // input columns of a tile row
  // Tile rows per batch: enough columns for efficient GEMMs, while the batch's
  // transformed input and output (P*(C+M) values per tile) stay within ~24 MB; batches
  // are made equal in size (no short last batch with inefficient GEMMs).
  int64_t rows_per_batch(int64_t elem_size) const {
    const int64_t per_tile = P * (C + M) * elem_size;
    const int64_t tiles = std::max<int64_t>(256, (24 << 20) / per_tile);
    const int64_t most = std::clamp<int64_t>(tiles / TW, 1, tile_rows());
    const int64_t batches = (tile_rows() + most - 1) / most;
    return (tile_rows() + batches - 1) / batches;
  }
};

// The distance between the point planes of a transformed-tile buffer holding `n` values
// per plane: rounded up to an odd number of 64-byte lines (for float). When the planes
// are a multiple of 4 KiB apart, the streams that every tile's transform reads or writes
// share the same cache sets: measured here, conv2_x's weight gradient ran 2.7x slower
// with S = 1792 tiles (144 x 1792 floats per plane, 252 pages) than with 1876.
inline int64_t plane_stride(int64_t n) {
  int64_t stride = (n + 15) / 16 * 16;
  if ((stride / 16) % 2 == 0) stride += 16;
  return stride;
}

// One batch of tile rows [r0, r1): S tiles.
struct Batch {
  int64_t r0, r1, S;
};

// The batches of a plan, largest first (they are equal but for a shorter last one).
inline std::vector<Batch> batches(const Plan& p, int64_t elem_size) {
  std::vector<Batch> out;
  const int64_t rows = p.rows_per_batch(elem_size);
  for (int64_t r0 = 0; r0 < p.tile_rows(); r0 += rows) {
    const int64_t r1 = std::min(p.tile_rows(), r0 + rows);
    out.push_back({r0, r1, (r1 - r0) * p.TW});
  }
  return out;
}

// Weight rows per chunk, for `rows` rows of `row_bytes` each (a row's transformed filters
// and its transformed tiles of the first batch): chunks no larger than half the
// convolution's activations (its input and output) or 8 MB, whichever is more, but of at
// least 64 rows (GEMMs of fewer rows lose efficiency), made equal in size. Chunks cost
// some speed (measured: 5-10% of the spatial ops at R(2+1)D-18's conv2_x/conv3_x in
// chunks of 8 MB), so conv2_x, whose activations dwarf its scratch, takes one; conv3_x
// takes 3, conv4_x 4 and conv5_x 6 (bench/NOTES.md, item 16).
inline int64_t chunk_rows(const Plan& p, int64_t rows, int64_t row_bytes, int64_t elem_size) {
  const int64_t activations = p.F * (p.C * p.H * p.W + p.M * p.Ho * p.Wo) * elem_size;
  const int64_t budget = std::max<int64_t>(8 << 20, activations / 2), least = 64;
  const int64_t wanted = (rows * row_bytes + budget - 1) / budget;
  const int64_t chunks = std::clamp<int64_t>(wanted, 1, std::max<int64_t>(1, rows / least));
  return (rows + chunks - 1) / chunks;
}

// The filter transforms G (points x taps) of F(2, 3) and F(4, 3); the temporal F(4, 3) of
// temporal_winograd.h uses kG4 too.
constexpr double kG2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
constexpr double kG4[6][3] = {{1.0 / 4, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                              {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                              {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};

// The filter transform as a matrix: K[(a,b)][(i,j)] = G[a][i] * G[b][j], so that for
// every filter g, (G g G^T)[a][b] = sum over taps (i,j) of K[(a,b)][(i,j)] * g[i][j]. The
// transform of all filters at once is then one (P x 9) x (9 x filters) matrix product.
// Built in double and rounded once.
inline at::Tensor filter_matrix(int64_t R, const at::TensorOptions& opts) {
  const int64_t n = R + 2;
  auto G = [&](int64_t a, int64_t i) { return R == 2 ? kG2[a][i] : kG4[a][i]; };
  at::Tensor K = at::empty({n * n, 9}, at::TensorOptions().dtype(at::kDouble));
  double* k = K.data_ptr<double>();
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b)
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 3; ++j) k[(a * n + b) * 9 + i * 3 + j] = G(a, i) * G(b, j);
  return K.to(opts.dtype());
}

// The weight (Mw, Cw, 3, 3) as the source of transformed filters for R x R tiles, a chunk
// of its rows at a time. `flip` gives those of the input-gradient convolution: channels
// transposed and each filter rotated by 180 degrees, done by reversing K's tap order and
// by a transposed view (the weight is never copied).
struct Filters {
  at::Tensor w9;  // (Mw * Cw, 9): one filter per row
  at::Tensor K;   // (P, 9), the filter matrix
  int64_t Mw, Cw, R;
  bool flip;
  Filters(const at::Tensor& weight, bool flip_, int64_t R_)
      : w9(weight.contiguous().view({weight.size(0) * weight.size(1), 9})),
        K(flip_ ? filter_matrix(R_, weight.options()).flip({1}) : filter_matrix(R_, weight.options())),
        Mw(weight.size(0)), Cw(weight.size(1)), R(R_), flip(flip_) {}

  // The transformed filters u[xi] = G g G^T of weight rows [lo, hi), written to mem (P *
  // (hi - lo) * Cw values): (P, hi - lo, Cw), output channels [lo, hi) of the forward
  // convolution; flipped (P, Cw, hi - lo), input channels [lo, hi) of the input gradient's.
  // One (P x 9) x (9 x filters) matrix product.
  template <typename T>
  at::Tensor chunk(int64_t lo, int64_t hi, T* mem) const {
    const int64_t P = K.size(0), n = hi - lo;
    at::Tensor u = at::from_blob(mem, {P, n * Cw}, w9.options());
    at::mm_out(u, K, w9.narrow(0, lo * Cw, n * Cw).t());
    return flip ? u.view({P, n, Cw}).transpose(1, 2) : u.view({P, n, Cw});
  }
};

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

// Runs the forward convolution of all frames with the filters of U (weight rows: the
// plan's M outputs, or flipped its C inputs): for every output row, out_row(f, m, oh, row)
// receives the Wo values of channel m, row oh of frame f. After a batch's rows of channel
// m, out_channel(m, values, n) receives those n values again, contiguous (for statistics;
// nullptr where none are needed).
// Rows reach a given channel in (frame, row) order and batches run in order; different
// channels are processed concurrently.
//
// Per batch and chunk of weight rows: not flipped, the chunk's output channels (Y holds a
// chunk, V all inputs); flipped, the chunk's input channels, whose products are summed
// into Y (all outputs) in chunk order before the output transform.
template <typename T, typename InRow, typename OutRow, typename OutChannel>
void forward(const Plan& p, const Filters& U, InRow&& in_row, OutRow&& out_row,
             OutChannel&& out_channel, const at::TensorOptions& opts) {
  TORCH_INTERNAL_ASSERT(U.R == p.R && U.Mw == (U.flip ? p.C : p.M) && U.Cw == (U.flip ? p.M : p.C),
                        "r2p1d: Winograd filters and plan disagree");
  const std::vector<Batch> all = batches(p, sizeof(T));
  const int64_t S0 = all[0].S, elem = sizeof(T);
  const int64_t n = chunk_rows(p, U.Mw, p.P * (U.Cw + S0) * elem, elem);
  // V holds a chunk of the inputs (flipped) or all; Y all outputs (flipped) or a chunk.
  const int64_t vc = U.flip ? n : p.C, yc = U.flip ? p.M : n;
  const Scratch Vs = Scratch::of<T>(p.P * plane_stride(vc * S0));
  const Scratch Ys = Scratch::of<T>(p.P * plane_stride(yc * S0));
  const Scratch Us = Scratch::of<T>(p.P * n * U.Cw);
  T *V = Vs.data<T>(), *Y = Ys.data<T>();
  // In one chunk the filters are transformed once for all batches.
  const at::Tensor whole = n >= U.Mw ? U.chunk<T>(0, U.Mw, Us.data<T>()) : at::Tensor();
  for (const Batch& batch : all) {
    const int64_t S = batch.S;
    const int64_t pv = plane_stride(vc * S), py = plane_stride(yc * S);
    if (!U.flip) input_transform<T>(p, batch, 0, p.C, in_row, V, pv);
    for (int64_t lo = 0; lo < U.Mw; lo += n) {
      const int64_t hi = std::min(U.Mw, lo + n);
      const at::Tensor u = whole.defined() ? whole : U.chunk<T>(lo, hi, Us.data<T>());
      if (U.flip) input_transform<T>(p, batch, lo, hi, in_row, V, pv);
      const int64_t ci = U.flip ? hi - lo : p.C, mo = U.flip ? p.M : hi - lo;
      at::parallel_for(0, p.P, 1, [&](int64_t begin, int64_t end) {
        for (int64_t xi = begin; xi < end; ++xi) {
          at::Tensor y = at::from_blob(Y + xi * py, {mo, S}, {S, 1}, opts);
          const at::Tensor v = at::from_blob(V + xi * pv, {ci, S}, {S, 1}, opts);
          if (U.flip && lo > 0) {
            y.addmm_(u[xi], v);
          } else {
            at::mm_out(y, u[xi], v);
          }
        }
      });
      if (!U.flip) output_transform<T>(p, batch, lo, hi, Y, py, out_row, out_channel);
    }
    if (U.flip) output_transform<T>(p, batch, 0, p.M, Y, py, out_row, out_channel);
  }
}

// Weight gradient dg = G^T dU G, dU[xi] = sum over tiles of (A dY A^T)[xi] (M x S) times
// V[xi]^T. in_row as in forward; grad_row(f, m, oh, dst) writes the Wo values of row oh
// of channel m of frame f of the output gradient. Per batch and chunk of output channels
// (weight rows): the chunk's output-gradient tiles and its dU by one GEMM per point. In
// one chunk, dU is summed over the batches and transformed once; in several, each
// chunk's dU is transformed into its rows of dg, summed there over the batches (the
// adjoint transform is linear). Either way in batch order, whatever the thread count.
template <typename T, typename InRow, typename GradRow>
at::Tensor weight_grad(const Plan& p, InRow&& in_row, GradRow&& grad_row,
                       const at::TensorOptions& opts) {
  const std::vector<Batch> all = batches(p, sizeof(T));
  const int64_t S0 = all[0].S, elem = sizeof(T);
  const int64_t n = chunk_rows(p, p.M, p.P * (p.C + S0) * elem, elem);
  const Scratch Vs = Scratch::of<T>(p.P * plane_stride(p.C * S0));
  const Scratch Gs = Scratch::of<T>(p.P * plane_stride(n * S0));
  const Scratch dUs = Scratch::of<T>(p.P * n * p.C);
  const at::Tensor K = filter_matrix(p.R, opts);
  at::Tensor dg = at::empty({p.M * p.C, 9}, opts);
  const bool one = n >= p.M;  // a single chunk
  // Rows [lo, hi) of dg from dU (P, hi - lo, C): set, or added to.
  auto adjoint = [&](const at::Tensor& dU, int64_t lo, int64_t hi, bool add) {
    at::Tensor rows = dg.narrow(0, lo * p.C, (hi - lo) * p.C);
    const at::Tensor dUt = dU.view({p.P, (hi - lo) * p.C}).t();
    if (add) {
      rows.addmm_(dUt, K);
    } else {
      at::mm_out(rows, dUt, K);
    }
  };
  T *V = Vs.data<T>(), *Gh = Gs.data<T>();
  for (const Batch& batch : all) {
    const int64_t r0 = batch.r0, r1 = batch.r1, S = batch.S;
    const int64_t pv = plane_stride(p.C * S), pg = plane_stride(n * S);
    input_transform<T>(p, batch, 0, p.C, in_row, V, pv);
    const int64_t nr = r1 - r0, G = rows_per_item(p.TW, nr), groups = (nr + G - 1) / G;
    const int64_t W = p.R * p.TW;
    for (int64_t lo = 0; lo < p.M; lo += n) {
      const int64_t hi = std::min(p.M, lo + n);
      at::parallel_for(0, groups * (hi - lo), 4, [&](int64_t begin, int64_t end) {
        // The item's R output rows per tile row, zero-padded: row i of tile row g at
        // (i*count + g)*W, the layout grad_tile_rows reads.
        std::vector<T> rows(p.R * G * W), comb(p.R * p.N * G * p.TW);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t m = lo + item / groups, first = (item % groups) * G;  // channel-major
          const int64_t count = std::min(G, nr - first);
          std::fill(rows.begin(), rows.end(), T(0));
          for (int64_t g = 0; g < count; ++g) {
            const int64_t r = r0 + first + g, f = r / p.TH, a = r % p.TH;
            for (int64_t i = 0; i < p.R && p.R * a + i < p.Ho; ++i)
              grad_row(f, m, p.R * a + i, rows.data() + (i * count + g) * W);
          }
          grad_tile_rows<T>(p.R, count, rows.data(), p.TW, comb.data(),
                            Gh + (m - lo) * S + first * p.TW, pg);
        }
      });
      at::Tensor dU = at::from_blob(dUs.data<T>(), {p.P, hi - lo, p.C}, opts);
      at::parallel_for(0, p.P, 1, [&](int64_t begin, int64_t end) {
        for (int64_t xi = begin; xi < end; ++xi) {
          at::Tensor d = dU[xi];
          const at::Tensor g = at::from_blob(Gh + xi * pg, {hi - lo, S}, {S, 1}, opts);
          const at::Tensor v = at::from_blob(V + xi * pv, {p.C, S}, {S, 1}, opts);
          if (one && r0 > 0) {
            d.addmm_(g, v.t());
          } else {
            at::mm_out(d, g, v.t());
          }
        }
      });
      if (!one) adjoint(dU, lo, hi, r0 > 0);
    }
  }
  if (one) adjoint(at::from_blob(dUs.data<T>(), {p.P, p.M, p.C}, opts), 0, p.M, false);
  return dg.view({p.M, p.C, 1, 3, 3});
}

}  // namespace r2p1d::cpu::winograd
