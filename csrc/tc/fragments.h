// Tensor-core fragments of mma.sync (m16n8k16 for bf16/fp16, m16n8k8 for TF32, float
// accumulators): which (row, k) element each lane holds, the loads that fill the
// fragments from a shared-memory tile, the MMA itself on the GPU (CuTe's SM80 atoms,
// which run on Hopper too) and its emulation on the host for the CPU emulator.
//
// Lane l has group g = l / 4 and thread-in-group t = l % 4 (PTX ISA, "Matrix fragments
// for mma.m16n8k16 / m16n8k8"). tests/cpp/fragment_layouts.cpp checks the maps below
// against CuTe's MMA_Traits, an independent statement of the same hardware layouts.
#pragma once
#include "access.h"
#include "elem.h"

#if defined(__CUDACC__)
#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/mma_sm80.hpp>
#endif

#include <cstring>

namespace r2p1d::tc {

// A (16 x kMmaK, row-major fragment): element v of lane l.
template <ElemKind K>
R2P1D_HD void frag_a_coord(int lane, int v, int& row, int& k) {
  const int g = lane >> 2, t = lane & 3;
  if constexpr (K == ElemKind::kTF32) {  // 4 registers of one element
    row = g + 8 * (v & 1);
    k = t + 4 * (v >> 1);
  } else {  // 4 registers of two elements: v = 2 * register + half
    const int reg = v >> 1, half = v & 1;
    row = g + 8 * (reg & 1);
    k = 2 * t + half + 8 * (reg >> 1);
  }
}

// B (kMmaK x 8, "col" fragment): element v of lane l.
template <ElemKind K>
R2P1D_HD void frag_b_coord(int lane, int v, int& col, int& k) {
  const int g = lane >> 2, t = lane & 3;
  col = g;
  if constexpr (K == ElemKind::kTF32) {
    k = t + 4 * v;
  } else {
    k = 2 * t + (v & 1) + 8 * (v >> 1);
  }
}

// C/D (16 x 8, float): element v (0..3) of lane l.
R2P1D_HD void frag_c_coord(int lane, int v, int& row, int& col) {
  const int g = lane >> 2, t = lane & 3;
  row = g + 8 * (v >> 1);
  col = 2 * t + (v & 1);
}

// Elements per lane in each fragment.
template <ElemKind K>
struct FragCounts {
  static constexpr int kA = K == ElemKind::kTF32 ? 4 : 8;
  static constexpr int kB = K == ElemKind::kTF32 ? 2 : 4;
};

// ldmatrix: each of `count` (1, 2 or 4) 8x8 matrices of 16-bit elements is 8 rows of 16
// bytes whose addresses lanes 8q..8q+7 give (matrix q). Lane l receives, in register q,
// the 32-bit word l % 4 of row l / 4 of matrix q; with .trans, the two 16-bit elements
// (rows 2 (l % 4) and 2 (l % 4) + 1, column l / 4) of matrix q, which transposes it. For
// TF32 a 32-bit word is one element: the untransposed form loads TF32 fragments too.
// tests/cpp/fragment_layouts.cpp checks this against CuTe's Copy_Traits of the LDSM atoms.
#if defined(__CUDACC__)
template <int kCount, bool kTrans>
__device__ __forceinline__ void ldsm(uint32_t* r, const void* p) {
  const auto& src = *reinterpret_cast<const cute::uint128_t*>(p);
  if constexpr (kCount == 4 && !kTrans) cute::SM75_U32x4_LDSM_N::copy(src, r[0], r[1], r[2], r[3]);
  if constexpr (kCount == 4 && kTrans) cute::SM75_U16x8_LDSM_T::copy(src, r[0], r[1], r[2], r[3]);
  if constexpr (kCount == 2 && !kTrans) cute::SM75_U32x2_LDSM_N::copy(src, r[0], r[1]);
  if constexpr (kCount == 2 && kTrans) cute::SM75_U16x4_LDSM_T::copy(src, r[0], r[1]);
}
#endif

#if !defined(__CUDACC__)
// What ldmatrix gives each of a warp's 32 lanes, from the lanes' row addresses (host
// emulation). Each supplying lane's 16-byte row read is shown to the emulator's checks as
// that lane's access.
inline void warp_ldsm(int count, bool trans, const void* const (&addr)[32], int warp, uint32_t (&out)[32][4],
                      int line = __builtin_LINE()) {
  uint32_t rows[32][4];
  for (int l = 0; l < 8 * count; ++l) {
    bool ok = true;
    if (access_check) {
      access_check->thread(warp * 32 + l);
      ok = access_check->access(addr[l], 16, MemOp::kRead, line);
    }
    if (ok) std::memcpy(rows[l], addr[l], 16);
    else std::memset(rows[l], 0, 16);
  }
  for (int l = 0; l < 32; ++l)
    for (int q = 0; q < count; ++q) {
      if (!trans) {
        out[l][q] = rows[8 * q + l / 4][l % 4];
      } else {
        uint32_t v = 0;
        for (int h = 0; h < 2; ++h) {
          const uint32_t* row = rows[8 * q + 2 * (l % 4) + h];
          const uint32_t e = (row[(l / 4) / 2] >> (16 * ((l / 4) % 2))) & 0xffffu;
          v |= e << (16 * h);
        }
        out[l][q] = v;
      }
    }
}
#endif

#if defined(__CUDACC__)
// d += a * b on the tensor cores (one warp, every lane with its fragments).
template <ElemKind K>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (K == ElemKind::kBF16) {
    cute::SM80_16x8x16_F32BF16BF16F32_TN::fma(d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b[0], b[1],
                                             d[0], d[1], d[2], d[3]);
  } else if constexpr (K == ElemKind::kF16) {
    cute::SM80_16x8x16_F32F16F16F32_TN::fma(d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b[0], b[1],
                                           d[0], d[1], d[2], d[3]);
  } else {
    cute::SM80_16x8x8_F32TF32TF32F32_TN::fma(d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b[0], b[1],
                                            d[0], d[1], d[2], d[3]);
  }
}
#endif

// The element v of a fragment register file, as a float (host emulation).
template <ElemKind K>
inline float frag_element(const uint32_t* regs, int v) {
  using E = Elem<K>;
  if constexpr (K == ElemKind::kTF32) return E::smem_to_float(regs[v]);
  else return E::smem_to_float(static_cast<uint16_t>(regs[v >> 1] >> (16 * (v & 1))));
}

// What one warp's mma.sync computes, from the 32 lanes' fragments: the A and B blocks are
// rebuilt through the coordinate maps, multiplied in float, and added to each lane's C.
template <ElemKind K>
inline void warp_mma_emulate(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], float (&c)[32][4]) {
  constexpr int kK = Elem<K>::kMmaK;
  float A[16][kK], B[kK][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int v = 0; v < FragCounts<K>::kA; ++v) {
      int row, k;
      frag_a_coord<K>(lane, v, row, k);
      A[row][k] = frag_element<K>(a[lane], v);
    }
    for (int v = 0; v < FragCounts<K>::kB; ++v) {
      int col, k;
      frag_b_coord<K>(lane, v, col, k);
      B[k][col] = frag_element<K>(b[lane], v);
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int v = 0; v < 4; ++v) {
      int row, col;
      frag_c_coord(lane, v, row, col);
      float s = 0.f;
      for (int k = 0; k < kK; ++k) s += A[row][k] * B[k][col];
      c[lane][v] += s;
    }
}

}  // namespace r2p1d::tc
