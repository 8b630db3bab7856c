#include "plan.h"

#include <algorithm>

namespace r2p1d::tc {

namespace {
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

Plan plan_gemm(const GemmExtent& e, ElemKind elem, int64_t sm_count, int force_tile) {
  sm_count = std::max<int64_t>(sm_count, 1);
  Plan p{};
  // Large tiles reuse each loaded operand twice as often; take them when they still give
  // every SM a CTA (or when the K split below can make up the count). A wave is sm_count
  // large CTAs or 4 * sm_count small ones (resident_ctas).
  const int64_t large = cdiv(e.rows, 128) * cdiv(e.cols, 128);
  if (force_tile >= 0) {
    p.tile = static_cast<TileKind>(force_tile);
  } else if (e.split) {
    p.tile = e.rows >= 128 && e.cols >= 128 ? TileKind::kLarge : TileKind::kSmall;
  } else {
    p.tile = large >= sm_count ? TileKind::kLarge : TileKind::kSmall;
  }
  p.grid_m = cdiv(e.rows, tile_rows(p.tile));
  p.grid_n = cdiv(e.cols, tile_cols(p.tile));
  const int64_t bk = tile_depth(elem);
  const int64_t ktiles = cdiv(e.depth, bk);
  p.splits = 1;
  if (e.split) {
    // Two waves of CTAs, each split at least kMinSplitTiles deep, within the workspace.
    const int64_t tiles = p.grid_m * p.grid_n;
    const int64_t want = cdiv(2 * sm_count, tiles);
    const int64_t by_depth = std::max<int64_t>(1, ktiles / kMinSplitTiles);
    const int64_t by_memory = std::max<int64_t>(1, kMaxSplitWorkspaceBytes / (e.rows * e.cols * 4));
    p.splits = std::max<int64_t>(1, std::min({want, by_depth, by_memory, int64_t(65535)}));
  }
  p.split_depth = cdiv(ktiles, p.splits) * bk;
  p.splits = std::max<int64_t>(1, cdiv(e.depth, p.split_depth));  // no empty split
  return p;
}

GemmExtent extent_of(const SpatialFpropArgs& a) {
  return {a.g.out_pixels(), a.g.M, a.g.taps() * a.g.C, false};
}
GemmExtent extent_of(const SpatialDgradArgs& a) {
  return {a.g.in_pixels(), a.g.C, a.g.taps() * a.g.M, false};
}
GemmExtent extent_of(const SpatialWgradArgs& a) {
  return {a.g.M, a.g.taps() * a.g.C + 1, a.g.out_pixels(), true};
}
GemmExtent extent_of(const TemporalFpropArgs& a) {
  return {a.g.out_positions(), a.g.O, static_cast<int64_t>(a.g.kt) * a.g.M, false};
}
GemmExtent extent_of(const TemporalDgradArgs& a) {
  return {a.g.in_positions(), a.g.M, static_cast<int64_t>(a.g.kt) * a.g.O, false};
}
GemmExtent extent_of(const TemporalWgradArgs& a) {
  return {a.g.O, static_cast<int64_t>(a.g.kt) * a.g.M + 1, a.g.out_positions(), true};
}

}  // namespace r2p1d::tc
