// Argument checks and output geometry shared by the CPU and CUDA kernels. Every check
// says what was expected and what was given (TORCH_CHECK raises RuntimeError/ValueError).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <utility>

namespace r2p1d {

// Sizes of a spatial (1,kh,kw) convolution over an NCDHW input.
struct SpatialGeom {
  int64_t N, C, T, H, W;  // input
  int64_t M, kh, kw;      // output channels and kernel
  int64_t sh, sw, ph, pw;
  int64_t Ho, Wo;
  int64_t frames() const { return N * T; }
  int64_t in_plane() const { return H * W; }
  int64_t out_plane() const { return Ho * Wo; }
  int64_t count() const { return N * T * Ho * Wo; }  // values per channel of y
};

// Sizes of a temporal (kt,1,1) convolution over an NCDHW input.
struct TemporalGeom {
  int64_t N, M, T, HW;  // input (H*W flattened: the temporal conv is pointwise in space)
  int64_t O, kt, st, pt;
  int64_t To;
};

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_floating_point(), "r2p1d: expected ", name,
                    " to be a floating-point tensor, but got dtype ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "r2p1d: expected ", name, " on ", ref.device(),
                    " (the input's device), but it is on ", t.device());
}

inline void check_same_dtype(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), "r2p1d: expected ", name,
                    " of dtype ", ref.scalar_type(), " (the input's dtype), but got ",
                    t.scalar_type());
}

// A per-channel vector (scale, shift, mean, ...): float32/64 of length n on the input's device.
inline void check_channel_vector(const at::Tensor& ref, const at::Tensor& v, const char* name,
                                 int64_t n) {
  check_same_device(ref, v, name);
  check_float_tensor(v, name);
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == n, "r2p1d: expected ", name,
                    " to be a vector of ", n, " per-channel values, but got shape ", v.sizes());
}

inline void check_input5d(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 5, "r2p1d: expected ", name,
                    " to be a 5-D (N, C, T, H, W) tensor, but got ", x.dim(),
                    "-D with shape ", x.sizes());
  check_float_tensor(x, name);
  TORCH_CHECK_VALUE(x.numel() > 0, "r2p1d: expected a non-empty ", name,
                    ", but got shape ", x.sizes());
}

inline void check_bias(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t n,
                       const char* name) {
  if (!bias.has_value() || !bias->defined()) return;
  check_same_device(x, *bias, name);
  check_same_dtype(x, *bias, name);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, "r2p1d: expected ", name,
                    " of shape [", n, "], but got ", bias->sizes());
}

inline int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, const char* dim) {
  TORCH_CHECK_VALUE(s >= 1 && p >= 0, "r2p1d: expected stride >= 1 and padding >= 0 along ",
                    dim, ", but got stride ", s, " and padding ", p);
  TORCH_CHECK_VALUE(in + 2 * p >= k, "r2p1d: input ", dim, " is ", in, " (", in + 2 * p,
                    " with padding), smaller than the kernel size ", k);
  return (in + 2 * p - k) / s + 1;
}

inline SpatialGeom check_spatial(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding) {
  check_input5d(x, "input");
  check_same_device(x, weight, "spatial weight");
  check_same_dtype(x, weight, "spatial weight");
  TORCH_CHECK_VALUE(weight.dim() == 5 && weight.size(2) == 1,
                    "r2p1d: expected a spatial weight of shape (M, C, 1, kh, kw), but got ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), "r2p1d: expected input with ", weight.size(1),
                    " channels (the spatial weight's), but got ", x.size(1), " channels");
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2,
                    "r2p1d: expected 2 spatial strides and paddings, but got ", stride.size(),
                    " and ", padding.size());
  SpatialGeom g{};
  g.N = x.size(0); g.C = x.size(1); g.T = x.size(2); g.H = x.size(3); g.W = x.size(4);
  g.M = weight.size(0); g.kh = weight.size(3); g.kw = weight.size(4);
  g.sh = stride[0]; g.sw = stride[1]; g.ph = padding[0]; g.pw = padding[1];
  TORCH_CHECK_VALUE(g.M > 0 && g.kh > 0 && g.kw > 0, "r2p1d: expected a non-empty spatial weight, got ",
                    weight.sizes());
  g.Ho = conv_out_size(g.H, g.kh, g.sh, g.ph, "height");
  g.Wo = conv_out_size(g.W, g.kw, g.sw, g.pw, "width");
  check_bias(x, bias, g.M, "spatial bias");
  return g;
}

