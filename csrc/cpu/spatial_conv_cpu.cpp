// CPU kernels of the spatial (1,kh,kw) convolution: forward with the BatchNorm batch
// statistics computed per frame while the frame is in cache, and its backward.
#include <torch/library.h>

#include "frame_gemm.h"

namespace r2p1d::cpu {
namespace {

using at::Tensor;

// Chan's merge of (count, mean, M2) partial statistics.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
  void merge(double nb, double mean_b, double m2_b) {
    if (nb == 0) return;
    const double tot = n + nb, delta = mean_b - mean;
    mean += delta * nb / tot;
    m2 += m2_b + delta * delta * n * nb / tot;
    n = tot;
  }
};

std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats_cpu(const Tensor& x, const Tensor& weight,
                                                          const std::optional<Tensor>& bias,
                                                          at::IntArrayRef stride,
                                                          at::IntArrayRef padding) {
  KernelScope scope;
  const SpatialGeom g = check_spatial(x, weight, bias, stride, padding);
  if (is_reduced(x)) {
    auto [y, mean, var] = spatial_conv_stats_cpu(to_float(x), to_float(weight), to_float(bias),
                                                 stride, padding);
    return {y.to(x.scalar_type()), mean, var};
  }
  const Tensor xc = x.contiguous();
  const Tensor w2 = weight.reshape({g.M, g.C * g.kh * g.kw}).contiguous();
  const Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : Tensor();
  Tensor y = at::empty({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  // Per frame and channel: mean and M2 of that frame's plane (exact two-pass in double).
  Tensor part = at::empty({g.frames(), g.M, 2}, x.options().dtype(at::kDouble));
  const int64_t plane = g.out_plane(), kdim = w2.size(1);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_conv_stats_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    double* pp = part.data_ptr<double>();
    at::parallel_for(0, g.frames(), 1, [&](int64_t begin, int64_t end) {
      Tensor col = at::empty({kdim, plane}, xc.options());
      scalar_t* colp = col.data_ptr<scalar_t>();
      for (int64_t f = begin; f < end; ++f) {
        const int64_t n = f / g.T, t = f % g.T;
        im2col_frame(xp + (n * g.C * g.T + t) * g.in_plane(), g.T * g.in_plane(), g, colp);
        scalar_t* yf = yp + (n * g.M * g.T + t) * plane;
        Tensor yf_mat = mat(yf, g.M, plane, g.T * plane);
        at::mm_out(yf_mat, w2, col);
        for (int64_t m = 0; m < g.M; ++m) {
          scalar_t* row = yf + m * g.T * plane;
          const scalar_t bm = bp ? bp[m] : scalar_t(0);
          double sum = 0;
          for (int64_t q = 0; q < plane; ++q) {
            row[q] += bm;
            sum += row[q];
          }
          const double mean = sum / plane;
          double m2 = 0;
          for (int64_t q = 0; q < plane; ++q) {
            const double d = row[q] - mean;
            m2 += d * d;
          }
          pp[(f * g.M + m) * 2] = mean;
          pp[(f * g.M + m) * 2 + 1] = m2;
        }
      }
    });
  });

  const auto stats_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor mean = at::empty({g.M}, x.options().dtype(at::kDouble));
  Tensor var = at::empty({g.M}, x.options().dtype(at::kDouble));
  const double* pp = part.data_ptr<double>();
  double* mp = mean.data_ptr<double>();
  double* vp = var.data_ptr<double>();
  at::parallel_for(0, g.M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      Moments acc;
      for (int64_t f = 0; f < g.frames(); ++f)
        acc.merge(plane, pp[(f * g.M + m) * 2], pp[(f * g.M + m) * 2 + 1]);
      mp[m] = acc.mean;
      vp[m] = acc.m2 / acc.n;
    }
  });
  return {y, mean.to(stats_dtype), var.to(stats_dtype)};
}

