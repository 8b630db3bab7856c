// Epilogues of the implicit GEMMs: what happens to the float results C[row][col] once the K
// loop is done. The CTA stages its accumulators in shared memory and hands each thread
// whole output chunks (kN consecutive columns of one row: 16 bytes of output), so that the
// loads and stores here are 16 bytes wide and coalesced (tc/igemm.h, the chunk pass).
//
// An epilogue has per-column constants (`Cols`, loaded once: a thread keeps its columns for
// all its rows), `apply` for one chunk, which may fold each value into its column's
// reduction (Red), and `write_partial`: the CTA merges its rows' reductions in a fixed order
// and stores one partial per (column, row tile); a finalize step (tc/finalize.h) merges
// those, again in a fixed order, so every result is deterministic for a given plan.
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
  R2P1D_HD void to(float*, int) const {}
  R2P1D_HD static NoRed from(const float*, int) { return {}; }
};

// Count, mean and sum of squared deviations (Welford), merged with Chan's formula: the
// BatchNorm statistics without a long, cancelling sum of squares. `to`/`from` move the
// three floats `stride` apart.
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
  R2P1D_HD void to(float* p, int stride) const {
    mem_store(p, n);
    mem_store(p + stride, mean);
    mem_store(p + 2 * stride, m2);
  }
  R2P1D_HD static MomentsRed from(const float* p, int stride) {
    MomentsRed r;
    r.n = mem_load(p);
    r.mean = mem_load(p + stride);
    r.m2 = mem_load(p + 2 * stride);
    return r;
  }
};

// Two plain sums (the BatchNorm backward's sum(g*(y-mean)) and sum(g)).
struct SumsRed {
  static constexpr int kFloats = 2;
  float a = 0.f, b = 0.f;
  R2P1D_HD void merge(const SumsRed& o) {
    a += o.a;
    b += o.b;
  }
  R2P1D_HD void to(float* p, int stride) const {
    mem_store(p, a);
    mem_store(p + stride, b);
  }
  R2P1D_HD static SumsRed from(const float* p, int stride) {
    SumsRed r;
    r.a = mem_load(p);
    r.b = mem_load(p + stride);
    return r;
  }
};

// Stores a chunk of kN output elements at row `row`, column col0, of a row-major tensor
// with `cols` columns, in pieces of `width` bytes; `value(e)` gives element e (already in
// the output type's bits, as 16- or 32-bit words packed into Vec16s).
template <typename out_t, int kN>
struct OutChunk {
  static constexpr int kVecs = kN * static_cast<int>(sizeof(out_t)) / 16;  // 16-byte registers
  Vec16 v[kVecs] = {};
  R2P1D_HD void set(int e, out_t x) {
    if constexpr (sizeof(out_t) == 2) {
      uint32_t& w = v[e / 8].w[(e % 8) >> 1];
      w = (w & (0xffff0000u >> (16 * (e & 1)))) | (static_cast<uint32_t>(x) << (16 * (e & 1)));
    } else {
      v[e / 4].w[e % 4] = float_bits(x);
    }
  }
  // The valid elements (col0 + e < cols) to out + row * ld + col0, `width`-byte pieces.
  R2P1D_HD void store(out_t* out, int64_t ld, int64_t row, int64_t col0, int64_t cols, int width) const {
    constexpr int kEs = sizeof(out_t);
    out_t* p = out + row * ld + col0;
    with_width<kEs>(width, [&](auto wc) {
      constexpr int Wd = decltype(wc)::value, n = Wd / kEs, per_vec = 16 / Wd;
      R2P1D_UNROLL
      for (int j = 0; j < kVecs * per_vec; ++j) {
        Scope piece(j);
        if (col0 + j * n < cols) store_piece<Wd>(p + j * n, v[j / per_vec], j % per_vec);
      }
    });
  }
};

// Loads kN elements of a row-major tensor (row, col0..) like OutChunk::store (zeros past
// cols): y beside the accumulators in the BatchNorm-backward epilogue.
template <typename in_t, int kN>
R2P1D_HD void load_chunk(const in_t* src, int64_t ld, int64_t row, int64_t col0, int64_t cols, int width,
                         Vec16 (&v)[kN * sizeof(in_t) / 16]) {
  constexpr int kEs = sizeof(in_t), kVecs = kN * kEs / 16;
  R2P1D_UNROLL
  for (int i = 0; i < kVecs; ++i) v[i] = Vec16{{0u, 0u, 0u, 0u}};
  const in_t* p = src + row * ld + col0;
  with_width<kEs>(width, [&](auto wc) {
    constexpr int Wd = decltype(wc)::value, n = Wd / kEs, per_vec = 16 / Wd;
    R2P1D_UNROLL
    for (int j = 0; j < kVecs * per_vec; ++j) {
      Scope piece(j);
      if (col0 + j * n < cols) load_piece<Wd>(v[j / per_vec], j % per_vec, p + j * n);
    }
  });
}

// Element e of a chunk loaded by load_chunk, as float.
template <ElemKind K, int kN>
R2P1D_HD float chunk_element(const Vec16 (&v)[kN * sizeof(typename Elem<K>::gmem_t) / 16], int e) {
  using g_t = typename Elem<K>::gmem_t;
  constexpr int per = 16 / sizeof(g_t);
  return Elem<K>::to_float(Chunk<K>::get(v[e / per], e % per));
}

