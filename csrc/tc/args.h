// What the host passes to a tensor-core GEMM: plain sizes and raw pointers of
// channels-last (NDHWC) tensors, no torch types, so that kernel files compile without
// torch headers and the CPU emulator can build the same problems.
#pragma once
#include <cstdint>

#include "elem.h"

namespace r2p1d::tc {

// A (1, kh, kw) convolution over `frames` = N*T frames of H x W x C (NDHWC).
struct SpatialShape {
  int64_t frames;
  int H, W, C, M, kh, kw, sh, sw, ph, pw, Ho, Wo;
  int64_t in_pixels() const { return frames * H * W; }
  int64_t out_pixels() const { return frames * Ho * Wo; }
  int64_t taps() const { return static_cast<int64_t>(kh) * kw; }
};

// A (kt, 1, 1) convolution of y (N, T, HW, M) into out (N, To, HW, O).
struct TemporalShape {
  int64_t N;
  int T, HW, M, O, kt, st, pt, To;
  int64_t in_positions() const { return N * T * HW; }
  int64_t out_positions() const { return N * To * HW; }
};

// Every GEMM whose plan splits K writes float partials [split][rows][workspace_ld(cols)]
// into `workspace` (allocated by the host for plan.splits > 1, null otherwise), and a second
// pass of the same kernel sums them in split order and runs the epilogue (tc/igemm.h).

// Forward: y = conv(x, w) + bias (ReLU'd when relu), with the per-channel moments of y
// into partials [M][grid_m][3] when partials is set. w is (M, kh, kw, C).
struct SpatialFpropArgs {
  SpatialShape g;
  ElemKind elem;
  const void* x;
  const void* w;
  const void* bias;  // may be null
  void* y;
  bool relu;
  float* partials;  // may be null
  float* workspace = nullptr;
};

// Input gradient: gx = conv_transpose(gy_total, w), gy_total = gy + ca + cb*(y - mu)
// (per channel; mu == nullptr: gy alone).
struct SpatialDgradArgs {
  SpatialShape g;
  ElemKind elem;
  const void* gy;
  const void* y;
  const float *mu, *ca, *cb;
  const void* w;
  void* gx;
  float* workspace = nullptr;
};

// Weight gradient: grad_w (M, kh, kw, C) = sum over output pixels of gy_total (x)
// im2col(x), in the weight's dtype; with grad_bias, one more GEMM column of ones gives
// grad_b (M) = sum of gy_total.
struct SpatialWgradArgs {
  SpatialShape g;
  ElemKind elem;
  const void* gy;
  const void* y;
  const float *mu, *ca, *cb;
  const void* x;
  void* grad_w;
  void* grad_b;  // null without grad_bias
  bool grad_bias;
  float* workspace = nullptr;
};

// Forward: out = conv(relu((y - mean)*scale + shift), w) + bias, the activation applied
// while loading (mean == nullptr: y used as it is, the inference path). w is (O, kt, M).
struct TemporalFpropArgs {
  TemporalShape g;
  ElemKind elem;
  const void* y;
  const float *mean, *scale, *shift;
  const void* w;
  const void* bias;  // may be null
  void* out;
  float* workspace = nullptr;
};

// Input gradient with the BatchNorm backward in the epilogue: gy = relu'(pre) * gz * scale
// (gy may be null) and partials [M][grid_m][2] of sum(gpre*(y-mean)) and sum(gpre).
struct TemporalDgradArgs {
  TemporalShape g;
  ElemKind elem;
  const void* go;
  const void* w;
  const void* y;
  const float *mean, *scale, *shift;
  void* gy;
  float* partials;
  float* workspace = nullptr;
};

// Weight gradient: grad_w (O, kt, M) from go and the activation recomputed from y, in the
// weight's dtype; with grad_bias, grad_b (O) from a column of ones.
struct TemporalWgradArgs {
  TemporalShape g;
  ElemKind elem;
  const void* go;
  const void* y;
  const float *mean, *scale, *shift;
  void* grad_w;
  void* grad_b;  // null without grad_bias
  bool grad_bias;
  float* workspace = nullptr;
};

// The BatchNorm statistics from the spatial forward's partials [C][parts][3] (count, mean,
// M2 of each row tile): mean and biased variance per channel, merged in double in a fixed
// order (tc/finalize.h).
struct MomentsArgs {
  const float* partials;
  int64_t channels, parts;
  float *mean, *var;
};

// The BatchNorm-backward vectors from the temporal input gradient's partials [M][parts][2]
// (sum of gpre*(y - mean), sum of gpre): grad_scale, grad_shift and grad_mean = -scale *
// grad_shift, each output optional.
struct SumsArgs {
  const float* partials;
  int64_t channels, parts;
  const float* scale;
  float *grad_mean, *grad_scale, *grad_shift;
};

}  // namespace r2p1d::tc
