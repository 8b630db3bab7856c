// Winograd F(2x2, 3x3) for the spatial (1,3,3) stride-1 convolution on the CPU: every
// 2x2 output tile costs 16 multiply-adds per (in, out) channel pair instead of 36, so the
// spatial products (three quarters of a (2+1)D block's FLOPs) take 2.25x fewer FLOPs.
// The transforms only add, subtract and halve, so float32 results stay within ~1e-6 of
// the direct convolution (tests/test_winograd.py measures it against the reference).
//
//   forward:  Y = A^T [ (G g G^T) (.) (B^T d B) ] A       d: 4x4 input tile, g: 3x3 filter
//   weight gradient (the exact adjoint):  dg = G^T [ sum_tiles (A dY A^T) (.) (B^T d B) ] G
//   input gradient: the forward transform applied to the output gradient with the flipped,
//   transposed filter and padding 2-p.
//
// Tiles of all frames are processed in batches of whole tile rows. A batch runs in three
// parallel phases: input transform into V[16][C][S], sixteen GEMMs (ATen matrix products,
// one per Winograd point) into Y[16][M][S], and the output transform, which hands each
// output row to an epilogue (bias, statistics, ReLU, store). The output phase runs per
// channel and batches run in order, so anything an epilogue accumulates per channel is
// summed in an order that does not depend on the thread count.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "row_kernels.h"
#include "scratch.h"

namespace r2p1d::cpu::winograd {

constexpr int64_t kPoints = 16;  // 4x4 transformed tile

// The shape of one spatial 3x3 stride-1 convolution of F frames.
struct Plan {
  int64_t F, C, H, W;  // input frames, channels, size
  int64_t M, ph, pw;   // output channels, padding
  int64_t Ho, Wo;      // output size
  int64_t TH, TW;      // tiles per frame (rows, columns)
  Plan(int64_t F_, int64_t C_, int64_t H_, int64_t W_, int64_t M_, int64_t ph_, int64_t pw_)
      : F(F_), C(C_), H(H_), W(W_), M(M_), ph(ph_), pw(pw_), Ho(H_ + 2 * ph_ - 2),
        Wo(W_ + 2 * pw_ - 2), TH((Ho + 1) / 2), TW((Wo + 1) / 2) {}
  int64_t tile_rows() const { return F * TH; }
  // Tile rows per batch: enough columns for efficient GEMMs, while the batch's
  // transformed input and output (16*(C+M) values per tile) stay within ~24 MB; batches
  // are made equal in size (no short last batch with inefficient GEMMs).
  int64_t rows_per_batch(int64_t elem_size) const {
    const int64_t per_tile = kPoints * (C + M) * elem_size;
    const int64_t tiles = std::max<int64_t>(256, (24 << 20) / per_tile);
    const int64_t most = std::clamp<int64_t>(tiles / TW, 1, tile_rows());
    const int64_t batches = (tile_rows() + most - 1) / most;
    return (tile_rows() + batches - 1) / batches;
  }
};

// The distance between the 16 point planes of a transformed-tile buffer holding `n`
// values per plane: rounded up to an odd number of 64-byte lines (for float). When the
// planes are a multiple of 4 KiB apart, the 16 streams that every tile's transform reads
// or writes share the same cache sets: measured here, conv2_x's weight gradient ran 2.7x
// slower with S = 1792 tiles (144 x 1792 floats per plane, 252 pages) than with 1876.
inline int64_t plane_stride(int64_t n) {
  int64_t stride = (n + 15) / 16 * 16;
  if ((stride / 16) % 2 == 0) stride += 16;
  return stride;
}

// One batch of tile rows [r0, r1): S tiles, the point-plane strides pv of its transformed
// input (C rows of S) and py of its transformed output (M rows of S).
struct Batch {
  int64_t r0, r1, S, pv, py;
};

// The batches of a plan, largest first (they are equal but for a shorter last one).
inline std::vector<Batch> batches(const Plan& p, int64_t elem_size) {
  std::vector<Batch> out;
  const int64_t rows = p.rows_per_batch(elem_size);
  for (int64_t r0 = 0; r0 < p.tile_rows(); r0 += rows) {
    const int64_t r1 = std::min(p.tile_rows(), r0 + rows), S = (r1 - r0) * p.TW;
    out.push_back({r0, r1, S, plane_stride(p.C * S), plane_stride(p.M * S)});
  }
  return out;
}

// Whether the spatial convolution can take the Winograd path.
inline bool applies(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  return kh == 3 && kw == 3 && sh == 1 && sw == 1 && ph <= 2 && pw <= 2;
}

// The filter transform as a matrix: K[(a,b)][(i,j)] = G[a][i] * G[b][j], so that for
// every filter g, (G g G^T)[a][b] = sum over taps (i,j) of K[(a,b)][(i,j)] * g[i][j]. The
// transform of all filters at once is then one (16 x 9) x (9 x filters) matrix product.
inline at::Tensor filter_matrix(const at::TensorOptions& opts) {
  static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  at::Tensor K = at::empty({kPoints, 9}, at::TensorOptions().dtype(at::kDouble));
  double* k = K.data_ptr<double>();
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b)
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) k[(a * 4 + b) * 9 + i * 3 + j] = G[a][i] * G[b][j];
  return K.to(opts.dtype());
}

