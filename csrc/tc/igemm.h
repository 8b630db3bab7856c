// The CTA of every tensor-core implicit GEMM: C[rows][cols] = sum_k A(row, k) B(col, k)
// over one K split, on a BM x BN tile (docs/tensor_cores.md, "One CTA schedule"):
//   - a kStages-deep ring of shared-memory K tiles. Operands read as they are (weights, x,
//     grad_out) arrive by cp.async, kStages - 1 tiles ahead; operands with a prologue
//     (BatchNorm+ReLU of y, the statistics' share of grad_y) or with rows that are not
//     16-byte aligned go through registers one tile ahead: loaded before the current tile's
//     MMAs, transformed and stored after them, so the loads' latency hides behind the MMAs;
//   - fragments by ldmatrix (.trans for row-contiguous tiles; 32-bit loads for TF32 ones),
//     mma.sync on warp tiles, the tiles laid out so that no access conflicts (layouts.h);
//   - the accumulators staged through shared memory and written by whole 16-byte chunks per
//     thread (the epilogue, epilogues.h), with the per-column reductions merged in a fixed
//     order. A split K writes float partials and a second launch of the same kernel sums
//     them in split order and runs the epilogue (Mode).
//
// The schedule is written once against an executor (Exec): on the GPU, `each` runs the
// step for the calling thread and `sync` is __syncthreads; in the CPU emulator
// (csrc/emulate/), `each` loops over the CTA's threads and the warp MMA is emulated from
// the lanes' fragments. Both run the same loaders, fragment addresses and epilogues, which
// is what lets CI check this code without a GPU. Every memory access goes through
// access.h, where the emulator checks bounds, alignment, races and cp.async waits; each
// barrier is named (Barrier) so that a test switch can remove one.
#pragma once
#include "epilogues.h"
#include "fragments.h"
#include "layouts.h"
#include "loaders/common.h"

namespace r2p1d::tc {

// What a launch of the kernel does: the whole GEMM; one K split's float partials into the
// workspace; or, with no K loop, the sum of the partials (in split order) through the
// epilogue.
enum class Mode : int { kDirect = 0, kPartial = 1, kFinalize = 2 };

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
  Mode mode = Mode::kDirect;
  float* workspace = nullptr;  // [splits][rows][ws_ld] floats (kPartial, kFinalize)
  int64_t ws_ld = 0, splits = 1;
};