// The temporal conv's weight and bias for an intermediate of N x M x T x HW values on
// ref's device and of ref's dtype.
inline TemporalGeom check_temporal_weight(const at::Tensor& ref, int64_t N, int64_t M, int64_t T,
                                          int64_t HW, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, int64_t stride,
                                          int64_t padding) {
  check_same_device(ref, weight, "temporal weight");
  check_same_dtype(ref, weight, "temporal weight");
  TORCH_CHECK_VALUE(weight.dim() == 5 && weight.size(3) == 1 && weight.size(4) == 1,
                    "r2p1d: expected a temporal weight of shape (O, M, kt, 1, 1), but got ",
                    weight.sizes());
  TORCH_CHECK_VALUE(weight.size(1) == M, "r2p1d: expected an intermediate with ",
                    weight.size(1), " channels (the temporal weight's), but got ", M);
  TemporalGeom g{};
  g.N = N; g.M = M; g.T = T; g.HW = HW;
  g.O = weight.size(0); g.kt = weight.size(2); g.st = stride; g.pt = padding;
  TORCH_CHECK_VALUE(g.O > 0 && g.kt > 0, "r2p1d: expected a non-empty temporal weight, got ",
                    weight.sizes());
  g.To = conv_out_size(g.T, g.kt, g.st, g.pt, "time");
  check_bias(ref, bias, g.O, "temporal bias");
  return g;
}

// temporal_conv_bnrelu's arguments: y (N, M, T, H, W) and the per-channel BatchNorm vectors.
inline TemporalGeom check_temporal(const at::Tensor& y, const at::Tensor& mean,
                                   const at::Tensor& scale, const at::Tensor& shift,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   int64_t stride, int64_t padding) {
  check_input5d(y, "intermediate y");
  const TemporalGeom g = check_temporal_weight(y, y.size(0), y.size(1), y.size(2),
                                               y.size(3) * y.size(4), weight, bias, stride, padding);
  check_channel_vector(y, mean, "mean", g.M);
  check_channel_vector(y, scale, "scale", g.M);
  check_channel_vector(y, shift, "shift", g.M);
  return g;
}

// spatial_conv_backward's tensors: grad_y and y of the forward's output shape, and the
// per-channel mean and its gradients.
inline SpatialGeom check_spatial_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                          const at::Tensor& weight, const at::Tensor& y,
                                          const at::Tensor& mean,
                                          const std::optional<at::Tensor>& grad_mean,
                                          const std::optional<at::Tensor>& grad_var,
                                          at::IntArrayRef stride, at::IntArrayRef padding) {
  const SpatialGeom g = check_spatial(x, weight, std::nullopt, stride, padding);
  TORCH_CHECK_VALUE(grad_y.sizes() == y.sizes() &&
                        y.sizes() == at::IntArrayRef({g.N, g.M, g.T, g.Ho, g.Wo}),
                    "r2p1d: expected grad_y and y of shape ",
                    at::IntArrayRef({g.N, g.M, g.T, g.Ho, g.Wo}), ", but got ", grad_y.sizes(),
                    " and ", y.sizes());
  check_same_device(x, grad_y, "grad_y");
  check_same_dtype(x, grad_y, "grad_y");
  check_same_device(x, y, "y");
  check_same_dtype(x, y, "y");
  check_channel_vector(x, mean, "mean", g.M);
  if (grad_mean.has_value()) check_channel_vector(x, *grad_mean, "grad_mean", g.M);
  if (grad_var.has_value()) check_channel_vector(x, *grad_var, "grad_var", g.M);
  return g;
}

// The statistics' share of spatial_conv_backward as per-channel coefficients,
//   gy_total = grad_y + ca[m] + cb[m] * (y - mean[m]),
// ca = grad_mean / count, cb = 2 * grad_var / count (an absent one counts as zero), in
// `dtype`; undefined tensors when both are absent: gy_total = grad_y, no share at all.
inline std::pair<at::Tensor, at::Tensor> statistics_share(
    const std::optional<at::Tensor>& grad_mean, const std::optional<at::Tensor>& grad_var,
    const at::Tensor& mean, int64_t count, at::ScalarType dtype) {
  if (!grad_mean.has_value() && !grad_var.has_value()) return {};
  const auto zeros = [&] { return at::zeros(mean.sizes(), mean.options().dtype(at::kDouble)); };
  const at::Tensor gm = grad_mean.has_value() ? grad_mean->to(at::kDouble) : zeros();
  const at::Tensor gv = grad_var.has_value() ? grad_var->to(at::kDouble) : zeros();
  const double n = static_cast<double>(count);
  return {(gm / n).to(dtype).contiguous(), (gv * (2.0 / n)).to(dtype).contiguous()};
}

