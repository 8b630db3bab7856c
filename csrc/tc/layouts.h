// Where each 16-byte unit of an operand tile lives in shared memory, and which thread moves
// it: layouts chosen so that every access of the main loop is free of bank conflicts
// (measured by the emulator's counters, csrc/emulate/counters.h):
//   - the stores (16 bytes per lane: a quarter warp at a time) hit 8 different 16-byte
//     bank groups;
//   - ldmatrix reads 8 rows of 16 bytes per matrix, in 8 different bank groups;
//   - the TF32 fragments of row-contiguous tiles (32-bit loads) hit 32 different banks.
// Shared memory has 32 banks of 4 bytes: eight 16-byte groups in every 128 bytes.
#pragma once
#include "access.h"

namespace r2p1d::tc {

// A K-major tile: kRows rows of one K tile (64 bytes = 4 units along K). Rows r and r+1
// share a 128-byte line; unit u of row r is stored at u ^ ((r / 2) % 4), so the same unit of
// 8 consecutive rows (an ldmatrix matrix) falls in 8 different bank groups, and a quarter
// warp storing two whole rows fills one line.
template <int kRows>
struct KMajorTile {
  static constexpr bool kKMajor = true;
  static constexpr int kUnits = 4;  // per row
  static constexpr int kBytes = kRows * 64;
  static constexpr int kChunks = kRows * kUnits;
  static_assert(kRows % 8 == 0, "ldmatrix reads rows in groups of 8");

  // Byte offset of unit `unit` of row `row`.
  R2P1D_HD static int offset(int row, int unit) {
    const int swizzle = mutated(Mutation::kNoSwizzle) ? 0 : (row >> 1) & 3;  // never on the GPU
    return row * 64 + ((unit ^ swizzle) << 4);
  }
  // Chunk c of the tile: consecutive chunks along a row, rows one after another.
  R2P1D_HD static void chunk(int c, int& row, int& unit) {
    row = c >> 2;
    unit = c & 3;
  }
};

// A row-contiguous (M/N-major) tile: kLines lines (one per k) of kRows elements of
// kElemBytes, kUnits 16-byte units per line, each line padded to whole 128-byte groups of 8
// units. Within a group, unit j of line l is stored at slot (j + rot(l)) % 8 with
// rot(l) = 2 (l % 4) + (l / 4) % 2: a rotation that differs for each of 8 consecutive lines
// (so ldmatrix.trans, which reads one unit of 8 lines, is conflict-free), and that puts
// every 4 consecutive lines' units {2s, 2s+1} into 8 different slots (so the stores, a
// quarter warp of 4 lines x 2 units each, and the TF32 fragment loads, which read the same
// pattern, are too).
template <int kRows, int kElemBytes, int kLines>
struct MNMajorTile {
  static constexpr bool kKMajor = false;
  static constexpr int kUnits = kRows * kElemBytes / 16;
  static constexpr int kPitch = (kUnits + 7) / 8 * 8;  // units per line, padded
  static constexpr int kBytes = kLines * kPitch * 16;
  static constexpr int kChunks = kLines * kUnits;
  static_assert(kRows * kElemBytes % 32 == 0, "a line is whole pairs of 16-byte units");
  static_assert(kLines % 8 == 0, "lines come in groups of 8");

  R2P1D_HD static int offset(int line, int unit) {
    const int rot = 2 * (line & 3) + ((line >> 2) & 1);
    return (line * kPitch + (unit & ~7) + (((unit & 7) + rot) & 7)) << 4;
  }
  // Chunk c of the tile: blocks of 8 chunks, each 4 lines x 2 units (a quarter warp: 32
  // bytes of 4 lines, whole sectors in global memory); blocks along the line first.
  R2P1D_HD static void chunk(int c, int& line, int& unit) {
    constexpr int kPairs = kUnits / 2;
    const int b = c >> 3, e = c & 7;
    line = 4 * (b / kPairs) + (e >> 1);
    unit = 2 * (b % kPairs) + (e & 1);
  }
};

// The epilogue's staging of a BM x BN float tile: rows of BN + 8 floats. A lane group of 4
// (one accumulator row, columns 2t..2t+1) and the next 3 rows fill the 32 banks when the
// pitch is 8 or 24 modulo 32 words, as BN + 8 is for every BN that is a multiple of 16.
template <int kBM, int kBN>
struct StagingTile {
  static constexpr int kPitch = kBN + 8;
  static constexpr int kBytes = kBM * kPitch * 4;
  static_assert(kBN % 16 == 0, "the staging pitch assumes BN a multiple of 16");
  R2P1D_HD static int offset(int row, int col) { return row * kPitch + col; }  // in floats
};

}  // namespace r2p1d::tc
