// Kernel choice for the tensor-core GEMMs: tile shape, grid and K split. Plain host C++,
// compiled into every build (CPU-only too), so that CI checks the choices for every
// R(2+1)D layer shape without a GPU (tests/test_tc_plan.py through r2p1d::tc_plan).
#pragma once
#include <cstdint>

#include "args.h"

namespace r2p1d::tc {

enum class TileKind : int {
  kLarge = 0,  // 128 x 128 outputs, 8 warps of 64 x 32
  kSmall = 1,  // 64 x 64 outputs, 4 warps of 32 x 32
};

struct GemmExtent {
  int64_t rows, cols, depth;
  bool split;  // a weight gradient: K (pixels) may be split across CTAs
};

struct Plan {
  TileKind tile;
  int64_t grid_m, grid_n, splits, split_depth;
};

// Elements of K per tile: 64 bytes of the shared-memory operand.
inline int tile_depth(ElemKind e) { return e == ElemKind::kTF32 ? 16 : 32; }
inline int tile_rows(TileKind t) { return t == TileKind::kLarge ? 128 : 64; }

// The CTAs of a tile shape the plan counts on finding room on one SM at once: a large
// tile per SM (large tiles are taken when there is one for every SM), and the four small
// ones that replace it (small tiles are taken when the large ones would leave SMs idle, so
// there are fewer than four per SM). The kernels are compiled for it (__launch_bounds__'s
// minimum), and tests/test_tc_resources.py checks that ptxas fits it without spills.
constexpr int resident_ctas(TileKind t) { return t == TileKind::kLarge ? 1 : 4; }
inline int tile_cols(TileKind t) { return t == TileKind::kLarge ? 128 : 64; }

// Workspace bound of the split-K weight gradients (float partials).
constexpr int64_t kMaxSplitWorkspaceBytes = int64_t(64) << 20;
// A split covers at least this many K tiles, so its fixed cost stays small.
constexpr int64_t kMinSplitTiles = 16;

// force_tile: -1 chooses, 0/1 forces a TileKind (tests and benchmarks).
Plan plan_gemm(const GemmExtent& e, ElemKind elem, int64_t sm_count, int force_tile = -1);

GemmExtent extent_of(const SpatialFpropArgs& a);
GemmExtent extent_of(const SpatialDgradArgs& a);
GemmExtent extent_of(const SpatialWgradArgs& a);
GemmExtent extent_of(const TemporalFpropArgs& a);
GemmExtent extent_of(const TemporalDgradArgs& a);
GemmExtent extent_of(const TemporalWgradArgs& a);

}  // namespace r2p1d::tc
