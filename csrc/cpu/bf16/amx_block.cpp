// The AMX micro-kernel (microkernels.h), written once over a tile interface: the real
// tiles (tileloadd / tdpbf16ps / tilestored, compiled for amx-tile and amx-bf16 from
// function attributes) and a scalar model of them, with which the tests run this exact
// code (packing, blocking, tails) on CPUs without AMX.
#include <immintrin.h>

#include <cstring>

#include "microkernels.h"

namespace r2p1d::cpu::bf16 {
namespace {

constexpr int kRows = 16, kRowBytes = 64;

// Tiles 0-3: the 2 x 2 float blocks of C; 4, 5: the two A row blocks; 6, 7: the two B
// column blocks. Every tile is 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The real tiles (GCC's intrinsics are asm statements: no target attribute needed here).
// The tile number is a literal in the instruction, hence the switches
// (resolved at compile time once inlined). The asm statements of GCC's intrinsics do not
// tell the compiler that memory is read or written: the barriers around them do.
#define R2P1D_TILE_CASES(OP, ...) \
  switch (t) {                     \
    case 0: OP(0, __VA_ARGS__); break; \
    case 1: OP(1, __VA_ARGS__); break; \
    case 2: OP(2, __VA_ARGS__); break; \
    case 3: OP(3, __VA_ARGS__); break; \
    case 4: OP(4, __VA_ARGS__); break; \
    case 5: OP(5, __VA_ARGS__); break; \
    case 6: OP(6, __VA_ARGS__); break; \
    default: OP(7, __VA_ARGS__); break; \
  }
#define R2P1D_LOAD(T, P, S) _tile_loadd(T, P, S)
#define R2P1D_STORE(T, P, S) _tile_stored(T, P, S)
#define R2P1D_ZERO(T, unused) _tile_zero(T)

struct HardwareTiles {
  __attribute__((always_inline)) inline void load(int t, const void* p, long stride) {
    __asm__ volatile("" ::: "memory");
    R2P1D_TILE_CASES(R2P1D_LOAD, p, stride)
  }
  __attribute__((always_inline)) inline void store(int t, void* p, long stride) {
    R2P1D_TILE_CASES(R2P1D_STORE, p, stride)
    __asm__ volatile("" ::: "memory");
  }
  __attribute__((always_inline)) inline void zero(int t) {
    R2P1D_TILE_CASES(R2P1D_ZERO, 0)
  }
  // C tile c += A tile 4 + c/2 (16 x 32 bf16) . B tile 6 + c%2 (16 pair-rows x 16 columns).
  __attribute__((always_inline)) inline void dot(int c) {
    switch (c) {
      case 0: _tile_dpbf16ps(0, 4, 6); break;
      case 1: _tile_dpbf16ps(1, 4, 7); break;
      case 2: _tile_dpbf16ps(2, 5, 6); break;
      default: _tile_dpbf16ps(3, 5, 7); break;
    }
  }
};
#undef R2P1D_TILE_CASES
#undef R2P1D_LOAD
#undef R2P1D_STORE
#undef R2P1D_ZERO

inline float bf16_to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// The tiles as the Intel SDM defines them: tileloadd reads 16 rows of 64 bytes at
// `stride`; tdpbf16ps adds, for each (m, n), A[m][2p] B[p][2n] + A[m][2p+1] B[p][2n+1]
// over the 16 pair-rows p, in float32.
struct EmulatedTiles {
  alignas(64) uint8_t tile[8][kRows * kRowBytes];
  void load(int t, const void* p, long stride) {
    for (int r = 0; r < kRows; ++r)
      std::memcpy(tile[t] + r * kRowBytes, static_cast<const uint8_t*>(p) + r * stride, kRowBytes);
  }
  void store(int t, void* p, long stride) {
    for (int r = 0; r < kRows; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, tile[t] + r * kRowBytes, kRowBytes);
  }
  void zero(int t) { std::memset(tile[t], 0, sizeof(tile[t])); }
  void dot(int c) {
    const int a = 4 + c / 2, b = 6 + c % 2;
    float* C = reinterpret_cast<float*>(tile[c]);
    const uint16_t* A = reinterpret_cast<const uint16_t*>(tile[a]);
    const uint16_t* B = reinterpret_cast<const uint16_t*>(tile[b]);
    for (int m = 0; m < kRows; ++m)
      for (int n = 0; n < 16; ++n) {
        float s = C[m * 16 + n];
        for (int p = 0; p < kRows; ++p)
          s += bf16_to_float(A[m * 32 + 2 * p]) * bf16_to_float(B[p * 32 + 2 * n]) +
               bf16_to_float(A[m * 32 + 2 * p + 1]) * bf16_to_float(B[p * 32 + 2 * n + 1]);
        C[m * 16 + n] = s;
      }
  }
};

// The block: C tiles from a 32 x 32 staging block (so the tails need no masks), the K
// loop in steps of 32, the result back through the staging block.
template <typename Tiles>
inline void block(Tiles& tiles, const uint16_t* A, int64_t lda, const uint16_t* Bp, int64_t kc, float* C,
                  int64_t ldc, int mv, int nv, bool accumulate) {
  constexpr int N = AmxKernel::NR;
  alignas(64) float stage[AmxKernel::MR * N];
  if (accumulate) {
    std::memset(stage, 0, sizeof(stage));
    for (int m = 0; m < mv; ++m) std::memcpy(stage + m * N, C + m * ldc, nv * sizeof(float));
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) tiles.load(t, stage + (t / 2) * 16 * N + (t % 2) * 16, N * 4);
  } else {
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) tiles.zero(t);
  }
  const long a_stride = lda * 2, b_stride = N * 2 * 2;
  for (int64_t k0 = 0; k0 < kc; k0 += AmxKernel::KSTEP) {
    tiles.load(4, A + k0, a_stride);
    tiles.load(5, A + 16 * lda + k0, a_stride);
    const uint16_t* b = Bp + (k0 / 2) * N * 2;
    tiles.load(6, b, b_stride);
    tiles.load(7, b + 32, b_stride);
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) tiles.dot(t);
  }
#pragma GCC unroll 4
  for (int t = 0; t < 4; ++t) tiles.store(t, stage + (t / 2) * 16 * N + (t % 2) * 16, N * 4);
  for (int m = 0; m < mv; ++m) std::memcpy(C + m * ldc, stage + m * N, nv * sizeof(float));
}

}  // namespace

__attribute__((target("amx-tile"))) void amx_begin() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kRows;
    cfg.colsb[t] = kRowBytes;
  }
  _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) void amx_end() { _tile_release(); }

__attribute__((target("amx-tile,amx-bf16"))) void amx_block(const uint16_t* A, int64_t lda,
                                                             const uint16_t* Bp, int64_t kc,
                                                             float* C, int64_t ldc, int mv,
                                                             int nv, bool accumulate) {
  HardwareTiles tiles;
  block(tiles, A, lda, Bp, kc, C, ldc, mv, nv, accumulate);
}

void amx_block_emulated(const uint16_t* A, int64_t lda, const uint16_t* Bp, int64_t kc, float* C,
                        int64_t ldc, int mv, int nv, bool accumulate) {
  EmulatedTiles tiles;
  block(tiles, A, lda, Bp, kc, C, ldc, mv, nv, accumulate);
}

}  // namespace r2p1d::cpu::bf16
