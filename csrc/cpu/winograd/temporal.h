// Winograd F(4, 3) along time for the temporal (3,1,1) stride-1 convolution of the CPU
// inference op (fused_eval). Per output frame a 3-tap temporal conv is 3 GEMMs' worth of
// multiply-adds ((O, M) x (M, H*W) per tap); F(4, 3) computes 4 consecutive output frames
// from 6 transformed input frames with 6 GEMMs, 1.5 per frame. At R(2+1)D-18's conv2_x
// (8 frames, zero padding) that is 12 GEMMs instead of 22 taps; the temporal convs are a
// third of that block's inference time once its spatial conv runs Winograd F(4x4).
//
//   out[t0 + i] = sum_p A^T[i][p] * (U_p @ V_p),   U_p = sum_k G[p][k] W_k  (O x M),
//   V_p = sum_j B^T[p][j] z[t0 - pt + j]   (M x columns; frames outside the input are zero)
//
// with the F(4x4) spatial transform's 1-D matrices (winograd/filters.h and transforms.h: the
// points 0, 1, -1, 2, -2 and infinity). Only the inference op uses it: training keeps the
// direct temporal conv, whose BatchNorm+ReLU prologue and recomputing backward are the
// block's contract (docs/kernels.md). The work is split into (sample, tile of 4 output
// frames, column chunk) items; a chunk's transformed inputs and products (6 * (M + O)
// values per column) stay in the thread's L2 cache between the transforms and the GEMMs.
// The input transform still reads the intermediate from memory (1.5 times, the tiles
// overlap by 2 frames) and costs about two thirds of the GEMM time it saves, so the gain is
// small (docs/inference.md, bench/NOTES.md).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>

#include "cpu/frame_gemm.h"
#include "cpu/row_kernels.h"
#include "cpu/scratch.h"
#include "filters.h"
#include "transforms.h"

