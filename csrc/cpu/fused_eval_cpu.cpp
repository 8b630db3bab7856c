// CPU inference kernel: spatial conv (BatchNorm folded in) + ReLU + temporal conv in one
// pass. Work is split into units (groups of whole samples, or runs of output time steps
// of one large sample); each unit computes only the activated input frames its outputs
// read (its temporal halo included) into a unit-local buffer, so the full intermediate
// tensor of a large batch never exists.
#include <torch/library.h>

#include <optional>

#include "frame_gemm.h"
#include "row_kernels.h"
#include "winograd.h"

namespace r2p1d::cpu {
namespace {

using at::Tensor;

// Input time steps [lo, hi) that output steps [to0, to1) read (their temporal halo).
inline std::pair<int64_t, int64_t> input_span(int64_t to0, int64_t to1, int64_t st, int64_t pt,
                                              int64_t kt, int64_t T) {
  return {std::max<int64_t>(0, to0 * st - pt), std::min<int64_t>(T, (to1 - 1) * st - pt + kt)};
}

// Output steps whose taps all fall in the padding: only the bias remains.
template <typename T>
void fill_bias(T* op, int64_t n, int64_t O, int64_t To, int64_t to0, int64_t to1,
               int64_t plane, const T* bias) {
  for (int64_t to = to0; to < to1; ++to)
    for (int64_t o = 0; o < O; ++o)
      std::fill_n(op + ((n * O + o) * To + to) * plane, plane, bias ? bias[o] : T(0));
}

// The op works in units of whole samples (as many as keep the unit's buffers within
// ~32 MB: more columns per GEMM) or, when one sample alone is larger, of runs of output
// steps of one sample. Per unit: the activated intermediate z of the unit's input steps
// (consecutive (n, t) frames) into scratch memory, frame-major (frame j, channel m at
// z + (j*M + m)*Ho*Wo), by Winograd for 3x3 stride-1 convs and otherwise by im2col and
// one GEMM over all the unit's frames; then the temporal products, one (sample, output
// step) per task.
template <typename T>
void fused_eval_units(const SpatialGeom& g, const TemporalGeom& tg, const T* xp,
                      const Tensor& spatial_weight, const T* bsp, const Tensor& wk,
                      const T* btp, T* op) {
  const int64_t plane = g.out_plane(), O = tg.O, To = tg.To, kdim = g.C * g.kh * g.kw;
  const bool wino = winograd::applies(g.kh, g.kw, g.sh, g.sw, g.ph, g.pw);
  // Bytes per frame of a unit: z, and for im2col also its matrix and the GEMM's output.
  const int64_t frame_bytes = (wino ? g.M : kdim + 2 * g.M) * plane * static_cast<int64_t>(sizeof(T));
  const int64_t budget = 32 << 20;
  const int64_t samples = std::clamp<int64_t>(budget / (frame_bytes * g.T), 1, g.N);
  const bool whole = frame_bytes * g.T <= budget;
  const int64_t run = whole ? To : std::clamp<int64_t>(budget / (frame_bytes * tg.st), 1, To);
  const int64_t unit_frames = whole ? samples * g.T : std::min<int64_t>(g.T, run * tg.st + tg.kt);
  const auto opts = wk.options();
  const Scratch zs = Scratch::of<T>(unit_frames * g.M * plane);
  T* zp = zs.data<T>();
  // Winograd: one tile size for all units, chosen for a full one (the filters are
  // transformed per unit, a chunk at a time). im2col: the weight as a matrix, and the
  // unit's buffers.
  const int64_t R = wino ? winograd::tile_size(unit_frames, g.Ho, g.Wo) : 0;
  std::optional<winograd::Filters> U;
  if (wino) U.emplace(spatial_weight.reshape({g.M, g.C, 3, 3}), false, R);
  const Tensor w2 = wino ? Tensor() : spatial_weight.reshape({g.M, kdim}).contiguous();
  const Scratch cols = Scratch::of<T>(wino ? 0 : kdim * unit_frames * plane);
  const Scratch outs = Scratch::of<T>(wino ? 0 : g.M * unit_frames * plane);
  const auto x_rows = frame_rows(xp, g.C, g.T, g.H, g.W);
  for (int64_t n0 = 0; n0 < g.N; n0 += samples) {
    const int64_t n1 = std::min(g.N, n0 + samples);
    for (int64_t to0 = 0; to0 < To; to0 += run) {
      const int64_t to1 = std::min(To, to0 + run);
      auto [lo, hi] = input_span(to0, to1, tg.st, tg.pt, tg.kt, g.T);
      if (whole) std::tie(lo, hi) = std::pair<int64_t, int64_t>{0, g.T};
      if (hi <= lo) {
        for (int64_t n = n0; n < n1; ++n) fill_bias(op, n, O, To, to0, to1, plane, btp);
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
            [](int64_t, const T*, int64_t) {}, opts);
      } else {
        const int64_t ld = frames * plane;
        T *col = cols.data<T>(), *out = outs.data<T>();
        im2col_group(g, xp, first, frames, col, ld);
        Tensor out_mat = mat(out, g.M, ld, ld);
        at::mm_out(out_mat, w2, mat(col, kdim, ld, ld));
        at::parallel_for(0, frames * g.M, 1, [&](int64_t begin, int64_t end) {
          for (int64_t item = begin; item < end; ++item) {
            const int64_t j = item / g.M, m = item % g.M;
            rows::bias_relu(static_cast<const T*>(out + m * ld + j * plane), zp + (j * g.M + m) * plane,
                            bsp ? bsp[m] : T(0), plane);
          }
        });
      }
      const int64_t steps = to1 - to0;
      at::parallel_for(0, (n1 - n0) * steps, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = n0 + item / steps, to = to0 + item % steps;
          Tensor out_f = mat(op + (n * O * To + to) * plane, O, plane, To * plane);
          temporal_output_frame<T>(out_f, wk, btp, to, tg.st, tg.pt, g.T, [&](int64_t ti) {
            return mat(zp + ((n - n0) * span + ti - lo) * g.M * plane, g.M, plane, plane);
          });
        }
      });
    }
  }
}

