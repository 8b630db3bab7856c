// CPU inference kernel: spatial conv (BatchNorm folded in) + ReLU + temporal conv in one
// pass. Work is split into units (groups of whole samples, or runs of output time steps
// of one large sample); each unit computes only the activated input frames its outputs
// read (its temporal halo included) into a unit-local buffer, so the full intermediate
// tensor of a large batch never exists.
#include <torch/library.h>

#include <optional>

#include "cpu/bf16/kernels.h"
#include "frame_gemm.h"
#include "row_kernels.h"
#include "winograd/spatial.h"
#include "winograd/temporal.h"

namespace r2p1d::cpu {
namespace {

using at::Tensor;

// Input time steps [lo, hi) that output steps [to0, to1) read (their temporal halo).
inline std::pair<int64_t, int64_t> input_span(int64_t to0, int64_t to1, int64_t st, int64_t pt,
                                              int64_t kt, int64_t T) {
  return {std::max<int64_t>(0, to0 * st - pt), std::min<int64_t>(T, (to1 - 1) * st - pt + kt)};
}

// Output frame `to` of one sample: the taps that fall inside the input read consecutive
// frames of z, which the unit buffer holds one after another ((frame, channel) rows), and
// wk is the temporal weight as (O, kt*M) with columns in (tap, channel) order; so the
// frame is one GEMM over all its in-range taps (K = taps*M) rather than one product per
// tap summed into the output (kt passes over it). Then bias, residual and ReLU in one pass
// over the frame while it is in cache. zs: the sample's z, its frame ti at zs + (ti - lo)*M*plane
// (not read for a step whose taps all fall in the padding: only the bias remains, then the
// residual and the ReLU).
template <typename T>
void output_frame(const SpatialGeom& g, const TemporalGeom& tg, const Tensor& wk, const T* bias,
                  const T* res, bool relu, int64_t to, const T* zs, int64_t lo, T* out) {
  const int64_t plane = g.out_plane(), O = tg.O, M = g.M, ld = tg.To * plane;
  const int64_t first = to * tg.st - tg.pt;  // the input step of tap 0
  const int64_t k0 = std::max<int64_t>(0, -first), k1 = std::min<int64_t>(tg.kt, g.T - first);
  Tensor out_f = mat(out, O, plane, ld);
  if (k1 > k0) {
    const T* z = zs + (first + k0 - lo) * M * plane;
    at::mm_out(out_f, wk.narrow(1, k0 * M, (k1 - k0) * M),
               mat(const_cast<T*>(z), (k1 - k0) * M, plane, plane));
  } else {
    out_f.zero_();
  }
  for (int64_t o = 0; o < O; ++o)
    rows::output_epilogue(out + o * ld, res ? res + o * ld : nullptr, bias ? bias[o] : T(0), relu,
                          plane);
}

// The op works in units of whole samples (as many as keep the unit's buffers within
// ~32 MB: more columns per GEMM) or, when one sample alone is larger, of runs of output
// steps of one sample. Per unit: the activated intermediate z of the unit's input steps
// (consecutive (n, t) frames) into scratch memory, frame-major (frame j, channel m at
// z + (j*M + m)*Ho*Wo), by Winograd for 3x3 stride-1 convs with enough tiles
// (pays_in_inference) and otherwise by im2col and a GEMM per frame; then the temporal
// products, one (sample, output step) per task.
template <typename T>
void fused_eval_units(const SpatialGeom& g, const TemporalGeom& tg, const T* xp,
                      const Tensor& spatial_weight, const T* bsp, const Tensor& wk,
                      const T* btp, const T* rp, bool relu, T* op) {
  const int64_t plane = g.out_plane(), O = tg.O, To = tg.To, kdim = g.C * g.kh * g.kw;
  const bool wino = winograd::applies(g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) &&
                    winograd::pays_in_inference(g.N * g.T, g.Ho, g.Wo);
  const int64_t frame_bytes = g.M * plane * static_cast<int64_t>(sizeof(T));  // a frame of z
  const int64_t budget = 32 << 20;
  const int64_t samples = std::clamp<int64_t>(budget / (frame_bytes * g.T), 1, g.N);
  const bool whole = frame_bytes * g.T <= budget;
  const int64_t run = whole ? To : std::clamp<int64_t>(budget / (frame_bytes * tg.st), 1, To);
  const int64_t unit_frames = whole ? samples * g.T : std::min<int64_t>(g.T, run * tg.st + tg.kt);
  const auto opts = wk.options();
  const Scratch zs = Scratch::of<T>(unit_frames * g.M * plane);
  T* zp = zs.data<T>();
  // Winograd: one tile size for all units, chosen for a full one (the filters are
  // transformed per unit, a chunk at a time). im2col: the weight as a matrix, and a
  // frame's matrix per thread.
  const int64_t R = wino ? winograd::tile_size(unit_frames, g.Ho, g.Wo) : 0;
  std::optional<winograd::Filters> U;
  if (wino) U.emplace(spatial_weight.reshape({g.M, g.C, 3, 3}), false, R);
  const Tensor w2 = wino ? Tensor() : spatial_weight.reshape({g.M, kdim}).contiguous();
  // im2col: frames per GEMM (>= 256 columns), then evened out so that the threads get the
  // same number of groups (8 frames of 7x7 at conv5_x's first block: 2 groups of 4, not
  // 6 + 2).
  const int64_t threads = at::get_num_threads();
  int64_t group = std::clamp<int64_t>((256 + plane - 1) / plane, 1, unit_frames);
  int64_t n_groups = (unit_frames + group - 1) / group;
  const bool per_thread = n_groups >= threads;
  if (per_thread) {
    n_groups = (n_groups + threads - 1) / threads * threads;
    group = (unit_frames + n_groups - 1) / n_groups;
  }
  // A GEMM this narrow (conv5_x at batch 1: one 7x7 frame, 49 columns) and this deep runs
  // transposed, z^T = col^T W^T: MKL's kernels fit 49 rows better than 49 columns at
  // K = 4608; at K = 1152 the plain product was the faster (docs/inference.md, item 7).
  const bool narrow = group * plane < 64 && kdim >= 2048;
  const int64_t group_values = (kdim + (group > 1 || narrow ? g.M : 0)) * group * plane;  // matrix + GEMM output
  const Scratch cols = Scratch::of<T>(wino ? 0 : group_values * (per_thread ? threads : 1));
  const auto x_rows = frame_rows(xp, g.C, g.T, g.H, g.W);
  // F(4, 3) along time: its transformed temporal weights, once per call.
  const Tensor U_t = temporal_winograd::applies(tg, std::min(run, To))
                         ? temporal_winograd::transformed_weights(wk, O, g.M) : Tensor();
  for (int64_t n0 = 0; n0 < g.N; n0 += samples) {
    const int64_t n1 = std::min(g.N, n0 + samples);
    for (int64_t to0 = 0; to0 < To; to0 += run) {
      const int64_t to1 = std::min(To, to0 + run);
      auto [lo, hi] = input_span(to0, to1, tg.st, tg.pt, tg.kt, g.T);
      if (whole) std::tie(lo, hi) = std::pair<int64_t, int64_t>{0, g.T};
      if (hi <= lo) {  // every tap of these steps is padding
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t to = to0; to < to1; ++to) {
            const int64_t at = (n * O * To + to) * plane;
            output_frame(g, tg, wk, btp, rp ? rp + at : nullptr, relu, to, zp, lo, op + at);
          }
        continue;
      }
      const int64_t span = hi - lo, first = n0 * g.T + lo;  // the unit's first (n, t) frame
      const int64_t frames = (n1 - n0) * span;
      if (wino) {
        const winograd::Plan plan(frames, g.C, g.H, g.W, g.M, g.ph, g.pw, R);
        winograd::forward<T>(
            plan, *U, [&](int64_t f, int64_t c, int64_t ih, T* dst) { x_rows(first + f, c, ih, dst); },
            [&](int64_t f, int64_t m, int64_t oh, const T* row) {
              rows::bias_relu(row, zp + (f * g.M + m) * plane + oh * g.Wo, bsp ? bsp[m] : T(0), g.Wo);
            },
            nullptr, opts);
      } else {
        // A group of frames at a time (one frame where it has >= 256 outputs): its im2col
        // matrix (kdim x group*plane, ~2 MB at R(2+1)D-18's stem and strided convs) stays
        // in the thread's cache for the GEMM, whose output becomes the group's z rows,
        // activated (a frame alone is written in place). Each thread takes whole groups
        // when there are enough of them; otherwise the GEMM is spread over the threads.
        auto group_z = [&](int64_t j0, T* col, T* tmp) {
          const int64_t cnt = std::min(group, frames - j0), ld = cnt * plane;
          for (int64_t j = 0; j < cnt; ++j)
            im2col_frame(frame_channel(xp, g.C, g.T, g.in_plane(), first + j0 + j, 0),
                         g.T * g.in_plane(), g, col + j * plane, ld);
          T* z = zp + j0 * g.M * plane;
          if (narrow) {  // tmp (ld, M) = col^T w2^T, then z rows = relu(tmp columns + bias)
            Tensor out_t = mat(tmp, ld, g.M, g.M);
            at::mm_out(out_t, mat(col, kdim, ld, ld).t(), w2.t());
            for (int64_t q = 0; q < ld; ++q)
              for (int64_t m = 0; m < g.M; ++m)
                z[(q / plane * g.M + m) * plane + q % plane] =
                    std::max(tmp[q * g.M + m] + (bsp ? bsp[m] : T(0)), T(0));
            return;
          }
          T* out = cnt == 1 ? z : tmp;
          Tensor out_mat = mat(out, g.M, ld, ld);
          at::mm_out(out_mat, w2, mat(col, kdim, ld, ld));
          for (int64_t j = 0; j < cnt; ++j)
            for (int64_t m = 0; m < g.M; ++m) {
              T* zrow = z + (j * g.M + m) * plane;
              const T bias = bsp ? bsp[m] : T(0);
              if (cnt == 1) {
                rows::output_epilogue(zrow, static_cast<const T*>(nullptr), bias, true, plane);
              } else {
                rows::bias_relu(static_cast<const T*>(out + m * ld + j * plane), zrow, bias, plane);
              }
            }
        };
        const int64_t groups = (frames + group - 1) / group;
        if (per_thread) {
          at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
            T* col = cols.data<T>() + at::get_thread_num() * group_values;
            for (int64_t q = begin; q < end; ++q) group_z(q * group, col, col + kdim * group * plane);
          });
        } else {
          for (int64_t q = 0; q < groups; ++q)
            group_z(q * group, cols.data<T>(), cols.data<T>() + kdim * group * plane);
        }
      }
      // The temporal conv: whole tiles of 4 output steps by F(4, 3) where it applies, the
      // remaining steps one GEMM per (sample, step).
      const int64_t tiles = U_t.defined() && temporal_winograd::applies(tg, to1 - to0)
                                ? (to1 - to0) / temporal_winograd::kOut : 0;
      if (tiles > 0)
        temporal_winograd::output_tiles(g, tg, U_t, btp, rp, relu, n0, n1, to0, tiles, zp, lo,
                                        span, op);
      const int64_t direct0 = to0 + tiles * temporal_winograd::kOut, steps = to1 - direct0;
      auto frames_out = [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = n0 + item / steps, to = direct0 + item % steps;
          const int64_t at = (n * O * To + to) * plane;  // this output frame, in out and residual
          output_frame(g, tg, wk, btp, rp ? rp + at : nullptr, relu, to,
                       zp + (n - n0) * span * g.M * plane, lo, op + at);
        }
      };
      // One output frame per thread; with fewer frames than threads (conv5_x at batch 1:
      // one), each GEMM is spread over the threads instead.
      if ((n1 - n0) * steps >= threads) {
        at::parallel_for(0, (n1 - n0) * steps, 1, frames_out);
      } else {
        frames_out(0, (n1 - n0) * steps);
      }
    }
  }
}

