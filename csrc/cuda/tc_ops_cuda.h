// The CUDA ops' choice of kernel family, and the entry points of the tensor-core family
// (tc_ops_cuda.cpp). The direct kernels (the other .cu files here) call these first.
#pragma once
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace r2p1d::cuda {

// Whether a call of this dtype on this GPU runs on the tensor-core kernels.
// R2P1D_CUDA_KERNELS (read at every call): "auto" (default) takes them for bfloat16 and
// float16, and for float32 when cuDNN convolutions may use TF32
// (torch.backends.cudnn.allow_tf32, PyTorch's default); "tc" takes them for float32 too;
// "direct" never. float64 and GPUs older than sm_80 always take the direct kernels.
bool use_tensor_cores(at::ScalarType dtype, const at::Device& device);

std::tuple<at::Tensor, at::Tensor, at::Tensor> tc_spatial_conv_stats(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding);

std::tuple<at::Tensor, at::Tensor, at::Tensor> tc_spatial_conv_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y,
    const at::Tensor& mean, const std::optional<at::Tensor>& grad_mean,
    const std::optional<at::Tensor>& grad_var, at::IntArrayRef stride, at::IntArrayRef padding,
    std::array<bool, 3> mask);

at::Tensor tc_temporal_conv_bnrelu(const at::Tensor& y, const at::Tensor& mean,
                                   const at::Tensor& scale, const at::Tensor& shift,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   int64_t stride, int64_t padding);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
tc_temporal_conv_bnrelu_backward(const at::Tensor& grad_out, const at::Tensor& y,
                                 const at::Tensor& mean, const at::Tensor& scale,
                                 const at::Tensor& shift, const at::Tensor& weight, int64_t stride,
                                 int64_t padding, std::array<bool, 6> mask);

at::Tensor tc_fused_eval(const at::Tensor& x, const at::Tensor& spatial_weight,
                         const std::optional<at::Tensor>& spatial_bias,
                         const at::Tensor& temporal_weight,
                         const std::optional<at::Tensor>& temporal_bias, at::IntArrayRef stride,
                         at::IntArrayRef padding);

// The direct kernels compute in NCDHW; a CUDA op returns every 5-D result channels-last
// whichever family ran it (one layout per device, which the fake kernels state too).
at::Tensor as_channels_last(const at::Tensor& t);

}  // namespace r2p1d::cuda
