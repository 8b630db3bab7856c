// normalize_clips on the CPU: one pass over the NTHWC bytes, split across the intra-op threads.
// The float32 sub and div are the reference's (no FMA or reciprocal: the result is bitwise).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "normalize_clips.h"

namespace r2p1d::data {
namespace {

at::Tensor normalize_clips_cpu(const at::Tensor& clips, at::ArrayRef<double> mean, at::ArrayRef<double> std,
                               at::ScalarType dtype) {
  const ClipConstants k = check_normalize_clips(clips, mean, std, dtype);
  const at::Tensor in = clips.contiguous();
  at::Tensor out = empty_normalized(in, dtype);
  const uint8_t* src = in.data_ptr<uint8_t>();
  const int64_t c = k.channels, pixels = in.numel() / c;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "normalize_clips_cpu", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, pixels, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p)
        for (int64_t j = 0; j < c; ++j) {
          const float v = (static_cast<float>(src[p * c + j]) - k.mean255[j]) / k.std255[j];
          dst[p * c + j] = static_cast<scalar_t>(v);
        }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) { m.impl("normalize_clips", &normalize_clips_cpu); }

}  // namespace r2p1d::data
