// What the emulator checks while it runs a grid, the CPU's stand-in for compute-sanitizer
// (csrc/tc/access.h routes every memory access of the CTA code here):
//   - bounds: every global address against the tensors the GEMM was given (tc_ops.h's
//     Touched lists), writes only into the written ones; every shared-memory index against
//     its array;
//   - alignment: each access aligned to its size (16 bytes for the chunk loads and stores,
//     4 for the 32-bit fragment loads);
//   - races (like racecheck): per byte of shared memory, the last writer thread and the
//     readers since the last barrier; a write and a read, or two writes, by different threads
//     between two barriers are reported;
//   - barriers: a barrier reached inside a per-thread step (on a GPU: by some threads only);
//   - poison: shared memory and every thread's state start each CTA as all-ones bytes (NaN
//     for floats) instead of zeros, as a GPU gives garbage (run_ctas does it);
//   - cp.async: a copy lands when its thread waits for its group (cp.async.wait_group), not
//     before; any access to its destination in between, by any thread, is reported, and so
//     is a copy still in flight when the CTA ends.
// Settings (read at every op call, for the tests):
//   R2P1D_EMULATOR_CHECKS   on (default) | off: no checks and no poison, for speed;
//   R2P1D_EMULATOR_ORDER    forward (default) | reverse | shuffle: the order in which the
//                           threads of a CTA (and the warps' MMAs) take each step;
//   R2P1D_EMULATOR_MUTATION wrong_buffer | row_bound | divergent_barrier | vector_loads |
//                           missing_wait | no_swizzle | skip_barrier:<name of a tc::Barrier>: a
//                           deliberate defect of the CTA code (tc::Mutation) or a skipped
//                           barrier, which the checks must report (tests/test_tc_checks.py),
//                           or, no_swizzle, the counters (tests/test_tc_report.py);
//   R2P1D_EMULATOR_COUNTERS off (default) | on: count what counters.h counts, for
//                           bench/tc_report.py (the checks must be on);
//   R2P1D_EMULATOR_SAMPLE   0 (default: every CTA) | n: run only n CTAs of each grid, spread
//                           evenly over it, first and last included (for the counters: the
//                           other CTAs' outputs are left unwritten).
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "emulate/counters.h"
#include "tc/access.h"
#include "tc/epilogues.h"

namespace r2p1d::emulate {

enum class Order { kForward, kReverse, kShuffle };

struct Settings {
  bool checks = true;
  Order order = Order::kForward;
  tc::Mutation mutation = tc::Mutation::kNone;
  int skip_barrier = -1;  // a tc::Barrier never passed, or -1
  bool counters = false;
  int64_t sample = 0;  // CTAs run per grid; 0: all
  static Settings from_env();
};

// A tensor the grid may touch: [begin, end) in bytes.
struct Range {
  const char* name;
  uintptr_t begin, end;
  bool writable;
};

// The reports of one grid, from every host thread that runs its CTAs.
class Findings {
 public:
  void add(std::string report);
  // Raises a RuntimeError naming the kernel, the first reports and their count.
  void raise_if_any(const char* kernel) const;

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> first_;
  int64_t count_ = 0;
};

// The checks of the CTAs one host thread runs, one after another.
class CtaChecker final : public tc::AccessCheck {
 public:
  CtaChecker(const Settings& settings, const std::vector<Range>& ranges, Findings& findings, const char* kernel,
             int threads);
  ~CtaChecker() override;

  void begin_cta(const tc::TileCtx& t, void* smem, size_t bytes);
  // A barrier passed by every thread: a new interval for the race check.
  void barrier() { ++epoch_; }
  // A step of the schedule (every thread's, or every warp's MMAs) begins or ends.
  void step_begin() {
    if (counters_) counters_->step_begin();
  }
  void step_end() {
    if (counters_) counters_->step_end();
  }
  void report(const std::string& what);
  const Counters* counters() const { return counters_.get(); }

  bool access(const void* p, int bytes, tc::MemOp op, int line) override;
  void async_copy(void* dst, const void* src, bool valid, int bytes, int line) override;
  void async_commit() override;
  void async_wait(int pending) override;
  // Reports copies still in flight (the end of a CTA).
  void end_cta();
  void index(int64_t index, int count, int64_t limit, const char* what) override;
  void thread(int tid) override {
    thread_ = tid;
    if (counters_) counters_->thread(tid);
  }
  bool mutated(tc::Mutation m) const override { return settings_.mutation == m; }
  void push(int value) override {
    if (counters_) counters_->push(value);
  }
  void pop() override {
    if (counters_) counters_->pop();
  }
  void push_warp(int warp, int value) override {
    if (counters_) counters_->push_warp(warp, value);
  }
  void pop_warp(int warp) override {
    if (counters_) counters_->pop_warp(warp);
  }
  void mma() override {
    if (counters_) counters_->mma();
  }
  int current_thread() const { return thread_; }

 private:
  void shared(size_t offset, int bytes, tc::MemOp op);
  bool global(uintptr_t a, int bytes, tc::MemOp op);
  bool aligned(uintptr_t a, int bytes, tc::MemOp op);
  std::string where() const;

  struct Copy {
    size_t offset;  // in shared memory
    const void* src;
    bool valid;
    int bytes;
  };
  void land(int thread, const Copy& c);

  const Settings& settings_;
  const std::vector<Range>& ranges_;
  Findings& findings_;
  const char* kernel_;
  tc::AccessCheck* previous_;
  tc::TileCtx cta_{};
  uintptr_t smem_ = 0;
  size_t smem_bytes_ = 0;
  int thread_ = 0;
  int32_t epoch_ = 0;
  // Per byte of shared memory: the last writer and its interval; the first reader of the
  // current interval and whether another thread read it too.
  std::vector<int16_t> writer_, reader_;
  std::vector<int32_t> write_epoch_, read_epoch_;
  std::vector<uint8_t> readers_;
  // cp.async: per byte, 1 + the thread whose copy to it is in flight (0: none); per thread,
  // its open group and its committed groups, oldest first.
  std::vector<int16_t> pending_;
  std::vector<std::vector<Copy>> open_;
  std::vector<std::deque<std::vector<Copy>>> committed_;
  std::unique_ptr<Counters> counters_;
};

}  // namespace r2p1d::emulate
