// The direct CUDA kernel family: each op as plain convolution loops (one thread per output
// value, float accumulation, double for double), with the block's fusions (statistics in
// the spatial epilogue, BatchNorm+ReLU in the temporal prologue, z recomputed in backward).
// It runs float64, float32 without TF32 and GPUs before sm_80, and is the tensor-core
// kernels' second oracle on a GPU. Every function checks its arguments and computes in
// NCDHW; the router (csrc/cuda/ops_cuda.cpp) returns its 5-D results channels-last.
#pragma once
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace r2p1d::cuda::direct {

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_conv_stats(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding);

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_conv_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y,
    const at::Tensor& mean, const std::optional<at::Tensor>& grad_mean,
    const std::optional<at::Tensor>& grad_var, at::IntArrayRef stride, at::IntArrayRef padding,
    std::array<bool, 3> mask);

at::Tensor temporal_conv_bnrelu(const at::Tensor& y, const at::Tensor& mean, const at::Tensor& scale,
                                const at::Tensor& shift, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
temporal_conv_bnrelu_backward(const at::Tensor& grad_out, const at::Tensor& y, const at::Tensor& mean,
                              const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& weight,
                              int64_t stride, int64_t padding, std::array<bool, 6> mask);

// With the residual add and the final ReLU as elementwise passes after the kernels.
at::Tensor fused_eval(const at::Tensor& x, const at::Tensor& spatial_weight,
                      const std::optional<at::Tensor>& spatial_bias, const at::Tensor& temporal_weight,
                      const std::optional<at::Tensor>& temporal_bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, const std::optional<at::Tensor>& residual, bool relu);

// Both kernel families use this one (a per-channel step, no convolution).
void update_running_stats(at::Tensor& running_mean, at::Tensor& running_var, at::Tensor& num_batches_tracked,
                          const at::Tensor& mean, const at::Tensor& var, int64_t count,
                          std::optional<double> momentum);

// uint8 NTHWC clips to the network's dtype (csrc/normalize_clips.h), not a block op: the
// trainer's one pass over each batch on the device.
at::Tensor normalize_clips(const at::Tensor& clips, at::ArrayRef<double> mean, at::ArrayRef<double> std,
                           at::ScalarType dtype);

}  // namespace r2p1d::cuda::direct
