// The CPU emulator of the tensor-core GEMMs: every CTA of a launch run on the host with the
// very code the GPU runs (csrc/tc/igemm.h: loaders, shared-memory tiles, cp.async, ldmatrix
// addresses, epilogues, reductions; csrc/tc/finalize.h), threads stepped one after another
// between barriers and each warp's ldmatrix and mma.sync emulated from its lanes' addresses
// and fragments. Slow, exact to the rounding of the operands, and what CI runs in place of
// a GPU. While it runs, the checks of checker.h look at every memory access, and the threads
// may take their steps in another order.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "emulate/checker.h"
#include "tc/finalize.h"
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
    if (checker) checker->step_begin();
    for (int t : order) {
      if (checker) checker->thread(t);
      f(t, threads[t]);
    }
    if (checker) checker->step_end();
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
  void mma(const char* stage, int kk_end, typename CtaT::Thread* threads) {
    if (checker) checker->step_begin();
    for (int t : order)
      if (t % 32 == 0) CtaT::mma_tile_emulated(stage, kk_end, t / 32, threads);
    if (checker) checker->step_end();
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

// The plan of a GEMM launch and its extents, as JSON (for the counters' report).
template <class CtaT, class Problem>
std::string plan_json(const tc::Plan& plan, const Problem& p) {
  const char* names[] = {"bf16", "fp16", "tf32"};
  const char* modes[] = {"direct", "partial", "finalize"};
  std::ostringstream s;
  s << "{\"elem\": \"" << names[static_cast<int>(Problem::kElem)] << "\", \"tile\": " << plan.tile
    << ", \"bm\": " << CtaT::BM << ", \"bn\": " << CtaT::BN << ", \"bk\": " << CtaT::BK << ", \"k_step\": "
    << CtaT::kKStep << ", \"threads\": " << CtaT::kThreads << ", \"stages\": " << CtaT::kStages
    << ", \"smem_bytes\": " << CtaT::smem_bytes(p) << ", \"grid_m\": " << plan.grid_m << ", \"grid_n\": "
    << plan.grid_n << ", \"splits\": " << plan.splits << ", \"split_depth\": " << plan.split_depth
    << ", \"mode\": \"" << modes[static_cast<int>(p.mode)] << "\", \"rows\": " << p.rows << ", \"cols\": "
    << p.cols << ", \"depth\": " << p.depth << ", \"padded\": " << plan.padded
    << ", \"column_reduction\": " << CtaT::Red::kFloats << ", \"a_width\": " << p.a.width
    << ", \"a_async\": " << (p.a.async ? "true" : "false") << ", \"b_width\": " << p.b.width
    << ", \"b_async\": " << (p.b.async ? "true" : "false") << ", \"out_width\": " << p.epi.width << "}";
  return s.str();
}

// The CTAs a grid of `ctas` runs: all, or `sample` spread evenly (first and last included).
inline std::vector<int64_t> ctas_to_run(int64_t ctas, int64_t sample) {
  std::vector<int64_t> out;
  if (sample <= 0 || sample >= ctas) {
    out.resize(ctas);
    std::iota(out.begin(), out.end(), int64_t(0));
  } else {
    for (int64_t k = 0; k < sample; ++k) out.push_back(sample == 1 ? 0 : k * (ctas - 1) / (sample - 1));
  }
  return out;
}

// Shared memory of a CTA on the host: 128-byte aligned, like the GPU's.
struct HostSmem {
  explicit HostSmem(size_t bytes) : size((bytes + 127) / 128 * 128), data(static_cast<char*>(std::aligned_alloc(128, size))) {}
  ~HostSmem() { std::free(data); }
  HostSmem(const HostSmem&) = delete;
  HostSmem& operator=(const HostSmem&) = delete;
  size_t size;
  char* data;
};

// Runs the CTAs of a launch of CtaT (or the settings' sample of them), spread over the
// host's threads: run_cta(where, smem, threads, exec) runs one, `where` = ctx_of(its index).
// `json`: the launch's description for the counters (empty: not counted).
template <class CtaT, class CtxOf, class RunCta>
void run_ctas(int64_t ctas, size_t smem_bytes, const Settings& settings, const std::vector<Range>& ranges,
              Findings& findings, const char* kernel, const std::string& json, CtxOf&& ctx_of, RunCta&& run_cta) {
  using Thread = typename CtaT::Thread;
  static_assert(std::is_trivially_copyable_v<Thread>, "the poison fills the CTA's state byte by byte");
  const std::vector<int64_t> run = ctas_to_run(ctas, settings.sample);
  std::mutex counted_mutex;
  Counts counted;
  at::parallel_for(0, static_cast<int64_t>(run.size()), 1, [&](int64_t begin, int64_t end) {
    HostSmem smem(smem_bytes);
    std::vector<Thread> threads(CtaT::kThreads);
    std::unique_ptr<CtaChecker> checker;
    if (settings.checks) checker = std::make_unique<CtaChecker>(settings, ranges, findings, kernel, CtaT::kThreads);
    HostExec ex(CtaT::kThreads, settings, checker.get());
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = run[r];
      const tc::TileCtx where = ctx_of(i);
      if (checker) {
        std::memset(smem.data, kPoison, smem.size);
        std::memset(static_cast<void*>(threads.data()), kPoison, sizeof(Thread) * threads.size());
        checker->begin_cta(where, smem.data, smem_bytes);
      } else {
        std::memset(smem.data, 0, smem.size);
      }
      ex.begin_cta(i);
      run_cta(where, smem.data, threads.data(), ex);
      if (checker) checker->end_cta();
    }
    if (checker && checker->counters()) {
      std::lock_guard<std::mutex> lock(counted_mutex);
      counted.add(checker->counters()->counts());
    }
  });
  if (settings.counters && !json.empty()) CountRegistry::get().add(kernel, json, ctas, counted);
  findings.raise_if_any(kernel);
}

