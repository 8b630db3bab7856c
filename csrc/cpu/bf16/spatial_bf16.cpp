// The bfloat16 spatial conv (kernels.h): per group of consecutive (n, t) frames, their
// im2col matrices side by side (bfloat16) and one GEMM with the weight (float32 out); the
// epilogue adds the bias, rounds the rows to bfloat16 and takes their statistics. Every kernel size and stride takes this path: on bfloat16 units a direct
// product is cheaper than Winograd's transforms, and Winograd's rounding error grows with
// the tile (docs/kernels.md).
#include <ATen/Parallel.h>

#include "cpu/bf16/gemm.h"
#include "cpu/bf16/kernels.h"
#include "cpu/bf16/rows.h"
#include "cpu/frame_gemm.h"
#include "cpu/moments.h"
#include "cpu/scratch.h"

namespace r2p1d::cpu::bf16 {
namespace {

using at::Tensor;

// Frames per group: the group's bfloat16 im2col matrix and float32 GEMM output within
// ~4 MB (as the float32 path: csrc/cpu/spatial_conv_cpu.cpp).
int64_t frames_per_group(const SpatialGeom& g, int64_t out_bytes) {
  const int64_t per_frame = (g.C * g.kh * g.kw * 2 + g.M * out_bytes) * g.out_plane();
  return std::clamp<int64_t>((4 << 20) / std::max<int64_t>(per_frame, 1), 1, g.frames());
}

View matrix(const Bf* p, int64_t rows, int64_t cols, int64_t ld) { return {bits(p), rows, cols, ld, 1}; }

}  // namespace

std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats(Path path, const SpatialGeom& g,
                                                      const Tensor& x, const Tensor& weight,
                                                      const std::optional<Tensor>& bias) {
  const Tensor xc = x.contiguous();
  const int64_t kdim = g.C * g.kh * g.kw, plane = g.out_plane(), G = frames_per_group(g, 4);
  const Tensor w2 = weight.reshape({g.M, kdim}).contiguous();
  // The bias in float32 (a bfloat16 bias is widened exactly).
  const Tensor b = bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  Tensor y = at::empty({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  const Bf* xp = xc.data_ptr<Bf>();
  Bf* yp = y.data_ptr<Bf>();
  const Scratch cols = Scratch::of<Bf>(kdim * G * plane), outs = Scratch::of<float>(g.M * G * plane);
  Bf* col = cols.data<Bf>();
  float* out = outs.data<float>();
  std::vector<double> part(g.frames() * g.M * 2);
  for (int64_t f0 = 0; f0 < g.frames(); f0 += G) {
    const int64_t cnt = std::min(G, g.frames() - f0), ld = cnt * plane;
    im2col_group(g, xp, f0, cnt, col, ld);
    gemm(path, matrix(w2.data_ptr<Bf>(), g.M, kdim, kdim), matrix(col, kdim, ld, ld), out, ld, false);
    at::parallel_for(0, cnt * g.M, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t f = f0 + item / g.M, m = item % g.M;
        float* row = out + m * ld + (f - f0) * plane;
        rows::output_epilogue(row, static_cast<const float*>(nullptr), bp ? bp[m] : 0.f, false, plane);
        // The statistics of y as stored (rounded), as BatchNorm sees it in eager bfloat16:
        // the backward's centring terms then cancel against the same values.
        Bf* yrow = frame_channel(yp, g.M, g.T, plane, f, m);
        narrow(row, yrow, plane);
        widen(yrow, row, plane);
        const auto [mean, m2] = rows::moments(static_cast<const float*>(row), plane);
        part[(f * g.M + m) * 2] = mean;
        part[(f * g.M + m) * 2 + 1] = m2;
      }
    });
  }
  std::vector<Moments> moments(g.M);
  for (int64_t f = 0; f < g.frames(); ++f)
    for (int64_t m = 0; m < g.M; ++m)
      moments[m].merge(plane, part[(f * g.M + m) * 2], part[(f * g.M + m) * 2 + 1]);
  auto [mean, var] = moments_tensors(moments, at::kFloat, x.options());
  return {y, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> spatial_conv_backward(
    Path path, const SpatialGeom& g, const Tensor& grad_y, const Tensor& x, const Tensor& weight,
    const Tensor& y, const Tensor& mean, const std::optional<Tensor>& grad_mean,
    const std::optional<Tensor>& grad_var, std::array<bool, 3> mask) {
  const Tensor xc = x.contiguous(), gyc = grad_y.contiguous(), yc = y.contiguous();
  const int64_t plane = g.out_plane(), kdim = g.C * g.kh * g.kw;
  // gy_total = grad_y + ca[m] + cb[m] * (y - mean[m]) (grad_y alone without statistics),
  // in float32 from the bfloat16 grad_y and y.
  const auto coeffs = statistics_share(grad_mean, grad_var, mean, g.count(), at::kDouble);
  const bool share = coeffs.first.defined();
  const Tensor mu = mean.to(at::kDouble).contiguous();
  std::vector<float> ca(g.M, 0.f), cb(g.M, 0.f), mu_f(g.M);
  for (int64_t m = 0; m < g.M; ++m) {
    if (share) {
      ca[m] = static_cast<float>(coeffs.first.data_ptr<double>()[m]);
      cb[m] = static_cast<float>(coeffs.second.data_ptr<double>()[m]);
    }
    mu_f[m] = static_cast<float>(mu.data_ptr<double>()[m]);
  }
  const Bf *gyp = gyc.data_ptr<Bf>(), *yp = yc.data_ptr<Bf>(), *xp = xc.data_ptr<Bf>();
  // dst = gy_total of the `plane` values of channel m of frame f; buf: 2*plane floats.
  auto gy_total = [&](int64_t f, int64_t m, float* dst, float* buf) {
    if (!share) return widen(frame_channel(gyp, g.M, g.T, plane, f, m), dst, plane);
    widen(frame_channel(gyp, g.M, g.T, plane, f, m), buf, plane);
    widen(frame_channel(yp, g.M, g.T, plane, f, m), buf + plane, plane);
    rows::grad_total(static_cast<const float*>(buf), static_cast<const float*>(buf + plane), dst,
                     ca[m], cb[m], mu_f[m], plane);
  };
  Tensor grad_b;
  if (mask[2]) {  // per-channel sums of gy_total, in sample order
    Tensor part = at::empty({g.N, g.M}, x.options().dtype(at::kDouble));
    double* pp = part.data_ptr<double>();
    at::parallel_for(0, g.N * g.M, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> row(plane), buf(2 * plane);
      for (int64_t nm = begin; nm < end; ++nm) {
        double sum = 0;
        for (int64_t t = 0; t < g.T; ++t) {
          gy_total((nm / g.M) * g.T + t, nm % g.M, row.data(), buf.data());
          sum += rows::centred_power_sum<1>(static_cast<const float*>(row.data()), 0.f, plane);
        }
        pp[nm] = sum;
      }
    });
    grad_b = part.sum(0).to(x.scalar_type());
  }
  if (!mask[0] && !mask[1]) return {Tensor(), Tensor(), grad_b};
  // Per group of frames: gy_total (M, group) in bfloat16, the GEMM operand; the input
  // gradient's columns gcol = W^T gy (float32), added back by col2im into a float32
  // grad_x; the weight gradient gW += gy col^T, float32 across the groups.
  const int64_t G = frames_per_group(g, 2 + (mask[0] ? 4 : 0));
  const Tensor w2 = weight.reshape({g.M, kdim}).contiguous();
  const Scratch gys = Scratch::of<Bf>(g.M * G * plane), cols = Scratch::of<Bf>(kdim * G * plane);
  const Scratch gcols = Scratch::of<float>(mask[0] ? kdim * G * plane : 0);
  Bf *gy = gys.data<Bf>(), *col = cols.data<Bf>();
  float* gcol = gcols.data<float>();
  Tensor gx = mask[0] ? at::zeros(xc.sizes(), xc.options().dtype(at::kFloat)) : Tensor();
  Tensor gw = mask[1] ? at::empty({g.M, kdim}, xc.options().dtype(at::kFloat)) : Tensor();
  for (int64_t f0 = 0; f0 < g.frames(); f0 += G) {
    const int64_t cnt = std::min(G, g.frames() - f0), ld = cnt * plane;
    at::parallel_for(0, cnt * g.M, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> row(plane), buf(2 * plane);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t j = item / g.M, m = item % g.M;
        gy_total(f0 + j, m, row.data(), buf.data());
        narrow(row.data(), gy + m * ld + j * plane, plane);
      }
    });
    const View gy_mat = matrix(gy, g.M, ld, ld);
    if (mask[0]) {
      gemm(path, matrix(w2.data_ptr<Bf>(), g.M, kdim, kdim).t(), gy_mat, gcol, ld, false);
      float* gxp = gx.data_ptr<float>();
      at::parallel_for(0, cnt * g.C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t j = item / g.C, c = item % g.C;
          col2im_channel(static_cast<const float*>(gcol + c * g.kh * g.kw * ld + j * plane), ld, g,
                         frame_channel(gxp, g.C, g.T, g.in_plane(), f0 + j, c));
        }
      });
    }
    if (mask[1]) {
      im2col_group(g, xp, f0, cnt, col, ld);
      gemm(path, gy_mat, matrix(col, kdim, ld, ld).t(), gw.data_ptr<float>(), kdim, f0 > 0);
    }
  }
  return {mask[0] ? gx.to(x.scalar_type()) : Tensor(),
          mask[1] ? gw.view(weight.sizes()).to(weight.scalar_type()) : Tensor(), grad_b};
}

}  // namespace r2p1d::cpu::bf16
