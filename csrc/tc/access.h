// Every memory access of the tensor-core CTA code goes through the functions here. On the
// GPU each is the plain load or store. In a host build (the CPU emulator, csrc/emulate/)
// each first tells the calling thread's AccessCheck, when the emulator has installed one,
// what it touches, so that the emulator can find on the CPU what compute-sanitizer finds on
// a GPU: addresses outside every tensor, misaligned vector accesses, shared-memory races
// between the CTA's threads, indices past a shared-memory tile (csrc/emulate/checker.h).
// The same hook carries the emulator's test switches (mutations of the CTA code that the
// checks must report); on the GPU they are constants and compile away.
#pragma once
#include "portable.h"

namespace r2p1d::tc {

// The test switches (R2P1D_EMULATOR_MUTATION): each breaks the CTA code in one known way.
enum class Mutation : int {
  kNone = 0,
  kWrongBuffer = 1,        // the next K tile stored into the buffer being read
  kRowBound = 2,           // the forward weights' row bound shifted by one
  kDivergentBarrier = 3,   // a barrier that only the first warp reaches
  kVectorLoads = 4,        // the spatial forward's input read in 16-byte chunks whatever its alignment
};

// The barriers of the CTA schedule, named so that a test switch can skip one.
enum class Barrier : int { kPrologue = 0, kKTile = 1, kReduction = 2 };

// The emulator's side (host code only; declared in every pass so that host-only members
// of the CTA code may name it).
enum class MemOp : int { kRead, kWrite };

struct AccessCheck {
  // `bytes` at p are read or written by the current thread; p must be aligned to `bytes`.
  virtual void access(const void* p, int bytes, MemOp op) = 0;
  // Index `index` (and `count` elements after it) into a shared-memory array of `limit`.
  virtual void index(int64_t index, int count, int64_t limit, const char* what) = 0;
  // The CTA thread whose accesses follow (the emulated warp MMA reads each lane's fragments).
  virtual void thread(int tid) = 0;
  virtual bool mutated(Mutation m) const = 0;
  virtual ~AccessCheck() = default;
};

// The emulator's check for the CTAs this host thread runs; null outside the emulator.
inline thread_local AccessCheck* access_check = nullptr;

inline void check_access(const void* p, int bytes, MemOp op) {
  if (access_check) access_check->access(p, bytes, op);
}

// Whether the emulator runs with test switch m (never on the GPU).
R2P1D_HD bool mutated(Mutation m) {
#if R2P1D_ON_DEVICE
  return false;
#else
  return access_check != nullptr && access_check->mutated(m);
#endif
}

// An index into a shared-memory array of `limit` elements (checked in the emulator).
R2P1D_HD void check_index(int64_t index, int count, int64_t limit, const char* what) {
#if !R2P1D_ON_DEVICE
  if (access_check) access_check->index(index, count, limit, what);
#endif
}

// A read-only 16-byte global load (the read-only data path on the GPU).
R2P1D_HD Vec16 load16(const void* p) {
  Vec16 v;
#if R2P1D_ON_DEVICE
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  v.w[0] = u.x; v.w[1] = u.y; v.w[2] = u.z; v.w[3] = u.w;
#else
  check_access(p, 16, MemOp::kRead);
  std::memcpy(&v, p, 16);
#endif
  return v;
}

// A 16-byte shared-memory store (an operand chunk).
R2P1D_HD void store16(void* p, const Vec16& v) {
#if R2P1D_ON_DEVICE
  *reinterpret_cast<uint4*>(p) = make_uint4(v.w[0], v.w[1], v.w[2], v.w[3]);
#else
  check_access(p, 16, MemOp::kWrite);
  std::memcpy(p, &v, 16);
#endif
}

// A read-only scalar global load (an element, or a per-channel vector entry).
template <typename T>
R2P1D_HD T ldg(const T* p) {
#if R2P1D_ON_DEVICE
  return __ldg(p);
#else
  check_access(p, sizeof(T), MemOp::kRead);
  return *p;
#endif
}

// A plain scalar load (shared memory: fragments, reduction slots).
template <typename T>
R2P1D_HD T mem_load(const T* p) {
#if !R2P1D_ON_DEVICE
  check_access(p, sizeof(T), MemOp::kRead);
#endif
  return *p;
}

// A plain scalar store (global outputs and partials, shared reduction slots).
template <typename T>
R2P1D_HD void mem_store(T* p, T v) {
#if !R2P1D_ON_DEVICE
  check_access(p, sizeof(T), MemOp::kWrite);
#endif
  *p = v;
}

}  // namespace r2p1d::tc