// out[row][col] = act(acc + bias[col]) into a row-major (rows, cols) tensor (y, the block
// output or the input gradient, all channels-last), with the BatchNorm moments of the
// stored (rounded) values per column when kStats (the spatial forward in training).
template <ElemKind K, bool kStats>
struct StoreEpi {
  using E = Elem<K>;
  using out_t = typename E::gmem_t;
  using Red = typename std::conditional<kStats, MomentsRed, NoRed>::type;
  static constexpr int kN = 16 / static_cast<int>(sizeof(out_t));
  out_t* out;
  const out_t* bias;  // may be null
  int64_t rows, cols;
  bool relu;
  float* partials;  // kStats: [cols][parts][3]
  int64_t parts;
  int width;  // bytes per output piece

  struct Cols {
    float bias[kN];
  };
  R2P1D_HD void load_cols(int64_t col0, Cols& c) const {
    R2P1D_UNROLL
    for (int e = 0; e < kN; ++e) c.bias[e] = bias && col0 + e < cols ? E::to_float(ldg(bias + col0 + e)) : 0.f;
  }

  R2P1D_HD void apply(int64_t row, int64_t col0, const float (&v)[kN], const Cols& c, Red (&red)[kN]) const {
    OutChunk<out_t, kN> o;
    R2P1D_UNROLL
    for (int e = 0; e < kN; ++e) {
      float x = v[e] + c.bias[e];
      if (relu) x = x > 0.f ? x : 0.f;
      const out_t stored = E::from_float(x);
      o.set(e, stored);
      // The statistics of the values stored, which the temporal op normalises: in bf16/fp16,
      // those of the unrounded sums would leave sum((y - mean)) != 0 after rounding, an
      // error that BatchNorm's backward amplifies where a channel's values cancel.
      if constexpr (kStats) {
        if (col0 + e < cols) red[e].push(E::to_float(stored));
      }
    }
    o.store(out, cols, row, col0, cols, width);
  }

  R2P1D_HD void write_partial(const TileCtx& t, int64_t col, const Red& r) const {
    if constexpr (kStats) r.to(partials + (col * parts + t.tile_m) * 3, 1);
  }
};

// The temporal input gradient's epilogue: acc is the gradient reaching the activation z
// at (row, col) of y; masked by ReLU' (recomputed from y), it gives grad_y = gpre * scale
// and the per-column sums sum(gpre * (y - mean)) and sum(gpre) (the BatchNorm vectors'
// gradients), into [cols][parts][2].
template <ElemKind K>
struct BnBackwardEpi {
  using E = Elem<K>;
  using out_t = typename E::gmem_t;
  using Red = SumsRed;
  static constexpr int kN = 16 / static_cast<int>(sizeof(out_t));
  const out_t* y;
  out_t* grad_y;  // may be null (only the vectors' gradients wanted)
  const float *mean, *scale, *shift;
  int64_t rows, cols;
  float* partials;
  int64_t parts;
  int width;

  struct Cols {
    float mean[kN], scale[kN], shift[kN];
  };
  R2P1D_HD void load_cols(int64_t col0, Cols& c) const {
    R2P1D_UNROLL
    for (int e = 0; e < kN; ++e) {
      const bool in = col0 + e < cols;
      c.mean[e] = in ? ldg(mean + col0 + e) : 0.f;
      c.scale[e] = in ? ldg(scale + col0 + e) : 0.f;
      c.shift[e] = in ? ldg(shift + col0 + e) : 0.f;
    }
  }

  R2P1D_HD void apply(int64_t row, int64_t col0, const float (&v)[kN], const Cols& c, Red (&red)[kN]) const {
    Vec16 yv[kN * sizeof(out_t) / 16];
    load_chunk<out_t, kN>(y, cols, row, col0, cols, width, yv);
    OutChunk<out_t, kN> o;
    R2P1D_UNROLL
    for (int e = 0; e < kN; ++e) {
      const float centred = chunk_element<K, kN>(yv, e) - c.mean[e];
      const float gpre = fma_rn(centred, c.scale[e], c.shift[e]) > 0.f ? v[e] : 0.f;
      o.set(e, E::from_float(gpre * c.scale[e]));
      if (col0 + e < cols) {
        red[e].a = fma_rn(gpre, centred, red[e].a);
        red[e].b += gpre;
      }
    }
    if (grad_y) o.store(grad_y, cols, row, col0, cols, width);
  }

  R2P1D_HD void write_partial(const TileCtx& t, int64_t col, const Red& r) const {
    r.to(partials + (col * parts + t.tile_m) * 2, 1);
  }
};

// The weight gradients: grad_w[row][col] for the weight's columns (taps*C or kt*M: the
// weight's channels-last order) in its dtype, and, where the GEMM has the ones column
// (col == inner), grad_b[row].
template <ElemKind K>
struct WgradEpi {
  using E = Elem<K>;
  using out_t = typename E::gmem_t;
  using Red = NoRed;
  static constexpr int kN = 16 / static_cast<int>(sizeof(out_t));
  out_t* grad_w;
  out_t* grad_b;  // null: no bias gradient
  int64_t rows, inner;
  int width;

  struct Cols {};
  R2P1D_HD void load_cols(int64_t, Cols&) const {}

  R2P1D_HD void apply(int64_t row, int64_t col0, const float (&v)[kN], const Cols&, Red (&)[kN]) const {
    OutChunk<out_t, kN> o;
    R2P1D_UNROLL
    for (int e = 0; e < kN; ++e) o.set(e, E::from_float(v[e]));
    o.store(grad_w, inner, row, col0, inner, width);
    if (grad_b && col0 <= inner && inner < col0 + kN) {
      R2P1D_UNROLL
      for (int e = 0; e < kN; ++e)
        if (col0 + e == inner) mem_store(grad_b + row, E::from_float(v[e]));
    }
  }

  R2P1D_HD void write_partial(const TileCtx&, int64_t, const Red&) const {}
};

}  // namespace r2p1d::tc
