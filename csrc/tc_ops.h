// The r2p1d ops on the tensor-core GEMMs (csrc/tc/): torch tensors in, channels-last
// tensors out. Written once against a Backend, which plans and runs each GEMM:
//   the GPU backend (csrc/cuda/ops_cuda.cpp) launches the kernels (csrc/cuda/igemm/) on the
//   current stream;
//   the CPU emulator (csrc/emulate/) runs the same CTA code on the host, for CI's tests.
// Backend: tc::Plan plan(const tc::GemmExtent&, tc::ElemKind);
//          void run(const Args&, const tc::Plan&, Tensors touched)  (every pass of the plan);
//          void run(const tc::MomentsArgs& / tc::SumsArgs&, Tensors touched)  (finalize steps).
// `touched` lists every tensor the kernels read or write: the emulator checks each address
// the CTA code forms against them (the GPU backend ignores the list).
//
// Layout: every 5-D tensor is read and written channels-last (NDHWC; the weights then
// are (M, kh, kw, C) and (O, kt, M)). A contiguous input costs one conversion here; the
// networks and the trainer keep activations channels-last on CUDA so that none happens.
// What the GEMMs leave per row tile (BatchNorm moments, BatchNorm-backward sums) is merged
// by our finalize kernels (tc/finalize.h), in double and in a fixed order; a split K's
// partials are summed by a second pass of the GEMM's own kernel; the weight gradients come
// out of their GEMM's epilogue in the weight's dtype and layout.
#pragma once
#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "checks.h"
#include "tc/args.h"
#include "tc/plan.h"

namespace r2p1d::tc_ops {

using at::Tensor;

inline tc::ElemKind elem_of(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return tc::ElemKind::kBF16;
    case at::kHalf: return tc::ElemKind::kF16;
    case at::kFloat: return tc::ElemKind::kTF32;
    default:
      TORCH_CHECK_VALUE(false, "r2p1d: the tensor-core kernels take bfloat16, float16 or float32 "
                               "(TF32), but got ", t);
  }
}

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast3d;

inline Tensor channels_last(const Tensor& t) { return t.contiguous(kChannelsLast); }

inline Tensor empty_channels_last(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options.memory_format(kChannelsLast));
}

inline Tensor float_vector(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

// A tensor a GEMM reads, or writes when `written` (undefined ones are left out).
struct Touched {
  const Tensor& tensor;
  const char* name;
  bool written = false;
};
using Tensors = std::vector<Touched>;

inline const void* ptr_or_null(const std::optional<Tensor>& t, Tensor& keep) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep = t->contiguous();
  return keep.data_ptr();
}

inline tc::SpatialShape spatial_shape(const SpatialGeom& g) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return {g.N * g.T, i(g.H), i(g.W), i(g.C), i(g.M), i(g.kh), i(g.kw), i(g.sh), i(g.sw),
          i(g.ph), i(g.pw), i(g.Ho), i(g.Wo)};
}

inline tc::TemporalShape temporal_shape(const TemporalGeom& g) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return {g.N, i(g.T), i(g.HW), i(g.M), i(g.O), i(g.kt), i(g.st), i(g.pt), i(g.To)};
}

// The float workspace of a plan's K splits (undefined without splits).
inline Tensor split_workspace(const tc::Plan& plan, const tc::GemmExtent& e, const at::TensorOptions& o) {
  if (plan.splits <= 1) return Tensor();
  return at::empty({plan.splits, e.rows, tc::workspace_ld(e.cols)}, o.dtype(at::kFloat));
}

