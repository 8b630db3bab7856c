// CPU kernels of the spatial (1,kh,kw) convolution: forward with the BatchNorm batch
// statistics taken while the output is in cache, and its backward. 3x3 stride-1 convs take
// the Winograd path (winograd/spatial.h); any other kernel or stride takes per-frame im2col.
#include <torch/library.h>

#include <numeric>

#include "cpu/bf16/kernels.h"
#include "frame_gemm.h"
#include "moments.h"
#include "row_kernels.h"
#include "winograd/spatial.h"

namespace r2p1d::cpu {
namespace {

using at::Tensor;

// The general (any kernel, stride) path works on groups of consecutive (n, t) frames: the
// group's im2col matrices side by side (C*kh*kw rows of G*Ho*Wo columns) and one GEMM for
// all of them, run at the top level. One frame alone gives GEMMs only Ho*Wo columns wide
// (16 at the downsampling conv5_x of r2plus1d_10 on 56x56 clips) and, for the weight
// gradient, needed per-chunk partial sums: zeroing those (136 MB at that conv5_x, 68 MB
// at its conv4_x) took more time than their products. Groups hold as many frames as keep
// the two buffers within ~4 MB (as fast as 16 MB on r2plus1d_18, with a lower peak, as the
// buffers stay in the scratch pool: bench/NOTES.md).
int64_t frames_per_group(const SpatialGeom& g, int64_t elem_size) {
  const int64_t per_frame = (g.C * g.kh * g.kw + g.M) * g.out_plane() * elem_size;
  return std::clamp<int64_t>((4 << 20) / std::max<int64_t>(per_frame, 1), 1, g.frames());
}

// The forward of the general path; the epilogue adds the bias, stores the rows and takes
// each (frame, channel)'s mean and M2 (exact two-pass), merged into `moments` in frame
// order.
template <typename T>
void im2col_forward_stats(const SpatialGeom& g, const T* xp, const T* w2p, const T* bp, T* yp,
                          std::vector<Moments>& moments) {
  const int64_t plane = g.out_plane(), kdim = g.C * g.kh * g.kw, G = frames_per_group(g, sizeof(T));
  const Tensor w2 = mat(const_cast<T*>(w2p), g.M, kdim, kdim);
  const Scratch cols = Scratch::of<T>(kdim * G * plane), outs = Scratch::of<T>(g.M * G * plane);
  T *col = cols.data<T>(), *out = outs.data<T>();
  std::vector<double> part(g.frames() * g.M * 2);
  for (int64_t f0 = 0; f0 < g.frames(); f0 += G) {
    const int64_t cnt = std::min(G, g.frames() - f0), ld = cnt * plane;
    im2col_group(g, xp, f0, cnt, col, ld);
    Tensor o = mat(out, g.M, ld, ld);
    at::mm_out(o, w2, mat(col, kdim, ld, ld));
    at::parallel_for(0, cnt * g.M, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t f = f0 + item / g.M, m = item % g.M;
        T* row = frame_channel(yp, g.M, g.T, plane, f, m);
        rows::add_bias(static_cast<const T*>(out + m * ld + (f - f0) * plane), row,
                       bp ? bp[m] : T(0), plane);
        const auto [mean, m2] = rows::moments(static_cast<const T*>(row), plane);
        part[(f * g.M + m) * 2] = mean;
        part[(f * g.M + m) * 2 + 1] = m2;
      }
    });
  }
  merge_frames(moments, part, g.frames(), plane);
}

// The backward of the general path, per group of frames: gy_total(f, m, off, len, dst)
// into a (M, group) buffer; the input gradient by one GEMM (col = W^T gy) and col2im, the
// weight gradient by im2col and one GEMM accumulated over the groups in order.
template <typename T, typename GyTotal>
std::pair<Tensor, Tensor> im2col_backward(const SpatialGeom& g, const Tensor& xc,
                                          const Tensor& weight, GyTotal&& gy_total, bool need_x,
                                          bool need_w) {
  const Tensor w2 = weight.reshape({g.M, g.C * g.kh * g.kw}).contiguous();
  const int64_t plane = g.out_plane(), kdim = w2.size(1), G = frames_per_group(g, sizeof(T));
  const Scratch cols = Scratch::of<T>(kdim * G * plane), gys = Scratch::of<T>(g.M * G * plane);
  T *col = cols.data<T>(), *gy = gys.data<T>();
  Tensor grad_x = need_x ? at::zeros_like(xc) : Tensor();
  Tensor grad_w = need_w ? at::empty({g.M, kdim}, xc.options()) : Tensor();
  const T* xp = xc.data_ptr<T>();
  for (int64_t f0 = 0; f0 < g.frames(); f0 += G) {
    const int64_t cnt = std::min(G, g.frames() - f0), ld = cnt * plane;
    at::parallel_for(0, cnt * g.M, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t j = item / g.M, m = item % g.M;
        gy_total(f0 + j, m, 0, plane, gy + m * ld + j * plane);
      }
    });
    const Tensor gy_mat = mat(gy, g.M, ld, ld);
    Tensor col_mat = mat(col, kdim, ld, ld);
    if (need_x) {
      at::mm_out(col_mat, w2.t(), gy_mat);
      T* gxp = grad_x.data_ptr<T>();
      at::parallel_for(0, cnt * g.C, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t j = item / g.C, c = item % g.C;
          col2im_channel(static_cast<const T*>(col + c * g.kh * g.kw * ld + j * plane), ld, g,
                         frame_channel(gxp, g.C, g.T, g.in_plane(), f0 + j, c));
        }
      });
    }
    if (need_w) {
      im2col_group(g, xp, f0, cnt, col, ld);
      if (f0 == 0) {
        at::mm_out(grad_w, gy_mat, col_mat.t());
      } else {
        grad_w.addmm_(gy_mat, col_mat.t());
      }
    }
  }
  return {grad_x, need_w ? grad_w.view(weight.sizes()) : Tensor()};
}

