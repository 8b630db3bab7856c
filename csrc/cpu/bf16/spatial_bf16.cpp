// The bfloat16 spatial conv (kernels.h): per group of consecutive (n, t) frames, one
// implicit GEMM of the weight with the frames (conv_packer.h: no im2col matrix), float32
// out; the epilogue adds the bias, rounds the rows to bfloat16 and takes their statistics.
// Backward: the input gradient of a stride-1 conv is itself such a convolution, of
// gy_total with the flipped, transposed filter (padding k-1-p), and otherwise im2col's
// transpose (col2im); the weight gradient is gy_total times the frames' im2col matrix.
// Every kernel size and stride takes this path, no Winograd (docs/kernels.md, "bfloat16 on
// the CPU").
#include <ATen/Parallel.h>

#include "cpu/bf16/conv_packer.h"
#include "cpu/bf16/gemm.h"
#include "cpu/bf16/kernels.h"
#include "cpu/bf16/rows.h"
#include "cpu/frame_gemm.h"
#include "cpu/moments.h"
#include "cpu/scratch.h"

namespace r2p1d::cpu::bf16 {
namespace {

using at::Tensor;

// Frames per group: the group's buffers (`bytes` per frame) within ~4 MB, as in the float32
// path (csrc/cpu/spatial_conv_cpu.cpp).
int64_t frames_per_group(const SpatialGeom& g, int64_t bytes) {
  return std::clamp<int64_t>((4 << 20) / std::max<int64_t>(bytes, 1), 1, g.frames());
}

ConvGeom conv_geom(const SpatialGeom& g) {
  return {g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.Ho, g.Wo};
}

View matrix(const Bf* p, int64_t rows, int64_t cols, int64_t ld) { return {bits(p), rows, cols, ld, 1}; }

}  // namespace

std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats(Path path, const SpatialGeom& g,
                                                      const Tensor& x, const Tensor& weight,
                                                      const std::optional<Tensor>& bias) {
  const Tensor xc = x.contiguous();
  const int64_t kdim = g.C * g.kh * g.kw, plane = g.out_plane(), G = frames_per_group(g, g.M * plane * 4);
  const Tensor w2 = weight.reshape({g.M, kdim}).contiguous();
  // The bias in float32 (a bfloat16 bias is widened exactly).
  const Tensor b = bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  Tensor y = at::empty({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  const Bf* xp = xc.data_ptr<Bf>();
  Bf* yp = y.data_ptr<Bf>();
  const Scratch outs = Scratch::of<float>(g.M * G * plane);
  float* out = outs.data<float>();
  std::vector<double> part(g.frames() * g.M * 2);
  for (int64_t f0 = 0; f0 < g.frames(); f0 += G) {
    const int64_t cnt = std::min(G, g.frames() - f0), ld = cnt * plane;
    std::vector<int64_t> bases(cnt);
    for (int64_t j = 0; j < cnt; ++j) bases[j] = frame_offset(f0 + j, g.C, g.T, g.in_plane());
    const ConvPacker frames(bits(xp), g.T * g.in_plane(), std::move(bases), conv_geom(g));
    gemm(path, matrix(w2.data_ptr<Bf>(), g.M, kdim, kdim), frames, out, ld, false);
    at::parallel_for(0, cnt * g.M, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t f = f0 + item / g.M, m = item % g.M;
        float* row = out + m * ld + (f - f0) * plane;
        // The statistics of y as stored (rounded), as BatchNorm sees it in eager bfloat16:
        // the backward's centring terms then cancel against the same values.
        add_bias_round(row, bp ? bp[m] : 0.f, frame_channel(yp, g.M, g.T, plane, f, m), plane);
        const auto [mean, m2] = rows::moments(static_cast<const float*>(row), plane);
        part[(f * g.M + m) * 2] = mean;
        part[(f * g.M + m) * 2 + 1] = m2;
      }
    });
  }
  std::vector<Moments> moments(g.M);
  merge_frames(moments, part, g.frames(), plane);
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
  // Per group of frames: gy_total (M, group) in bfloat16, the GEMM operand. The input
  // gradient: for stride 1 (padding < kernel), the implicit GEMM of the flipped filter
  // (C, M*kh*kw) with gy_total's frames, rounded into grad_x; otherwise gcol = W^T gy in
  // float32, added back by col2im into a float32 grad_x. The weight gradient: gW += gy
  // col^T, float32 across the groups.
  const bool as_conv = g.sh == 1 && g.sw == 1 && g.ph < g.kh && g.pw < g.kw;
  const int64_t in_plane = g.in_plane();
  const int64_t per_frame = g.M * plane * 2 + (mask[1] ? kdim * plane * 2 : 0) +
                            (mask[0] ? (as_conv ? g.C * in_plane : kdim * plane) * 4 : 0);
  const int64_t G = frames_per_group(g, per_frame);
  const Tensor w2 = weight.reshape({g.M, kdim}).contiguous();
  // The flipped, transposed filter: wf[c, (m, i, j)] = w[m, c, kh-1-i, kw-1-j].
  const Tensor wf = mask[0] && as_conv
                        ? weight.flip({3, 4}).transpose(0, 1).reshape({g.C, g.M * g.kh * g.kw}).contiguous()
                        : Tensor();
  const ConvGeom dgeom{g.M, g.Ho, g.Wo, g.kh, g.kw, 1, 1, g.kh - 1 - g.ph, g.kw - 1 - g.pw, g.H, g.W};
  const Scratch gys = Scratch::of<Bf>(g.M * G * plane);
  const Scratch cols = Scratch::of<Bf>(mask[1] ? kdim * G * plane : 0);
  const Scratch gouts = Scratch::of<float>(!mask[0] ? 0 : as_conv ? g.C * G * in_plane : kdim * G * plane);
  Bf *gy = gys.data<Bf>(), *col = cols.data<Bf>();
  float* gout = gouts.data<float>();
  Tensor gx = !mask[0] ? Tensor() : as_conv ? at::empty_like(xc)
                                             : at::zeros(xc.sizes(), xc.options().dtype(at::kFloat));
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
    if (mask[0] && as_conv) {
      std::vector<int64_t> bases(cnt);
      for (int64_t j = 0; j < cnt; ++j) bases[j] = j * plane;
      const int64_t gld = cnt * in_plane;
      gemm(path, matrix(wf.data_ptr<Bf>(), g.C, g.M * g.kh * g.kw, g.M * g.kh * g.kw),
           ConvPacker(bits(gy), ld, std::move(bases), dgeom), gout, gld, false);
      Bf* gxp = gx.data_ptr<Bf>();
      at::parallel_for(0, cnt * g.C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t j = item / g.C, c = item % g.C;
          narrow(gout + c * gld + j * in_plane, frame_channel(gxp, g.C, g.T, in_plane, f0 + j, c), in_plane);
        }
      });
    } else if (mask[0]) {
      gemm(path, matrix(w2.data_ptr<Bf>(), g.M, kdim, kdim).t(), gy_mat, gout, ld, false);
      float* gxp = gx.data_ptr<float>();
      at::parallel_for(0, cnt * g.C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t j = item / g.C, c = item % g.C;
          col2im_channel(static_cast<const float*>(gout + c * g.kh * g.kw * ld + j * plane), ld, g,
                         frame_channel(gxp, g.C, g.T, in_plane, f0 + j, c));
        }
      });
    }
    if (mask[1]) {
      im2col_group(g, xp, f0, cnt, col, ld);
      gemm(path, gy_mat, matrix(col, kdim, ld, ld).t(), gw.data_ptr<float>(), kdim, f0 > 0);
    }
  }
  return {mask[0] ? gx.to(x.scalar_type()) : Tensor(),  // (a no-op for the bfloat16 grad_x)
          mask[1] ? gw.view(weight.sizes()).to(weight.scalar_type()) : Tensor(), grad_b};
}

}  // namespace r2p1d::cpu::bf16
