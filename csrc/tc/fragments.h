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
#include <cute/arch/mma_sm80.hpp>
#endif

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

// One operand's tile in shared memory: kRows x kBK elements, stored K-contiguous
// ([row][k], for operands that are K-contiguous in global memory) or row-contiguous
// ([k][row], for operands contiguous along M/N), so that every global 16-byte chunk is
// one 16-byte shared store. Rows are padded by 16 bytes, which keeps the fragment loads
// below free of bank conflicts.
template <typename smem_t, int kRows, int kBK, bool kKMajor>
struct SmemTile {
  static constexpr bool kKContiguous = kKMajor;
  static constexpr int kPad = 16 / static_cast<int>(sizeof(smem_t));
  static constexpr int kLd = kKMajor ? kBK + kPad : kRows + kPad;
  static constexpr int kElems = kKMajor ? kRows * kLd : kBK * kLd;
  R2P1D_HD static int offset(int row, int k) { return kKMajor ? row * kLd + k : k * kLd + row; }
};

// Register r of a fragment: element pair (2r, 2r+1) for 16-bit types (consecutive k),
// element r for TF32. `coord(v, row, k)` gives an element's place in the tile.
template <ElemKind K, class Tile, typename smem_t, class Coord>
R2P1D_HD uint32_t frag_register(const smem_t* tile, int r, Coord coord) {
  int row, k;
  if constexpr (K == ElemKind::kTF32) {
    coord(r, row, k);
    const int off = Tile::offset(row, k);
    check_index(off, 1, Tile::kElems, "fragment load");
    return mem_load(tile + off);
  } else {
    coord(2 * r, row, k);
    const int off = Tile::offset(row, k);
    if constexpr (Tile::kKContiguous) {
      check_index(off, 2, Tile::kElems, "fragment load");
      return mem_load(reinterpret_cast<const uint32_t*>(tile + off));  // (k, k+1) adjacent: one 32-bit load
    } else {
      const int next = Tile::offset(row, k + 1);
      check_index(off, 1, Tile::kElems, "fragment load");
      check_index(next, 1, Tile::kElems, "fragment load");
      return static_cast<uint32_t>(mem_load(tile + off)) | (static_cast<uint32_t>(mem_load(tile + next)) << 16);
    }
  }
}

// The A fragment of the 16 x kMmaK block at (row0, k0) of the tile.
template <ElemKind K, class Tile, typename smem_t>
R2P1D_HD void load_frag_a(const smem_t* tile, int row0, int k0, int lane, uint32_t (&a)[4]) {
  R2P1D_UNROLL
  for (int r = 0; r < 4; ++r)
    a[r] = frag_register<K, Tile>(tile, r, [&](int v, int& row, int& k) {
      frag_a_coord<K>(lane, v, row, k);
      row += row0;
      k += k0;
    });
}

// The B fragment of the kMmaK x 8 block at (col0, k0) of the tile (B is stored by column).
template <ElemKind K, class Tile, typename smem_t>
R2P1D_HD void load_frag_b(const smem_t* tile, int col0, int k0, int lane, uint32_t (&b)[2]) {
  R2P1D_UNROLL
  for (int r = 0; r < 2; ++r)
    b[r] = frag_register<K, Tile>(tile, r, [&](int v, int& col, int& k) {
      frag_b_coord<K>(lane, v, col, k);
      col += col0;
      k += k0;
    });
}

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
