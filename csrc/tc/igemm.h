// The CTA of every tensor-core implicit GEMM: C[rows][cols] = sum_k A(row, k) B(col, k)
// over one K split, on a BM x BN tile, with operands staged through registers into
// double-buffered shared memory (one barrier per K tile), mma.sync on warp tiles, and the
// problem's epilogue and per-column reductions at the end.
//
// The schedule is written once against an executor (Exec): on the GPU, `each` runs the
// step for the calling thread and `sync` is __syncthreads; in the CPU emulator
// (csrc/emulate/), `each` loops over the CTA's threads and the warp MMA is emulated from
// the lanes' fragments. Both run the same loaders, fragment loads and epilogues, which is
// what lets CI check this code without a GPU. Every memory access goes through access.h,
// where the emulator checks bounds, alignment and races between steps of one barrier
// interval; each barrier is named (Barrier) so that a test switch can remove one.
#pragma once
#include "chunk.h"
#include "epilogues.h"
#include "fragments.h"

namespace r2p1d::tc {

// A GEMM problem: loaders of A and B, the epilogue, the extents and the K split.
template <ElemKind K, class AL, class BL, class EP>
struct GemmProblem {
  static constexpr ElemKind kElem = K;
  using ALoader = AL;
  using BLoader = BL;
  using Epi = EP;
  AL a;
  BL b;
  EP epi;
  int64_t rows, cols, depth;
  int64_t split_depth;  // K per split, a multiple of the tile's BK; >= depth: no split
};

// The CTA tile: BM x BN outputs, warps arranged WarpsM x WarpsN, BK = 64 bytes of K;
// MinCtas of them resident on one SM (tc/plan.h, resident_ctas).
template <int BM, int BN, int WarpsM, int WarpsN, int MinCtas>
struct TileShape {
  static constexpr int kBM = BM, kBN = BN, kWarpsM = WarpsM, kWarpsN = WarpsN, kMinCtas = MinCtas;
};

template <class Problem, class Shape>
struct Cta {
  static constexpr ElemKind K = Problem::kElem;
  using E = Elem<K>;
  using s_t = typename E::smem_t;
  using AL = typename Problem::ALoader;
  using BL = typename Problem::BLoader;
  using Epi = typename Problem::Epi;
  using Red = typename Epi::Red;

  static constexpr int BM = Shape::kBM, BN = Shape::kBN;
  static constexpr int kWarpsM = Shape::kWarpsM, kWarpsN = Shape::kWarpsN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kMinCtasPerSm = Shape::kMinCtas;
  static constexpr int BK = 64 / static_cast<int>(sizeof(s_t));  // 32 bf16/fp16, 16 TF32
  static constexpr int kMmaK = E::kMmaK;
  static constexpr int WM = BM / kWarpsM, WN = BN / kWarpsN;
  static constexpr int MI = WM / 16, NI = WN / 8;
  static constexpr int kV = Chunk<K>::kV;
  using TileA = SmemTile<s_t, BM, BK, AL::kKMajor>;
  using TileB = SmemTile<s_t, BN, BK, BL::kKMajor>;
  static constexpr int kChunksA = BM * BK / kV / kThreads;  // per thread
  static constexpr int kChunksB = BN * BK / kV / kThreads;
  static constexpr int kSlots = kWarpsM * 8;  // row slots of the column reductions
  static constexpr int kRedFloats = Red::kFloats > 0 ? Red::kFloats : 1;

  static_assert(WM % 16 == 0 && WN % 8 == 0, "warp tile must be whole MMA tiles");
  static_assert(BM * BK % (kV * kThreads) == 0 && BN * BK % (kV * kThreads) == 0,
                "each thread must move whole chunks");
  static_assert(BK % kMmaK == 0, "BK must be whole MMA steps");

  // 16-byte aligned: every operand access is a 16-byte chunk (a union of 2-byte arrays
  // alone would only be 2-byte aligned in shared memory).
  struct alignas(16) Operands {
    alignas(16) s_t a[2][TileA::kElems];
    alignas(16) s_t b[2][TileB::kElems];
  };
  union alignas(16) Smem {
    Operands op;
    float red[kSlots * BN * kRedFloats];
  };
  static_assert(TileA::kElems * sizeof(s_t) % 16 == 0 && TileB::kElems * sizeof(s_t) % 16 == 0,
                "each buffer must start 16-byte aligned");
  static_assert(sizeof(Smem) <= 48 * 1024, "static shared memory is limited to 48 KB");

  struct Thread {
    typename AL::State a_state[kChunksA];
    typename BL::State b_state[kChunksB];
    Vec16 a_stage[kChunksA], b_stage[kChunksB];
    float acc[MI][NI][4];
    Red red[NI][2];
  };

  // Chunk i of a thread: its (row, k) offsets inside the tile.
  template <bool kKMajor, int kRows>
  R2P1D_HD static void chunk_pos(int tid, int i, int& row, int& k) {
    const int c = tid + i * kThreads;
    if constexpr (kKMajor) {
      row = c / (BK / kV);
      k = (c % (BK / kV)) * kV;
    } else {
      k = c / (kRows / kV);
      row = (c % (kRows / kV)) * kV;
    }
  }

