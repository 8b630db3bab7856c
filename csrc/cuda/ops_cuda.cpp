// Every r2p1d op on CUDA, in one place: the registration of the CUDA kernels and the choice,
// per call, between the two kernel families:
//   the tensor-core implicit GEMMs (csrc/tc/, launched from csrc/cuda/igemm/) through the
//   torch-facing host code of csrc/tc_ops.h, with a backend that plans for this device and
//   launches on the current stream;
//   the direct kernels (csrc/cuda/direct/), whose NCDHW results are returned channels-last
//   here, so that a CUDA op's 5-D results are channels-last whichever family ran it (the
//   fake kernels of r2p1d_ext/ops.py state the same rule).
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cuda/direct/direct.h"
#include "cuda/igemm/launch.h"
#include "schemas.h"
#include "tc_ops.h"

namespace r2p1d::cuda {
namespace {

using at::Tensor;

int device_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

// R2P1D_CUDA_TILE (read at every call, for tests and the sanitizer runs): "auto" (default)
// lets the plan choose the tile shape; "large" (128x128), "small" (64x64) or an index into
// a GEMM kind's tile list (csrc/tc/plan.h) forces one where the GEMM's list has it.
int tile_setting() {
  const char* env = std::getenv("R2P1D_CUDA_TILE");
  const std::string v = env ? env : "";
  if (v.empty() || v == "auto") return -1;
  if (v == "large") return 0;
  if (v == "small") return 1;
  const int most = std::max(tc::kPixelTiles, tc::kWgradTiles);
  for (int i = 0; i < most; ++i)
    if (v == std::to_string(i)) return i;
  TORCH_CHECK_VALUE(false, "r2p1d: expected R2P1D_CUDA_TILE to be auto, large, small or a tile index 0-", most - 1,
                    ", but got '", v, "'");
}

// The tensor-core family's backend on the GPU: plans for this device's SM count, launches
// on the current stream with a launch-error check.
struct DeviceBackend {
  cudaStream_t stream;
  int64_t sm_count;
  int tile = tile_setting();

  explicit DeviceBackend(const at::Device& d)
      : stream(c10::cuda::getCurrentCUDAStream(d.index()).stream()),
        sm_count(device_attribute(cudaDevAttrMultiProcessorCount, d.index())) {}

  tc::Plan plan(const tc::GemmExtent& e, tc::ElemKind elem) const {
    return tc::plan_gemm(e, elem, sm_count, tile < tc::tile_count(e.kind) ? tile : -1);
  }
  template <class Args>
  void run(const Args& a, const tc::Plan& p, tc_ops::Tensors) const {
    C10_CUDA_CHECK(tc::launch(a, p, stream));
  }
  void run(const tc::MomentsArgs& a, tc_ops::Tensors) const { C10_CUDA_CHECK(tc::launch(a, stream)); }
  void run(const tc::SumsArgs& a, tc_ops::Tensors) const { C10_CUDA_CHECK(tc::launch(a, stream)); }
};

// R2P1D_CUDA_KERNELS, read at every call like R2P1D_WINOGRAD (for tests and benchmarks).
std::string kernels_setting() {
  const char* env = std::getenv("R2P1D_CUDA_KERNELS");
  const std::string v = env ? env : "";
  TORCH_CHECK_VALUE(v.empty() || v == "auto" || v == "tc" || v == "direct",
                    "r2p1d: expected R2P1D_CUDA_KERNELS to be auto, tc or direct, but got '", v, "'");
  return v.empty() ? "auto" : v;
}

// Whether a call of this dtype on this GPU runs on the tensor-core kernels.
// R2P1D_CUDA_KERNELS (read at every call): "auto" (default) takes them for bfloat16 and
// float16, and for float32 when cuDNN convolutions may use TF32
// (torch.backends.cudnn.allow_tf32, PyTorch's default); "tc" takes them for float32 too;
// "direct" never. float64 and GPUs older than sm_80 always take the direct kernels.
bool use_tensor_cores(at::ScalarType dtype, const at::Device& device) {
  const std::string setting = kernels_setting();
  // A tensor on another device: the direct path's checks say so clearly.
  if (setting == "direct" || dtype == at::kDouble || !device.is_cuda()) return false;
  if (device_attribute(cudaDevAttrComputeCapabilityMajor, device.index()) < 8) return false;
  if (dtype == at::kBFloat16 || dtype == at::kHalf) return true;
  if (dtype != at::kFloat) return false;
  return setting == "tc" || at::globalContext().allowTF32CuDNN();
}

// A direct-family result in the CUDA ops' layout.
Tensor as_channels_last(const Tensor& t) {
  if (!t.defined() || t.dim() != 5) return t;
  Tensor out = at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast3d));
  out.copy_(t);
  return out;
}

