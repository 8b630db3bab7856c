// normalize_clips (schema: csrc/schemas.h): the argument checks, the per-channel constants
// and the output allocation shared by its CPU and CUDA kernels.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <vector>

namespace r2p1d::data {

// Channels a clip may have (RGB, or gray/RGBA): the constants travel by value to the kernels.
constexpr int64_t kMaxChannels = 4;

struct ClipConstants {
  float mean255[kMaxChannels];  // float32(mean) * 255 in float32, as the reference computes it
  float std255[kMaxChannels];
  int64_t channels;
};

inline ClipConstants check_normalize_clips(const at::Tensor& clips, at::ArrayRef<double> mean,
                                           at::ArrayRef<double> std, at::ScalarType dtype) {
  TORCH_CHECK(clips.scalar_type() == at::kByte, "r2p1d: normalize_clips expects uint8 clips, but got ",
              clips.scalar_type());
  TORCH_CHECK(clips.dim() == 4 || clips.dim() == 5,
              "r2p1d: normalize_clips expects clips of shape (T, H, W, C) or (N, T, H, W, C), but got ",
              clips.sizes());
  const int64_t c = clips.size(-1);
  TORCH_CHECK(c >= 1 && c <= kMaxChannels, "r2p1d: normalize_clips expects 1 to ", kMaxChannels,
              " channels last (T, H, W, C), but got ", c, " (shape ", clips.sizes(), ")");
  TORCH_CHECK(static_cast<int64_t>(mean.size()) == c && static_cast<int64_t>(std.size()) == c,
              "r2p1d: normalize_clips expects one mean and one std per channel (", c, "), but got ",
              mean.size(), " and ", std.size());
  TORCH_CHECK(at::isFloatingType(dtype), "r2p1d: normalize_clips expects a floating-point dtype, but got ",
              dtype);
  ClipConstants k{};
  k.channels = c;
  for (int64_t i = 0; i < c; ++i) {
    TORCH_CHECK(std[i] > 0, "r2p1d: normalize_clips expects std > 0, but std[", i, "] is ", std[i]);
    k.mean255[i] = static_cast<float>(mean[i]) * 255.0f;
    k.std255[i] = static_cast<float>(std[i]) * 255.0f;
  }
  return k;
}

// The result in the input's memory order: NTHWC storage viewed as (N, C, T, H, W).
inline at::Tensor empty_normalized(const at::Tensor& clips, at::ScalarType dtype) {
  const at::Tensor out = at::empty(clips.sizes(), clips.options().dtype(dtype));
  return clips.dim() == 5 ? out.permute({0, 4, 1, 2, 3}) : out.permute({3, 0, 1, 2});
}

}  // namespace r2p1d::data