namespace r2p1d::cpu::temporal_winograd {

constexpr int64_t kOut = 4;  // output frames per tile
constexpr int64_t kIn = 6;   // input frames (and points) per tile

// The R2P1D_TEMPORAL_WINOGRAD environment variable (read at every call, for benchmarks
// and tests): "off" takes the direct temporal conv everywhere; unset or "auto" takes F(4,3)
// wherever it applies.
inline bool enabled() {
  const char* env = std::getenv("R2P1D_TEMPORAL_WINOGRAD");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return true;
  TORCH_CHECK_VALUE(std::strcmp(env, "off") == 0,
                    "r2p1d: expected R2P1D_TEMPORAL_WINOGRAD to be auto or off, but got '", env,
                    "'");
  return false;
}

// Whether F(4, 3) takes (the whole tiles of) `steps` consecutive output steps: 3 taps,
// stride 1, at least two tiles and at least 64 input channels. Where it did not pay on
// R(2+1)D-18 shapes (bench/NOTES.md): one tile (conv3_x and conv4_x at 4 frames), where 6
// transformed input frames feed only 4 outputs; and the stem's 45 channels, whose GEMMs
// over 45 channels run slower than the direct ones over 3 x 45.
inline bool applies(const TemporalGeom& tg, int64_t steps) {
  return tg.kt == 3 && tg.st == 1 && steps >= 2 * kOut && tg.M >= 64 && enabled();
}

// U (6, O, M): U_p = sum_k G[p][k] W_k from the temporal weight as (O, 3*M) with columns
// in (tap, channel) order. Computed in double and rounded once (G has 1/6 and 1/24).
inline at::Tensor transformed_weights(const at::Tensor& wk, int64_t O, int64_t M) {
  const at::Tensor G = at::empty({kIn, 3}, at::TensorOptions().dtype(at::kDouble));
  for (int64_t p = 0; p < kIn; ++p)
    for (int64_t k = 0; k < 3; ++k) G.data_ptr<double>()[p * 3 + k] = winograd::kG4[p][k];
  const at::Tensor taps = wk.view({O, 3, M}).to(at::kDouble).permute({1, 0, 2}).reshape({3, O * M});
  return at::mm(G, taps).to(wk.scalar_type()).view({kIn, O, M});
}

// V_p[q] = sum_j B^T[p][j] x_j[q] for q < n: the 6 input rows (one channel of 6 frames,
// a chunk of columns) to the 6 point rows v + p*ld.
template <typename T>
R2P1D_MULTIVERSION void input_rows(const T* __restrict x0, const T* __restrict x1,
                                   const T* __restrict x2, const T* __restrict x3,
                                   const T* __restrict x4, const T* __restrict x5,
                                   T* __restrict v, int64_t ld, int64_t n) {
#pragma GCC ivdep
  for (int64_t q = 0; q < n; ++q) {
    const T in[kIn] = {x0[q], x1[q], x2[q], x3[q], x4[q], x5[q]};
    T out[kIn];
    winograd::Bt6{}(in, out);
    for (int p = 0; p < kIn; ++p) v[p * ld + q] = out[p];
  }
}

// o_i[q] = sum_p A^T[i][p] y_p[q]: the 6 product rows y + p*ld to the 4 output rows
// out + i*ostride (the caller's epilogue then adds the bias and the residual, and applies
// the ReLU, while they are in cache).
template <typename T>
R2P1D_MULTIVERSION void output_rows(const T* __restrict y, int64_t ld, T* __restrict out,
                                    int64_t ostride, int64_t n) {
#pragma GCC ivdep
  for (int64_t q = 0; q < n; ++q) {
    const T in[kIn] = {y[q], y[ld + q], y[2 * ld + q], y[3 * ld + q], y[4 * ld + q], y[5 * ld + q]};
    T o[kOut];
    winograd::At6{}(in, o);
    for (int i = 0; i < kOut; ++i) out[i * ostride + q] = o[i];
  }
}

// Output steps [to0, to0 + tiles*4) of samples [n0, n1) of a fused_eval unit. zs: the
// unit's activated intermediate, sample n's input step ti at zs + ((n - n0)*span + ti -
// lo)*M*plane (steps outside [0, T) are zero padding); U from transformed_weights; bias,
// residual (or null), relu and the output as for fused_eval's output_frame.
template <typename T>
void output_tiles(const SpatialGeom& g, const TemporalGeom& tg, const at::Tensor& U,
                  const T* bias, const T* res, bool relu, int64_t n0, int64_t n1, int64_t to0,
                  int64_t tiles, const T* zs, int64_t lo, int64_t span, T* out) {
  const int64_t plane = g.out_plane(), O = tg.O, M = g.M, To = tg.To;
  // Column chunks: the chunk's V (6*M) and Y (6*O) rows within ~1 MB (half the L2 of this
  // generation of Xeon cores), chunks of equal width, a multiple of 16 (AVX-512 lanes).
  const int64_t widest = std::max<int64_t>(64, (1 << 20) / (kIn * (M + O) * static_cast<int64_t>(sizeof(T))));
  const int64_t n_chunks = (plane + widest - 1) / widest;
  const int64_t chunk = std::min(plane, ((plane + n_chunks - 1) / n_chunks + 15) / 16 * 16);
  const int64_t chunks = (plane + chunk - 1) / chunk;
  const PerThread<T> buf(kIn * (M + O) * chunk + chunk);  // V, Y and a zero row
  at::parallel_for(0, (n1 - n0) * tiles * chunks, 1, [&](int64_t begin, int64_t end) {
    T* V = buf.mine();
    T* Y = V + kIn * M * chunk;
    T* zero = Y + kIn * O * chunk;
    std::fill(zero, zero + chunk, T(0));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = n0 + item / (tiles * chunks), q = item % (tiles * chunks) / chunks;
      const int64_t c0 = item % chunks * chunk, w = std::min(chunk, plane - c0);
      const int64_t t0 = to0 + q * kOut;
      const T* x[kIn];  // channel 0 of each input frame, at this chunk's columns
      for (int64_t j = 0; j < kIn; ++j) {
        const int64_t ti = t0 - tg.pt + j;
        x[j] = ti >= 0 && ti < g.T ? zs + ((n - n0) * span + ti - lo) * M * plane + c0 : nullptr;
      }
      for (int64_t m = 0; m < M; ++m) {
        const T* r[kIn];
        for (int64_t j = 0; j < kIn; ++j) r[j] = x[j] ? x[j] + m * plane : zero;
        input_rows(r[0], r[1], r[2], r[3], r[4], r[5], V + m * w, M * w, w);
      }
      for (int64_t p = 0; p < kIn; ++p) {
        at::Tensor y = mat(Y + p * O * w, O, w, w);
        at::mm_out(y, U[p], mat(V + p * M * w, M, w, w));
      }
      for (int64_t o = 0; o < O; ++o) {
        const int64_t at = ((n * O + o) * To + t0) * plane + c0;  // in out and residual
        output_rows(Y + o * w, O * w, out + at, plane, w);
        for (int64_t i = 0; i < kOut; ++i)
          rows::output_epilogue(out + at + i * plane, res ? res + at + i * plane : nullptr,
                                bias ? bias[o] : T(0), relu, w);
      }
    }
  });
}

}  // namespace r2p1d::cpu::temporal_winograd
