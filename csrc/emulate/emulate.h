// The CPU emulator of the tensor-core GEMMs: every CTA of a launch run on the host with the
// very code the GPU runs (csrc/tc/igemm.h: loaders, shared-memory tiles, fragment loads,
// epilogues, reductions), threads stepped one after another between barriers and each
// warp's mma.sync emulated from its lanes' fragments. Slow, exact to the rounding of the
// operands, and what CI runs in place of a GPU. While it runs, the checks of checker.h look
// at every memory access, and the threads may take their steps in another order.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "emulate/checker.h"
#include "tc/problems.h"
#include "tc_ops.h"

namespace r2p1d::emulate {

// The executor of igemm.h's schedule on the host: a step runs for every thread, in the
// settings' order; a barrier starts a new interval of the race check (or, named by the
// skip_barrier switch, is left out). A barrier inside a step (on a GPU: one that only some
// threads reach, or a schedule the emulator cannot run step by step) is counted per thread
// and reported.
struct HostExec {
  int count;
  const Settings& settings;
  CtaChecker* checker;  // null: checks off
  std::vector<int> order;
  std::vector<int> arrivals;
  bool in_step = false;

  HostExec(int threads, const Settings& s, CtaChecker* c) : count(threads), settings(s), checker(c) {
    order.resize(threads);
    arrivals.assign(threads, 0);
  }

  // The order of this CTA's threads (and of its warps in the MMA step).
  void begin_cta(int64_t cta) {
    std::iota(order.begin(), order.end(), 0);
    if (settings.order == Order::kReverse) std::reverse(order.begin(), order.end());
    if (settings.order == Order::kShuffle) std::shuffle(order.begin(), order.end(), std::mt19937(cta));
  }

  template <class Thread, class F>
  void each(Thread* threads, F&& f) {
    in_step = true;
    for (int t : order) {
      if (checker) checker->thread(t);
      f(t, threads[t]);
    }
    in_step = false;
    check_arrivals();
  }

  void sync(tc::Barrier b) {
    if (in_step) {
      ++arrivals[checker ? checker->current_thread() : 0];
      return;
    }
    if (checker && settings.skip_barrier != static_cast<int>(b)) checker->barrier();
  }

  template <class CtaT>
  void mma(const typename CtaT::Smem& s, int buf, typename CtaT::Thread* threads) {
    for (int t : order)
      if (t % 32 == 0) CtaT::mma_tile_emulated(s, buf, t / 32, threads);
  }

 private:
  void check_arrivals() {
    const auto [lo, hi] = std::minmax_element(arrivals.begin(), arrivals.end());
    if (*hi == 0) return;
    if (checker) {
      const auto reached = std::count_if(arrivals.begin(), arrivals.end(), [&](int a) { return a == *hi; });
      checker->report(*lo != *hi
                          ? "a barrier reached by " + std::to_string(reached) + " of the CTA's " +
                                std::to_string(count) + " threads (a barrier inside a branch)"
                          : std::string("a barrier inside a per-thread step (the emulator runs a step thread "
                                        "by thread: split the step at the barrier)"));
    }
    std::fill(arrivals.begin(), arrivals.end(), 0);
  }
};

inline const char* kernel_name(const tc::SpatialFpropArgs&) { return "spatial_fprop"; }
inline const char* kernel_name(const tc::SpatialDgradArgs&) { return "spatial_dgrad"; }
inline const char* kernel_name(const tc::SpatialWgradArgs&) { return "spatial_wgrad"; }
inline const char* kernel_name(const tc::TemporalFpropArgs&) { return "temporal_fprop"; }
inline const char* kernel_name(const tc::TemporalDgradArgs&) { return "temporal_dgrad"; }
inline const char* kernel_name(const tc::TemporalWgradArgs&) { return "temporal_wgrad"; }

// All ones: a NaN in every float, the GPU's garbage made visible.
constexpr unsigned char kPoison = 0xff;

// Runs the whole grid of a launch, CTAs spread over the host's threads.
template <class Problem>
void run_grid(const Problem& p, const tc::Plan& plan, const Settings& settings, const std::vector<Range>& ranges,
              Findings& findings, const char* kernel) {
  tc::with_tile(plan.tile, [&](auto shape) {
    using CtaT = tc::Cta<Problem, decltype(shape)>;
    using Thread = typename CtaT::Thread;
    using Smem = typename CtaT::Smem;
    static_assert(std::is_trivially_copyable_v<Thread> && std::is_trivially_copyable_v<Smem>,
                  "the poison fills the CTA's state byte by byte");
    const int64_t ctas = plan.grid_m * plan.grid_n * plan.splits;
    at::parallel_for(0, ctas, 1, [&](int64_t begin, int64_t end) {
      auto smem = std::make_unique<Smem>();
      std::vector<Thread> threads(CtaT::kThreads);
      std::unique_ptr<CtaChecker> checker;
      if (settings.checks) checker = std::make_unique<CtaChecker>(settings, ranges, findings, kernel);
      HostExec ex(CtaT::kThreads, settings, checker.get());
      for (int64_t i = begin; i < end; ++i) {
        const tc::TileCtx t{i % plan.grid_m, (i / plan.grid_m) % plan.grid_n, i / (plan.grid_m * plan.grid_n)};
        if (checker) {
          std::memset(static_cast<void*>(smem.get()), kPoison, sizeof(Smem));
          std::memset(static_cast<void*>(threads.data()), kPoison, sizeof(Thread) * threads.size());
          checker->begin_cta(t, smem.get(), sizeof(Smem));
        }
        ex.begin_cta(i);
        CtaT::run(p, t, *smem, threads.data(), ex);
      }
    });
  });
  findings.raise_if_any(kernel);
}

// The tc_ops backend of the emulator: plans for a GPU of `sm_count` multiprocessors
// (tile -1: chosen; 0/1: forced), runs on the host with the settings of the environment.
struct HostBackend {
  int64_t sm_count;
  int64_t tile;
  Settings settings = Settings::from_env();

  tc::Plan plan(const tc::GemmExtent& e, tc::ElemKind elem) const {
    return tc::plan_gemm(e, elem, sm_count, static_cast<int>(tile));
  }

  template <class Args>
  void run(const Args& a, const tc::Plan& plan, tc_ops::Tensors touched) const {
    std::vector<Range> ranges;
    for (const auto& u : touched) {
      if (!u.tensor.defined()) continue;
      const auto begin = reinterpret_cast<uintptr_t>(u.tensor.data_ptr());
      ranges.push_back({u.name, begin, begin + static_cast<uintptr_t>(u.tensor.nbytes()), u.written});
    }
    Findings findings;
    tc::with_problem(a, plan, [&](const auto& p) { run_grid(p, plan, settings, ranges, findings, kernel_name(a)); });
  }
};

}  // namespace r2p1d::emulate
