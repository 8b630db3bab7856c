// CPU inference kernel: spatial conv (BatchNorm folded in) + ReLU + temporal conv in one
// pass. Work is split into (sample, run of output time steps) tiles; each tile computes
// only the activated input frames its outputs read (its temporal halo included) into a
// tile-local buffer, so the full intermediate tensor never exists.
#include <torch/library.h>

#include "frame_gemm.h"

namespace r2p1d::cpu {
namespace {

using at::Tensor;

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

  // Enough tiles to keep every thread busy; longer runs of output steps share more of
  // their halo frames.
  const int64_t want = std::max<int64_t>(g.N, 2 * at::get_num_threads());
  const int64_t tiles_per_sample = std::min(To, (want + g.N - 1) / g.N);
  const int64_t run = (To + tiles_per_sample - 1) / tiles_per_sample;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fused_eval_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* bsp = bs.defined() ? bs.data_ptr<scalar_t>() : nullptr;
    const scalar_t* btp = bt.defined() ? bt.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.N * tiles_per_sample, 1, [&](int64_t begin, int64_t end) {
      Tensor col = at::empty({kdim, plane}, xc.options());
      scalar_t* colp = col.data_ptr<scalar_t>();
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t n = tile / tiles_per_sample;
        const int64_t to0 = (tile % tiles_per_sample) * run, to1 = std::min(To, to0 + run);
        if (to0 >= to1) continue;
        const int64_t lo = std::max<int64_t>(0, to0 * st - pt);
        const int64_t hi = std::min<int64_t>(g.T, (to1 - 1) * st - pt + kt);
        if (hi <= lo) {  // every tap in the padding: only the bias remains
          for (int64_t to = to0; to < to1; ++to)
            for (int64_t o = 0; o < O; ++o)
              std::fill_n(op + ((n * O + o) * To + to) * plane, plane,
                          btp ? btp[o] : scalar_t(0));
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