// Runs every pass of a GEMM's plan (tc::for_each_pass) with the plan's tile shape.
template <class Problem>
void run_gemm(const Problem& problem, const tc::Plan& plan, float* workspace, const Settings& settings,
              const std::vector<Range>& ranges, const char* kernel) {
  constexpr tc::GemmKind kind = tc::kind_of_problem<Problem>();
  tc::with_tile<kind>(plan.tile, [&](auto shape) {
    using CtaT = tc::Cta<Problem, decltype(shape)>;
    tc::for_each_pass(problem, workspace, [&](const Problem& p, int64_t grid_z) {
      Findings findings;
      const std::string name = p.mode == tc::Mode::kFinalize ? std::string(kernel) + ":finalize" : kernel;
      run_ctas<CtaT>(
          plan.grid_m * plan.grid_n * grid_z, CtaT::smem_bytes(p), settings, ranges, findings, name.c_str(),
          plan_json<CtaT>(plan, p),
          [&](int64_t i) {
            return tc::TileCtx{i % plan.grid_m, (i / plan.grid_m) % plan.grid_n, i / (plan.grid_m * plan.grid_n)};
          },
          [&](const tc::TileCtx& t, char* smem, typename CtaT::Thread* threads, HostExec& ex) {
            CtaT::run(p, t, smem, threads, ex);
          });
    });
  });
}

// Runs a per-channel finalize step (tc/finalize.h): one CTA per channel.
template <class CtaT, class Args>
void run_finalize(const Args& a, const Settings& settings, const std::vector<Range>& ranges, const char* kernel) {
  Findings findings;
  run_ctas<CtaT>(
      a.channels, sizeof(typename CtaT::Smem), settings, ranges, findings, kernel, std::string(),
      [](int64_t c) { return tc::TileCtx{c, 0, 0}; },
      [&](const tc::TileCtx& t, char* smem, typename CtaT::Thread* threads, HostExec& ex) {
        CtaT::run(a, t.tile_m, *reinterpret_cast<typename CtaT::Smem*>(smem), threads, ex);
      });
}

inline std::vector<Range> ranges_of(tc_ops::Tensors touched) {
  std::vector<Range> ranges;
  for (const auto& u : touched) {
    if (!u.tensor.defined()) continue;
    const auto begin = reinterpret_cast<uintptr_t>(u.tensor.data_ptr());
    ranges.push_back({u.name, begin, begin + static_cast<uintptr_t>(u.tensor.nbytes()), u.written});
  }
  return ranges;
}

// The tc_ops backend of the emulator: plans for a GPU of `sm_count` multiprocessors
// (tile -1: chosen; else an index into the GEMM kind's tile list), runs on the host with
// the settings of the environment. The GEMMs' instantiations are spread over the
// run_*.cpp files (each instantiates `run` for its args), so that they compile in parallel.
struct HostBackend {
  int64_t sm_count;
  int64_t tile;
  Settings settings = Settings::from_env();

  // A forced tile that the GEMM's list lacks (index 5 of a pixel-rows GEMM) is chosen instead.
  tc::Plan plan(const tc::GemmExtent& e, tc::ElemKind elem) const {
    return tc::plan_gemm(e, elem, sm_count, tile < tc::tile_count(e.kind) ? static_cast<int>(tile) : -1);
  }

  template <class Args>
  void run(const Args& a, const tc::Plan& plan, tc_ops::Tensors touched) const;

  void run(const tc::MomentsArgs& a, tc_ops::Tensors touched) const {
    run_finalize<tc::MomentsFinalize>(a, settings, ranges_of(touched), "moments");
  }
  void run(const tc::SumsArgs& a, tc_ops::Tensors touched) const {
    run_finalize<tc::SumsFinalize>(a, settings, ranges_of(touched), "bn_backward_sums");
  }
};

// What the run_*.cpp files instantiate, one args type each.
template <class Args>
void HostBackend::run(const Args& a, const tc::Plan& plan, tc_ops::Tensors touched) const {
  const std::vector<Range> ranges = ranges_of(touched);
  tc::with_problem(a, plan, [&](const auto& p) { run_gemm(p, plan, a.workspace, settings, ranges, kernel_name(a)); });
}

extern template void HostBackend::run(const tc::SpatialFpropArgs&, const tc::Plan&, tc_ops::Tensors) const;
extern template void HostBackend::run(const tc::SpatialDgradArgs&, const tc::Plan&, tc_ops::Tensors) const;
extern template void HostBackend::run(const tc::SpatialWgradArgs&, const tc::Plan&, tc_ops::Tensors) const;
extern template void HostBackend::run(const tc::TemporalFpropArgs&, const tc::Plan&, tc_ops::Tensors) const;
extern template void HostBackend::run(const tc::TemporalDgradArgs&, const tc::Plan&, tc_ops::Tensors) const;
extern template void HostBackend::run(const tc::TemporalWgradArgs&, const tc::Plan&, tc_ops::Tensors) const;

}  // namespace r2p1d::emulate