  R2P1D_HD static void start(const Problem& p, const TileCtx& t, int64_t k0, int tid, Thread& th) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunksA; ++i) {
      int r, k;
      chunk_pos<AL::kKMajor, BM>(tid, i, r, k);
      p.a.start(th.a_state[i], t.tile_m * BM + r, k0 + k);
    }
    R2P1D_UNROLL
    for (int i = 0; i < kChunksB; ++i) {
      int r, k;
      chunk_pos<BL::kKMajor, BN>(tid, i, r, k);
      p.b.start(th.b_state[i], t.tile_n * BN + r, k0 + k);
    }
    R2P1D_UNROLL
    for (int mi = 0; mi < MI; ++mi)
      R2P1D_UNROLL
      for (int ni = 0; ni < NI; ++ni)
        R2P1D_UNROLL
        for (int v = 0; v < 4; ++v) th.acc[mi][ni][v] = 0.f;
    R2P1D_UNROLL
    for (int ni = 0; ni < NI; ++ni) th.red[ni][0] = th.red[ni][1] = Red{};
  }

  R2P1D_HD static void load_global(const Problem& p, Thread& th) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunksA; ++i) th.a_stage[i] = p.a.load(th.a_state[i]);
    R2P1D_UNROLL
    for (int i = 0; i < kChunksB; ++i) th.b_stage[i] = p.b.load(th.b_state[i]);
  }

  R2P1D_HD static void advance(const Problem& p, Thread& th) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunksA; ++i) p.a.advance(th.a_state[i], BK);
    R2P1D_UNROLL
    for (int i = 0; i < kChunksB; ++i) p.b.advance(th.b_state[i], BK);
  }

  // A thread's staged chunks of one operand into its tile.
  template <bool kKMajor, int kRows, class Tile, int kChunks>
  R2P1D_HD static void store_tile(s_t* tile, int tid, const Vec16 (&stage)[kChunks], const char* what) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      int r, k;
      chunk_pos<kKMajor, kRows>(tid, i, r, k);
      check_index(Tile::offset(r, k), kV, Tile::kElems, what);
      store16(&tile[Tile::offset(r, k)], stage[i]);
    }
  }

  R2P1D_HD static void store_shared(Smem& s, int buf, int tid, const Thread& th) {
    store_tile<AL::kKMajor, BM, TileA>(s.op.a[buf], tid, th.a_stage, "A tile store");
    store_tile<BL::kKMajor, BN, TileB>(s.op.b[buf], tid, th.b_stage, "B tile store");
  }

  R2P1D_HD static int warp_m(int tid) { return (tid / 32) % kWarpsM; }
  R2P1D_HD static int warp_n(int tid) { return (tid / 32) / kWarpsM; }

  // The fragments of one MMA step (kk) of one lane.
  R2P1D_HD static void load_fragments(const Smem& s, int buf, int tid, int kk, uint32_t (&af)[MI][4],
                                      uint32_t (&bf)[NI][2]) {
    const int lane = tid % 32;
    R2P1D_UNROLL
    for (int mi = 0; mi < MI; ++mi)
      load_frag_a<K, TileA>(s.op.a[buf], warp_m(tid) * WM + mi * 16, kk, lane, af[mi]);
    R2P1D_UNROLL
    for (int ni = 0; ni < NI; ++ni)
      load_frag_b<K, TileB>(s.op.b[buf], warp_n(tid) * WN + ni * 8, kk, lane, bf[ni]);
  }

#if defined(__CUDACC__)
  // One K tile of MMAs by the calling thread's warp (GPU).
  __device__ __forceinline__ static void mma_tile(const Smem& s, int buf, int tid, Thread& th) {
    R2P1D_UNROLL
    for (int kk = 0; kk < BK; kk += kMmaK) {
      uint32_t af[MI][4], bf[NI][2];
      load_fragments(s, buf, tid, kk, af, bf);
      R2P1D_UNROLL
      for (int mi = 0; mi < MI; ++mi)
        R2P1D_UNROLL
        for (int ni = 0; ni < NI; ++ni) mma<K>(th.acc[mi][ni], af[mi], bf[ni]);
    }
  }
