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
  kWrongBuffer = 1,        // a register-staged K tile stored into the stage being read
  kRowBound = 2,           // the forward weights' row bound shifted by one
  kDivergentBarrier = 3,   // a barrier that only the first warp reaches
  kVectorLoads = 4,        // the spatial forward's input read in 16-byte pieces whatever its alignment
  kMissingWait = 5,        // the main loop's cp.async.wait_group left out
  kNoSwizzle = 6,          // K-major tiles stored unswizzled: the same results, bank conflicts
};

// The barriers of the CTA schedule, named so that a test switch can skip one.
enum class Barrier : int { kVectors = 0, kPrologue, kKTile, kStaging, kReduction, kSlots, kFinalize };

// The emulator's side (host code only; declared in every pass so that host-only members
// of the CTA code may name it).
enum class MemOp : int { kRead, kWrite };

// What part of the CTA schedule an access belongs to: the outermost Scope of the CTA code,
// by which the emulator's counters (csrc/emulate/counters.h) sort what they count.
enum class Phase : int {
  kLoadA = 0, kLoadB, kStoreA, kStoreB, kFragA, kFragB, kVectors, kEpilogue, kReduce, kCount
};

struct AccessCheck {
  // `bytes` at p are read or written by the current thread; p must be aligned to `bytes`.
  // `line` is the source line of the access (with the enclosing Scopes and the number of
  // earlier accesses from the same line, it names the warp instruction: counters.h).
  // False: the access lies outside every tensor and shared memory (it is reported, and the
  // emulator does not make it: a read gives zeros, a write is dropped).
  virtual bool access(const void* p, int bytes, MemOp op, int line) = 0;
  // Index `index` (and `count` elements after it) into a shared-memory array of `limit`.
  virtual void index(int64_t index, int count, int64_t limit, const char* what) = 0;
  // The CTA thread whose accesses follow (the emulated warp MMA reads each lane's fragments).
  virtual void thread(int tid) = 0;
  virtual bool mutated(Mutation m) const = 0;
  // A Scope begins or ends (Scope).
  virtual void push(int value) = 0;
  virtual void pop() = 0;
  // The same for every lane of a warp (the emulated warp-wide steps: ldmatrix, the MMA).
  virtual void push_warp(int warp, int value) = 0;
  virtual void pop_warp(int warp) = 0;
  // One warp's mma.sync (the emulated MMA step).
  virtual void mma() = 0;
  // cp.async of `bytes` from src (zeros when !valid; src is then not read) into shared dst:
  // the copy lands at the thread's cp_async_wait that completes its group, not before.
  virtual void async_copy(void* dst, const void* src, bool valid, int bytes, int line) = 0;
  virtual void async_commit() = 0;
  // Waits until at most `pending` of the thread's committed groups are in flight.
  virtual void async_wait(int pending) = 0;
  virtual ~AccessCheck() = default;
};

// The emulator's check for the CTAs this host thread runs; null outside the emulator.
inline thread_local AccessCheck* access_check = nullptr;

// The source line of an access, for the emulator's counters: a defaulted trailing argument
// of the access functions in a plain host build (the emulator) and nothing under nvcc.
#if defined(__CUDACC__)
#define R2P1D_LINE_PARAM
#define R2P1D_LINE_ARG 0
#else
#define R2P1D_LINE_PARAM , int line = __builtin_LINE()
#define R2P1D_LINE_ARG line
#endif