// The transformed filters: u[xi] (M x C) = G g G^T for each (m, c) filter g, a view of
// scratch memory.
struct Filters {
  Scratch mem;
  at::Tensor u;  // (16, M, C), possibly strided
};

// The transformed filters of weight (M, C, 3, 3). `flip` gives those of the input-gradient
// convolution: channels transposed and each filter rotated by 180 degrees, done by
// reversing K's tap order and by a transposed view (no copy of the weight).
template <typename T>
Filters filter_transform(const at::Tensor& weight, bool flip) {
  const at::TensorOptions opts = weight.options();
  const int64_t M = weight.size(0), C = weight.size(1);
  const at::Tensor w = weight.contiguous().view({M * C, 9});  // one filter per row
  at::Tensor K = filter_matrix(opts);
  if (flip) K = K.flip({1});
  Filters f{Scratch::of<T>(kPoints * M * C), at::Tensor()};
  at::Tensor u = at::from_blob(f.mem.template data<T>(), {kPoints, M * C}, opts);
  at::mm_out(u, K, w.t());
  f.u = flip ? u.view({kPoints, M, C}).transpose(1, 2) : u.view({kPoints, M, C});
  return f;
}

// dg = G^T D G for D[xi] = dU[xi] (M, C): the adjoint product; returns the (M, C, 1, 3, 3)
// weight gradient.
inline at::Tensor filter_transform_adjoint(const at::Tensor& dU) {
  const int64_t M = dU.size(1), C = dU.size(2);
  return at::mm(dU.reshape({kPoints, M * C}).t(), filter_matrix(dU.options()))
      .view({M, C, 1, 3, 3});
}

// Input transform of one tile row: d holds the 4 zero-padded input rows (Wp = 2*TW + 2
// columns each); writes point xi of tile b to v[xi * ld + b]. B^T d runs along the rows
// (contiguous), then (B^T d) B along the columns, through the scratch rows e.
template <typename T>
R2P1D_MULTIVERSION void input_tile_row(const T* __restrict d, T* __restrict e, int64_t Wp,
                                       int64_t TW, T* __restrict v, int64_t ld) {
  const T *d0 = d, *d1 = d + Wp, *d2 = d + 2 * Wp, *d3 = d + 3 * Wp;
  T *e0 = e, *e1 = e + Wp, *e2 = e + 2 * Wp, *e3 = e + 3 * Wp;
  for (int64_t q = 0; q < Wp; ++q) {
    e0[q] = d0[q] - d2[q];
    e1[q] = d1[q] + d2[q];
    e2[q] = d2[q] - d1[q];
    e3[q] = d1[q] - d3[q];
  }
  for (int64_t i = 0; i < 4; ++i) {
    const T* ei = e + i * Wp;
    T* v0 = v + (4 * i) * ld;
    T* v1 = v0 + ld;
    T* v2 = v1 + ld;
    T* v3 = v2 + ld;
    for (int64_t b = 0; b < TW; ++b) {
      const T x0 = ei[2 * b], x1 = ei[2 * b + 1], x2 = ei[2 * b + 2], x3 = ei[2 * b + 3];
      v0[b] = x0 - x2;
      v1[b] = x1 + x2;
      v2[b] = x2 - x1;
      v3[b] = x1 - x3;
    }
  }
}

