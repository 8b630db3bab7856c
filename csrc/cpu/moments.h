// Per-channel batch statistics of the spatial conv's output, merged from per-(frame,
// channel) partial ones (csrc/cpu/spatial_conv_cpu.cpp, csrc/cpu/bf16/spatial_bf16.cpp).
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace r2p1d::cpu {

// Chan's merge of (count, mean, M2) partial statistics.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
  void merge(double nb, double mean_b, double m2_b) {
    if (nb == 0) return;
    const double tot = n + nb, delta = mean_b - mean;
    mean += delta * nb / tot;
    m2 += m2_b + delta * delta * n * nb / tot;
    n = tot;
  }
};

// Merges per-(frame, channel) partial (mean, M2) of `plane` values each, part[(f*M + m)*2]
// and part[(f*M + m)*2 + 1], into moments[m] in frame order (a fixed order: the same result
// for any thread count).
inline void merge_frames(std::vector<Moments>& moments, const std::vector<double>& part,
                         int64_t frames, int64_t plane) {
  const int64_t M = static_cast<int64_t>(moments.size());
  for (int64_t f = 0; f < frames; ++f)
    for (int64_t m = 0; m < M; ++m)
      moments[m].merge(plane, part[(f * M + m) * 2], part[(f * M + m) * 2 + 1]);
}

// (mean, biased variance) per channel, float64 (as float32 unless `dtype` is float64).
inline std::pair<at::Tensor, at::Tensor> moments_tensors(const std::vector<Moments>& moments,
                                                          at::ScalarType dtype,
                                                          const at::TensorOptions& opts) {
  const int64_t M = static_cast<int64_t>(moments.size());
  at::Tensor mean = at::empty({M}, opts.dtype(at::kDouble));
  at::Tensor var = at::empty({M}, opts.dtype(at::kDouble));
  double* mp = mean.data_ptr<double>();
  double* vp = var.data_ptr<double>();
  for (int64_t m = 0; m < M; ++m) {
    mp[m] = moments[m].mean;
    vp[m] = moments[m].m2 / moments[m].n;
  }
  return {mean.to(dtype), var.to(dtype)};
}

}  // namespace r2p1d::cpu
