// C (float32) = A @ B (+ C) for bfloat16 A and B: the GEMM of the CPU kernels' bfloat16
// path (float32 accumulation on the CPU's bfloat16 units, path.h). A and B are strided
// views (any transposition) that the driver packs, block by block, into the layouts the
// micro-kernels read (microkernels.h); what is around the GEMM (im2col, BatchNorm,
// statistics, epilogues) stays in the callers.
#pragma once
#include <cstdint>

#include "path.h"

namespace r2p1d::cpu::bf16 {

// A rows x cols matrix of bfloat16 bit patterns, element (r, c) at p[r*rs + c*cs].
struct View {
  const uint16_t* p;
  int64_t rows, cols, rs, cs;
  View t() const { return {p, cols, rows, cs, rs}; }
};

// C[m*ldc + n] (= or +=) sum_k A(m, k) B(k, n); multi-threaded unless called inside a
// parallel region. `path` is not kFloat32.
void gemm(Path path, const View& A, const View& B, float* C, int64_t ldc, bool accumulate);

}  // namespace r2p1d::cpu::bf16