// Input transform of a batch's tile rows [r0, r1) (global tile row r = frame * TH + tile
// row): V[xi * pv + c * S + (r - r0) * TW + b] = (B^T d B)[xi] for the 4x4 input patch d of tile (r, b).
// in_row(f, c, ih, dst) writes the W values of row ih of channel c of frame f to dst.
template <typename T, typename InRow>
void input_transform(const Plan& p, const Batch& batch, InRow&& in_row, T* V) {
  const int64_t r0 = batch.r0, r1 = batch.r1, ld = batch.S;
  const int64_t Wp = 2 * p.TW + 2;
  at::parallel_for(0, (r1 - r0) * p.C, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> rows(4 * Wp), comb(4 * Wp);
    for (int64_t item = begin; item < end; ++item) {
      // Channel-major items: consecutive items read consecutive rows of one plane and
      // write consecutive columns of V (sequential memory, few TLB misses).
      const int64_t c = item / (r1 - r0), r = r0 + item % (r1 - r0);
      const int64_t f = r / p.TH, a = r % p.TH;
      // The 4 input rows of this tile row, zero-padded to Wp columns.
      for (int64_t i = 0; i < 4; ++i) {
        T* row = rows.data() + i * Wp;
        const int64_t ih = 2 * a - p.ph + i;
        if (ih >= 0 && ih < p.H) {
          std::fill(row, row + p.pw, T(0));
          in_row(f, c, ih, row + p.pw);
          std::fill(row + p.pw + p.W, row + Wp, T(0));
        } else {
          std::fill(row, row + Wp, T(0));
        }
      }
      input_tile_row<T>(rows.data(), comb.data(), Wp, p.TW,
                        V + c * ld + (r - r0) * p.TW, batch.pv);
    }
  });
}

// Output transform of one tile row: y[xi * ld + b] holds point xi of tile b; writes the
// two output rows (2*TW values each) to out. The four outputs of each tile are first
// computed into separate contiguous arrays (quad), so the loops vectorise.
template <typename T>
R2P1D_MULTIVERSION void output_tile_row(const T* __restrict y, int64_t ld, int64_t TW, T* __restrict quad,
                     T* __restrict out) {
  T* __restrict q00 = quad;
  T* __restrict q01 = quad + TW;
  T* __restrict q10 = quad + 2 * TW;
  T* __restrict q11 = quad + 3 * TW;
  for (int64_t b = 0; b < TW; ++b) {
    // A^T Y: two rows of four; then (A^T Y) A: two columns.
    T t0[4], t1[4];
    for (int j = 0; j < 4; ++j) {
      const T y0 = y[j * ld + b], y1 = y[(4 + j) * ld + b], y2 = y[(8 + j) * ld + b],
              y3 = y[(12 + j) * ld + b];
      t0[j] = y0 + y1 + y2;
      t1[j] = y1 - y2 - y3;
    }
    q00[b] = t0[0] + t0[1] + t0[2];
    q01[b] = t0[1] - t0[2] - t0[3];
    q10[b] = t1[0] + t1[1] + t1[2];
    q11[b] = t1[1] - t1[2] - t1[3];
  }
  T* __restrict o0 = out;
  T* __restrict o1 = out + 2 * TW;
  for (int64_t b = 0; b < TW; ++b) {
    o0[2 * b] = q00[b];
    o0[2 * b + 1] = q01[b];
    o1[2 * b] = q10[b];
    o1[2 * b + 1] = q11[b];
  }
}

// Runs the forward convolution of all frames: for every output row, out_row(f, m, oh, row)
// receives the Wo values of channel m, row oh of frame f. After a batch's rows of channel
// m, out_channel(m, values, n) receives those n values again, contiguous (for statistics).
// Rows reach a given channel in (frame, row) order and batches run in order; different
// channels are processed concurrently.
template <typename T, typename InRow, typename OutRow, typename OutChannel>
void forward(const Plan& p, const Filters& U, InRow&& in_row, OutRow&& out_row,
             OutChannel&& out_channel, const at::TensorOptions& opts) {
  const std::vector<Batch> all = batches(p, sizeof(T));
  const Scratch Vs = Scratch::of<T>(kPoints * all[0].pv), Ys = Scratch::of<T>(kPoints * all[0].py);
  T* V = Vs.data<T>();
  T* Y = Ys.data<T>();
  for (const Batch& batch : all) {
    const int64_t r0 = batch.r0, r1 = batch.r1, S = batch.S, ld = S, pv = batch.pv, py = batch.py;
    input_transform<T>(p, batch, in_row, V);
    at::parallel_for(0, kPoints, 1, [&](int64_t begin, int64_t end) {
      for (int64_t xi = begin; xi < end; ++xi) {
        at::Tensor y = at::from_blob(Y + xi * py, {p.M, S}, {ld, 1}, opts);
        at::mm_out(y, U.u[xi], at::from_blob(V + xi * pv, {p.C, S}, {ld, 1}, opts));
      }
    });
    at::parallel_for(0, p.M, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> out(4 * S), quad(4 * S), chan(2 * (r1 - r0) * p.Wo);
      for (int64_t m = begin; m < end; ++m) {
        // All of the channel's tiles in this batch in one call (its S tiles are contiguous
        // in Y): two "rows" of 2*S values, the upper and lower halves of every tile.
        output_tile_row<T>(Y + m * ld, py, S, quad.data(), out.data());
        int64_t n = 0;  // values of channel m so far in this batch
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t f = r / p.TH, a = r % p.TH;
          for (int64_t i = 0; i < 2 && 2 * a + i < p.Ho; ++i, n += p.Wo) {
            std::copy_n(out.data() + i * 2 * S + 2 * (r - r0) * p.TW, p.Wo, chan.data() + n);
            out_row(f, m, 2 * a + i, static_cast<const T*>(chan.data() + n));
          }
        }
        out_channel(m, static_cast<const T*>(chan.data()), n);
      }
    });
  }
}

