// A chunk: the 16 bytes of one operand that a thread moves from global to shared memory at
// once (8 bf16/fp16 values, or 4 float32 values that become TF32). These helpers pack and
// unpack its elements and convert a loaded global chunk to its shared-memory form.
#pragma once
#include "access.h"
#include "elem.h"

namespace r2p1d::tc {

template <ElemKind K>
struct Chunk {
  using E = Elem<K>;
  using g_t = typename E::gmem_t;
  using s_t = typename E::smem_t;
  static_assert(sizeof(g_t) == sizeof(s_t), "a chunk has as many elements in global as in shared memory");
  static constexpr int kV = 16 / static_cast<int>(sizeof(s_t));  // elements per chunk

  // Element e of a chunk as loaded from global memory.
  R2P1D_HD static g_t get(const Vec16& v, int e) {
    if constexpr (sizeof(g_t) == 2) {
      return static_cast<g_t>((v.w[e >> 1] >> (16 * (e & 1))) & 0xffffu);
    } else {
      return bits_float(v.w[e]);
    }
  }

  // Sets element e of a shared-memory chunk that started as all zeros.
  R2P1D_HD static void set(Vec16& v, int e, s_t x) {
    if constexpr (sizeof(s_t) == 2) {
      v.w[e >> 1] |= static_cast<uint32_t>(x) << (16 * (e & 1));
    } else {
      v.w[e] = x;
    }
  }

  // A loaded chunk in shared-memory form: unchanged for bf16/fp16, rounded to TF32 for float.
  R2P1D_HD static Vec16 to_smem(const Vec16& g) {
    if constexpr (K == ElemKind::kTF32) {
      Vec16 s;
      R2P1D_UNROLL
      for (int e = 0; e < 4; ++e) s.w[e] = tf32_from_float(bits_float(g.w[e]));
      return s;
    } else {
      return g;
    }
  }

  R2P1D_HD static Vec16 zero() { return Vec16{{0u, 0u, 0u, 0u}}; }
};

}  // namespace r2p1d::tc
