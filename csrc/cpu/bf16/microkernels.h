// The bfloat16 micro-kernels and the packed layouts they read. Both products are
// "VNNI" ones: a multiply-add takes a pair of consecutive k, so B is packed as pairs of
// its rows interleaved, Bp[p][n][2] = (B(2p, n), B(2p+1, n)) for a panel of NR columns,
// and K is padded with zeros to the kernel's step. These files include no ATen header:
// they are compiled for AVX-512/AMX targets, and an inline ATen function compiled there
// could be the copy the linker keeps for the baseline code.
#pragma once
#include <cstdint>

namespace r2p1d::cpu::bf16 {

// A is read as MR rows of K at a row stride `lda` (elements): a packed panel (lda = the
// block's padded depth) or, for full panels of a row-major A whose K needs no padding, A
// itself (the weights, which would otherwise be copied at every call: 10 MB at conv5_x).
//
// vdpbf16ps: an 8 x 48 block of C in 24 zmm accumulators; one 32-bit broadcast of a row's
// pair of k feeds its three vectors.
struct Avx512Kernel {
  static constexpr int MR = 8, NR = 48, KSTEP = 2;
};
// AMX: a 32 x 32 block of C in four 16 x 16 float tiles; a 16 x 32 A tile is 16 rows at
// stride lda, B tiles 16 pair-rows of 16 columns. K steps of 32 (one tile's depth).
struct AmxKernel {
  static constexpr int MR = 32, NR = 32, KSTEP = 32;
};

// One MR x NR block: C[m*ldc + n] (= or +=) sum over kc (padded) of A B, for m < mv and
// n < nv (the rest of the block is padding and is not stored). All MR rows of A are read.
void avx512_block(const uint16_t* A, int64_t lda, const uint16_t* Bp, int64_t kc, float* C,
                  int64_t ldc, int mv, int nv, bool accumulate);
void amx_block(const uint16_t* A, int64_t lda, const uint16_t* Bp, int64_t kc, float* C,
               int64_t ldc, int mv, int nv, bool accumulate);
void amx_block_emulated(const uint16_t* A, int64_t lda, const uint16_t* Bp, int64_t kc, float* C,
                        int64_t ldc, int mv, int nv, bool accumulate);
// The tile configuration of amx_block (eight 16 x 64-byte tiles) for the calling thread,
// and its release; a thread calls amx_begin before its first amx_block.
void amx_begin();
void amx_end();

}  // namespace r2p1d::cpu::bf16
