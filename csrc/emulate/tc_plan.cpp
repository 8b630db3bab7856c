// r2p1d_tc_emulate::plan: the tensor-core kernel choice for one GEMM of a layer, for
// tests/test_tc_plan.py: which tile, grid and K split the GPU path takes, the padded share
// of its MMA work, and how wide each operand's global accesses are and whether they go by
// cp.async (assuming 256-byte aligned tensors).
#include <torch/library.h>

#include "tc/problems.h"
#include "tc_ops.h"

namespace r2p1d::emulate {
namespace {

// Sizes: spatial GEMMs [N, C, T, H, W, M, kh, kw, sh, sw, ph, pw];
//        temporal GEMMs [N, M, T, H, W, O, kt, st, pt].
// Returns [tile, grid_m, grid_n, splits, split_depth, rows, cols, depth, a_width, b_width,
// a_async, b_async, bm, bn, padded share in parts per million, out_width]; `bias`: the
// weight gradients with the bias column.
std::vector<int64_t> plan(const std::string& gemm, at::IntArrayRef sizes, at::ScalarType dtype,
                          int64_t sm_count, bool bias) {
  const tc::ElemKind elem = tc_ops::elem_of(dtype);
  // Any 256-byte aligned address: the plan reads the pointers only for their alignment.
  void* p = reinterpret_cast<void*>(uintptr_t(256));
  const float* f = reinterpret_cast<const float*>(p);
  auto i = [](int64_t v) { return static_cast<int>(v); };
  std::vector<int64_t> out;
  auto describe = [&](const auto& args) {
    const tc::GemmExtent e = tc::extent_of(args);
    const tc::Plan pl = tc::plan_gemm(e, elem, sm_count);
    const tc::TileDims t = tc::tile_dims(e.kind, pl.tile);
    tc::with_problem(args, pl, [&](const auto& prob) {
      out = {static_cast<int64_t>(pl.tile), pl.grid_m, pl.grid_n, pl.splits, pl.split_depth, e.rows, e.cols, e.depth,
             prob.a.width, prob.b.width, prob.a.async, prob.b.async, t.bm, t.bn,
             static_cast<int64_t>(pl.padded * 1e6 + 0.5), prob.epi.width};
    });
  };
  if (gemm.rfind("spatial_", 0) == 0) {
    TORCH_CHECK_VALUE(sizes.size() == 12, "r2p1d: expected 12 spatial sizes, got ", sizes.size());
    const int64_t N = sizes[0], C = sizes[1], T = sizes[2], H = sizes[3], W = sizes[4], M = sizes[5];
    const int64_t kh = sizes[6], kw = sizes[7], sh = sizes[8], sw = sizes[9], ph = sizes[10], pw = sizes[11];
    const tc::SpatialShape g{N * T, i(H), i(W), i(C), i(M), i(kh), i(kw), i(sh), i(sw), i(ph), i(pw),
                             i((H + 2 * ph - kh) / sh + 1), i((W + 2 * pw - kw) / sw + 1)};
    if (gemm == "spatial_fprop") describe(tc::SpatialFpropArgs{g, elem, p, p, p, p, false, const_cast<float*>(f)});
    else if (gemm == "spatial_dgrad") describe(tc::SpatialDgradArgs{g, elem, p, p, f, f, f, p, p});
    else if (gemm == "spatial_wgrad") describe(tc::SpatialWgradArgs{g, elem, p, p, f, f, f, p, p, bias ? p : nullptr, bias});
    else TORCH_CHECK_VALUE(false, "r2p1d: unknown GEMM '", gemm, "'");
  } else {
    TORCH_CHECK_VALUE(sizes.size() == 9, "r2p1d: expected 9 temporal sizes, got ", sizes.size());
    const int64_t N = sizes[0], M = sizes[1], T = sizes[2], HW = sizes[3] * sizes[4], O = sizes[5];
    const int64_t kt = sizes[6], st = sizes[7], pt = sizes[8];
    const tc::TemporalShape g{N, i(T), i(HW), i(M), i(O), i(kt), i(st), i(pt), i((T + 2 * pt - kt) / st + 1)};
    if (gemm == "temporal_fprop") describe(tc::TemporalFpropArgs{g, elem, p, f, f, f, p, p, p});
    else if (gemm == "temporal_dgrad") describe(tc::TemporalDgradArgs{g, elem, p, p, p, f, f, f, p, const_cast<float*>(f)});
    else if (gemm == "temporal_wgrad") describe(tc::TemporalWgradArgs{g, elem, p, p, f, f, f, p, bias ? p : nullptr, bias});
    else TORCH_CHECK_VALUE(false, "r2p1d: unknown GEMM '", gemm, "'");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(r2p1d_tc_emulate, m) {
  m.def("plan(str gemm, int[] sizes, ScalarType dtype, int sm_count=132, bool bias=False) -> int[]", TORCH_FN(plan));
}

}  // namespace r2p1d::emulate
