// Epilogues of the implicit GEMMs: what happens to each accumulator C[row][col] (float)
// once the K loop is done, and the per-column reductions some of them carry.
//
// A thread holds pairs of adjacent columns (col, col+1) of a row; `apply` receives such a
// pair and folds each value into that column's reduction (Red). The CTA then merges the
// reductions of its rows in a fixed order and `write_partial` stores one partial per
// (column, row tile); a finalize step merges those, again in a fixed order, so every
// result is deterministic for a given plan.
#pragma once
#include "chunk.h"

namespace r2p1d::tc {

// Where a CTA is: its row tile, column tile and K split.
struct TileCtx {
  int64_t tile_m, tile_n, split;
};

struct NoRed {
  static constexpr int kFloats = 0;
  R2P1D_HD void merge(const NoRed&) {}
  R2P1D_HD void to(float*) const {}
  R2P1D_HD static NoRed from(const float*) { return {}; }
};

// Count, mean and sum of squared deviations (Welford), merged with Chan's formula: the
// BatchNorm statistics without a long, cancelling sum of squares.
struct MomentsRed {
  static constexpr int kFloats = 3;
  float n = 0.f, mean = 0.f, m2 = 0.f;
  R2P1D_HD void push(float v) {
    n += 1.f;
    const float d = v - mean;
    mean += d / n;
    m2 = fma_rn(d, v - mean, m2);
  }
  R2P1D_HD void merge(const MomentsRed& b) {
    if (b.n == 0.f) return;
    const float tot = n + b.n, delta = b.mean - mean, w = b.n / tot;
    mean = fma_rn(delta, w, mean);
    m2 += fma_rn(delta * delta * n, w, b.m2);
    n = tot;
  }
  R2P1D_HD void to(float* p) const { mem_store(p, n); mem_store(p + 1, mean); mem_store(p + 2, m2); }
  R2P1D_HD static MomentsRed from(const float* p) {
    MomentsRed r;
    r.n = mem_load(p); r.mean = mem_load(p + 1); r.m2 = mem_load(p + 2);
    return r;
  }
};

// Two plain sums (the BatchNorm backward's sum(g*(y-mean)) and sum(g)).
struct SumsRed {
  static constexpr int kFloats = 2;
  float a = 0.f, b = 0.f;
  R2P1D_HD void merge(const SumsRed& o) { a += o.a; b += o.b; }
  R2P1D_HD void to(float* p) const { mem_store(p, a); mem_store(p + 1, b); }
  R2P1D_HD static SumsRed from(const float* p) {
    SumsRed r;
    r.a = mem_load(p); r.b = mem_load(p + 1);
    return r;
  }
};

// out[row][col] = act(acc + bias[col]) into a row-major (rows, cols) tensor (y, the block
// output or the input gradient, all channels-last), with the BatchNorm moments of the
// stored (rounded) values per column when kStats (the spatial forward in training).
template <ElemKind K, bool kStats>
struct StoreEpi {
  using E = Elem<K>;
  using g_t = typename E::gmem_t;
  using Red = typename std::conditional<kStats, MomentsRed, NoRed>::type;
  g_t* out;
  const g_t* bias;  // may be null
  int64_t rows, cols;
  bool relu;
  float* partials;  // kStats: [cols][parts][3]
  int64_t parts;

  R2P1D_HD void apply(const TileCtx&, int64_t row, int64_t col, const float (&v)[2], Red (&red)[2]) const {
    if (row >= rows) return;
    R2P1D_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int64_t c = col + j;
      if (c >= cols) break;
      float x = v[j] + (bias ? E::to_float(ldg(bias + c)) : 0.f);
      if (relu) x = x > 0.f ? x : 0.f;
      const auto stored = E::from_float(x);
      mem_store(out + row * cols + c, stored);
      // The statistics of the values stored, which the temporal op normalises: in bf16/fp16,
      // those of the unrounded sums would leave sum((y - mean)) != 0 after rounding, an
      // error that BatchNorm's backward amplifies where a channel's values cancel.
      if constexpr (kStats) red[j].push(E::to_float(stored));
    }
  }

  R2P1D_HD void write_partial(const TileCtx& t, int64_t col, const Red& r) const {
    if constexpr (kStats) r.to(partials + (col * parts + t.tile_m) * 3);
  }
};

// The temporal input gradient's epilogue: acc is the gradient reaching the activation z
// at (row, col) of y; masked by ReLU' (recomputed from y), it gives grad_y = gpre * scale
// and the per-column sums sum(gpre * (y - mean)) and sum(gpre) (the BatchNorm vectors'
// gradients), into [cols][parts][2].
template <ElemKind K>
struct BnBackwardEpi {
  using E = Elem<K>;
  using g_t = typename E::gmem_t;
  using Red = SumsRed;
  const g_t* y;
  g_t* grad_y;  // may be null (only the vectors' gradients wanted)
  const float *mean, *scale, *shift;
  int64_t rows, cols;
  float* partials;
  int64_t parts;

  R2P1D_HD void apply(const TileCtx&, int64_t row, int64_t col, const float (&v)[2], Red (&red)[2]) const {
    if (row >= rows) return;
    R2P1D_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int64_t c = col + j;
      if (c >= cols) break;
      const float centred = E::to_float(ldg(y + row * cols + c)) - ldg(mean + c);
      const float sc = ldg(scale + c);
      const float gpre = fma_rn(centred, sc, ldg(shift + c)) > 0.f ? v[j] : 0.f;
      if (grad_y) mem_store(grad_y + row * cols + c, E::from_float(gpre * sc));
      red[j].a = fma_rn(gpre, centred, red[j].a);
      red[j].b += gpre;
    }
  }

  R2P1D_HD void write_partial(const TileCtx& t, int64_t col, const Red& r) const {
    r.to(partials + (col * parts + t.tile_m) * 2);
  }
};

// The weight gradients: each K split stores its float partial product into
// workspace[split][rows][cols]; a finalize step sums the splits in order.
template <ElemKind K>
struct SplitKEpi {
  using Red = NoRed;
  float* workspace;
  int64_t rows, cols;

  R2P1D_HD void apply(const TileCtx& t, int64_t row, int64_t col, const float (&v)[2], Red (&)[2]) const {
    if (row >= rows) return;
    float* p = workspace + (t.split * rows + row) * cols;
    R2P1D_UNROLL
    for (int j = 0; j < 2; ++j)
      if (col + j < cols) mem_store(p + col + j, v[j]);
  }

  R2P1D_HD void write_partial(const TileCtx&, int64_t, const Red&) const {}
};

}  // namespace r2p1d::tc
