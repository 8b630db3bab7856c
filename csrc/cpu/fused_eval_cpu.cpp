// CPU inference kernel: spatial conv (BatchNorm folded in) + ReLU + temporal conv in one
// pass. Work is split into units (runs of output time steps of one sample, or for 3x3
// stride-1 convs groups of whole samples); each unit computes only the activated input
// frames its outputs read (its temporal halo included) into a unit-local buffer, so the
// full intermediate tensor of a large batch never exists.
#include <torch/library.h>

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

// The 3x3 stride-1 case, in units of whole samples (as many as keep the activated
// intermediate within ~32 MB: more columns per GEMM) or, when one sample alone is larger,
// of runs of output steps of one sample. Per unit: the intermediate of the unit's input
// steps by Winograd into scratch memory, then the temporal products, one (sample, output
// step) per task.
template <typename T>
void winograd_eval(const SpatialGeom& g, const TemporalGeom& tg, const T* xp,
                   const Tensor& spatial_weight, const T* bsp, const Tensor& wk, const T* btp,
                   T* op) {
  const int64_t plane = g.out_plane(), O = tg.O, To = tg.To;
  const int64_t frame_bytes = g.M * plane * static_cast<int64_t>(sizeof(T)), budget = 32 << 20;
  const int64_t samples = std::clamp<int64_t>(budget / (frame_bytes * g.T), 1, g.N);
  const bool whole = frame_bytes * g.T <= budget;
  const int64_t run = whole ? To : std::clamp<int64_t>(budget / (frame_bytes * tg.st), 1, To);
  const int64_t unit_frames = whole ? samples * g.T : std::min<int64_t>(g.T, run * tg.st + tg.kt);
  // One tile size for all units (the transformed filters are shared), chosen for a full one.
  const int64_t R = winograd::tile_size(unit_frames, g.Ho, g.Wo, winograd::Use::kInference);
  const winograd::Filters U =
      winograd::filter_transform<T>(spatial_weight.reshape({g.M, g.C, 3, 3}), false, R);
  const Scratch zs = Scratch::of<T>(unit_frames * g.M * plane);
  T* zp = zs.data<T>();
  const auto opts = wk.options();
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
      const winograd::Plan plan((n1 - n0) * span, g.C, g.H, g.W, g.M, g.ph, g.pw, R);
      winograd::forward<T>(
          plan, U, [&](int64_t f, int64_t c, int64_t ih, T* dst) { x_rows(first + f, c, ih, dst); },
          [&](int64_t f, int64_t m, int64_t oh, const T* row) {
            rows::bias_relu(row, zp + (f * g.M + m) * plane + oh * g.Wo, bsp ? bsp[m] : T(0), g.Wo);
          },
          [](int64_t, const T*, int64_t) {}, opts);
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
  TORCH_CHECK_VALUE(stride.size() == 3 && padding.size() == 3,
                    "r2p1d: expected 3 strides and 3 paddings (t, h, w), but got ", stride.size(),
                    " and ", padding.size());
  const SpatialGeom g = check_spatial(x, spatial_weight, spatial_bias, stride.slice(1),
                                      padding.slice(1));
  const TemporalGeom tg = check_temporal_weight(x, g.N, g.M, g.T, g.out_plane(), temporal_weight,
                                                temporal_bias, stride[0], padding[0]);
  const int64_t O = tg.O, kt = tg.kt, st = tg.st, pt = tg.pt, To = tg.To;
  if (is_reduced(x)) {
    return fused_eval_cpu(to_float(x), to_float(spatial_weight), to_float(spatial_bias),
                          to_float(temporal_weight), to_float(temporal_bias), stride, padding)
        .to(x.scalar_type());
  }
  const Tensor xc = x.contiguous();
  const Tensor w2 = spatial_weight.reshape({g.M, g.C * g.kh * g.kw}).contiguous();
  const Tensor wk = taps_major(temporal_weight);
  const Tensor bs = spatial_bias.has_value() && spatial_bias->defined()
                        ? spatial_bias->contiguous() : Tensor();
  const Tensor bt = temporal_bias.has_value() && temporal_bias->defined()
                        ? temporal_bias->contiguous() : Tensor();
  const int64_t plane = g.out_plane(), kdim = w2.size(1);
  Tensor out = at::empty({g.N, O, To, g.Ho, g.Wo}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_eval_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* bsp = bs.defined() ? bs.data_ptr<scalar_t>() : nullptr;
    const scalar_t* btp = bt.defined() ? bt.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    if (winograd::applies(g.kh, g.kw, g.sh, g.sw, g.ph, g.pw)) {
      winograd_eval<scalar_t>(g, tg, xp, spatial_weight, bsp, wk, btp, op);
      return;
    }
    // Enough tiles to keep every thread busy; longer runs of output steps share more of
    // their halo frames.
    const int64_t want = std::max<int64_t>(g.N, 2 * at::get_num_threads());
    const int64_t tiles_per_sample = std::min(To, (want + g.N - 1) / g.N);
    const int64_t run = (To + tiles_per_sample - 1) / tiles_per_sample;
    at::parallel_for(0, g.N * tiles_per_sample, 1, [&](int64_t begin, int64_t end) {
      Tensor col = at::empty({kdim, plane}, xc.options());
      scalar_t* colp = col.data_ptr<scalar_t>();
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t n = tile / tiles_per_sample;
        const int64_t to0 = (tile % tiles_per_sample) * run, to1 = std::min(To, to0 + run);
        if (to0 >= to1) continue;
        const auto [lo, hi] = input_span(to0, to1, st, pt, kt, g.T);
        if (hi <= lo) {
          fill_bias(op, n, O, To, to0, to1, plane, btp);
          continue;
        }
        Tensor z = at::empty({hi - lo, g.M, plane}, xc.options());
        scalar_t* zp = z.data_ptr<scalar_t>();
        for (int64_t ti = lo; ti < hi; ++ti) {
          im2col_frame(xp + (n * g.C * g.T + ti) * g.in_plane(), g.T * g.in_plane(), g, colp);
          Tensor zf = z[ti - lo];
          at::mm_out(zf, w2, col);
          scalar_t* zr = zp + (ti - lo) * g.M * plane;
          for (int64_t m = 0; m < g.M; ++m) {
            const scalar_t bm = bsp ? bsp[m] : scalar_t(0);
            for (int64_t q = 0; q < plane; ++q)
              zr[m * plane + q] = std::max(zr[m * plane + q] + bm, scalar_t(0));
          }
        }
        for (int64_t to = to0; to < to1; ++to) {
          Tensor out_f = mat(op + (n * O * To + to) * plane, O, plane, To * plane);
          temporal_output_frame<scalar_t>(out_f, wk, btp, to, st, pt, g.T,
                                          [&](int64_t ti) { return z[ti - lo]; });
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) { m.impl("fused_eval", &fused_eval_cpu); }

}  // namespace r2p1d::cpu
