// The elementwise row loops of the CPU kernels (BatchNorm+ReLU prologues and epilogues,
// statistics, gradient prologues). The extension is built for baseline x86-64 (SSE2) so
// that a wheel runs anywhere; on x86-64 with GCC each loop is also compiled for AVX2 and
// AVX-512 and the best version is picked once at load time (function multiversioning).
// The loops are written so that GCC vectorises them: no loads under a condition, and
// reductions marked `omp simd` (the sums may then be reordered across lanes).
#pragma once
#include <algorithm>
#include <cstdint>
#include <utility>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define R2P1D_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define R2P1D_MULTIVERSION
#endif

// For helpers called from multiversioned functions: inlined, they are compiled for each
// of the caller's targets (a call would run the baseline version).
#if defined(__GNUC__)
#define R2P1D_INLINE inline __attribute__((always_inline))
#else
#define R2P1D_INLINE inline
#endif

namespace r2p1d::cpu::rows {

// z = relu((y - mean) * scale + shift).
template <typename T>
R2P1D_MULTIVERSION void bn_relu(const T* __restrict y, T* __restrict z, T mean, T scale, T shift,
                                int64_t len) {
  for (int64_t q = 0; q < len; ++q) z[q] = std::max((y[q] - mean) * scale + shift, T(0));
}

// dst = relu(src + bias) (the eval path's folded BatchNorm and ReLU).
template <typename T>
R2P1D_MULTIVERSION void bias_relu(const T* __restrict src, T* __restrict dst, T bias,
                                  int64_t len) {
  for (int64_t q = 0; q < len; ++q) dst[q] = std::max(src[q] + bias, T(0));
}

// dst = src + bias.
template <typename T>
R2P1D_MULTIVERSION void add_bias(const T* __restrict src, T* __restrict dst, T bias,
                                 int64_t len) {
  for (int64_t q = 0; q < len; ++q) dst[q] = src[q] + bias;
}

// The temporal conv's output epilogue, in place: row = row + bias (+ res[q] where res is
// not null), then relu if asked (fused_eval's residual add and the ReLU after it).
template <typename T>
R2P1D_MULTIVERSION void output_epilogue(T* __restrict row, const T* __restrict res, T bias,
                                        bool relu, int64_t len) {
  if (res != nullptr && relu) {
    for (int64_t q = 0; q < len; ++q) row[q] = std::max(row[q] + bias + res[q], T(0));
  } else if (res != nullptr) {
    for (int64_t q = 0; q < len; ++q) row[q] = row[q] + bias + res[q];
  } else if (relu) {
    for (int64_t q = 0; q < len; ++q) row[q] = std::max(row[q] + bias, T(0));
  } else {
    for (int64_t q = 0; q < len; ++q) row[q] += bias;
  }
}

// Sum of (v[q] - c)^Power (Power 1 or 2): T sums over blocks of 1024 (vectorised), double
// across blocks.
template <int Power, typename T>
R2P1D_MULTIVERSION double centred_power_sum(const T* __restrict v, T c, int64_t len) {
  double total = 0;
  for (int64_t q0 = 0; q0 < len; q0 += 1024) {
    const int64_t q1 = std::min(len, q0 + 1024);
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t q = q0; q < q1; ++q) {
      const T d = v[q] - c;
      if constexpr (Power == 1) {
        s += d;
      } else {
        s += d * d;
      }
    }
    total += s;
  }
  return total;
}

// Mean and M2 of len values: exact two-pass, the first pass shifted by v[0] so that the
// block sums stay small when |mean| >> std.
template <typename T>
std::pair<double, double> moments(const T* v, int64_t len) {
  const double mean = v[0] + centred_power_sum<1>(v, v[0], len) / static_cast<double>(len);
  return {mean, centred_power_sum<2>(v, static_cast<T>(mean), len)};
}

// The spatial output's total gradient: dst = gy + a + b * (y - mean) (centred, as in the
// forward: no cancellation when |mean| >> std).
template <typename T>
R2P1D_MULTIVERSION void grad_total(const T* __restrict gy, const T* __restrict y,
                                   T* __restrict dst, T a, T b, T mean, int64_t len) {
  for (int64_t q = 0; q < len; ++q) dst[q] = gy[q] + a + b * (y[q] - mean);
}

// BatchNorm+ReLU backward of one row: gpre = gz * relu'(pre) (z > 0 exactly when
// pre = (y-mean)*scale+shift > 0); gy = gpre * scale unless gy is null. Returns
// sum(gpre * (y - mean)) and sum(gpre): T sums over blocks of 1024, double across them.
template <typename T>
R2P1D_MULTIVERSION std::pair<double, double> bn_relu_backward(
    const T* __restrict y, const T* __restrict z, const T* __restrict gz, T* __restrict gy,
    T mean, T scale, int64_t len) {
  double s_scale = 0, s_shift = 0;
  for (int64_t q0 = 0; q0 < len; q0 += 1024) {
    const int64_t q1 = std::min(len, q0 + 1024);
    T a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t q = q0; q < q1; ++q) {
      const T g = gz[q], zq = z[q];
      const T gpre = zq > T(0) ? g : T(0);
      a += gpre * (y[q] - mean);
      b += gpre;
    }
    s_scale += a;
    s_shift += b;
  }
  if (gy != nullptr) {
    for (int64_t q = 0; q < len; ++q) {
      const T g = gz[q], zq = z[q];
      gy[q] = (zq > T(0) ? g : T(0)) * scale;
    }
  }
  return {s_scale, s_shift};
}

}  // namespace r2p1d::cpu::rows