// The five block ops on CUDA: the tensor-core family where use_tensor_cores says so, the
// direct family otherwise.
struct Router {
  static std::tuple<Tensor, Tensor, Tensor> spatial_conv_stats(
      const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, at::IntArrayRef stride,
      at::IntArrayRef padding) {
    if (use_tensor_cores(x.scalar_type(), x.device())) {
      c10::cuda::CUDAGuard guard(x.device());
      DeviceBackend be(x.device());
      return tc_ops::spatial_conv_stats(be, x, weight, bias, stride, padding);
    }
    auto [y, mean, var] = direct::spatial_conv_stats(x, weight, bias, stride, padding);
    return {as_channels_last(y), mean, var};
  }

  static std::tuple<Tensor, Tensor, Tensor> spatial_conv_backward(
      const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& y, const Tensor& mean,
      const std::optional<Tensor>& grad_mean, const std::optional<Tensor>& grad_var, at::IntArrayRef stride,
      at::IntArrayRef padding, std::array<bool, 3> mask) {
    if (use_tensor_cores(x.scalar_type(), x.device())) {
      c10::cuda::CUDAGuard guard(x.device());
      DeviceBackend be(x.device());
      return tc_ops::spatial_conv_backward(be, grad_y, x, weight, y, mean, grad_mean, grad_var, stride,
                                           padding, mask);
    }
    auto [grad_x, grad_w, grad_b] =
        direct::spatial_conv_backward(grad_y, x, weight, y, mean, grad_mean, grad_var, stride, padding, mask);
    return {as_channels_last(grad_x), as_channels_last(grad_w), grad_b};
  }

  static Tensor temporal_conv_bnrelu(const Tensor& y, const Tensor& mean, const Tensor& scale,
                                     const Tensor& shift, const Tensor& weight,
                                     const std::optional<Tensor>& bias, int64_t stride, int64_t padding) {
    if (use_tensor_cores(y.scalar_type(), y.device())) {
      c10::cuda::CUDAGuard guard(y.device());
      DeviceBackend be(y.device());
      return tc_ops::temporal_conv_bnrelu(be, y, mean, scale, shift, weight, bias, stride, padding);
    }
    return as_channels_last(direct::temporal_conv_bnrelu(y, mean, scale, shift, weight, bias, stride, padding));
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> temporal_conv_bnrelu_backward(
      const Tensor& grad_out, const Tensor& y, const Tensor& mean, const Tensor& scale, const Tensor& shift,
      const Tensor& weight, int64_t stride, int64_t padding, std::array<bool, 6> mask) {
    if (use_tensor_cores(y.scalar_type(), y.device())) {
      c10::cuda::CUDAGuard guard(y.device());
      DeviceBackend be(y.device());
      return tc_ops::temporal_conv_bnrelu_backward(be, grad_out, y, mean, scale, shift, weight, stride,
                                                   padding, mask);
    }
    auto [grad_y, grad_mean, grad_scale, grad_shift, grad_w, grad_b] =
        direct::temporal_conv_bnrelu_backward(grad_out, y, mean, scale, shift, weight, stride, padding, mask);
    return {as_channels_last(grad_y), grad_mean, grad_scale, grad_shift, as_channels_last(grad_w), grad_b};
  }

  static Tensor fused_eval(const Tensor& x, const Tensor& spatial_weight,
                           const std::optional<Tensor>& spatial_bias, const Tensor& temporal_weight,
                           const std::optional<Tensor>& temporal_bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, const std::optional<Tensor>& residual, bool relu) {
    if (use_tensor_cores(x.scalar_type(), x.device())) {
      c10::cuda::CUDAGuard guard(x.device());
      DeviceBackend be(x.device());
      return tc_ops::fused_eval(be, x, spatial_weight, spatial_bias, temporal_weight, temporal_bias, stride,
                                padding, residual, relu);
    }
    return as_channels_last(direct::fused_eval(x, spatial_weight, spatial_bias, temporal_weight, temporal_bias,
                                               stride, padding, residual, relu));
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CUDA, m) {
  schemas::impl_block_ops<Router>(m);
  m.impl(schemas::kUpdateRunningStats.name, &direct::update_running_stats);
  m.impl(schemas::kNormalizeClips.name, &direct::normalize_clips);
}

}  // namespace r2p1d::cuda