Tensor fused_eval_cpu(const Tensor& x, const Tensor& spatial_weight,
                      const std::optional<Tensor>& spatial_bias, const Tensor& temporal_weight,
                      const std::optional<Tensor>& temporal_bias, at::IntArrayRef stride,
                      at::IntArrayRef padding) {
  KernelScope scope;
  const auto geom = check_fused_eval(x, spatial_weight, spatial_bias, temporal_weight,
                                     temporal_bias, stride, padding);
  const SpatialGeom& g = geom.first;
  const TemporalGeom& tg = geom.second;
  const int64_t O = tg.O, To = tg.To;
  if (is_reduced(x)) {
    return fused_eval_cpu(to_float(x), to_float(spatial_weight), to_float(spatial_bias),
                          to_float(temporal_weight), to_float(temporal_bias), stride, padding)
        .to(x.scalar_type());
  }
  const Tensor xc = x.contiguous();
  const Tensor wk = taps_major(temporal_weight);
  const Tensor bs = spatial_bias.has_value() && spatial_bias->defined()
                        ? spatial_bias->contiguous() : Tensor();
  const Tensor bt = temporal_bias.has_value() && temporal_bias->defined()
                        ? temporal_bias->contiguous() : Tensor();
  Tensor out = at::empty({g.N, O, To, g.Ho, g.Wo}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_eval_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* bsp = bs.defined() ? bs.data_ptr<scalar_t>() : nullptr;
    const scalar_t* btp = bt.defined() ? bt.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    fused_eval_units<scalar_t>(g, tg, xp, spatial_weight, bsp, wk, btp, op);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) { m.impl("fused_eval", &fused_eval_cpu); }

}  // namespace r2p1d::cpu
