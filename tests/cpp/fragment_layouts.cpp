// Checks the mma.sync fragment maps of csrc/tc/fragments.h against CuTe's MMA_Traits
// for the three atoms the tensor-core kernels use: for every lane and register element,
// the (row, k) / (col, k) / (row, col) we load or store must be the one the hardware
// layout (as CuTe states it) puts there. Built and run by tests/test_tc_emulated.py.
#include <cstdio>

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

int main() {
  int errors = 0;
  errors += check<cute::MMA_Traits<cute::SM80_16x8x16_F32BF16BF16F32_TN>, ElemKind::kBF16>("bf16 m16n8k16");
  errors += check<cute::MMA_Traits<cute::SM80_16x8x16_F32F16F16F32_TN>, ElemKind::kF16>("fp16 m16n8k16");
  errors += check<cute::MMA_Traits<cute::SM80_16x8x8_F32TF32TF32F32_TN>, ElemKind::kTF32>("tf32 m16n8k8");
  return errors == 0 ? 0 : 1;
}
