// Checks the mma.sync fragment maps of csrc/tc/fragments.h against CuTe's MMA_Traits
// for the three atoms the tensor-core kernels use: for every lane and register element,
// the (row, k) / (col, k) / (row, col) we load or store must be the one the hardware
// layout (as CuTe states it) puts there; and the host emulation of ldmatrix (warp_ldsm) for
// the four forms the kernels use against CuTe's Copy_Traits of the LDSM atoms. Built and run
// by tests/test_tc_emulated.py.
#include <cstdint>
#include <cstdio>
#include <map>

#include <cute/atom/copy_traits_sm75.hpp>
#include <cute/atom/mma_traits_sm80.hpp>

#include "tc/fragments.h"

using namespace r2p1d::tc;

// Compares one operand's map over every lane and register element: `ours(lane, v, a, b)`
// gives the (a, b) coordinate we use, `layout(lane, v)` CuTe's column-major index into a
// matrix of `rows` rows.
template <class Layout, class Ours>
int compare(const char* name, const char* operand, int values, int rows, const Layout& layout, Ours ours) {
  int errors = 0;
  for (int lane = 0; lane < 32; ++lane) {
    for (int v = 0; v < values; ++v) {
      const int idx = layout(lane, v);
      int a, b;
      ours(lane, v, a, b);
      if (a != idx % rows || b != idx / rows) {
        std::printf("%s %s lane %d value %d: ours (%d, %d), CuTe (%d, %d)\n", name, operand, lane, v, a, b,
                    idx % rows, idx / rows);
        ++errors;
      }
    }
  }
  return errors;
}

template <class Traits, ElemKind K>
int check(const char* name) {
  constexpr int M = 16, N = 8;
  // A is (M, K), B (N, K), C (M, N), each column-major in CuTe's layouts.
  const int errors =
      compare(name, "A", FragCounts<K>::kA, M, typename Traits::ALayout{},
              [](int lane, int v, int& row, int& k) { frag_a_coord<K>(lane, v, row, k); }) +
      compare(name, "B", FragCounts<K>::kB, N, typename Traits::BLayout{},
              [](int lane, int v, int& col, int& k) { frag_b_coord<K>(lane, v, col, k); }) +
      compare(name, "C", 4, M, typename Traits::CLayout{},
              [](int lane, int v, int& row, int& col) { frag_c_coord(lane, v, row, col); });
  std::printf("%s: %d mismatches\n", name, errors);
  return errors;
}

// ldmatrix moves bits: CuTe's SrcLayout maps (supplying lane, bit of its 16-byte row) and
// its DstLayout (receiving lane, bit of its registers) to one logical bit index. Each
// supplied 16-bit element gets a distinct value; every 16-bit half of every register
// warp_ldsm returns must hold the element CuTe routes to it.
template <class Traits>
int check_ldsm(const char* name, int count, bool trans) {
  typename Traits::SrcLayout src{};
  typename Traits::DstLayout dst{};
  alignas(16) uint16_t rows[32][8];
  std::map<int, uint16_t> at_logical;
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < 8; ++e) {
      rows[l][e] = static_cast<uint16_t>(8 * l + e + 1);
      const int bit = static_cast<int>(src(l, 16 * e));
      if (!at_logical.count(bit)) at_logical[bit] = rows[l][e];  // lanes past 8 * count repeat a row
    }
  const void* addr[32];
  for (int l = 0; l < 32; ++l) addr[l] = rows[l];
  uint32_t out[32][4];
  warp_ldsm(count, trans, addr, 0, out);
  int errors = 0;
  for (int lane = 0; lane < 32; ++lane)
    for (int q = 0; q < count; ++q)
      for (int h = 0; h < 2; ++h) {
        const int bit = static_cast<int>(dst(lane, 32 * q + 16 * h));
        const uint16_t ours = static_cast<uint16_t>(out[lane][q] >> (16 * h));
        const uint16_t want = at_logical.count(bit) ? at_logical[bit] : 0;
        if (ours != want) {
          std::printf("%s lane %d register %d half %d: ours %d, CuTe %d\n", name, lane, q, h, ours, want);
          ++errors;
        }
      }
  std::printf("%s: %d mismatches\n", name, errors);
  return errors;
}

int main() {
  int errors = 0;
  errors += check_ldsm<cute::Copy_Traits<cute::SM75_U32x4_LDSM_N>>("ldmatrix.x4", 4, false);
  errors += check_ldsm<cute::Copy_Traits<cute::SM75_U32x2_LDSM_N>>("ldmatrix.x2", 2, false);
  errors += check_ldsm<cute::Copy_Traits<cute::SM75_U16x8_LDSM_T>>("ldmatrix.x4.trans", 4, true);
  errors += check_ldsm<cute::Copy_Traits<cute::SM75_U16x4_LDSM_T>>("ldmatrix.x2.trans", 2, true);
  errors += check<cute::MMA_Traits<cute::SM80_16x8x16_F32BF16BF16F32_TN>, ElemKind::kBF16>("bf16 m16n8k16");
  errors += check<cute::MMA_Traits<cute::SM80_16x8x16_F32F16F16F32_TN>, ElemKind::kF16>("fp16 m16n8k16");
  errors += check<cute::MMA_Traits<cute::SM80_16x8x8_F32TF32TF32F32_TN>, ElemKind::kTF32>("tf32 m16n8k8");
  return errors == 0 ? 0 : 1;
}
