// C (float32) = A @ B (+ C) for bfloat16 A and B: the GEMM of the CPU kernels' bfloat16
// path (float32 accumulation on the CPU's bfloat16 units, path.h). A and B are strided
// views (any transposition) that the driver packs, block by block, into the layouts the
// micro-kernels read (microkernels.h); what is around the GEMM (im2col, BatchNorm,
// statistics, epilogues) stays in the callers.
#pragma once
#include <algorithm>
#include <cstdint>

#include "path.h"

namespace r2p1d::cpu::bf16 {

// A rows x cols matrix of bfloat16 bit patterns, element (r, c) at p[r*rs + c*cs].
struct View {
  const uint16_t* p;
  int64_t rows, cols, rs, cs;
  View t() const { return {p, cols, rows, cs, rs}; }
};

// A B operand made while packing (an implicit GEMM's B: conv_packer.h). pairs() writes
// rows k and k+1 of columns [n0, n0 + nv) as 32-bit words, B(k, n) in the low half and
// B(k+1, n) in the high half (0 where k + 1 == rows). panels() writes the packed panels of
// a K block: in each panel, the pairs of rows [k0, k0 + kc) (kc even or the last rows),
// pair p at p*NR, then zero pairs up to kcp/2, the columns past the matrix zero. Both are
// called from several threads.
struct BPacker {
  BPacker(int64_t rows_, int64_t cols_) : rows(rows_), cols(cols_) {}
  int64_t rows, cols;
  virtual void pairs(int64_t k, int64_t n0, int64_t nv, uint32_t* out) const = 0;
  // The panels of columns [n0, n0 + cols), panel g at out + g*stride. This default goes a
  // pair of rows at a time across the panels: B's rows are read in stretches of `cols`
  // values.
  virtual void panels(int64_t k0, int64_t kc, int64_t kcp, int64_t n0, int64_t cols, int64_t NR,
                      int64_t stride, uint32_t* out) const {
    const int64_t count = (cols + NR - 1) / NR;
    for (int64_t p = 0; p < kcp / 2; ++p) {
      for (int64_t g = 0; g < count; ++g) {
        uint32_t* o = out + g * stride + p * NR;
        const int64_t nv = std::min(NR, cols - g * NR);
        if (2 * p < kc) pairs(k0 + 2 * p, n0 + g * NR, nv, o);
        std::fill(o + (2 * p < kc ? nv : 0), o + NR, 0u);
      }
    }
  }
  virtual ~BPacker() = default;
};

// C[m*ldc + n] (= or +=) sum_k A(m, k) B(k, n); multi-threaded unless called inside a
// parallel region. `path` is not kFloat32.
void gemm(Path path, const View& A, const BPacker& B, float* C, int64_t ldc, bool accumulate);
void gemm(Path path, const View& A, const View& B, float* C, int64_t ldc, bool accumulate);

}  // namespace r2p1d::cpu::bf16
