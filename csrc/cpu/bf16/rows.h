// bfloat16 <-> float32 rows for the bfloat16 kernels: their GEMMs read bfloat16 and write
// float32, and the elementwise work around them (BatchNorm, ReLU, statistics, gradient
// prologues: csrc/cpu/row_kernels.h) runs in float32 on rows widened into thread buffers.
#pragma once
#include <c10/util/BFloat16.h>

#include <cstring>

#include "cpu/row_kernels.h"

namespace r2p1d::cpu::bf16 {

using Bf = c10::BFloat16;

// dst = float(src): the bits shifted up (exact).
R2P1D_MULTIVERSION inline void widen(const Bf* __restrict src, float* __restrict dst, int64_t len) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  for (int64_t q = 0; q < len; ++q) {
    const uint32_t bits = static_cast<uint32_t>(s[q]) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    dst[q] = f;
  }
}

// dst = bfloat16(src), rounded to nearest even (as c10::BFloat16), NaN kept a NaN.
R2P1D_MULTIVERSION inline void narrow(const float* __restrict src, Bf* __restrict dst, int64_t len) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (int64_t q = 0; q < len; ++q) {
    uint32_t bits;
    std::memcpy(&bits, &src[q], sizeof(bits));
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    d[q] = src[q] != src[q] ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
  }
}

// dst = bfloat16(row + bias), and row = float(dst): the stored values back in row, in one
// pass (the spatial conv's epilogue, which takes the statistics of y as stored).
R2P1D_MULTIVERSION inline void add_bias_round(float* __restrict row, float bias, Bf* __restrict dst,
                                              int64_t len) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (int64_t q = 0; q < len; ++q) {
    const float v = row[q] + bias;
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    const uint32_t rounded = v != v ? 0x7FC0u : (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    d[q] = static_cast<uint16_t>(rounded);
    const uint32_t back = rounded << 16;
    std::memcpy(&row[q], &back, sizeof(back));
  }
}

inline const uint16_t* bits(const Bf* p) { return reinterpret_cast<const uint16_t*>(p); }

}  // namespace r2p1d::cpu::bf16
