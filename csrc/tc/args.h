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
};

// Weight gradient: workspace[split][M][taps*C + 1] = the split's partial sum over output
// pixels of gy_total (x) im2col(x); the last column is the bias gradient.
struct SpatialWgradArgs {
  SpatialShape g;
  ElemKind elem;
  const void* gy;
  const void* y;
  const float *mu, *ca, *cb;
  const void* x;
  float* workspace;
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
};

// Weight gradient: workspace[split][O][kt*M + 1], the activation recomputed from y; the
// last column is the bias gradient.
struct TemporalWgradArgs {
  TemporalShape g;
  ElemKind elem;
  const void* go;
  const void* y;
  const float *mean, *scale, *shift;
  float* workspace;
};

}  // namespace r2p1d::tc