std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats_cpu(const Tensor& x, const Tensor& weight,
                                                          const std::optional<Tensor>& bias,
                                                          at::IntArrayRef stride,
                                                          at::IntArrayRef padding) {
  KernelScope scope;
  const SpatialGeom g = check_spatial(x, weight, bias, stride, padding);
  bf16::Path path;
  if (bf16::takes_bf16_kernels(x, path)) return bf16::spatial_conv_stats(path, g, x, weight, bias);
  if (is_reduced(x)) {
    // The statistics of y as stored (rounded), as in eager and in the bfloat16 kernels.
    const Tensor y = std::get<0>(spatial_conv_stats_cpu(to_float(x), to_float(weight),
                                                        to_float(bias), stride, padding))
                         .to(x.scalar_type());
    auto [var, mean] = at::var_mean(y.to(at::kFloat), {0, 2, 3, 4}, 0);
    return {y, mean, var};
  }
  const Tensor xc = x.contiguous();
  const Tensor w2 = weight.reshape({g.M, g.C * g.kh * g.kw}).contiguous();
  const Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : Tensor();
  Tensor y = at::empty({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  const int64_t plane = g.out_plane();
  std::vector<Moments> moments(g.M);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_conv_stats_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    if (winograd::applies(g.kh, g.kw, g.sh, g.sw, g.ph, g.pw)) {
      const winograd::Plan plan(g.frames(), g.C, g.H, g.W, g.M, g.ph, g.pw,
                                winograd::tile_size(g.frames(), g.Ho, g.Wo));
      const winograd::Filters U(weight.reshape({g.M, g.C, 3, 3}), false, plan.R);
      // Each output row gets its bias and is stored. The statistics come per channel and
      // batch from the bias-free values: the bias shifts the mean, not M2.
      winograd::forward<scalar_t>(
          plan, U, frame_rows(xp, g.C, g.T, g.H, g.W),
          [&](int64_t f, int64_t m, int64_t oh, const scalar_t* row) {
            rows::add_bias(row, frame_channel(yp, g.M, g.T, plane, f, m) + oh * g.Wo,
                           bp ? bp[m] : scalar_t(0), g.Wo);
          },
          [&](int64_t m, const scalar_t* values, int64_t n) {
            const auto [mu, m2] = rows::moments(values, n);
            moments[m].merge(n, mu + (bp ? bp[m] : scalar_t(0)), m2);
          },
          xc.options());
      return;
    }
    im2col_forward_stats(g, xp, w2.data_ptr<scalar_t>(), bp, yp, moments);
  });

  const auto stats_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto [mean, var] = moments_tensors(moments, stats_dtype, x.options());
  return {y, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> spatial_conv_backward_cpu(
    const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& y,
    const Tensor& mean, const std::optional<Tensor>& grad_mean,
    const std::optional<Tensor>& grad_var, at::IntArrayRef stride, at::IntArrayRef padding,
    std::array<bool, 3> mask) {
  KernelScope scope;
  const SpatialGeom g = check_spatial_backward(grad_y, x, weight, y, mean, grad_mean, grad_var,
                                               stride, padding);
  bf16::Path path;
  if (bf16::takes_bf16_kernels(x, path))
    return bf16::spatial_conv_backward(path, g, grad_y, x, weight, y, mean, grad_mean, grad_var, mask);
  if (is_reduced(x)) {
    auto [gx, gw, gb] = spatial_conv_backward_cpu(to_float(grad_y), to_float(x),
                                                  to_float(weight), to_float(y), mean,
                                                  grad_mean, grad_var, stride, padding, mask);
    const auto dt = x.scalar_type();
    return {to_dtype(gx, dt), to_dtype(gw, dt), to_dtype(gb, dt)};
  }
  const Tensor xc = x.contiguous(), gyc = grad_y.contiguous(), yc = y.contiguous();
  const int64_t plane = g.out_plane();
  // The statistics' gradient folded into per-channel coefficients:
  //   gy_total = grad_y + ca[m] + cb[m] * (y - mean[m])   (grad_y alone without statistics)
  const auto coeffs = statistics_share(grad_mean, grad_var, mean, g.count(), at::kDouble);
  const Tensor &ca = coeffs.first, &cb = coeffs.second;
  const bool share = ca.defined();
  const Tensor mu = mean.to(at::kDouble).contiguous();
  Tensor gb_part = mask[2] ? at::empty({g.N, g.M}, x.options().dtype(at::kDouble)) : Tensor();
  Tensor grad_x, grad_w;

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_conv_backward_cpu", [&] {
    const scalar_t *gyp = gyc.data_ptr<scalar_t>(), *yp = yc.data_ptr<scalar_t>();
    const double *mup = mu.data_ptr<double>();
    // Per channel in the kernel dtype; the centred (y - mean) avoids cancellation when
    // |mean| >> std, as in the forward.
    std::vector<scalar_t> ca_t(g.M), cb_t(g.M), mu_t(g.M);
    for (int64_t m = 0; m < g.M; ++m) {
      ca_t[m] = share ? static_cast<scalar_t>(ca.data_ptr<double>()[m]) : scalar_t(0);
      cb_t[m] = share ? static_cast<scalar_t>(cb.data_ptr<double>()[m]) : scalar_t(0);
      mu_t[m] = static_cast<scalar_t>(mup[m]);
    }
    // gy_total, `len` values from offset `off` of channel m of frame f (computed where it
    // is read, never stored as a tensor).
    auto gy_total = [&](int64_t f, int64_t m, int64_t off, int64_t len, scalar_t* __restrict dst) {
      const scalar_t* __restrict gr = frame_channel(gyp, g.M, g.T, plane, f, m) + off;
      const scalar_t* __restrict yr = frame_channel(yp, g.M, g.T, plane, f, m) + off;
      if (share) rows::grad_total(gr, yr, dst, ca_t[m], cb_t[m], mu_t[m], len);
      else std::copy(gr, gr + len, dst);
    };
    if (mask[2]) {  // bias gradient: per-channel sums of gy_total, in sample order
      double* gbp = gb_part.data_ptr<double>();
      at::parallel_for(0, g.N * g.M, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> row(plane);
        for (int64_t nm = begin; nm < end; ++nm) {
          double sum = 0;
          for (int64_t t = 0; t < g.T; ++t) {
            gy_total((nm / g.M) * g.T + t, nm % g.M, 0, plane, row.data());
            sum += std::accumulate(row.begin(), row.end(), scalar_t(0));
          }
          gbp[nm] = sum;
        }
      });
    }
    if (!mask[0] && !mask[1]) return;
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    if (!winograd::applies(g.kh, g.kw, g.sh, g.sw, g.ph, g.pw)) {
      std::tie(grad_x, grad_w) = im2col_backward<scalar_t>(g, xc, weight, gy_total, mask[0], mask[1]);
      return;
    }
    if (mask[0]) {
      // The input gradient is the forward convolution of gy_total with the flipped,
      // transposed filter and padding 2-p.
      grad_x = at::empty_like(xc);
      scalar_t* gxp = grad_x.data_ptr<scalar_t>();
      const winograd::Plan plan(g.frames(), g.M, g.Ho, g.Wo, g.C, 2 - g.ph, 2 - g.pw,
                                winograd::tile_size(g.frames(), g.H, g.W));
      const winograd::Filters U(weight.reshape({g.M, g.C, 3, 3}), true, plan.R);
      winograd::forward<scalar_t>(
          plan, U,
          [&](int64_t f, int64_t m, int64_t oh, scalar_t* dst) { gy_total(f, m, oh * g.Wo, g.Wo, dst); },
          [&](int64_t f, int64_t c, int64_t ih, const scalar_t* row) {
            std::copy(row, row + g.W, frame_channel(gxp, g.C, g.T, g.in_plane(), f, c) + ih * g.W);
          },
          nullptr, xc.options());
    }
    if (mask[1]) {
      const winograd::Plan plan(g.frames(), g.C, g.H, g.W, g.M, g.ph, g.pw,
                                winograd::tile_size(g.frames(), g.Ho, g.Wo));
      grad_w = winograd::weight_grad<scalar_t>(
          plan, frame_rows(xp, g.C, g.T, g.H, g.W),
          [&](int64_t f, int64_t m, int64_t oh, scalar_t* dst) { gy_total(f, m, oh * g.Wo, g.Wo, dst); },
          xc.options());
    }
  });
  Tensor grad_b = mask[2] ? gb_part.sum(0).to(x.scalar_type()) : Tensor();
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) {
  m.impl("spatial_conv_stats", &spatial_conv_stats_cpu);
  m.impl("spatial_conv_backward", &spatial_conv_backward_cpu);
}

}  // namespace r2p1d::cpu