inline bool check_access(const void* p, int bytes, MemOp op, int line) {
  return access_check == nullptr || access_check->access(p, bytes, op, line);
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

// Marks the CTA code a thread runs inside it: a Phase at the outermost level, then the
// index of an unrolled loop where threads may skip an access (a chunk out of range, an
// element in the padding), so that the emulator pairs each lane's access with the same
// instruction of the other lanes. Nothing on the GPU.
struct Scope {
#if R2P1D_ON_DEVICE || defined(__CUDACC__)
  R2P1D_HD explicit Scope(int) {}
  R2P1D_HD explicit Scope(Phase) {}
#else
  explicit Scope(int value) : on(access_check != nullptr) {
    if (on) access_check->push(value);
  }
  explicit Scope(Phase p) : Scope(static_cast<int>(p)) {}
  ~Scope() {
    if (on) access_check->pop();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
  bool on;
#endif
};

#if !R2P1D_ON_DEVICE && !defined(__CUDACC__)
// A Scope around a warp-wide step of the emulator, which speaks for each of the warp's 32
// lanes in turn: it holds for all of them (a plain Scope belongs to the current thread).
struct WarpScope {
  WarpScope(int warp, Phase p) : warp(warp), on(access_check != nullptr) {
    if (on) access_check->push_warp(warp, static_cast<int>(p));
  }
  ~WarpScope() {
    if (on) access_check->pop_warp(warp);
  }
  WarpScope(const WarpScope&) = delete;
  WarpScope& operator=(const WarpScope&) = delete;
  int warp;
  bool on;
};
#endif

// ---------------------------------------------------------------------------------------
// Global memory.

// A read-only 16-byte global load (the read-only data path on the GPU).
R2P1D_HD Vec16 load16(const void* p R2P1D_LINE_PARAM) {
  Vec16 v;
#if R2P1D_ON_DEVICE
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  v.w[0] = u.x; v.w[1] = u.y; v.w[2] = u.z; v.w[3] = u.w;
#else
  if (check_access(p, 16, MemOp::kRead, R2P1D_LINE_ARG)) std::memcpy(&v, p, 16);
  else v = Vec16{{0u, 0u, 0u, 0u}};
#endif
  return v;
}

// Piece `part` (W bytes, W = 2, 4, 8 or 16) of a 16-byte register chunk, read-only from p:
// the narrower loads of operands whose rows are not 16-byte aligned.
template <int W>
R2P1D_HD void load_piece(Vec16& v, int part, const void* p R2P1D_LINE_PARAM) {
  static_assert(W == 2 || W == 4 || W == 8 || W == 16, "a piece is 2, 4, 8 or 16 bytes");
#if R2P1D_ON_DEVICE
  if constexpr (W == 16) {
    v = load16(p);
  } else if constexpr (W == 8) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
    v.w[2 * part] = u.x;
    v.w[2 * part + 1] = u.y;
  } else if constexpr (W == 4) {
    v.w[part] = __ldg(reinterpret_cast<const unsigned int*>(p));
  } else {
    const uint32_t h = __ldg(reinterpret_cast<const unsigned short*>(p));
    v.w[part >> 1] = (v.w[part >> 1] & (0xffff0000u >> (16 * (part & 1)))) | (h << (16 * (part & 1)));
  }
#else
  if (check_access(p, W, MemOp::kRead, R2P1D_LINE_ARG)) std::memcpy(reinterpret_cast<char*>(&v) + part * W, p, W);
#endif
}

// A read-only 2-byte load from p (zero-extended): the narrowest piece, for loops that
// assemble a chunk without indexing it (load_piece needs a compile-time part).
R2P1D_HD uint32_t load_half(const void* p R2P1D_LINE_PARAM) {
#if R2P1D_ON_DEVICE
  return __ldg(reinterpret_cast<const unsigned short*>(p));
#else
  uint16_t h = 0;
  if (check_access(p, 2, MemOp::kRead, R2P1D_LINE_ARG)) std::memcpy(&h, p, 2);
  return h;
#endif
}

// Piece `part` (W bytes) of a 16-byte register chunk, stored to global memory at p.
template <int W>
R2P1D_HD void store_piece(void* p, const Vec16& v, int part R2P1D_LINE_PARAM) {
  static_assert(W == 2 || W == 4 || W == 8 || W == 16, "a piece is 2, 4, 8 or 16 bytes");
#if R2P1D_ON_DEVICE
  if constexpr (W == 16) {
    *reinterpret_cast<uint4*>(p) = make_uint4(v.w[0], v.w[1], v.w[2], v.w[3]);
  } else if constexpr (W == 8) {
    *reinterpret_cast<uint2*>(p) = make_uint2(v.w[2 * part], v.w[2 * part + 1]);
  } else if constexpr (W == 4) {
    *reinterpret_cast<unsigned int*>(p) = v.w[part];
  } else {
    *reinterpret_cast<unsigned short*>(p) = static_cast<unsigned short>(v.w[part >> 1] >> (16 * (part & 1)));
  }
#else
  if (check_access(p, W, MemOp::kWrite, R2P1D_LINE_ARG)) std::memcpy(p, reinterpret_cast<const char*>(&v) + part * W, W);
#endif
}

// A read-only scalar global load (a per-channel vector entry).
template <typename T>
R2P1D_HD T ldg(const T* p R2P1D_LINE_PARAM) {
#if R2P1D_ON_DEVICE
  return __ldg(p);
#else
  return check_access(p, sizeof(T), MemOp::kRead, R2P1D_LINE_ARG) ? *p : T{};
#endif
}

// ---------------------------------------------------------------------------------------
// Shared memory (and plain scalar stores anywhere).

// A 16-byte shared-memory store (an operand chunk, a staged output).
R2P1D_HD void store16(void* p, const Vec16& v R2P1D_LINE_PARAM) {
#if R2P1D_ON_DEVICE
  *reinterpret_cast<uint4*>(p) = make_uint4(v.w[0], v.w[1], v.w[2], v.w[3]);
#else
  if (check_access(p, 16, MemOp::kWrite, R2P1D_LINE_ARG)) std::memcpy(p, &v, 16);
#endif
}

// A 16-byte shared-memory load.
R2P1D_HD Vec16 lds16(const void* p R2P1D_LINE_PARAM) {
  Vec16 v;
#if R2P1D_ON_DEVICE
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  v.w[0] = u.x; v.w[1] = u.y; v.w[2] = u.z; v.w[3] = u.w;
#else
  if (check_access(p, 16, MemOp::kRead, R2P1D_LINE_ARG)) std::memcpy(&v, p, 16);
  else v = Vec16{{0u, 0u, 0u, 0u}};
#endif
  return v;
}

// Two floats stored together (8 bytes: an accumulator pair into the epilogue's staging).
R2P1D_HD void store_float2(float* p, float a, float b R2P1D_LINE_PARAM) {
#if R2P1D_ON_DEVICE
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
#else
  if (!check_access(p, 8, MemOp::kWrite, R2P1D_LINE_ARG)) return;
  p[0] = a;
  p[1] = b;
#endif
}

// A plain scalar load (shared memory: TF32 fragments, channel vectors, reduction slots).
template <typename T>
R2P1D_HD T mem_load(const T* p R2P1D_LINE_PARAM) {
#if !R2P1D_ON_DEVICE
  if (!check_access(p, sizeof(T), MemOp::kRead, R2P1D_LINE_ARG)) return T{};
#endif
  return *p;
}

// A plain scalar store (global partials, shared reduction slots and channel vectors).
template <typename T>
R2P1D_HD void mem_store(T* p, T v R2P1D_LINE_PARAM) {
#if !R2P1D_ON_DEVICE
  if (!check_access(p, sizeof(T), MemOp::kWrite, R2P1D_LINE_ARG)) return;
#endif
  *p = v;
}

// ---------------------------------------------------------------------------------------
// Asynchronous copies from global to shared memory (cp.async, SM80+): 16 bytes, or 16
// zeros where !valid (src-size 0: nothing is read). The copy is in flight until the thread
// waits for its group; the emulator lands it only then, and reports any access to its
// destination before (checker.h).
R2P1D_HD void cp_async16(void* dst, const void* src, bool valid R2P1D_LINE_PARAM) {
#if R2P1D_ON_DEVICE
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0));
#else
  if (access_check) {
    access_check->async_copy(dst, src, valid, 16, R2P1D_LINE_ARG);  // lands at the wait
  } else if (valid) {
    std::memcpy(dst, src, 16);
  } else {
    std::memset(dst, 0, 16);
  }
#endif
}

// Closes the thread's current group of cp.async copies.
R2P1D_HD void cp_async_commit() {
#if R2P1D_ON_DEVICE
  asm volatile("cp.async.commit_group;\n" ::);
#else
  if (access_check) access_check->async_commit();
#endif
}

// Waits until at most N of the thread's groups are still in flight.
template <int N>
R2P1D_HD void cp_async_wait() {
#if R2P1D_ON_DEVICE
  if constexpr (N == 0) asm volatile("cp.async.wait_all;\n" ::);
  else asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#else
  if (access_check) access_check->async_wait(N);
#endif
}

}  // namespace r2p1d::tc
