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
#include <vector>

#include "cpu/row_kernels.h"
#include "cpu/scratch.h"
#include "filters.h"
#include "plan.h"
#include "transforms.h"

namespace r2p1d::cpu::winograd {

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
