// The six GEMMs of the fused block, built from their args: which loader reads A and B,
// which epilogue takes C. Shared by the GPU launchers (csrc/cuda/igemm/) and the CPU
// emulator (csrc/emulate/).
//
//   spatial forward    rows = out pixels, cols = M, k = (r, s, c)    A im2col(x), B weight
//   spatial dgrad      rows = in pixels,  cols = C, k = (r, s, m)    A gather(gy_total), B weight
//   spatial wgrad      rows = M, cols = (r, s, c) + 1, k = pixels    A gy_total, B im2col(x)
//   temporal forward   rows = out positions, cols = O, k = (tap, m)  A bnrelu(y), B weight
//   temporal dgrad     rows = y positions, cols = M, k = (tap, o)    A gather(go), B weight
//   temporal wgrad     rows = O, cols = (tap, m) + 1, k = positions  A go, B bnrelu(y)
#pragma once
#include "args.h"
#include "igemm.h"
#include "loaders/k_major.h"
#include "loaders/mn_major.h"
#include "plan.h"

namespace r2p1d::tc {

// A chunk is one 16-byte load when the contiguous extent is a multiple of the chunk and
// every pointer it is read through is 16-byte aligned.
template <ElemKind K>
inline bool vec_ok(int64_t contiguous_extent, std::initializer_list<const void*> ptrs) {
  if (contiguous_extent % Chunk<K>::kV != 0) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

template <ElemKind K>
using g_out = typename Elem<K>::gmem_t*;

template <ElemKind K, bool kStats>
using SpatialFpropProblem = GemmProblem<K, Im2colK<K>, DenseK<K>, StoreEpi<K, kStats>>;

template <ElemKind K, bool kStats>
SpatialFpropProblem<K, kStats> make_problem(const SpatialFpropArgs& a, const Plan& plan) {
  const SpatialShape& g = a.g;
  const GemmExtent e = extent_of(a);
  SpatialFpropProblem<K, kStats> p;
  p.a = {g_ptr<K>(a.x), e.rows, e.depth, g.H, g.W, g.C, g.kw, g.sh, g.sw, g.ph, g.pw, g.Ho, g.Wo,
         vec_ok<K>(g.C, {a.x})};
  p.b = {g_ptr<K>(a.w), e.cols, e.depth, vec_ok<K>(e.depth, {a.w})};
  p.epi = {g_out<K>(a.y), g_ptr<K>(a.bias), e.rows, e.cols, a.relu, a.partials, plan.grid_m};
  p.rows = e.rows; p.cols = e.cols; p.depth = e.depth; p.split_depth = plan.split_depth;
  return p;
}

template <ElemKind K>
using SpatialDgradProblem = GemmProblem<K, SpatialDgradK<K>, WeightMN<K>, StoreEpi<K, false>>;

template <ElemKind K>
SpatialDgradProblem<K> make_problem(const SpatialDgradArgs& a, const Plan& plan) {
  const SpatialShape& g = a.g;
  const GemmExtent e = extent_of(a);
  SpatialDgradProblem<K> p;
  p.a = {g_ptr<K>(a.gy), g_ptr<K>(a.y), GradTotal{a.mu, a.ca, a.cb}, e.rows, e.depth, g.H, g.W, g.M,
         g.kw, g.sh, g.sw, g.ph, g.pw, g.Ho, g.Wo, vec_ok<K>(g.M, {a.gy, a.mu ? a.y : nullptr})};
  // B(c, (tap, m)) = w[m][tap][c]: q = m with stride taps*C, tap stride C.
  p.b = {g_ptr<K>(a.w), e.cols, e.depth, g.M, g.taps() * g.C, g.C, vec_ok<K>(g.C, {a.w})};
  p.epi = {g_out<K>(a.gx), nullptr, e.rows, e.cols, false, nullptr, plan.grid_m};
  p.rows = e.rows; p.cols = e.cols; p.depth = e.depth; p.split_depth = plan.split_depth;
  return p;
}

template <ElemKind K>
using SpatialWgradProblem = GemmProblem<K, MatrixMN<K>, Im2colMN<K>, SplitKEpi<K>>;

template <ElemKind K>
SpatialWgradProblem<K> make_problem(const SpatialWgradArgs& a, const Plan& plan) {
  const SpatialShape& g = a.g;
  const GemmExtent e = extent_of(a);
  SpatialWgradProblem<K> p;
  p.a = {g_ptr<K>(a.gy), g_ptr<K>(a.y), GradTotal{a.mu, a.ca, a.cb}, e.rows, e.depth, g.M,
         vec_ok<K>(g.M, {a.gy, a.mu ? a.y : nullptr})};
  p.b = {g_ptr<K>(a.x), e.cols, e.depth, g.H, g.W, g.C, g.kw, g.sh, g.sw, g.ph, g.pw, g.Ho, g.Wo,
         vec_ok<K>(g.C, {a.x})};
  p.epi = {a.workspace, e.rows, e.cols};
  p.rows = e.rows; p.cols = e.cols; p.depth = e.depth; p.split_depth = plan.split_depth;
  return p;
}

template <ElemKind K>
using TemporalFpropProblem = GemmProblem<K, TemporalK<K>, DenseK<K>, StoreEpi<K, false>>;

template <ElemKind K>
TemporalFpropProblem<K> make_problem(const TemporalFpropArgs& a, const Plan& plan) {
  const TemporalShape& g = a.g;
  const GemmExtent e = extent_of(a);
  TemporalFpropProblem<K> p;
  p.a = {g_ptr<K>(a.y), e.rows, e.depth, g.To, g.T, g.HW, g.M, g.st, g.pt, /*transposed=*/false,
         vec_ok<K>(g.M, {a.y}), BnRelu{a.mean, a.scale, a.shift}};
  p.b = {g_ptr<K>(a.w), e.cols, e.depth, vec_ok<K>(e.depth, {a.w})};
  p.epi = {g_out<K>(a.out), g_ptr<K>(a.bias), e.rows, e.cols, false, nullptr, plan.grid_m};
  p.rows = e.rows; p.cols = e.cols; p.depth = e.depth; p.split_depth = plan.split_depth;
  return p;
}

template <ElemKind K>
using TemporalDgradProblem = GemmProblem<K, TemporalK<K>, WeightMN<K>, BnBackwardEpi<K>>;

template <ElemKind K>
TemporalDgradProblem<K> make_problem(const TemporalDgradArgs& a, const Plan& plan) {
  const TemporalShape& g = a.g;
  const GemmExtent e = extent_of(a);
  TemporalDgradProblem<K> p;
  p.a = {g_ptr<K>(a.go), e.rows, e.depth, g.T, g.To, g.HW, g.O, g.st, g.pt, /*transposed=*/true,
         vec_ok<K>(g.O, {a.go}), BnRelu{}};
  // B(m, (tap, o)) = w[o][tap][m]: q = o with stride kt*M, tap stride M.
  p.b = {g_ptr<K>(a.w), e.cols, e.depth, g.O, static_cast<int64_t>(g.kt) * g.M, g.M, vec_ok<K>(g.M, {a.w})};
  p.epi = {g_ptr<K>(a.y), g_out<K>(a.gy), a.mean, a.scale, a.shift, e.rows, e.cols, a.partials, plan.grid_m};
  p.rows = e.rows; p.cols = e.cols; p.depth = e.depth; p.split_depth = plan.split_depth;
  return p;
}

template <ElemKind K>
using TemporalWgradProblem = GemmProblem<K, MatrixMN<K>, TemporalMN<K>, SplitKEpi<K>>;

template <ElemKind K>
TemporalWgradProblem<K> make_problem(const TemporalWgradArgs& a, const Plan& plan) {
  const TemporalShape& g = a.g;
  const GemmExtent e = extent_of(a);
  TemporalWgradProblem<K> p;
  p.a = {g_ptr<K>(a.go), nullptr, GradTotal{}, e.rows, e.depth, g.O, vec_ok<K>(g.O, {a.go})};
  p.b = {g_ptr<K>(a.y), BnRelu{a.mean, a.scale, a.shift}, e.cols, e.depth, g.T, g.HW, g.M, g.To, g.st,
         g.pt, vec_ok<K>(g.M, {a.y})};
  p.epi = {a.workspace, e.rows, e.cols};
  p.rows = e.rows; p.cols = e.cols; p.depth = e.depth; p.split_depth = plan.split_depth;
  return p;
}

// Calls f.template operator()<Shape>() for the plan's tile shape.
using LargeTile = TileShape<128, 128, 2, 4, resident_ctas(TileKind::kLarge)>;
using SmallTile = TileShape<64, 64, 2, 2, resident_ctas(TileKind::kSmall)>;

template <class F>
void with_tile(TileKind t, F&& f) {
  if (t == TileKind::kLarge) f(LargeTile{});
  else f(SmallTile{});
}

template <class F>
void with_elem(ElemKind e, F&& f) {
  switch (e) {
    case ElemKind::kBF16: f(std::integral_constant<ElemKind, ElemKind::kBF16>{}); break;
    case ElemKind::kF16: f(std::integral_constant<ElemKind, ElemKind::kF16>{}); break;
    case ElemKind::kTF32: f(std::integral_constant<ElemKind, ElemKind::kTF32>{}); break;
  }
}

// Calls f(problem) with the GEMM problem of `a` for its element type (and, for the spatial
// forward, with or without the statistics epilogue): what the GPU launchers, the emulator
// and the plan op share.
template <class Args, class F>
void with_problem(const Args& a, const Plan& plan, F&& f) {
  with_elem(a.elem, [&](auto elem) {
    constexpr ElemKind K = decltype(elem)::value;
    if constexpr (std::is_same_v<Args, SpatialFpropArgs>) {
      if (a.partials) f(make_problem<K, true>(a, plan));
      else f(make_problem<K, false>(a, plan));
    } else {
      f(make_problem<K>(a, plan));
    }
  });
}

}  // namespace r2p1d::tc
