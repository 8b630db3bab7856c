// The tensor-core family on the GPU: tc_ops.h with a backend that plans for this device
// and launches the kernels of csrc/cuda/tc/ on the current stream.
#include "tc_ops_cuda.h"

#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <string>

#include "../tc_ops.h"
#include "tc/launch.h"

namespace r2p1d::cuda {
namespace {

int device_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

struct DeviceBackend {
  cudaStream_t stream;
  int64_t sm_count;

  explicit DeviceBackend(const at::Device& d)
      : stream(c10::cuda::getCurrentCUDAStream(d.index()).stream()),
        sm_count(device_attribute(cudaDevAttrMultiProcessorCount, d.index())) {}

  tc::Plan plan(const tc::GemmExtent& e, tc::ElemKind elem) const {
    return tc::plan_gemm(e, elem, sm_count);
  }
  template <class Args>
  void run(const Args& a, const tc::Plan& p) const {
    C10_CUDA_CHECK(tc::launch(a, p, stream));
  }
};

// R2P1D_CUDA_KERNELS, read at every call like R2P1D_WINOGRAD (for tests and benchmarks).
std::string kernels_setting() {
  const char* env = std::getenv("R2P1D_CUDA_KERNELS");
  const std::string v = env ? env : "";
  TORCH_CHECK_VALUE(v.empty() || v == "auto" || v == "tc" || v == "direct",
                    "r2p1d: expected R2P1D_CUDA_KERNELS to be auto, tc or direct, but got '", v, "'");
  return v.empty() ? "auto" : v;
}

}  // namespace

bool use_tensor_cores(at::ScalarType dtype, const at::Device& device) {
  const std::string setting = kernels_setting();
  // A tensor on another device: the direct path's checks say so clearly.
  if (setting == "direct" || dtype == at::kDouble || !device.is_cuda()) return false;
  if (device_attribute(cudaDevAttrComputeCapabilityMajor, device.index()) < 8) return false;
  if (dtype == at::kBFloat16 || dtype == at::kHalf) return true;
  if (dtype != at::kFloat) return false;
  return setting == "tc" || at::globalContext().allowTF32CuDNN();
}

at::Tensor as_channels_last(const at::Tensor& t) {
  if (!t.defined() || t.dim() != 5) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  out.copy_(t);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tc_spatial_conv_stats(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding) {
  c10::cuda::CUDAGuard guard(x.device());
  DeviceBackend be(x.device());
  return tc_ops::spatial_conv_stats(be, x, weight, bias, stride, padding);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tc_spatial_conv_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y,
    const at::Tensor& mean, const std::optional<at::Tensor>& grad_mean,
    const std::optional<at::Tensor>& grad_var, at::IntArrayRef stride, at::IntArrayRef padding,
    std::array<bool, 3> mask) {
  c10::cuda::CUDAGuard guard(x.device());
  DeviceBackend be(x.device());
  return tc_ops::spatial_conv_backward(be, grad_y, x, weight, y, mean, grad_mean, grad_var, stride,
                                       padding, mask);
}

at::Tensor tc_temporal_conv_bnrelu(const at::Tensor& y, const at::Tensor& mean,
                                   const at::Tensor& scale, const at::Tensor& shift,
                                   const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   int64_t stride, int64_t padding) {
  c10::cuda::CUDAGuard guard(y.device());
  DeviceBackend be(y.device());
  return tc_ops::temporal_conv_bnrelu(be, y, mean, scale, shift, weight, bias, stride, padding);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
tc_temporal_conv_bnrelu_backward(const at::Tensor& grad_out, const at::Tensor& y,
                                 const at::Tensor& mean, const at::Tensor& scale,
                                 const at::Tensor& shift, const at::Tensor& weight, int64_t stride,
                                 int64_t padding, std::array<bool, 6> mask) {
  c10::cuda::CUDAGuard guard(y.device());
  DeviceBackend be(y.device());
  return tc_ops::temporal_conv_bnrelu_backward(be, grad_out, y, mean, scale, shift, weight, stride,
                                               padding, mask);
}

at::Tensor tc_fused_eval(const at::Tensor& x, const at::Tensor& spatial_weight,
                         const std::optional<at::Tensor>& spatial_bias,
                         const at::Tensor& temporal_weight,
                         const std::optional<at::Tensor>& temporal_bias, at::IntArrayRef stride,
                         at::IntArrayRef padding) {
  c10::cuda::CUDAGuard guard(x.device());
  DeviceBackend be(x.device());
  return tc_ops::fused_eval(be, x, spatial_weight, spatial_bias, temporal_weight, temporal_bias,
                            stride, padding);
}

}  // namespace r2p1d::cuda
