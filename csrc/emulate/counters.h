// What Nsight Compute's memory counters would say about the tensor-core kernels, computed on
// the CPU from the addresses the CTA code forms in the emulator (R2P1D_EMULATOR_COUNTERS=on,
// bench/tc_report.py). The emulator runs a step of the CTA schedule thread by thread; the
// accesses one warp instruction makes are those of the warp's 32 lanes with the same key:
// the source line of the access (access.h), the Scopes around it, and how many accesses
// from that line the lane made before in the step. Per warp instruction:
//   - shared memory: the wavefronts the request takes. The hardware serves a request in
//     phases (all 32 lanes for accesses of up to 4 bytes, half warps for 8 bytes, quarter
//     warps for 16 bytes, one 8x8 matrix at a time for ldmatrix); a phase takes as many
//     wavefronts as the most distinct 32-bit words any one of the 32 banks holds (the same
//     word read by several lanes is one). Ideal: one wavefront per 128 bytes a phase moves.
//   - global memory: the 32-byte sectors the lanes' bytes fall in (what L1 asks of L2),
//     against the bytes requested (sector efficiency), and the access widths used.
// And per CTA the warp MMAs. A model of the memory pipeline, exact for what it models; the
// latency, caching and concurrency of a GPU it does not model.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "tc/access.h"

namespace r2p1d::emulate {

// The counts of one class of warp instructions (a phase, a memory space, read or write).
struct Tally {
  int64_t requests = 0;
  int64_t wavefronts = 0, ideal_wavefronts = 0;  // shared memory
  int64_t sectors = 0, bytes = 0;                // global memory: sectors moved, distinct bytes requested
  int64_t width[5] = {0, 0, 0, 0, 0};            // requests by access width: 1, 2, 4, 8, 16 bytes
  void add(const Tally& o);
};

constexpr int kPhases = static_cast<int>(tc::Phase::kCount) + 1;  // + accesses outside every Scope
enum Space : int { kShared = 0, kGlobal = 1 };

struct Counts {
  Tally tally[kPhases][2][2];  // [phase][space][MemOp]
  int64_t mmas = 0, ctas = 0;
  void add(const Counts& o);
};

// The counting of the CTAs one host thread runs (owned by its CtaChecker).
class Counters {
 public:
  explicit Counters(int threads);
  void begin_cta(uintptr_t smem, size_t bytes);
  void thread(int tid) { tid_ = tid; }
  void step_begin();
  void step_end();
  void push(int value) { push_lane(lanes_[tid_], value); }
  void pop() { pop_lane(lanes_[tid_]); }
  void push_warp(int warp, int value);
  void pop_warp(int warp);
  void access(uintptr_t a, int bytes, tc::MemOp op, int line);
  void mma() { ++counts_.mmas; }
  const Counts& counts() const { return counts_; }

 private:
  struct Record {
    int warp, lane;
    uint64_t key;
    uintptr_t addr;
    int bytes;
    int phase, space, op;
  };
  struct Lane {
    std::vector<int> scopes;
    std::vector<uint64_t> path;  // the hash of the scopes so far, one per level
    std::unordered_map<uint64_t, int> seen;
  };
  void instruction(const Record* first, const Record* last);
  static void push_lane(Lane& l, int value);
  static void pop_lane(Lane& l);

  std::vector<Lane> lanes_;
  std::vector<Record> records_;
  uintptr_t smem_ = 0;
  size_t smem_bytes_ = 0;
  int tid_ = 0;
  Counts counts_;
};

// The counts of every counted launch since the last `take`, as JSON (one object per launch).
class CountRegistry {
 public:
  static CountRegistry& get();
  void add(const std::string& kernel, const std::string& plan, int64_t ctas_total, const Counts& c);
  std::string take();

 private:
  std::mutex mutex_;
  std::vector<std::string> launches_;
};

}  // namespace r2p1d::emulate
