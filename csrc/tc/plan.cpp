#include "plan.h"

#include <algorithm>

namespace r2p1d::tc {

namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// FLOPs per byte at which an H100 SXM is as long on the tensor cores as on HBM: 798 TFLOP/s
// of bf16 matrix products over 3.0 TB/s (both measured on the lent machines, docs/
// tensor_cores.md); TF32 runs at half the bf16 rate. The plan's cost model uses the ratio only.
double balance(ElemKind e) { return e == ElemKind::kTF32 ? 133.0 : 266.0; }

// K per split, rounded to whole K tiles, for `splits` splits of `ktiles` tiles of `bk`.
int64_t split_depth_of(int64_t ktiles, int64_t splits, int bk) { return cdiv(ktiles, splits) * bk; }

// MMA K steps run by every CTA column of the grid: each split's depth rounded up to k_step.
int64_t k_run(int64_t depth, int64_t split_depth, int k_step) {
  int64_t run = 0;
  for (int64_t k0 = 0; k0 < depth; k0 += split_depth) run += cdiv(std::min(split_depth, depth - k0), k_step) * k_step;
  return run;
}

struct Candidate {
  Plan plan;
  double cost;
  int64_t area;
};

Candidate evaluate(const GemmExtent& e, ElemKind elem, int64_t sm_count, int tile) {
  const TileDims t = tile_dims(e.kind, tile);
  const int bk = tile_depth(elem), k_step = mma_depth(elem);
  const int64_t es = elem == ElemKind::kTF32 ? 4 : 2;
  Plan p{};
  p.tile = tile;
  p.grid_m = cdiv(e.rows, t.bm);
  p.grid_n = cdiv(e.cols, t.bn);
  const int64_t ctas = p.grid_m * p.grid_n;
  const int64_t slots = sm_count * t.min_ctas;  // CTAs resident at once: one wave
  const int64_t ktiles = cdiv(e.depth, bk);
  // K splits: the weight gradients' K (pixels) is long and their grid small, so they split
  // to two waves; the others split only when their grid is under one wave. Each split is at
  // least kMinSplitTiles deep, and the float partials stay within the workspace bound.
  const int64_t want = e.kind == GemmKind::kWeightGrad ? cdiv(2 * slots, ctas) : (ctas < slots ? cdiv(slots, ctas) : 1);
  const int64_t by_depth = std::max<int64_t>(1, ktiles / kMinSplitTiles);
  const int64_t by_memory = std::max<int64_t>(1, kMaxSplitWorkspaceBytes / (e.rows * workspace_ld(e.cols) * 4));
  p.splits = std::max<int64_t>(1, std::min({want, by_depth, by_memory, int64_t(65535)}));
  p.split_depth = split_depth_of(ktiles, p.splits, bk);
  p.splits = std::max<int64_t>(1, cdiv(e.depth, p.split_depth));  // no empty split
  p.padded = padded_share(e, t, p.split_depth, k_step);
  // Cost, in bytes moved or their FLOP equivalent: the MMA work including padding, or the
  // operand bytes each CTA reads (A once per column tile, B once per row tile) plus the
  // split partials written and read back, whichever is larger, over the share of the last
  // wave that is busy.
  const double mma = 2.0 * p.grid_m * t.bm * p.grid_n * t.bn * k_run(e.depth, p.split_depth, k_step);
  double traffic = double(es) * e.depth * (double(e.rows) * p.grid_n + double(e.cols) * p.grid_m);
  if (p.splits > 1) traffic += 8.0 * p.splits * e.rows * e.cols;
  const int64_t launched = ctas * p.splits;
  const double busy = double(launched) / double(cdiv(launched, slots) * slots);
  return {p, std::max(mma / balance(elem), traffic) / busy, int64_t(t.bm) * t.bn};
}

}  // namespace

double padded_share(const GemmExtent& e, const TileDims& t, int64_t split_depth, int k_step) {
  const double done = double(cdiv(e.rows, t.bm) * t.bm) * double(cdiv(e.cols, t.bn) * t.bn) *
                      double(k_run(e.depth, split_depth, k_step));
  return done > 0 ? 1.0 - double(e.rows) * double(e.cols) * double(e.depth) / done : 0.0;
}

Plan plan_gemm(const GemmExtent& e, ElemKind elem, int64_t sm_count, int force_tile) {
  sm_count = std::max<int64_t>(sm_count, 1);
  if (force_tile >= 0) return evaluate(e, elem, sm_count, force_tile).plan;
  // The cheapest shape among those that pad at most kMaxPadded of the work (all of them
  // when none does); on a tie (a memory-bound GEMM whose operand traffic two shapes share)
  // the one with less padded work, then the larger tile, which reuses each operand more.
  Candidate best{};
  bool found = false, best_fits = false;
  for (int tile = 0; tile < tile_count(e.kind); ++tile) {
    const Candidate c = evaluate(e, elem, sm_count, tile);
    const bool fits = c.plan.padded <= kMaxPadded;
    const bool tie = c.cost == best.cost;
    const bool better =
        !found || (fits && !best_fits) ||
        (fits == best_fits && (c.cost < best.cost || (tie && c.plan.padded < best.plan.padded) ||
                               (tie && c.plan.padded == best.plan.padded && c.area > best.area)));
    if (better) {
      best = c;
      best_fits = fits;
      found = true;
    }
  }
  return best.plan;
}

GemmExtent extent_of(const SpatialFpropArgs& a) {
  return {a.g.out_pixels(), a.g.M, a.g.taps() * a.g.C, GemmKind::kRowsArePixels};
}
GemmExtent extent_of(const SpatialDgradArgs& a) {
  return {a.g.in_pixels(), a.g.C, a.g.taps() * a.g.M, GemmKind::kRowsArePixels};
}
GemmExtent extent_of(const SpatialWgradArgs& a) {
  return {a.g.M, a.g.taps() * a.g.C + (a.grad_bias ? 1 : 0), a.g.out_pixels(), GemmKind::kWeightGrad};
}
GemmExtent extent_of(const TemporalFpropArgs& a) {
  return {a.g.out_positions(), a.g.O, static_cast<int64_t>(a.g.kt) * a.g.M, GemmKind::kRowsArePixels};
}
GemmExtent extent_of(const TemporalDgradArgs& a) {
  return {a.g.in_positions(), a.g.M, static_cast<int64_t>(a.g.kt) * a.g.O, GemmKind::kRowsArePixels};
}
GemmExtent extent_of(const TemporalWgradArgs& a) {
  return {a.g.O, static_cast<int64_t>(a.g.kt) * a.g.M + (a.grad_bias ? 1 : 0), a.g.out_positions(),
          GemmKind::kWeightGrad};
}

}  // namespace r2p1d::tc
