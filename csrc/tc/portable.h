// What lets the tensor-core kernels' code run in two places: compiled by nvcc for the GPU,
// and compiled by a plain C++ compiler into the CPU emulator (csrc/emulate/), which runs the
// very same loaders, epilogues and CTA schedule on the host so that CI, which has no GPU,
// tests their index math. Nothing here includes a torch header (see docs/tensor_cores.md
// for why the kernel files stay torch-free).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define R2P1D_HD __host__ __device__ __forceinline__
#else
#define R2P1D_HD inline
#endif

// Unrolls the next loop on the GPU, where register arrays must be indexed by constants.
#if defined(__CUDACC__)
#define R2P1D_UNROLL _Pragma("unroll")
#define R2P1D_NO_UNROLL _Pragma("unroll 1")
#else
#define R2P1D_UNROLL
#define R2P1D_NO_UNROLL
#endif

// True in the device pass of nvcc, false in its host pass and in a plain C++ compiler.
#if defined(__CUDA_ARCH__)
#define R2P1D_ON_DEVICE 1
#else
#define R2P1D_ON_DEVICE 0
#endif

namespace r2p1d::tc {

// 16 bytes: the unit of every global load and shared-memory store of the operands.
struct alignas(16) Vec16 {
  uint32_t w[4];
};

R2P1D_HD uint32_t float_bits(float f) {
#if R2P1D_ON_DEVICE
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

R2P1D_HD float bits_float(uint32_t u) {
#if R2P1D_ON_DEVICE
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

R2P1D_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr int cmax(int a, int b) { return a > b ? a : b; }

// a * b + c rounded once. nvcc contracts a multiply and an add into one fma wherever it can
// (--fmad=true, its default); a plain host build (x86-64 without -mfma) never does. Written
// out wherever the CTA code multiplies and adds, so that the emulator rounds as the GPU
// does and the two differ only in the MMA's accumulation order.
R2P1D_HD float fma_rn(float a, float b, float c) {
#if R2P1D_ON_DEVICE
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

}  // namespace r2p1d::tc