inline float* float_ptr(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// One GEMM: planned for the backend's device, given the float workspace its K splits need,
// run; `touched` lists the tensors it reads and writes (the workspace is added here).
template <class Backend, class Args>
void plan_and_run(Backend& be, Args& a, const at::TensorOptions& options, Tensors touched) {
  const tc::GemmExtent e = tc::extent_of(a);
  const tc::Plan plan = be.plan(e, a.elem);
  const Tensor ws = split_workspace(plan, e, options);
  a.workspace = float_ptr(ws);
  touched.push_back({ws, "workspace", true});
  be.run(a, plan, touched);
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats(Backend& be, const Tensor& x, const Tensor& weight,
                                                      const std::optional<Tensor>& bias,
                                                      at::IntArrayRef stride, at::IntArrayRef padding) {
  const SpatialGeom g = check_spatial(x, weight, bias, stride, padding);
  const Tensor xc = channels_last(x), wc = channels_last(weight);
  Tensor bc;
  Tensor y = empty_channels_last({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  tc::SpatialFpropArgs a{spatial_shape(g), elem_of(x.scalar_type()), xc.data_ptr(), wc.data_ptr(),
                         ptr_or_null(bias, bc), y.data_ptr(), /*relu=*/false, nullptr};
  const tc::GemmExtent e = tc::extent_of(a);
  const tc::Plan plan = be.plan(e, a.elem);
  const auto fopts = x.options().dtype(at::kFloat);
  Tensor partials = at::empty({g.M, plan.grid_m, 3}, fopts);
  const Tensor ws = split_workspace(plan, e, x.options());
  a.partials = partials.data_ptr<float>();
  a.workspace = float_ptr(ws);
  be.run(a, plan, {{xc, "x"}, {wc, "weight"}, {bc, "bias"}, {y, "y", true}, {partials, "partials", true},
                   {ws, "workspace", true}});
  Tensor mean = at::empty({g.M}, fopts), var = at::empty({g.M}, fopts);
  be.run(tc::MomentsArgs{partials.data_ptr<float>(), g.M, plan.grid_m, mean.data_ptr<float>(), var.data_ptr<float>()},
         {{partials, "partials"}, {mean, "mean", true}, {var, "var", true}});
  return {y, mean, var};
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor> spatial_conv_backward(
    Backend& be, const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& y,
    const Tensor& mean, const std::optional<Tensor>& grad_mean, const std::optional<Tensor>& grad_var,
    at::IntArrayRef stride, at::IntArrayRef padding, std::array<bool, 3> mask) {
  const SpatialGeom g = check_spatial_backward(grad_y, x, weight, y, mean, grad_mean, grad_var,
                                               stride, padding);
  const Tensor xc = channels_last(x), gyc = channels_last(grad_y), yc = channels_last(y);
  const Tensor wc = channels_last(weight);
  const Tensor mu = float_vector(mean);
  const auto coeffs = statistics_share(grad_mean, grad_var, mean, g.count(), at::kFloat);
  // Without statistics' gradients the loaders add no share (no vectors: mu == nullptr).
  const float* mup = coeffs.first.defined() ? mu.data_ptr<float>() : nullptr;
  const float* cap = coeffs.first.defined() ? coeffs.first.data_ptr<float>() : nullptr;
  const float* cbp = coeffs.first.defined() ? coeffs.second.data_ptr<float>() : nullptr;
  const tc::ElemKind elem = elem_of(x.scalar_type());
  Tensor grad_x, grad_w, grad_b;
  if (mask[0]) {
    grad_x = empty_channels_last(x.sizes(), x.options());
    tc::SpatialDgradArgs a{spatial_shape(g), elem, gyc.data_ptr(), yc.data_ptr(), mup, cap, cbp,
                           wc.data_ptr(), grad_x.data_ptr()};
    plan_and_run(be, a, x.options(),
             {{gyc, "grad_y"}, {yc, "y"}, {mu, "mean"}, {coeffs.first, "ca"}, {coeffs.second, "cb"}, {wc, "weight"},
              {grad_x, "grad_x", true}});
  }
  if (mask[1] || mask[2]) {
    // The weight gradient comes out in the weight's channels-last layout, (M, kh, kw, C) in
    // memory: the GEMM's rows and columns.
    grad_w = empty_channels_last(weight.sizes(), weight.options());
    if (mask[2]) grad_b = at::empty({g.M}, weight.options());
    tc::SpatialWgradArgs a{spatial_shape(g), elem, gyc.data_ptr(), yc.data_ptr(), mup, cap, cbp, xc.data_ptr(),
                           grad_w.data_ptr(), mask[2] ? grad_b.data_ptr() : nullptr, mask[2]};
    plan_and_run(be, a, x.options(),
             {{gyc, "grad_y"}, {yc, "y"}, {mu, "mean"}, {coeffs.first, "ca"}, {coeffs.second, "cb"}, {xc, "x"},
              {grad_w, "grad_weight", true}, {grad_b, "grad_bias", true}});
    if (!mask[1]) grad_w = Tensor();
  }
  return {grad_x, grad_w, grad_b};
}

template <class Backend>
Tensor temporal_conv_bnrelu(Backend& be, const Tensor& y, const Tensor& mean, const Tensor& scale,
                            const Tensor& shift, const Tensor& weight,
                            const std::optional<Tensor>& bias, int64_t stride, int64_t padding) {
  const TemporalGeom g = check_temporal(y, mean, scale, shift, weight, bias, stride, padding);
  const Tensor yc = channels_last(y), wc = channels_last(weight);
  const Tensor mu = float_vector(mean), sc = float_vector(scale), sh = float_vector(shift);
  Tensor bc;
  Tensor out = empty_channels_last({g.N, g.O, g.To, y.size(3), y.size(4)}, y.options());
  tc::TemporalFpropArgs a{temporal_shape(g), elem_of(y.scalar_type()), yc.data_ptr(),
                          mu.data_ptr<float>(), sc.data_ptr<float>(), sh.data_ptr<float>(),
                          wc.data_ptr(), ptr_or_null(bias, bc), out.data_ptr()};
  plan_and_run(be, a, y.options(),
           {{yc, "y"}, {mu, "mean"}, {sc, "scale"}, {sh, "shift"}, {wc, "weight"}, {bc, "bias"}, {out, "out", true}});
  return out;
}

template <class Backend>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> temporal_conv_bnrelu_backward(
    Backend& be, const Tensor& grad_out, const Tensor& y, const Tensor& mean, const Tensor& scale,
    const Tensor& shift, const Tensor& weight, int64_t stride, int64_t padding, std::array<bool, 6> mask) {
  const TemporalGeom g = check_temporal_backward(grad_out, y, mean, scale, shift, weight, stride,
                                                 padding);
  const Tensor go = channels_last(grad_out), yc = channels_last(y), wc = channels_last(weight);
  const Tensor mu = float_vector(mean), sc = float_vector(scale), sh = float_vector(shift);
  const tc::ElemKind elem = elem_of(y.scalar_type());
  Tensor grad_y, grad_mean, grad_scale, grad_shift, grad_w, grad_b;
  if (mask[0] || mask[1] || mask[2] || mask[3]) {
    if (mask[0]) grad_y = empty_channels_last(y.sizes(), y.options());
    tc::TemporalDgradArgs a{temporal_shape(g), elem, go.data_ptr(), wc.data_ptr(), yc.data_ptr(),
                            mu.data_ptr<float>(), sc.data_ptr<float>(), sh.data_ptr<float>(),
                            mask[0] ? grad_y.data_ptr() : nullptr, nullptr};
    const tc::GemmExtent e = tc::extent_of(a);
    const tc::Plan plan = be.plan(e, elem);
    const auto fopts = y.options().dtype(at::kFloat);
    Tensor partials = at::empty({g.M, plan.grid_m, 2}, fopts);
    const Tensor ws = split_workspace(plan, e, y.options());
    a.partials = partials.data_ptr<float>();
    a.workspace = float_ptr(ws);
    be.run(a, plan,
           {{go, "grad_out"}, {wc, "weight"}, {yc, "y"}, {mu, "mean"}, {sc, "scale"}, {sh, "shift"},
            {grad_y, "grad_y", true}, {partials, "partials", true}, {ws, "workspace", true}});
    Tensor gm = mask[1] ? at::empty({g.M}, fopts) : Tensor();
    Tensor gs = mask[2] ? at::empty({g.M}, fopts) : Tensor();
    Tensor gb = mask[3] ? at::empty({g.M}, fopts) : Tensor();
    be.run(tc::SumsArgs{partials.data_ptr<float>(), g.M, plan.grid_m, sc.data_ptr<float>(), float_ptr(gm),
                        float_ptr(gs), float_ptr(gb)},
           {{partials, "partials"}, {sc, "scale"}, {gm, "grad_mean", true}, {gs, "grad_scale", true},
            {gb, "grad_shift", true}});
    if (mask[1]) grad_mean = gm.to(mean.scalar_type());
    if (mask[2]) grad_scale = gs.to(scale.scalar_type());
    if (mask[3]) grad_shift = gb.to(shift.scalar_type());
  }
  if (mask[4] || mask[5]) {
    // (O, kt*M) in memory is the temporal weight's channels-last layout, (O, kt, 1, 1, M).
    grad_w = empty_channels_last(weight.sizes(), weight.options());
    if (mask[5]) grad_b = at::empty({g.O}, weight.options());
    tc::TemporalWgradArgs a{temporal_shape(g), elem, go.data_ptr(), yc.data_ptr(), mu.data_ptr<float>(),
                            sc.data_ptr<float>(), sh.data_ptr<float>(), grad_w.data_ptr(),
                            mask[5] ? grad_b.data_ptr() : nullptr, mask[5]};
    plan_and_run(be, a, y.options(),
             {{go, "grad_out"}, {yc, "y"}, {mu, "mean"}, {sc, "scale"}, {sh, "shift"}, {grad_w, "grad_weight", true},
              {grad_b, "grad_bias", true}});
    if (!mask[4]) grad_w = Tensor();
  }
  return {grad_y, grad_mean, grad_scale, grad_shift, grad_w, grad_b};
}

template <class Backend>
Tensor fused_eval(Backend& be, const Tensor& x, const Tensor& spatial_weight,
                  const std::optional<Tensor>& spatial_bias, const Tensor& temporal_weight,
                  const std::optional<Tensor>& temporal_bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, const std::optional<Tensor>& residual, bool relu) {
  const auto geom = check_fused_eval(x, spatial_weight, spatial_bias, temporal_weight, temporal_bias,
                                     stride, padding);
  const SpatialGeom& g = geom.first;
  const TemporalGeom& tg = geom.second;
  check_residual(x, residual, {g.N, tg.O, tg.To, g.Ho, g.Wo});
  const tc::ElemKind elem = elem_of(x.scalar_type());
  const Tensor xc = channels_last(x), ws = channels_last(spatial_weight), wt = channels_last(temporal_weight);
  Tensor bs, bt;
  // Two kernels: the spatial conv with ReLU (BatchNorm folded into its weights), then the
  // plain temporal conv; the activation z is written once, in the input dtype.
  Tensor z = empty_channels_last({g.N, g.M, g.T, g.Ho, g.Wo}, x.options());
  tc::SpatialFpropArgs sa{spatial_shape(g), elem, xc.data_ptr(), ws.data_ptr(), ptr_or_null(spatial_bias, bs),
                          z.data_ptr(), /*relu=*/true, nullptr};
  plan_and_run(be, sa, x.options(), {{xc, "x"}, {ws, "spatial weight"}, {bs, "spatial bias"}, {z, "z", true}});
  Tensor out = empty_channels_last({g.N, tg.O, tg.To, g.Ho, g.Wo}, x.options());
  tc::TemporalFpropArgs ta{temporal_shape(tg), elem, z.data_ptr(), nullptr, nullptr, nullptr,
                           wt.data_ptr(), ptr_or_null(temporal_bias, bt), out.data_ptr()};
  plan_and_run(be, ta, x.options(), {{z, "z"}, {wt, "temporal weight"}, {bt, "temporal bias"}, {out, "out", true}});
  add_residual_relu(out, residual, relu);
  return out;
}

}  // namespace r2p1d::tc_ops