Tensor fused_eval_cpu(const Tensor& x, const Tensor& spatial_weight,
                      const std::optional<Tensor>& spatial_bias, const Tensor& temporal_weight,
                      const std::optional<Tensor>& temporal_bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, const std::optional<Tensor>& residual, bool relu) {
  KernelScope scope;
  const auto geom = check_fused_eval(x, spatial_weight, spatial_bias, temporal_weight,
                                     temporal_bias, stride, padding);
  const SpatialGeom& g = geom.first;
  const TemporalGeom& tg = geom.second;
  const int64_t O = tg.O, To = tg.To;
  check_residual(x, residual, {g.N, O, To, g.Ho, g.Wo});
  bf16::Path path;
  if (bf16::takes_bf16_kernels(x, path))
    return bf16::fused_eval(path, g, tg, x, spatial_weight, spatial_bias, temporal_weight,
                            temporal_bias, residual, relu);
  if (is_reduced(x)) {
    return fused_eval_cpu(to_float(x), to_float(spatial_weight), to_float(spatial_bias),
                          to_float(temporal_weight), to_float(temporal_bias), stride, padding,
                          to_float(residual), relu)
        .to(x.scalar_type());
  }
  const Tensor xc = x.contiguous();
  // (O, kt*M), columns in (tap, channel) order: a copy unless the caller keeps the weight
  // in that layout (the module's cached inference weights do).
  const Tensor wk = temporal_weight.reshape({O, g.M, tg.kt}).permute({0, 2, 1}).contiguous()
                        .view({O, tg.kt * g.M});
  const Tensor bs = spatial_bias.has_value() && spatial_bias->defined()
                        ? spatial_bias->contiguous() : Tensor();
  const Tensor bt = temporal_bias.has_value() && temporal_bias->defined()
                        ? temporal_bias->contiguous() : Tensor();
  const Tensor res = residual.has_value() && residual->defined() ? residual->contiguous() : Tensor();
  Tensor out = at::empty({g.N, O, To, g.Ho, g.Wo}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_eval_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* bsp = bs.defined() ? bs.data_ptr<scalar_t>() : nullptr;
    const scalar_t* btp = bt.defined() ? bt.data_ptr<scalar_t>() : nullptr;
    const scalar_t* rp = res.defined() ? res.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    fused_eval_units<scalar_t>(g, tg, xp, spatial_weight, bsp, wk, btp, rp, relu, op);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) { m.impl("fused_eval", &fused_eval_cpu); }

}  // namespace r2p1d::cpu
