// Checks the mma.sync fragment maps of csrc/cuda/tc/fragments.h against CuTe's MMA_Traits
// for the three atoms the tensor-core kernels use: for every lane and register element,
// the (row, k) / (col, k) / (row, col) we load or store must be the one the hardware
// layout (as CuTe states it) puts there. Built and run by tests/test_tc_emulated.py.
#include <cstdio>

#include <cute/atom/mma_traits_sm80.hpp>

#include "cuda/tc/fragments.h"

using namespace r2p1d::tc;

template <class Traits, ElemKind K>
int check(const char* name) {
  int errors = 0;
  constexpr int M = 16, N = 8;
  const typename Traits::ALayout a{};
  const typename Traits::BLayout b{};
  const typename Traits::CLayout c{};
  for (int lane = 0; lane < 32; ++lane) {
    for (int v = 0; v < FragCounts<K>::kA; ++v) {
      const int idx = a(lane, v);  // column-major (M, K)
      int row, k;
      frag_a_coord<K>(lane, v, row, k);
      if (row != idx % M || k != idx / M) {
        std::printf("%s A lane %d value %d: ours (%d, %d), CuTe (%d, %d)\n", name, lane, v, row, k, idx % M, idx / M);
        ++errors;
      }
    }
    for (int v = 0; v < FragCounts<K>::kB; ++v) {
      const int idx = b(lane, v);  // column-major (N, K)
      int col, k;
      frag_b_coord<K>(lane, v, col, k);
      if (col != idx % N || k != idx / N) {
        std::printf("%s B lane %d value %d: ours (%d, %d), CuTe (%d, %d)\n", name, lane, v, col, k, idx % N, idx / N);
        ++errors;
      }
    }
    for (int v = 0; v < 4; ++v) {
      const int idx = c(lane, v);  // column-major (M, N)
      int row, col;
      frag_c_coord(lane, v, row, col);
      if (row != idx % M || col != idx / M) {
        std::printf("%s C lane %d value %d: ours (%d, %d), CuTe (%d, %d)\n", name, lane, v, row, col, idx % M, idx / M);
        ++errors;
      }
    }
  }
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
