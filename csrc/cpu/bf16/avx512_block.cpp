// The AVX512-BF16 micro-kernel (microkernels.h). Compiled for that target alone, from
// function attributes; the driver calls it only where cpuid reports the unit (path.cpp).
#include <immintrin.h>

#include "microkernels.h"

namespace r2p1d::cpu::bf16 {

namespace {

// The block with its first NV of the panel's three 16-column vectors: a panel's last
// columns (49 = 48 + 1 at a 7x7 frame) do not pay for the padding's products.
template <int NV>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline void block(
    const uint16_t* A, int64_t lda, const uint16_t* Bp, int64_t kc, float* C, int64_t ldc, int mv,
    int nv, bool accumulate) {
  constexpr int MR = Avx512Kernel::MR;
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t pairs = kc / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* b = Bp + p * 2 * Avx512Kernel::NR;
    __m512bh bv[NV];
#pragma GCC unroll 3
    for (int j = 0; j < NV; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(b + j * 32);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      __builtin_memcpy(&pair, A + i * lda + 2 * p, sizeof(pair));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 3
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, bv[j]);
    }
  }
  for (int i = 0; i < mv; ++i) {
    float* row = C + i * ldc;
    for (int j = 0; j < NV; ++j) {
      const int left = nv - 16 * j;
      if (left <= 0) break;
      const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      __m512 v = acc[i][j];
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, row + 16 * j));
      _mm512_mask_storeu_ps(row + 16 * j, mask, v);
    }
  }
}

}  // namespace

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void avx512_block(
    const uint16_t* A, int64_t lda, const uint16_t* Bp, int64_t kc, float* C, int64_t ldc, int mv,
    int nv, bool accumulate) {
  static_assert(Avx512Kernel::NR == 48, "three 16-column vectors");
  if (nv > 32) return block<3>(A, lda, Bp, kc, C, ldc, mv, nv, accumulate);
  if (nv > 16) return block<2>(A, lda, Bp, kc, C, ldc, mv, nv, accumulate);
  block<1>(A, lda, Bp, kc, C, ldc, mv, nv, accumulate);
}

}  // namespace r2p1d::cpu::bf16
