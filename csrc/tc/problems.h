// The six GEMMs of the fused block, built from their args: which loader reads A and B,
// which epilogue takes C, how wide each global access is. Shared by the GPU launchers
// (csrc/cuda/igemm/) and the CPU emulator (csrc/emulate/).
//
//   spatial forward    rows = out pixels, cols = M, k = (r, s, c)    A im2col(x), B weight
//   spatial dgrad      rows = in pixels,  cols = C, k = (r, s, m)    A gather(gy_total), B weight
//   spatial wgrad      rows = M, cols = (r, s, c) [+ 1], k = pixels  A gy_total, B im2col(x) [, ones]
//   temporal forward   rows = out positions, cols = O, k = (tap, m)  A bnrelu(y), B weight
//   temporal dgrad     rows = y positions, cols = M, k = (tap, o)    A gather(go), B weight
//   temporal wgrad     rows = O, cols = (tap, m) [+ 1], k = positions  A go, B bnrelu(y) [, ones]
#pragma once
#include <initializer_list>

#include "args.h"
#include "igemm.h"
#include "loaders/k_major.h"
#include "loaders/mn_major.h"
#include "plan.h"

namespace r2p1d::tc {

// The widest global access (16, 8, 4 bytes, or 2 for 16-bit elements) that divides a run
// of `run` contiguous elements (a channel count, a row length) and every pointer's
// alignment: pieces then never cross a run and are always aligned.
template <ElemKind K>
inline int access_width(int64_t run, std::initializer_list<const void*> ptrs) {
  constexpr int es = sizeof(typename Elem<K>::gmem_t);
  for (int w : {16, 8, 4, 2}) {
    if (w < es) break;
    if (run * es % w != 0) continue;
    bool aligned = true;
    for (const void* p : ptrs)
      if (p && reinterpret_cast<uintptr_t>(p) % w != 0) aligned = false;
    if (aligned) return w;
  }
  return es;
}

template <ElemKind K>
using g_out = typename Elem<K>::gmem_t*;

// Whether an operand read as it is goes by cp.async: 16-byte pieces, and a 16-bit element
// type. TF32 operands go through registers, where they are rounded to TF32 (cvt.rna): fed
// raw to mma.sync, their low mantissa bits would be dropped by the tensor cores in a way
// the emulator could only assume, not check, without a GPU.
template <ElemKind K>
inline bool async_ok(int width) {
  return width == 16 && K != ElemKind::kTF32;
}

template <class P>
void set_extents(P& p, const GemmExtent& e, const Plan& plan) {
  p.rows = e.rows;
  p.cols = e.cols;
  p.depth = e.depth;
  p.split_depth = plan.split_depth;
  p.splits = plan.splits;
  p.ws_ld = workspace_ld(e.cols);
}

template <ElemKind K, bool kStats>
using SpatialFpropProblem = GemmProblem<K, Im2colK<K>, DenseK<K>, StoreEpi<K, kStats>>;

template <ElemKind K, bool kStats>
SpatialFpropProblem<K, kStats> make_problem(const SpatialFpropArgs& a, const Plan& plan) {
  const SpatialShape& g = a.g;
  const GemmExtent e = extent_of(a);
  SpatialFpropProblem<K, kStats> p;
  auto& A = p.a;
  A.x = static_cast<g_ptr<K>>(a.x);
  A.rows = e.rows;
  A.K = e.depth;
  A.H = g.H; A.W = g.W; A.Cin = g.C; A.kw = g.kw; A.sh = g.sh; A.sw = g.sw; A.ph = g.ph; A.pw = g.pw;
  A.Ho = g.Ho; A.Wo = g.Wo;
  A.width = access_width<K>(g.C, {a.x});
  A.async = async_ok<K>(A.width);
  auto& B = p.b;
  B.w = static_cast<g_ptr<K>>(a.w);
  B.rows = e.cols;
  B.K = e.depth;
  B.width = access_width<K>(e.depth, {a.w});
  B.async = async_ok<K>(B.width);
  p.epi = {static_cast<g_out<K>>(a.y), static_cast<g_ptr<K>>(a.bias), e.rows, e.cols, a.relu, a.partials, plan.grid_m,
           access_width<K>(e.cols, {a.y})};
  set_extents(p, e, plan);
  return p;
}

template <ElemKind K>
using SpatialDgradProblem = GemmProblem<K, SpatialDgradK<K>, WeightMN<K>, StoreEpi<K, false>>;

template <ElemKind K>
SpatialDgradProblem<K> make_problem(const SpatialDgradArgs& a, const Plan& plan) {
  const SpatialShape& g = a.g;
  const GemmExtent e = extent_of(a);
  SpatialDgradProblem<K> p;
  auto& A = p.a;
  A.gy = static_cast<g_ptr<K>>(a.gy);
  A.y = static_cast<g_ptr<K>>(a.y);
  A.rows = e.rows;
  A.K = e.depth;
  A.H = g.H; A.W = g.W; A.M = g.M; A.kw = g.kw; A.sh = g.sh; A.sw = g.sw; A.ph = g.ph; A.pw = g.pw;
  A.Ho = g.Ho; A.Wo = g.Wo;
  A.vec = {{a.mu, a.ca, a.cb}, g.M};
  A.width = access_width<K>(g.M, {a.gy, a.mu ? a.y : nullptr});
  A.async = async_ok<K>(A.width) && !A.vec.on();
  // B(c, (tap, m)) = w[m][tap][c]: q = m with stride taps*C, tap stride C.
  auto& B = p.b;
  B.w = static_cast<g_ptr<K>>(a.w);
  B.rows = e.cols;
  B.K = e.depth;
  B.Q = g.M;
  B.ld_q = g.taps() * g.C;
  B.ld_tap = g.C;
  B.width = access_width<K>(g.C, {a.w});
  B.async = async_ok<K>(B.width);
  p.epi = {static_cast<g_out<K>>(a.gx), nullptr, e.rows, e.cols, false, nullptr, 0, access_width<K>(e.cols, {a.gx})};
  set_extents(p, e, plan);
  return p;
}

template <ElemKind K>
using SpatialWgradProblem = GemmProblem<K, MatrixMN<K>, Im2colMN<K>, WgradEpi<K>>;

template <ElemKind K>
SpatialWgradProblem<K> make_problem(const SpatialWgradArgs& a, const Plan& plan) {
  const SpatialShape& g = a.g;
  const GemmExtent e = extent_of(a);
  const int64_t inner = g.taps() * g.C;
  SpatialWgradProblem<K> p;
  auto& A = p.a;
  A.src = static_cast<g_ptr<K>>(a.gy);
  A.y = static_cast<g_ptr<K>>(a.y);
  A.rows = e.rows;
  A.K = e.depth;
  A.ld = g.M;
  A.vec = {{a.mu, a.ca, a.cb}, g.M};
  A.width = access_width<K>(g.M, {a.gy, a.mu ? a.y : nullptr});
  A.async = async_ok<K>(A.width) && !A.vec.on();
  auto& B = p.b;
  B.x = static_cast<g_ptr<K>>(a.x);
  B.rows = e.cols;
  B.K = e.depth;
  B.ones = a.grad_bias ? inner : -1;
  B.H = g.H; B.W = g.W; B.Cin = g.C; B.kw = g.kw; B.sh = g.sh; B.sw = g.sw; B.ph = g.ph; B.pw = g.pw;
  B.Ho = g.Ho; B.Wo = g.Wo;
  B.width = access_width<K>(g.C, {a.x});
  B.async = async_ok<K>(B.width);
  p.epi = {static_cast<g_out<K>>(a.grad_w), static_cast<g_out<K>>(a.grad_b), e.rows, inner,
           access_width<K>(inner, {a.grad_w})};
  set_extents(p, e, plan);
  return p;
}

template <ElemKind K>
using TemporalFpropProblem = GemmProblem<K, TemporalK<K>, DenseK<K>, StoreEpi<K, false>>;

template <ElemKind K>
TemporalFpropProblem<K> make_problem(const TemporalFpropArgs& a, const Plan& plan) {
  const TemporalShape& g = a.g;
  const GemmExtent e = extent_of(a);
  TemporalFpropProblem<K> p;
  auto& A = p.a;
  A.src = static_cast<g_ptr<K>>(a.y);
  A.rows = e.rows;
  A.K = e.depth;
  A.Trow = g.To; A.Tsrc = g.T; A.HW = g.HW; A.Cs = g.M; A.st = g.st; A.pt = g.pt;
  A.transposed = false;
  A.vec = {{a.mean, a.scale, a.shift}, g.M};
  A.width = access_width<K>(g.M, {a.y});
  A.async = async_ok<K>(A.width) && !A.vec.on();
  auto& B = p.b;
  B.w = static_cast<g_ptr<K>>(a.w);
  B.rows = e.cols;
  B.K = e.depth;
  B.width = access_width<K>(e.depth, {a.w});
  B.async = async_ok<K>(B.width);
  p.epi = {static_cast<g_out<K>>(a.out), static_cast<g_ptr<K>>(a.bias), e.rows, e.cols, false, nullptr, 0,
           access_width<K>(e.cols, {a.out})};
  set_extents(p, e, plan);
  return p;
}

template <ElemKind K>
using TemporalDgradProblem = GemmProblem<K, TemporalK<K>, WeightMN<K>, BnBackwardEpi<K>>;

template <ElemKind K>
TemporalDgradProblem<K> make_problem(const TemporalDgradArgs& a, const Plan& plan) {
  const TemporalShape& g = a.g;
  const GemmExtent e = extent_of(a);
  TemporalDgradProblem<K> p;
  auto& A = p.a;
  A.src = static_cast<g_ptr<K>>(a.go);
  A.rows = e.rows;
  A.K = e.depth;
  A.Trow = g.T; A.Tsrc = g.To; A.HW = g.HW; A.Cs = g.O; A.st = g.st; A.pt = g.pt;
  A.transposed = true;
  A.vec = {{nullptr, nullptr, nullptr}, 0};
  A.width = access_width<K>(g.O, {a.go});
  A.async = async_ok<K>(A.width);
  // B(m, (tap, o)) = w[o][tap][m]: q = o with stride kt*M, tap stride M.
  auto& B = p.b;
  B.w = static_cast<g_ptr<K>>(a.w);
  B.rows = e.cols;
  B.K = e.depth;
  B.Q = g.O;
  B.ld_q = static_cast<int64_t>(g.kt) * g.M;
  B.ld_tap = g.M;
  B.width = access_width<K>(g.M, {a.w});
  B.async = async_ok<K>(B.width);
  p.epi = {static_cast<g_ptr<K>>(a.y), static_cast<g_out<K>>(a.gy), a.mean, a.scale, a.shift, e.rows, e.cols,
           a.partials, plan.grid_m, access_width<K>(e.cols, {a.y, a.gy})};
  set_extents(p, e, plan);
  return p;
}

template <ElemKind K>
using TemporalWgradProblem = GemmProblem<K, MatrixMN<K>, TemporalMN<K>, WgradEpi<K>>;

template <ElemKind K>
TemporalWgradProblem<K> make_problem(const TemporalWgradArgs& a, const Plan& plan) {
  const TemporalShape& g = a.g;
  const GemmExtent e = extent_of(a);
  const int64_t inner = static_cast<int64_t>(g.kt) * g.M;
  TemporalWgradProblem<K> p;
  auto& A = p.a;
  A.src = static_cast<g_ptr<K>>(a.go);
  A.y = nullptr;
  A.rows = e.rows;
  A.K = e.depth;
  A.ld = g.O;
  A.vec = {{nullptr, nullptr, nullptr}, 0};
  A.width = access_width<K>(g.O, {a.go});
  A.async = async_ok<K>(A.width);
  auto& B = p.b;
  B.y = static_cast<g_ptr<K>>(a.y);
  B.rows = e.cols;
  B.K = e.depth;
  B.ones = a.grad_bias ? inner : -1;
  B.T = g.T; B.HW = g.HW; B.M = g.M; B.To = g.To; B.st = g.st; B.pt = g.pt;
  B.vec = {{a.mean, a.scale, a.shift}, g.M};
  B.width = access_width<K>(g.M, {a.y});
  B.async = false;
  p.epi = {static_cast<g_out<K>>(a.grad_w), static_cast<g_out<K>>(a.grad_b), e.rows, inner,
           access_width<K>(inner, {a.grad_w})};
  set_extents(p, e, plan);
  return p;
}

// Calls f(TileShape{}) for tile `tile` of the GEMM kind's list (tc/plan.h).
template <GemmKind kKind, int kIndex>
using ShapeOf = TileShape<tile_dims(kKind, kIndex).bm, tile_dims(kKind, kIndex).bn, tile_dims(kKind, kIndex).warps_m,
                          tile_dims(kKind, kIndex).warps_n, tile_dims(kKind, kIndex).min_ctas>;

template <GemmKind kKind, class F>
void with_tile(int tile, F&& f) {
  if constexpr (kKind == GemmKind::kWeightGrad) {
    switch (tile) {
      case 0: f(ShapeOf<kKind, 0>{}); break;
      case 1: f(ShapeOf<kKind, 1>{}); break;
      case 2: f(ShapeOf<kKind, 2>{}); break;
      case 3: f(ShapeOf<kKind, 3>{}); break;
      case 4: f(ShapeOf<kKind, 4>{}); break;
      default: f(ShapeOf<kKind, 5>{}); break;
    }
  } else {
    switch (tile) {
      case 0: f(ShapeOf<kKind, 0>{}); break;
      case 1: f(ShapeOf<kKind, 1>{}); break;
      case 2: f(ShapeOf<kKind, 2>{}); break;
      case 3: f(ShapeOf<kKind, 3>{}); break;
      default: f(ShapeOf<kKind, 4>{}); break;
    }
  }
  static_assert(kWgradTiles == 6 && kPixelTiles == 5, "with_tile lists every tile shape");
}

template <class Epi>
struct IsWgradEpi : std::false_type {};
template <ElemKind K>
struct IsWgradEpi<WgradEpi<K>> : std::true_type {};

// The tile list of a problem: the weight gradients' or the others'.
template <class Problem>
constexpr GemmKind kind_of_problem() {
  return IsWgradEpi<typename Problem::Epi>::value ? GemmKind::kWeightGrad : GemmKind::kRowsArePixels;
}

template <class Args>
constexpr GemmKind kind_of() {
  return std::is_same_v<Args, SpatialWgradArgs> || std::is_same_v<Args, TemporalWgradArgs> ? GemmKind::kWeightGrad
                                                                                            : GemmKind::kRowsArePixels;
}

template <class F>
void with_elem(ElemKind e, F&& f) {
  switch (e) {
    case ElemKind::kBF16: f(std::integral_constant<ElemKind, ElemKind::kBF16>{}); break;
    case ElemKind::kF16: f(std::integral_constant<ElemKind, ElemKind::kF16>{}); break;
    case ElemKind::kTF32: f(std::integral_constant<ElemKind, ElemKind::kTF32>{}); break;
  }
}

// Calls f(problem) with the GEMM problem of `a` for element type K (and, for the spatial
// forward, with or without the statistics epilogue).
template <ElemKind K, class Args, class F>
void with_problem_of(const Args& a, const Plan& plan, F&& f) {
  if constexpr (std::is_same_v<Args, SpatialFpropArgs>) {
    if (a.partials) f(make_problem<K, true>(a, plan));
    else f(make_problem<K, false>(a, plan));
  } else {
    f(make_problem<K>(a, plan));
  }
}

// The same for `a`'s element type: what the emulator and the plan op share with the GPU
// launchers (which instantiate one element type per file).
template <class Args, class F>
void with_problem(const Args& a, const Plan& plan, F&& f) {
  with_elem(a.elem, [&](auto elem) { with_problem_of<decltype(elem)::value>(a, plan, f); });
}

// Calls f(problem, mode) for each launch a plan takes: the whole GEMM, or its K splits'
// partials then their sum through the epilogue.
template <class Problem, class F>
void for_each_pass(Problem p, float* workspace, F&& f) {
  if (p.splits <= 1) {
    p.mode = Mode::kDirect;
    f(p, int64_t(1));
    return;
  }
  p.workspace = workspace;
  p.mode = Mode::kPartial;
  f(p, p.splits);
  p.mode = Mode::kFinalize;
  f(p, int64_t(1));
}

}  // namespace r2p1d::tc
