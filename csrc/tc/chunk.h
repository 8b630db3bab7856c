// A chunk: the 16 bytes of one operand that a thread moves from global to shared memory at
// once (8 bf16/fp16 values, or 4 float32 values that become TF32). These helpers pack and
// unpack its elements, convert a loaded chunk to its shared-memory form, and hold a chunk
// between its global load and its shared-memory store (Raw).
//
// A chunk is read from global memory in pieces of `width` bytes (16, 8, 4 or 2): the widest
// that the operand's contiguous run (a channel count) and its pointers' alignment allow, so
// that 460 channels of bf16 (920 bytes a pixel) still move 8 bytes per load. The host picks
// the width (tc/problems.h, access_width); with_width turns it into a compile-time constant.
#pragma once
#include <type_traits>

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

  // Sets element e of a chunk that started as all zeros. e may be a run-time value: the
  // words are selected by comparison, so that the chunk stays in registers (an indexed
  // register array would go to local memory).
  R2P1D_HD static void set(Vec16& v, int e, s_t x) {
    constexpr int kPerWord = 4 / static_cast<int>(sizeof(s_t));
    const uint32_t bits = static_cast<uint32_t>(x) << (kPerWord == 2 ? 16 * (e & 1) : 0);
    R2P1D_UNROLL
    for (int i = 0; i < 4; ++i) v.w[i] |= bits & (0u - static_cast<uint32_t>(i == e / kPerWord));
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

// A chunk between its global load and its shared-memory store: the bytes as loaded (zeros
// where nothing was), and which elements lie inside the operand (bit e: element e), which
// the prologues need (a padded element is 0 after BatchNorm+ReLU, not relu(shift)).
struct RawChunk {
  Vec16 data;
  uint32_t valid;
};

// The same with a second tensor read at the same places (y beside grad_y, for the
// statistics' share of the spatial gradient).
struct RawPair {
  Vec16 data, aux;
  uint32_t valid;
};

// The width of the pieces, as a compile-time constant: f(std::integral_constant<int, W>).
// kMinBytes: the element size (a piece never splits an element).
template <int kMinBytes, class F>
R2P1D_HD void with_width(int width, F&& f) {
  if (width == 16) {
    f(std::integral_constant<int, 16>{});
  } else if (width == 8) {
    f(std::integral_constant<int, 8>{});
  } else if (kMinBytes <= 2 && width == 2) {
    f(std::integral_constant<int, kMinBytes <= 2 ? 2 : 4>{});
  } else {
    f(std::integral_constant<int, 4>{});
  }
}

// Bits 0..n-1 set.
R2P1D_HD uint32_t low_bits(int n) { return n >= 32 ? 0xffffffffu : (1u << n) - 1u; }

}  // namespace r2p1d::tc