std::tuple<Tensor, Tensor, Tensor> spatial_conv_backward_cpu(
    const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& y,
    const Tensor& mean, const Tensor& grad_mean, const Tensor& grad_var, at::IntArrayRef stride,
    at::IntArrayRef padding, std::array<bool, 3> mask) {
  KernelScope scope;
  const SpatialGeom g = check_spatial(x, weight, std::nullopt, stride, padding);
  TORCH_CHECK_VALUE(grad_y.sizes() == y.sizes() &&
                        y.sizes() == at::IntArrayRef({g.N, g.M, g.T, g.Ho, g.Wo}),
                    "r2p1d: expected grad_y and y of shape ",
                    at::IntArrayRef({g.N, g.M, g.T, g.Ho, g.Wo}), ", but got ", grad_y.sizes(),
                    " and ", y.sizes());
  for (const auto& [v, name] : {std::pair{&mean, "mean"}, {&grad_mean, "grad_mean"},
                                {&grad_var, "grad_var"}})
    check_channel_vector(x, *v, name, g.M);
  if (is_reduced(x)) {
    auto [gx, gw, gb] = spatial_conv_backward_cpu(to_float(grad_y), to_float(x),
                                                  to_float(weight), to_float(y), mean,
                                                  grad_mean, grad_var, stride, padding, mask);
    const auto dt = x.scalar_type();
    return {to_dtype(gx, dt), to_dtype(gw, dt), to_dtype(gb, dt)};
  }
  const Tensor xc = x.contiguous(), gyc = grad_y.contiguous(), yc = y.contiguous();
  const Tensor w2 = weight.reshape({g.M, g.C * g.kh * g.kw}).contiguous();
  const int64_t plane = g.out_plane(), kdim = w2.size(1), frames = g.frames();
  const double count = static_cast<double>(g.count());
  // The statistics' gradient folded into per-channel coefficients:
  //   gy_total = grad_y + ca[m] + cb[m] * (y - mean[m])
  const Tensor ca = grad_mean.to(at::kDouble).contiguous() / count;
  const Tensor cb = grad_var.to(at::kDouble).contiguous() * (2.0 / count);
  const Tensor mu = mean.to(at::kDouble).contiguous();

  Tensor grad_x = mask[0] ? at::zeros_like(xc) : Tensor();
  const int64_t chunks = reduction_chunks(frames);
  Tensor gw_part = mask[1] ? at::zeros({chunks, g.M, kdim}, x.options()) : Tensor();
  Tensor gb_part = at::zeros({frames, g.M}, x.options().dtype(at::kDouble));

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_conv_backward_cpu", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* gyp = gyc.data_ptr<scalar_t>();
    const scalar_t* yp = yc.data_ptr<scalar_t>();
    const double *cap = ca.data_ptr<double>(), *cbp = cb.data_ptr<double>(),
                 *mup = mu.data_ptr<double>();
    double* gbp = gb_part.data_ptr<double>();
    at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
      Tensor gy_f = at::empty({g.M, plane}, xc.options());
      Tensor col = at::empty({kdim, plane}, xc.options());
      scalar_t* gfp = gy_f.data_ptr<scalar_t>();
      for (int64_t c = cbegin; c < cend; ++c) {
        const int64_t fbegin = c * frames / chunks, fend = (c + 1) * frames / chunks;
        for (int64_t f = fbegin; f < fend; ++f) {
          const int64_t n = f / g.T, t = f % g.T;
          const int64_t y_off = (n * g.M * g.T + t) * plane;
          for (int64_t m = 0; m < g.M; ++m) {
            const scalar_t* gr = gyp + y_off + m * g.T * plane;
            const scalar_t* yr = yp + y_off + m * g.T * plane;
            scalar_t* out = gfp + m * plane;
            double sum = 0;
            for (int64_t q = 0; q < plane; ++q) {
              out[q] = static_cast<scalar_t>(gr[q] + cap[m] + cbp[m] * (yr[q] - mup[m]));
              sum += out[q];
            }
            gbp[f * g.M + m] = sum;
          }
          const int64_t x_off = (n * g.C * g.T + t) * g.in_plane();
          if (mask[0]) {
            at::mm_out(col, w2.t(), gy_f);
            col2im_frame(col.data_ptr<scalar_t>(), g.T * g.in_plane(), g,
                         grad_x.data_ptr<scalar_t>() + x_off);
          }
          if (mask[1]) {
            im2col_frame(xp + x_off, g.T * g.in_plane(), g, col.data_ptr<scalar_t>());
            gw_part[c].addmm_(gy_f, col.t());
          }
        }
      }
    });
  });
  Tensor grad_w = mask[1] ? gw_part.sum(0).view(weight.sizes()) : Tensor();
  Tensor grad_b = mask[2] ? gb_part.sum(0).to(x.scalar_type()) : Tensor();
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) {
  m.impl("spatial_conv_stats", &spatial_conv_stats_cpu);
  m.impl("spatial_conv_backward", &spatial_conv_backward_cpu);
}

}  // namespace r2p1d::cpu