// temporal_conv_bnrelu_backward's tensors: grad_out of the forward's output shape.
inline TemporalGeom check_temporal_backward(const at::Tensor& grad_out, const at::Tensor& y,
                                            const at::Tensor& mean, const at::Tensor& scale,
                                            const at::Tensor& shift, const at::Tensor& weight,
                                            int64_t stride, int64_t padding) {
  const TemporalGeom g = check_temporal(y, mean, scale, shift, weight, std::nullopt, stride,
                                        padding);
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({g.N, g.O, g.To, y.size(3), y.size(4)}),
                    "r2p1d: expected grad_out of shape [", g.N, ", ", g.O, ", ", g.To, ", ",
                    y.size(3), ", ", y.size(4), "], but got ", grad_out.sizes());
  check_same_device(y, grad_out, "grad_out");
  check_same_dtype(y, grad_out, "grad_out");
  return g;
}

// fused_eval's geometry: the spatial conv, then the temporal conv over its output.
inline std::pair<SpatialGeom, TemporalGeom> check_fused_eval(
    const at::Tensor& x, const at::Tensor& spatial_weight,
    const std::optional<at::Tensor>& spatial_bias, const at::Tensor& temporal_weight,
    const std::optional<at::Tensor>& temporal_bias, at::IntArrayRef stride,
    at::IntArrayRef padding) {
  TORCH_CHECK_VALUE(stride.size() == 3 && padding.size() == 3,
                    "r2p1d: expected 3 strides and 3 paddings (t, h, w), but got ", stride.size(),
                    " and ", padding.size());
  const SpatialGeom g = check_spatial(x, spatial_weight, spatial_bias, stride.slice(1),
                                      padding.slice(1));
  const TemporalGeom tg = check_temporal_weight(x, g.N, g.M, g.T, g.out_plane(), temporal_weight,
                                                temporal_bias, stride[0], padding[0]);
  return {g, tg};
}

// fused_eval's optional residual: a tensor of the output's shape, dtype and device.
inline void check_residual(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                           at::IntArrayRef out_shape) {
  if (!residual.has_value() || !residual->defined()) return;
  check_same_device(x, *residual, "residual");
  check_same_dtype(x, *residual, "residual");
  TORCH_CHECK_VALUE(residual->sizes() == out_shape, "r2p1d: expected a residual of the output's shape ",
                    out_shape, ", but got ", residual->sizes());
}

// fused_eval's residual add and final ReLU where a kernel family does not do them in its
// output loop (the CUDA kernels and their emulator: one elementwise pass each, in place).
inline void add_residual_relu(at::Tensor& out, const std::optional<at::Tensor>& residual, bool relu) {
  if (residual.has_value() && residual->defined()) out.add_(*residual);
  if (relu) out.relu_();
}

inline void check_running_stats(const at::Tensor& running_mean, const at::Tensor& running_var,
                                const at::Tensor& num_batches_tracked, const at::Tensor& mean,
                                const at::Tensor& var, int64_t count) {
  const int64_t n = running_mean.numel();
  check_float_tensor(running_mean, "running_mean");
  check_channel_vector(running_mean, running_var, "running_var", n);
  check_same_dtype(running_mean, running_var, "running_var");
  check_channel_vector(running_mean, mean, "batch mean", n);
  check_channel_vector(running_mean, var, "batch var", n);
  check_same_device(running_mean, num_batches_tracked, "num_batches_tracked");
  TORCH_CHECK_VALUE(num_batches_tracked.numel() == 1 &&
                        num_batches_tracked.scalar_type() == at::kLong,
                    "r2p1d: expected num_batches_tracked to be a one-element int64 tensor, got ",
                    num_batches_tracked.scalar_type(), " of shape ", num_batches_tracked.sizes());
  TORCH_CHECK_VALUE(running_mean.is_contiguous() && running_var.is_contiguous(),
                    "r2p1d: expected contiguous running statistics");
  TORCH_CHECK_VALUE(count > 1, "r2p1d: expected more than 1 value per channel when training, got ",
                    count);
}

}  // namespace r2p1d
