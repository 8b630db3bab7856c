// Kernel choice for the tensor-core GEMMs: tile shape, grid and K split. Plain host C++,
// compiled into every build (CPU-only too), so that CI checks the choices for every
// R(2+1)D layer shape without a GPU (tests/test_tc_plan.py through r2p1d::tc_plan).
//
// The tile shapes (docs/tensor_cores.md, "Tile shapes"): the padded dimension of these GEMMs
// is always a channel count (45, 144, 230, 460, 921 mid channels; 135 = 3 x 45 columns), so
// besides 128x128 and 64x64 the plan can take tiles 48, 96 and 144 wide where those waste
// less; the weight gradients, whose rows are channels too, have their own list.
#pragma once
#include <cstdint>

#include "args.h"

namespace r2p1d::tc {

// Which list a GEMM picks its tile from: rows are pixels (forwards and input gradients), or
// rows are channels and K is pixels (weight gradients).
enum class GemmKind : int { kRowsArePixels = 0, kWeightGrad = 1 };

// A tile shape: BM x BN outputs, warps WarpsM x WarpsN, and the CTAs per SM the plan counts
// on (the kernels are compiled for it: __launch_bounds__'s minimum; tests/test_tc_resources.py
// checks that ptxas fits it without spills).
struct TileDims {
  int bm, bn, warps_m, warps_n, min_ctas;
  constexpr int threads() const { return 32 * warps_m * warps_n; }
};

// Index 0 is 128x128 and index 1 is 64x64 in both lists (the tests' forced "large" and
// "small" tiles).
constexpr int kPixelTiles = 5;
constexpr TileDims kPixelTileDims[kPixelTiles] = {
    {128, 128, 2, 4, 1},  // warps of 64 x 32
    {64, 64, 2, 2, 3},    // 32 x 32 (the input gradients need up to 156 registers: 3 CTAs)
    {128, 96, 4, 2, 1},   // 32 x 48: 288, 460, 576, 921 channels
    {128, 144, 4, 2, 1},  // 32 x 72: 144, 288, 576 channels
    {128, 48, 4, 1, 2},   // 32 x 48: 45 channels
};
constexpr int kWgradTiles = 6;
constexpr TileDims kWgradTileDims[kWgradTiles] = {
    {128, 128, 2, 4, 1},  // 64 x 32
    {64, 64, 2, 2, 2},    // 32 x 32
    {48, 128, 3, 2, 1},   // 16 x 64: 144 and 288 channels
    {96, 128, 2, 4, 1},   // 48 x 32: 288, 576, 921 channels
    {48, 160, 3, 4, 1},   // 16 x 40: the stem's 45 channels by 147 taps
    {64, 144, 4, 2, 1},   // 16 x 72: the stem's 64 channels by 3 x 45 taps
};
// The weight gradients' loaders hold more per chunk (M/N-major states, the statistics'
// share beside grad_y) than the pixel GEMMs': their tiles keep at most three chunks of an
// operand per thread, and at most 64 accumulators, which ptxas fits
// without spills (tests/test_tc_resources.py; docs/tensor_cores.md has the measurements).

constexpr int tile_count(GemmKind k) { return k == GemmKind::kWeightGrad ? kWgradTiles : kPixelTiles; }
constexpr TileDims tile_dims(GemmKind k, int tile) {
  return k == GemmKind::kWeightGrad ? kWgradTileDims[tile] : kPixelTileDims[tile];
}

struct GemmExtent {
  int64_t rows, cols, depth;
  GemmKind kind;
};

struct Plan {
  int tile;  // index into the kind's list
  int64_t grid_m, grid_n, splits, split_depth;
  double padded;  // share of the MMA work outside the GEMM (tiles and K steps past its edges)
};

// Elements of K per tile (64 bytes of the shared-memory operand) and per MMA step.
inline int tile_depth(ElemKind e) { return e == ElemKind::kTF32 ? 16 : 32; }
inline int mma_depth(ElemKind e) { return e == ElemKind::kTF32 ? 8 : 16; }

// Workspace bound of the split-K float partials.
constexpr int64_t kMaxSplitWorkspaceBytes = int64_t(64) << 20;
// A split covers at least this many K tiles, so its fixed cost (the partials written and
// read back) stays small.
constexpr int64_t kMinSplitTiles = 16;
// The largest padded share the plan accepts when a tile shape meets it.
constexpr double kMaxPadded = 0.15;

// force_tile: -1 chooses, else an index into the kind's list (tests and benchmarks).
Plan plan_gemm(const GemmExtent& e, ElemKind elem, int64_t sm_count, int force_tile = -1);

// The padded share of a tile shape with its K split (see Plan::padded).
double padded_share(const GemmExtent& e, const TileDims& t, int64_t split_depth, int k_step);

// The float32 workspace row length of a split GEMM: cols rounded up to 8, so that every
// epilogue chunk (8 columns of 16-bit outputs, 4 of float ones) lies inside its row and
// each row starts 32-byte aligned.
inline int64_t workspace_ld(int64_t cols) { return (cols + 7) / 8 * 8; }

GemmExtent extent_of(const SpatialFpropArgs& a);
GemmExtent extent_of(const SpatialDgradArgs& a);
GemmExtent extent_of(const SpatialWgradArgs& a);
GemmExtent extent_of(const TemporalFpropArgs& a);
GemmExtent extent_of(const TemporalDgradArgs& a);
GemmExtent extent_of(const TemporalWgradArgs& a);

}  // namespace r2p1d::tc