#endif

  // The same K tile of MMAs for one whole warp, emulated (CPU).
  static void mma_tile_emulated(const Smem& s, int buf, int warp, Thread* threads) {
    for (int kk = 0; kk < BK; kk += kMmaK) {
      uint32_t af[32][MI][4], bf[32][NI][2];
      for (int lane = 0; lane < 32; ++lane) {
        if (access_check) access_check->thread(warp * 32 + lane);  // each lane reads its own fragments
        load_fragments(s, buf, warp * 32 + lane, kk, af[lane], bf[lane]);
      }
      for (int mi = 0; mi < MI; ++mi)
        for (int ni = 0; ni < NI; ++ni) {
          uint32_t a[32][4], b[32][2];
          float c[32][4];
          for (int lane = 0; lane < 32; ++lane) {
            for (int r = 0; r < 4; ++r) a[lane][r] = af[lane][mi][r];
            for (int r = 0; r < 2; ++r) b[lane][r] = bf[lane][ni][r];
            for (int v = 0; v < 4; ++v) c[lane][v] = threads[warp * 32 + lane].acc[mi][ni][v];
          }
          warp_mma_emulate<K>(a, b, c);
          for (int lane = 0; lane < 32; ++lane)
            for (int v = 0; v < 4; ++v) threads[warp * 32 + lane].acc[mi][ni][v] = c[lane][v];
        }
    }
  }

  // Each accumulator pair through the epilogue, into the thread's column reductions.
  R2P1D_HD static void epilogue(const Problem& p, const TileCtx& t, int tid, Thread& th) {
    const int lane = tid % 32;
    R2P1D_UNROLL
    for (int mi = 0; mi < MI; ++mi)
      R2P1D_UNROLL
      for (int ni = 0; ni < NI; ++ni)
        R2P1D_UNROLL
        for (int half = 0; half < 2; ++half) {
          int r, c;
          frag_c_coord(lane, 2 * half, r, c);
          const int64_t row = t.tile_m * BM + warp_m(tid) * WM + mi * 16 + r;
          const int64_t col = t.tile_n * BN + warp_n(tid) * WN + ni * 8 + c;
          const float v[2] = {th.acc[mi][ni][2 * half], th.acc[mi][ni][2 * half + 1]};
          p.epi.apply(t, row, col, v, th.red[ni]);
        }
  }

  // The column reductions: each thread's partial goes to its (row slot, column) in shared
  // memory, one slot per lane group and warp row, so no two threads share a place.
  R2P1D_HD static void reduce_to_shared(Smem& s, int tid, const Thread& th) {
    const int slot = warp_m(tid) * 8 + (tid % 32) / 4;
    R2P1D_UNROLL
    for (int ni = 0; ni < NI; ++ni)
      R2P1D_UNROLL
      for (int j = 0; j < 2; ++j) {
        const int col = warp_n(tid) * WN + ni * 8 + 2 * (tid % 4) + j;
        check_index((slot * BN + col) * kRedFloats, Red::kFloats, kSlots * BN * kRedFloats, "reduction slot");
        th.red[ni][j].to(&s.red[(slot * BN + col) * kRedFloats]);
      }
  }

  // Thread `tid` < BN merges column tid over the slots, in slot order, and writes it.
  R2P1D_HD static void reduce_column(const Problem& p, const TileCtx& t, const Smem& s, int tid) {
    if (tid >= BN) return;
    const int64_t col = t.tile_n * BN + tid;
    if (col >= p.cols) return;
    Red r = Red::from(&s.red[tid * kRedFloats]);
    for (int slot = 1; slot < kSlots; ++slot) r.merge(Red::from(&s.red[(slot * BN + tid) * kRedFloats]));
    p.epi.write_partial(t, col, r);
  }

  // The whole CTA. `threads` is the calling thread's state on the GPU and the array of all
  // kThreads states in the emulator.
  template <class Exec>
  R2P1D_HD static void run(const Problem& p, const TileCtx& t, Smem& s, Thread* threads, Exec& ex) {
    const int64_t k0 = t.split * p.split_depth;
    const int64_t k1 = k0 + p.split_depth < p.depth ? k0 + p.split_depth : p.depth;
    const int ktiles = k1 > k0 ? static_cast<int>(ceil_div(k1 - k0, BK)) : 0;
    ex.each(threads, [&](int tid, Thread& th) {
      start(p, t, k0, tid, th);
      if (ktiles > 0) {
        load_global(p, th);
        store_shared(s, 0, tid, th);
      }
    });
    if (mutated(Mutation::kDivergentBarrier))
      ex.each(threads, [&](int tid, Thread&) {
        if (tid < 32) ex.sync(Barrier::kPrologue);
      });
    ex.sync(Barrier::kPrologue);
    for (int kt = 0; kt < ktiles; ++kt) {
      const int buf = kt & 1;
      const bool more = kt + 1 < ktiles;
      // The next tile's global loads are issued before this tile's MMAs, to overlap them.
      if (more) ex.each(threads, [&](int, Thread& th) {
        advance(p, th);
        load_global(p, th);
      });
      ex.template mma<Cta>(s, buf, threads);
      if (more) ex.each(threads, [&](int tid, Thread& th) {
        store_shared(s, mutated(Mutation::kWrongBuffer) ? buf : buf ^ 1, tid, th);
      });
      ex.sync(Barrier::kKTile);
    }
    ex.each(threads, [&](int tid, Thread& th) { epilogue(p, t, tid, th); });
    if constexpr (Red::kFloats > 0) {
      ex.each(threads, [&](int tid, Thread& th) { reduce_to_shared(s, tid, th); });
      ex.sync(Barrier::kReduction);
      ex.each(threads, [&](int tid, Thread&) { reduce_column(p, t, s, tid); });
    }
  }
};

}  // namespace r2p1d::tc
