// The CPU emulator of the tensor-core GEMMs: every CTA of a launch run on the host with the
// very code the GPU runs (csrc/tc/igemm.h: loaders, shared-memory tiles, fragment
// loads, epilogues, reductions), threads stepped one after another between barriers and
// each warp's mma.sync emulated from its lanes' fragments. Slow, exact to the rounding of
// the operands, and what CI runs in place of a GPU.
#pragma once
#include <ATen/Parallel.h>

#include <memory>
#include <vector>

#include "tc/problems.h"

namespace r2p1d::emulate {

struct HostExec {
  template <class Thread, class F>
  void each(Thread* threads, F&& f) {
    for (int t = 0; t < count; ++t) f(t, threads[t]);
  }
  void sync() {}
  template <class CtaT>
  void mma(const typename CtaT::Smem& s, int buf, typename CtaT::Thread* threads) {
    for (int warp = 0; warp < count / 32; ++warp) CtaT::mma_tile_emulated(s, buf, warp, threads);
  }
  int count;
};

// Runs the whole grid of a launch, CTAs spread over the host's threads.
template <class Problem>
void run_grid(const Problem& p, const tc::Plan& plan) {
  tc::with_tile(plan.tile, [&](auto shape) {
    using CtaT = tc::Cta<Problem, decltype(shape)>;
    const int64_t ctas = plan.grid_m * plan.grid_n * plan.splits;
    at::parallel_for(0, ctas, 1, [&](int64_t begin, int64_t end) {
      auto smem = std::make_unique<typename CtaT::Smem>();
      std::vector<typename CtaT::Thread> threads(CtaT::kThreads);
      HostExec ex{CtaT::kThreads};
      for (int64_t i = begin; i < end; ++i) {
        const tc::TileCtx t{i % plan.grid_m, (i / plan.grid_m) % plan.grid_n, i / (plan.grid_m * plan.grid_n)};
        CtaT::run(p, t, *smem, threads.data(), ex);
      }
    });
  });
}

template <class Args>
void emulate(const Args& a, const tc::Plan& plan) {
  tc::with_problem(a, plan, [&](const auto& p) { run_grid(p, plan); });
}

// The tc_ops backend of the emulator: plans for a GPU of `sm_count` multiprocessors
// (tile -1: chosen; 0/1: forced), runs on the host.
struct HostBackend {
  int64_t sm_count;
  int64_t tile;
  tc::Plan plan(const tc::GemmExtent& e, tc::ElemKind elem) const {
    return tc::plan_gemm(e, elem, sm_count, static_cast<int>(tile));
  }
  template <class Args>
  void run(const Args& a, const tc::Plan& p) const {
    emulate(a, p);
  }
};

}  // namespace r2p1d::emulate