// The CTA tile: BM x BN outputs, warps arranged WarpsM x WarpsN, BK = 64 bytes of K;
// MinCtas of them resident on one SM (tc/plan.h).
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
  static constexpr int kStages = 4;
  static constexpr int BK = 64 / static_cast<int>(sizeof(s_t));  // 32 bf16/fp16, 16 TF32
  static constexpr int kMmaK = E::kMmaK;
  static constexpr int kKStep = kMmaK;  // the K granule of the MMA work (the last tile runs only its steps)
  static constexpr int WM = BM / kWarpsM, WN = BN / kWarpsN;
  static constexpr int MI = WM / 16, NI = WN / 8;
  static constexpr int kV = Chunk<K>::kV;
  static constexpr bool kTF32 = K == ElemKind::kTF32;
  using TileA = std::conditional_t<AL::kKMajor, KMajorTile<BM>, MNMajorTile<BM, sizeof(s_t), BK>>;
  using TileB = std::conditional_t<BL::kKMajor, KMajorTile<BN>, MNMajorTile<BN, sizeof(s_t), BK>>;
  using Staging = StagingTile<BM, BN>;
  static constexpr int kChunksA = (TileA::kChunks + kThreads - 1) / kThreads;  // per thread
  static constexpr int kChunksB = (TileB::kChunks + kThreads - 1) / kThreads;

  // The chunk pass of the epilogue: each thread kN consecutive columns (16 bytes of output)
  // of every kRowGroups-th row.
  static constexpr int kN = Epi::kN;
  static constexpr int kCpr = BN / kN;  // chunks per row
  static constexpr int kRowGroups = kThreads / kCpr;
  // The reduction slots [float][e][row group][chunk]: e strides 32/kN banks apart, so that
  // the merge (one thread per column) reads them without conflicts.
  static constexpr int kEStride = (kRowGroups * kCpr + 31) / 32 * 32 + 32 / kN;
  static constexpr int kSlotFloats = Red::kFloats * kN * kEStride;

  // Shared memory (bytes): the stages of the operand ring; after the main loop the same
  // bytes hold the staged accumulators, then the reduction slots; after them the prologue's
  // channel vectors.
  static constexpr int kStageBytes = TileA::kBytes + TileB::kBytes;
  static constexpr int kMainBytes = cmax(cmax(kStages * kStageBytes, Staging::kBytes), kSlotFloats * 4);

  static_assert(WM % 16 == 0 && WN % 8 == 0, "warp tile must be whole MMA tiles");
  static_assert(BK % kMmaK == 0, "BK must be whole MMA steps");
  static_assert(BN % kN == 0 && kThreads >= kCpr, "the epilogue's chunks must tile the columns");
  static_assert(kMainBytes % 16 == 0 && kStageBytes % 128 == 0, "stages start 128-byte aligned");
  // The CTAs the plan counts on per SM fit its shared memory (227 KB on H100/H200), with up
  // to 16 KB of channel vectors each (3 floats x 1024 channels, padded).
  static_assert(kMinCtasPerSm * (kMainBytes + 16 * 1024) <= 227 * 1024, "too much shared memory for MinCtas CTAs");

  R2P1D_HD static const ChannelVectors& vectors(const Problem& p) { return p.a.vec.on() ? p.a.vec : p.b.vec; }
  // The dynamic shared memory a launch needs.
  static int64_t smem_bytes(const Problem& p) { return kMainBytes + 4 * int64_t(vectors(p).floats()); }

  struct Thread {
    typename AL::State a_state[kChunksA];
    typename BL::State b_state[kChunksB];
    typename AL::Raw a_raw[kChunksA];
    typename BL::Raw b_raw[kChunksB];
    float acc[MI][NI][4];
    Red red[kN];
  };

  R2P1D_HD static int warp_m(int tid) { return (tid / 32) % kWarpsM; }
  R2P1D_HD static int warp_n(int tid) { return (tid / 32) / kWarpsM; }

  // ---------------------------------------------------------------------------------------
  // Operand chunks. Chunk i of a thread is chunk tid + i * kThreads of the tile; the tile's
  // layout says where it lies ((mn, k) offsets from the tile's origin) and where it is stored.

  template <class Tile>
  R2P1D_HD static bool chunk_pos(int tid, int i, int& mn, int& k, int& offset) {
    const int c = tid + i * kThreads;
    if (Tile::kChunks % kThreads != 0 && c >= Tile::kChunks) return false;
    int a, unit;
    Tile::chunk(c, a, unit);
    offset = Tile::offset(a, unit);
    if constexpr (Tile::kKMajor) {
      mn = a;
      k = unit * kV;
    } else {
      mn = unit * kV;
      k = a;
    }
    return true;
  }

  template <class Tile, class L, int kChunks>
  R2P1D_HD static void start_operand(const L& l, int tid, int64_t mn0, int64_t k0, typename L::State (&st)[kChunks]) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      int mn, k, off;
      if (chunk_pos<Tile>(tid, i, mn, k, off)) l.start(st[i], mn0 + mn, k0 + k);
    }
  }

  template <class Tile, class L, int kChunks>
  R2P1D_HD static void advance_operand(const L& l, int tid, typename L::State (&st)[kChunks]) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      int mn, k, off;
      if (chunk_pos<Tile>(tid, i, mn, k, off)) l.advance(st[i], BK);
    }
  }

  // cp.async of the thread's chunks of the K tile its states are at, into `stage` (a chunk
  // that is a constant, the ones column, is stored as it is).
  template <class Tile, class L, int kChunks>
  R2P1D_HD static void issue_async(const L& l, char* stage, int tid, const typename L::State (&st)[kChunks]) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      int mn, k, off;
      if (!chunk_pos<Tile>(tid, i, mn, k, off)) continue;
      Scope chunk(i);
      Vec16 v;
      if (l.constant(st[i], v)) {
        store16(stage + off, v);
      } else {
        const void* src = l.source(st[i]);
        cp_async16(stage + off, src ? src : l.base(), src != nullptr);
      }
    }
  }

  template <class Tile, class L, int kChunks>
  R2P1D_HD static void load_raw(const L& l, int tid, const typename L::State (&st)[kChunks],
                                typename L::Raw (&raw)[kChunks]) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      int mn, k, off;
      if (!chunk_pos<Tile>(tid, i, mn, k, off)) continue;
      Scope chunk(i);
      raw[i] = l.load(st[i]);
    }
  }

  template <class Tile, class L, int kChunks>
  R2P1D_HD static void store_raw(const L& l, char* stage, int tid, const typename L::State (&st)[kChunks],
                                 const typename L::Raw (&raw)[kChunks], const float* staged) {
    R2P1D_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      int mn, k, off;
      if (!chunk_pos<Tile>(tid, i, mn, k, off)) continue;
      Scope chunk(i);
      check_index(off, 16, Tile::kBytes, "operand tile store");
      store16(stage + off, l.to_smem(raw[i], st[i], staged));
    }
  }

  R2P1D_HD static char* stage_a(char* smem, int s) { return smem + s * kStageBytes; }
  R2P1D_HD static char* stage_b(char* smem, int s) { return smem + s * kStageBytes + TileA::kBytes; }

  // The async operands' chunks of their next K tile into stage s; then their states move on.
  R2P1D_HD static void issue_tile(const Problem& p, char* smem, int s, int tid, Thread& th) {
    if (p.a.async) {
      Scope phase(Phase::kLoadA);
      issue_async<TileA>(p.a, stage_a(smem, s), tid, th.a_state);
      advance_operand<TileA>(p.a, tid, th.a_state);
    }
    if (p.b.async) {
      Scope phase(Phase::kLoadB);
      issue_async<TileB>(p.b, stage_b(smem, s), tid, th.b_state);
      advance_operand<TileB>(p.b, tid, th.b_state);
    }
  }

  // The register operands' staged K tile through their prologue into stage s; then, when
  // `more`, their states move on and the next tile is loaded into registers.
  R2P1D_HD static void store_and_load(const Problem& p, char* smem, int s, bool more, const float* staged, int tid,
                                      Thread& th) {
    if (!p.a.async) {
      {
        Scope phase(Phase::kStoreA);
        store_raw<TileA>(p.a, stage_a(smem, s), tid, th.a_state, th.a_raw, staged);
      }
      if (more) {
        Scope phase(Phase::kLoadA);
        advance_operand<TileA>(p.a, tid, th.a_state);
        load_raw<TileA>(p.a, tid, th.a_state, th.a_raw);
      }
    }
    if (!p.b.async) {
      {
        Scope phase(Phase::kStoreB);
        store_raw<TileB>(p.b, stage_b(smem, s), tid, th.b_state, th.b_raw, staged);
      }
      if (more) {
        Scope phase(Phase::kLoadB);
        advance_operand<TileB>(p.b, tid, th.b_state);
        load_raw<TileB>(p.b, tid, th.b_state, th.b_raw);
      }
    }
  }

  // The prologue's per-channel vectors into shared memory (once per CTA).
  R2P1D_HD static void stage_vectors(const ChannelVectors& v, float* staged, int tid) {
    if (!v.on()) return;
    Scope phase(Phase::kVectors);
    const int pitch = v.pitch();
    for (int i = tid; i < pitch; i += kThreads) {
      R2P1D_UNROLL
      for (int q = 0; q < ChannelVectors::kCount; ++q)
        mem_store(staged + q * pitch + i, i < v.channels ? ldg(v.src[q] + i) : 0.f);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Fragments. ldmatrix row addresses (byte offsets in the tile) for lane `lane`: A's 16 x 16
  // (bf16/fp16) or 16 x 8 (TF32) block at (m0, kk) as matrices (m0-7, k lo), (m8-15, k lo),
  // (m0-7, k hi), (m8-15, k hi); B's two 8-column blocks at (n0, kk) and (n0 + 8, kk) as
  // (n0-7, k lo), (n0-7, k hi), (n8-15, k lo), (n8-15, k hi): the registers of mma.sync's A
  // and of B for n0 and n0 + 8, in order (fragments.h).
  R2P1D_HD static int a_ldsm_offset(int lane, int m0, int kk) {
    const int q = lane >> 3, r = lane & 7;
    if constexpr (TileA::kKMajor) return TileA::offset(m0 + r + 8 * (q & 1), kk / kV + (q >> 1));
    else return TileA::offset(kk + r + 8 * (q >> 1), m0 / kV + (q & 1));
  }
  R2P1D_HD static int b_ldsm_offset(int lane, int n0, int kk) {
    const int q = lane >> 3, r = lane & 7;
    if constexpr (TileB::kKMajor) return TileB::offset(n0 + r + 8 * (q >> 1), kk / kV + (q & 1));
    else return TileB::offset(kk + r + 8 * (q & 1), n0 / kV + (q >> 1));
  }
  // TF32 row-contiguous tiles (no ldmatrix for 32-bit elements transposed): register v of
  // lane's A or B fragment as one 32-bit load.
  template <class Tile>
  R2P1D_HD static int tf32_offset(int mn, int k) {
    return Tile::offset(k, mn / 4) + 4 * (mn % 4);
  }
  R2P1D_HD static int a_word_offset(int lane, int m0, int kk, int v) {
    int row, k;
    frag_a_coord<K>(lane, v, row, k);
    return tf32_offset<TileA>(m0 + row, kk + k);
  }
  R2P1D_HD static int b_word_offset(int lane, int n0, int kk, int v) {
    int col, k;
    frag_b_coord<K>(lane, v, col, k);
    return tf32_offset<TileB>(n0 + col, kk + k);
  }
  static constexpr bool kLdsmA = TileA::kKMajor || !kTF32;
  static constexpr bool kLdsmB = TileB::kKMajor || !kTF32;

#if defined(__CUDACC__)
  // One K tile of MMAs by the calling thread's warp (GPU): K steps below kk_end only.
  __device__ __forceinline__ static void mma_tile(const char* stage, int kk_end, int tid, Thread& th) {
    const char* sa = stage;
    const char* sb = stage + TileA::kBytes;
    const int lane = tid % 32, m_base = warp_m(tid) * WM, n_base = warp_n(tid) * WN;
    R2P1D_UNROLL
    for (int kk = 0; kk < BK; kk += kMmaK) {
      if (kk >= kk_end) break;
      uint32_t af[MI][4], bf[NI][2];
      R2P1D_UNROLL
      for (int mi = 0; mi < MI; ++mi) {
        if constexpr (kLdsmA) {
          ldsm<4, !TileA::kKMajor>(af[mi], sa + a_ldsm_offset(lane, m_base + mi * 16, kk));
        } else {
          R2P1D_UNROLL
          for (int v = 0; v < 4; ++v)
            af[mi][v] = *reinterpret_cast<const uint32_t*>(sa + a_word_offset(lane, m_base + mi * 16, kk, v));
        }
      }
      R2P1D_UNROLL
      for (int ni = 0; ni < NI; ni += 2) {
        if constexpr (kLdsmB) {
          if (ni + 1 < NI) {
            uint32_t r[4];
            ldsm<4, !TileB::kKMajor>(r, sb + b_ldsm_offset(lane, n_base + ni * 8, kk));
            bf[ni][0] = r[0]; bf[ni][1] = r[1]; bf[ni + 1][0] = r[2]; bf[ni + 1][1] = r[3];
          } else {
            ldsm<2, !TileB::kKMajor>(bf[ni], sb + b_ldsm_offset(lane, n_base + ni * 8, kk));
          }
        } else {
          R2P1D_UNROLL
          for (int j = ni; j < ni + 2 && j < NI; ++j)
            R2P1D_UNROLL
            for (int v = 0; v < 2; ++v)
              bf[j][v] = *reinterpret_cast<const uint32_t*>(sb + b_word_offset(lane, n_base + j * 8, kk, v));
        }
      }
      R2P1D_UNROLL
      for (int mi = 0; mi < MI; ++mi)
        R2P1D_UNROLL
        for (int ni = 0; ni < NI; ++ni) mma<K>(th.acc[mi][ni], af[mi], bf[ni]);
    }
  }
#else
  // The same K tile of MMAs for one whole warp, emulated (CPU): each lane's ldmatrix row
  // addresses, what ldmatrix gives the lanes, the warp's mma.sync.
  static void mma_tile_emulated(const char* stage, int kk_end, int warp, Thread* threads) {
    const char* sa = stage;
    const char* sb = stage + TileA::kBytes;
    const int tid0 = warp * 32, m_base = warp_m(tid0) * WM, n_base = warp_n(tid0) * WN;
    for (int kk = 0; kk < BK && kk < kk_end; kk += kMmaK) {
      uint32_t af[32][MI][4], bf[32][NI][2];
      {
        WarpScope phase(warp, Phase::kFragA);
        for (int mi = 0; mi < MI; ++mi) {
          if constexpr (kLdsmA) {
            const void* addr[32];
            uint32_t out[32][4];
            for (int l = 0; l < 32; ++l) addr[l] = sa + a_ldsm_offset(l, m_base + mi * 16, kk);
            warp_ldsm(4, !TileA::kKMajor, addr, warp, out);
            for (int l = 0; l < 32; ++l)
              for (int v = 0; v < 4; ++v) af[l][mi][v] = out[l][v];
          } else {
            for (int l = 0; l < 32; ++l) {
              access_check_thread(tid0 + l);
              for (int v = 0; v < 4; ++v)
                af[l][mi][v] = mem_load(reinterpret_cast<const uint32_t*>(sa + a_word_offset(l, m_base + mi * 16, kk, v)));
            }
          }
        }
      }
      {
        WarpScope phase(warp, Phase::kFragB);
        for (int ni = 0; ni < NI; ni += 2) {
          if constexpr (kLdsmB) {
            const void* addr[32];
            uint32_t out[32][4];
            for (int l = 0; l < 32; ++l) addr[l] = sb + b_ldsm_offset(l, n_base + ni * 8, kk);
            if (ni + 1 < NI) {
              warp_ldsm(4, !TileB::kKMajor, addr, warp, out);
            } else {
              warp_ldsm(2, !TileB::kKMajor, addr, warp, out);  // the odd last block: lanes 0-15's addresses
            }
            for (int l = 0; l < 32; ++l) {
              bf[l][ni][0] = out[l][0];
              bf[l][ni][1] = out[l][1];
              if (ni + 1 < NI) {
                bf[l][ni + 1][0] = out[l][2];
                bf[l][ni + 1][1] = out[l][3];
              }
            }
          } else {
            for (int l = 0; l < 32; ++l) {
              access_check_thread(tid0 + l);
              for (int j = ni; j < ni + 2 && j < NI; ++j)
                for (int v = 0; v < 2; ++v)
                  bf[l][j][v] = mem_load(reinterpret_cast<const uint32_t*>(sb + b_word_offset(l, n_base + j * 8, kk, v)));
            }
          }
        }
      }
      for (int mi = 0; mi < MI; ++mi)
        for (int ni = 0; ni < NI; ++ni) {
          uint32_t a[32][4], b[32][2];
          float c[32][4];
          for (int l = 0; l < 32; ++l) {
            for (int r = 0; r < 4; ++r) a[l][r] = af[l][mi][r];
            for (int r = 0; r < 2; ++r) b[l][r] = bf[l][ni][r];
            for (int v = 0; v < 4; ++v) c[l][v] = threads[tid0 + l].acc[mi][ni][v];
          }
          warp_mma_emulate<K>(a, b, c);
          if (access_check) access_check->mma();
          for (int l = 0; l < 32; ++l)
            for (int v = 0; v < 4; ++v) threads[tid0 + l].acc[mi][ni][v] = c[l][v];
        }
    }
  }
  static void access_check_thread(int tid) {
    if (access_check) access_check->thread(tid);
  }
#endif

  // ---------------------------------------------------------------------------------------
  // The epilogue.

  // The thread's accumulators into the staging tile (row-major floats).
  R2P1D_HD static void stage_accumulators(float* staging, int tid, const Thread& th) {
    Scope phase(Phase::kEpilogue);
    const int lane = tid % 32, g = lane >> 2, tq = lane & 3;
    R2P1D_UNROLL
    for (int mi = 0; mi < MI; ++mi)
      R2P1D_UNROLL
      for (int ni = 0; ni < NI; ++ni)
        R2P1D_UNROLL
        for (int half = 0; half < 2; ++half) {
          const int row = warp_m(tid) * WM + mi * 16 + g + 8 * half;
          const int col = warp_n(tid) * WN + ni * 8 + 2 * tq;
          check_index(Staging::offset(row, col), 2, BM * Staging::kPitch, "accumulator staging");
          store_float2(staging + Staging::offset(row, col), th.acc[mi][ni][2 * half], th.acc[mi][ni][2 * half + 1]);
        }
  }

  // The kN staged values of (tile row r, chunk cc). With 8 per chunk (two 16-byte loads),
  // chunks 4-7 of each 8 take their halves in the other order, which spreads a quarter
  // warp's loads over all 8 bank groups.
  R2P1D_HD static void read_staging(const float* staging, int r, int cc, float (&v)[kN]) {
    const float* p = staging + Staging::offset(r, cc * kN);
    if constexpr (kN == 4) {
      const Vec16 x = lds16(p);
      R2P1D_UNROLL
      for (int i = 0; i < 4; ++i) v[i] = bits_float(x.w[i]);
    } else {
      const bool swap = (cc & 4) != 0;
      const Vec16 first = lds16(p + (swap ? 4 : 0));
      const Vec16 second = lds16(p + (swap ? 0 : 4));
      R2P1D_UNROLL
      for (int i = 0; i < 4; ++i) {
        v[i] = bits_float(swap ? second.w[i] : first.w[i]);
        v[4 + i] = bits_float(swap ? first.w[i] : second.w[i]);
      }
    }
  }

  // The sum of the K splits' partials at (row, col0..col0+kN-1), in split order.
  R2P1D_HD static void sum_partials(const Problem& p, int64_t row, int64_t col0, float (&v)[kN]) {
    R2P1D_UNROLL
    for (int e = 0; e < kN; ++e) v[e] = 0.f;
    for (int64_t s = 0; s < p.splits; ++s) {
      const float* src = p.workspace + (s * p.rows + row) * p.ws_ld + col0;
      R2P1D_UNROLL
      for (int q = 0; q < kN / 4; ++q) {
        const Vec16 x = load16(src + 4 * q);
        R2P1D_UNROLL
        for (int i = 0; i < 4; ++i) v[4 * q + i] += bits_float(x.w[i]);
      }
    }
  }

  // Each thread's chunks: the staged (or, finalizing, summed) values of its rows through
  // the epilogue, or, for a K split, into its float partials.
  R2P1D_HD static void chunk_pass(const Problem& p, const TileCtx& t, const float* staging, int tid, Thread& th) {
    Scope phase(Phase::kEpilogue);
    R2P1D_UNROLL
    for (int e = 0; e < kN; ++e) th.red[e] = Red{};
    if (tid >= kRowGroups * kCpr) return;
    const int cc = tid % kCpr, rg = tid / kCpr;
    const int64_t col0 = t.tile_n * BN + cc * kN;
    if (col0 >= p.cols) return;
    typename Epi::Cols consts;
    if (p.mode != Mode::kPartial) p.epi.load_cols(col0, consts);
    for (int r = rg; r < BM; r += kRowGroups) {
      const int64_t row = t.tile_m * BM + r;
      if (row >= p.rows) break;
      Scope row_scope(r);
      float v[kN];
      if (p.mode == Mode::kFinalize) sum_partials(p, row, col0, v);
      else read_staging(staging, r, cc, v);
      if (p.mode == Mode::kPartial) {
        float* dst = p.workspace + (t.split * p.rows + row) * p.ws_ld + col0;
        R2P1D_UNROLL
        for (int q = 0; q < kN / 4; ++q) {
          const Vec16 x{{float_bits(v[4 * q]), float_bits(v[4 * q + 1]), float_bits(v[4 * q + 2]),
                         float_bits(v[4 * q + 3])}};
          store_piece<16>(dst + 4 * q, x, 0);
        }
        continue;
      }
      p.epi.apply(row, col0, v, consts, th.red);
    }
  }

  // The column reductions: each thread's into its slots, then one thread per column merges
  // them in row-group order and writes the CTA's partial.
  R2P1D_HD static float* slot(float* slots, int f, int e, int rg, int cc) {
    return slots + (f * kN + e) * kEStride + rg * kCpr + cc;
  }
  R2P1D_HD static void reduce_to_slots(float* slots, int tid, const Thread& th) {
    if (tid >= kRowGroups * kCpr) return;
    Scope phase(Phase::kReduce);
    const int cc = tid % kCpr, rg = tid / kCpr;
    R2P1D_UNROLL
    for (int e = 0; e < kN; ++e) th.red[e].to(slot(slots, 0, e, rg, cc), kN * kEStride);
  }
  R2P1D_HD static void merge_slots(const Problem& p, const TileCtx& t, float* slots, int tid) {
    if (tid >= BN) return;
    const int64_t col = t.tile_n * BN + tid;
    if (col >= p.cols) return;
    Scope phase(Phase::kReduce);
    const int e = tid % kN, cc = tid / kN;
    Red r = Red::from(slot(slots, 0, e, 0, cc), kN * kEStride);
    for (int rg = 1; rg < kRowGroups; ++rg) r.merge(Red::from(slot(slots, 0, e, rg, cc), kN * kEStride));
    p.epi.write_partial(t, col, r);
  }

  // ---------------------------------------------------------------------------------------
  // The whole CTA. `threads` is the calling thread's state on the GPU and the array of all
  // kThreads states in the emulator; `smem` the launch's dynamic shared memory.
  template <class Exec>
  R2P1D_HD static void run(const Problem& p, const TileCtx& t, char* smem, Thread* threads, Exec& ex) {
    float* staging = reinterpret_cast<float*>(smem);
    if (p.mode != Mode::kFinalize) main_loop(p, t, smem, threads, ex);
    ex.each(threads, [&](int tid, Thread& th) { chunk_pass(p, t, staging, tid, th); });
    if constexpr (Red::kFloats > 0) {
      if (p.mode == Mode::kPartial) return;
      ex.sync(Barrier::kReduction);
      ex.each(threads, [&](int tid, Thread& th) { reduce_to_slots(staging, tid, th); });
      ex.sync(Barrier::kSlots);
      ex.each(threads, [&](int tid, Thread&) { merge_slots(p, t, staging, tid); });
    }
  }

  template <class Exec>
  R2P1D_HD static void main_loop(const Problem& p, const TileCtx& t, char* smem, Thread* threads, Exec& ex) {
    const int64_t k0 = t.split * p.split_depth;
    const int64_t k1 = k0 + p.split_depth < p.depth ? k0 + p.split_depth : p.depth;
    const int ktiles = k1 > k0 ? static_cast<int>(ceil_div(k1 - k0, BK)) : 0;
    float* staged = reinterpret_cast<float*>(smem + kMainBytes);
    const ChannelVectors& vec = vectors(p);
    ex.each(threads, [&](int tid, Thread& th) {
      stage_vectors(vec, staged, tid);
      start_operand<TileA>(p.a, tid, t.tile_m * BM, k0, th.a_state);
      start_operand<TileB>(p.b, tid, t.tile_n * BN, k0, th.b_state);
      R2P1D_UNROLL
      for (int mi = 0; mi < MI; ++mi)
        R2P1D_UNROLL
        for (int ni = 0; ni < NI; ++ni)
          R2P1D_UNROLL
          for (int v = 0; v < 4; ++v) th.acc[mi][ni][v] = 0.f;
      // The async operands' first kStages - 1 tiles, one commit group each.
      R2P1D_UNROLL
      for (int s = 0; s < kStages - 1; ++s) {
        if (s < ktiles) issue_tile(p, smem, s, tid, th);
        cp_async_commit();
      }
      if (ktiles > 0) {
        if (!p.a.async) {
          Scope phase(Phase::kLoadA);
          load_raw<TileA>(p.a, tid, th.a_state, th.a_raw);
        }
        if (!p.b.async) {
          Scope phase(Phase::kLoadB);
          load_raw<TileB>(p.b, tid, th.b_state, th.b_raw);
        }
      }
    });
    if (mutated(Mutation::kDivergentBarrier))
      ex.each(threads, [&](int tid, Thread&) {
        if (tid < 32) ex.sync(Barrier::kVectors);
      });
    ex.sync(Barrier::kVectors);  // the channel vectors, staged by all, for every prologue
    ex.each(threads, [&](int tid, Thread& th) {
      if (ktiles > 0) store_and_load(p, smem, 0, ktiles > 1, staged, tid, th);
      cp_async_wait<kStages - 2>();  // the async operands' tile 0
    });
    ex.sync(Barrier::kPrologue);
    for (int kt = 0; kt < ktiles; ++kt) {
      const int stage = kt % kStages;
      const bool wrong = mutated(Mutation::kWrongBuffer);
      ex.each(threads, [&](int tid, Thread& th) {
        if (kt + kStages - 1 < ktiles) issue_tile(p, smem, wrong ? stage : (kt + kStages - 1) % kStages, tid, th);
        cp_async_commit();
      });
      const int64_t left = k1 - (k0 + int64_t(kt) * BK);
      const int kk_end = left >= BK ? BK : static_cast<int>(ceil_div(left, kMmaK) * kMmaK);
      ex.template mma<Cta>(smem + stage * kStageBytes, kk_end, threads);
      ex.each(threads, [&](int tid, Thread& th) {
        if (kt + 1 < ktiles) store_and_load(p, smem, wrong ? stage : (kt + 1) % kStages, kt + 2 < ktiles, staged, tid, th);
        if (!mutated(Mutation::kMissingWait)) cp_async_wait<kStages - 2>();  // the async operands' tile kt + 1
      });
      ex.sync(Barrier::kKTile);
    }
    ex.each(threads, [&](int tid, Thread& th) {
      cp_async_wait<0>();  // nothing in flight (the last groups are empty) before the bytes are reused
      stage_accumulators(reinterpret_cast<float*>(smem), tid, th);
    });
    ex.sync(Barrier::kStaging);
  }
};

}  // namespace r2p1d::tc
