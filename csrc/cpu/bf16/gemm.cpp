// The bfloat16 GEMM driver (gemm.h): A's MR-row panels of each 512-deep K block read in
// place or packed once per call; the columns split across the threads in NR-wide panels,
// each thread packing a group of its B panels of a K block once and running them against
// every A panel (docs/kernels.md, "bfloat16 on the CPU").
#include "gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "microkernels.h"

namespace r2p1d::cpu::bf16 {
namespace {

constexpr int64_t kKc = 512;  // K block: a multiple of every kernel's K step

inline int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// A's rows [m0, m0 + MR) and columns [k0, k0 + kc) as MR rows of kcp values (zeros past
// the matrix); kcp = kc rounded up to the K step.
template <typename Kernel>
void pack_a(const View& A, int64_t m0, int64_t k0, int64_t kc, int64_t kcp, uint16_t* dst) {
  constexpr int MR = Kernel::MR;
  const int64_t mv = std::min<int64_t>(MR, A.rows - m0);
  for (int m = 0; m < MR; ++m) {
    uint16_t* row = dst + m * kcp;
    const int64_t len = m < mv ? kc : 0;
    const uint16_t* src = A.p + (m0 + m) * A.rs + k0 * A.cs;
    for (int64_t k = 0; k < len; ++k) row[k] = src[k * A.cs];
    std::fill(row + len, row + kcp, uint16_t(0));
  }
}

// A strided view as a B operand: a pair of rows at a time, as 32-bit words (a loop GCC
// vectorises when the rows are contiguous).
struct ViewPacker final : BPacker {
  View v;
  explicit ViewPacker(const View& view) : BPacker(view.rows, view.cols), v(view) {}
  void pairs(int64_t k, int64_t n0, int64_t nv, uint32_t* out) const override {
    const uint16_t* r0 = v.p + k * v.rs + n0 * v.cs;
    if (k + 1 == v.rows) {
      for (int64_t n = 0; n < nv; ++n) out[n] = r0[n * v.cs];
      return;
    }
    const uint16_t* r1 = r0 + v.rs;
    if (v.cs == 1) {
      for (int64_t n = 0; n < nv; ++n) out[n] = uint32_t(r0[n]) | (uint32_t(r1[n]) << 16);
    } else {
      for (int64_t n = 0; n < nv; ++n) out[n] = uint32_t(r0[n * v.cs]) | (uint32_t(r1[n * v.cs]) << 16);
    }
  }
};

template <typename Kernel, typename Block>
void run(const View& A, const BPacker& B, float* C, int64_t ldc, bool accumulate, bool amx,
         Block&& block) {
  constexpr int MR = Kernel::MR, NR = Kernel::NR;
  const int64_t M = A.rows, N = B.cols, K = A.cols;
  const int64_t m_panels = (M + MR - 1) / MR, n_panels = (N + NR - 1) / NR;
  const int64_t k_blocks = std::max<int64_t>(1, (K + kKc - 1) / kKc);
  const int64_t kcp_max = round_up(std::min(K, kKc), Kernel::KSTEP);
  auto kc_of = [&](int64_t kb) { return std::min(kKc, K - kb * kKc); };
  // A's row panels as the kernels read them (MR rows at a stride): A itself where it is
  // row-major with K a multiple of the K step (no padding needed), except a last partial
  // panel (the kernels read all MR rows); otherwise packed: the i-th packed panel, i = kb *
  // packed_panels + (mp - packed_from), at i * MR * kcp_max, its rows kcp apart.
  const bool in_place = A.cs == 1 && K % Kernel::KSTEP == 0;
  const int64_t packed_from = in_place ? M / MR : 0;  // the first row panel that is packed
  const int64_t packed_panels = m_panels - packed_from;
  std::vector<uint16_t> ap(static_cast<size_t>(k_blocks * packed_panels * MR * kcp_max));
  at::parallel_for(0, k_blocks * packed_panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t kb = i / packed_panels, mp = packed_from + i % packed_panels, kc = kc_of(kb);
      pack_a<Kernel>(A, mp * MR, kb * kKc, kc, round_up(kc, Kernel::KSTEP),
                     ap.data() + i * MR * kcp_max);
    }
  });
  // Row panel mp of K block kb: its first row, and the stride between rows.
  auto a_panel = [&](int64_t kb, int64_t mp) -> std::pair<const uint16_t*, int64_t> {
    if (mp < packed_from) return {A.p + mp * MR * A.rs + kb * kKc, A.rs};
    const int64_t i = kb * packed_panels + (mp - packed_from);
    return {ap.data() + i * MR * kcp_max, round_up(kc_of(kb), Kernel::KSTEP)};
  };
  // Column panels to threads (an even share each), and a thread's panels in groups of up
  // to 8: a group's B is packed a pair of rows at a time across all its panels, so that
  // B's rows are read in stretches of 8*NR values rather than NR (one panel's rows are
  // scattered lines, whose misses cost up to half the time at M = 64: bench/NOTES.md). At
  // most 192 KB of packed B per group, so that the A panels stay in L2 beside it.
  const int64_t g_max = std::clamp<int64_t>((192 << 10) / (kcp_max * NR * 2), 1, 8);
  const int64_t panel_words = kcp_max / 2 * NR;  // a packed panel: kcp/2 pairs of NR words
  // Panels [np0, np1) against A's row panels [mp0, mp1), into the packed-B buffer bp.
  auto panels = [&](int64_t np0, int64_t np1, int64_t mp0, int64_t mp1, uint32_t* bp) {
    const int64_t n0 = np0 * NR, cols = std::min(N, np1 * NR) - n0;
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      const int64_t kc = kc_of(kb), kcp = round_up(kc, Kernel::KSTEP);
      if (K == 0) {
        for (int64_t m = mp0 * MR; m < std::min(M, mp1 * MR) && !accumulate; ++m)
          std::fill(C + m * ldc + n0, C + m * ldc + n0 + cols, 0.f);
        break;
      }
      B.panels(kb * kKc, kc, kcp, n0, cols, NR, panel_words, bp);
      for (int64_t np = np0; np < np1; ++np) {
        const int nv = static_cast<int>(std::min<int64_t>(NR, N - np * NR));
        const uint16_t* b = reinterpret_cast<const uint16_t*>(bp + (np - np0) * panel_words);
        for (int64_t mp = mp0; mp < mp1; ++mp) {
          const int mv = static_cast<int>(std::min<int64_t>(MR, M - mp * MR));
          const auto [a, lda] = a_panel(kb, mp);
          block(a, lda, b, kcp, C + mp * MR * ldc + np * NR, ldc, mv, nv, accumulate || kb > 0);
        }
      }
    }
  };
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (n_panels >= 2 * threads) {
    at::parallel_for(0, n_panels, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint32_t> bp(static_cast<size_t>(std::min(g_max, end - begin) * panel_words));
      if (amx) amx_begin();
      for (int64_t np0 = begin; np0 < end; np0 += g_max)
        panels(np0, std::min(end, np0 + g_max), 0, m_panels, bp.data());
      if (amx) amx_end();
    });
    return;
  }
  // Too few column panels for the threads (conv5_x at batch 1: 49 or 98 columns): the rows
  // are split too, each (row chunk, panel) packing its own copy of the (small) B panel.
  const int64_t m_chunks = std::min<int64_t>(m_panels, 2 * threads);
  at::parallel_for(0, m_chunks * n_panels, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> bp(static_cast<size_t>(panel_words));
    if (amx) amx_begin();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t mc = item / n_panels, np = item % n_panels;
      panels(np, np + 1, mc * m_panels / m_chunks, (mc + 1) * m_panels / m_chunks, bp.data());
    }
    if (amx) amx_end();
  });
}

}  // namespace

void gemm(Path path, const View& A, const BPacker& B, float* C, int64_t ldc, bool accumulate) {
  TORCH_CHECK(A.cols == B.rows, "r2p1d: bf16 gemm: A is ", A.rows, "x", A.cols, " but B is ",
              B.rows, "x", B.cols);
  if (A.rows == 0 || B.cols == 0) return;
  switch (path) {
    case Path::kAvx512Bf16:
      return run<Avx512Kernel>(A, B, C, ldc, accumulate, false, avx512_block);
    case Path::kAmx:
      return run<AmxKernel>(A, B, C, ldc, accumulate, true, amx_block);
    case Path::kAmxEmulated:
      return run<AmxKernel>(A, B, C, ldc, accumulate, false, amx_block_emulated);
    default:
      TORCH_CHECK(false, "r2p1d: the float32 path has no bfloat16 GEMM");
  }
}

void gemm(Path path, const View& A, const View& B, float* C, int64_t ldc, bool accumulate) {
  gemm(path, A, ViewPacker(B), C, ldc, accumulate);
}

}  // namespace r2p1d::cpu::bf16