// Weight gradient: dU[xi] = sum over tiles of (A dY A^T)[xi] (M x S) times V[xi]^T, then
// G^T dU G. in_row as in forward; grad_row(f, m, oh, dst) writes the Wo values of row oh
// of channel m of frame f of the output gradient. Batches run in order and each point's product is
// one GEMM, so the sum's order does not depend on the thread count.
template <typename T, typename InRow, typename GradRow>
at::Tensor weight_grad(const Plan& p, InRow&& in_row, GradRow&& grad_row,
                       const at::TensorOptions& opts) {
  const std::vector<Batch> all = batches(p, sizeof(T));
  const Scratch Vs = Scratch::of<T>(kPoints * all[0].pv), Gs = Scratch::of<T>(kPoints * all[0].py);
  const Scratch dUs = Scratch::of<T>(kPoints * p.M * p.C);
  at::Tensor dU = at::from_blob(dUs.data<T>(), {kPoints, p.M, p.C}, opts);
  T* V = Vs.data<T>();
  T* Gh = Gs.data<T>();
  for (const Batch& batch : all) {
    const int64_t r0 = batch.r0, r1 = batch.r1, S = batch.S, ld = S, pv = batch.pv, py = batch.py;
    input_transform<T>(p, batch, in_row, V);
    at::parallel_for(0, (r1 - r0) * p.M, 16, [&](int64_t begin, int64_t end) {
      std::vector<T> rows(2 * 2 * p.TW);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t m = item / (r1 - r0), r = r0 + item % (r1 - r0);  // channel-major
        const int64_t f = r / p.TH, a = r % p.TH;
        T *g0 = rows.data(), *g1 = g0 + 2 * p.TW;  // the tile row's two output rows, zero-padded
        std::fill(rows.begin(), rows.end(), T(0));
        grad_row(f, m, 2 * a, g0);
        if (2 * a + 1 < p.Ho) grad_row(f, m, 2 * a + 1, g1);
        const int64_t base = m * ld + (r - r0) * p.TW;
        for (int64_t b = 0; b < p.TW; ++b) {
          // A g A^T with A = [[1,0],[1,1],[1,-1],[0,-1]].
          const T a00 = g0[2 * b], a01 = g0[2 * b + 1], a10 = g1[2 * b], a11 = g1[2 * b + 1];
          const T t[4][2] = {{a00, a01}, {a00 + a10, a01 + a11}, {a00 - a10, a01 - a11},
                             {-a10, -a11}};
          for (int i = 0; i < 4; ++i) {
            Gh[(4 * i + 0) * py + base + b] = t[i][0];
            Gh[(4 * i + 1) * py + base + b] = t[i][0] + t[i][1];
            Gh[(4 * i + 2) * py + base + b] = t[i][0] - t[i][1];
            Gh[(4 * i + 3) * py + base + b] = -t[i][1];
          }
        }
      }
    });
    at::parallel_for(0, kPoints, 1, [&](int64_t begin, int64_t end) {
      for (int64_t xi = begin; xi < end; ++xi) {
        at::Tensor g = at::from_blob(Gh + xi * py, {p.M, S}, {ld, 1}, opts);
        at::Tensor v = at::from_blob(V + xi * pv, {p.C, S}, {ld, 1}, opts);
        at::Tensor d = dU[xi];
        if (r0 == 0) {
          at::mm_out(d, g, v.t());
        } else {
          d.addmm_(g, v.t());
        }
      }
    });
  }
  return filter_transform_adjoint(dU);
}

}  // namespace r2p1d::cpu::winograd
