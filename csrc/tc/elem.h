// The three tensor-core element types: bfloat16 and float16 (stored and multiplied as
// themselves) and TF32 (float32 tensors whose operands are rounded to TF32 as they enter
// shared memory; accumulation is float32 in every case). Conversions are written out in
// integer arithmetic so that the host emulator rounds bit for bit like the GPU
// (round to nearest even for bf16/fp16, like __float2bfloat16_rn / __float2half_rn; round
// to nearest with ties away from zero for TF32, like cvt.rna.tf32.f32).
#pragma once
#include "portable.h"

namespace r2p1d::tc {

enum class ElemKind : int { kBF16 = 0, kF16 = 1, kTF32 = 2 };

R2P1D_HD uint16_t bf16_from_float(float f) {
#if R2P1D_ON_DEVICE
  uint16_t h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#endif
}

R2P1D_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// IEEE half from float, round to nearest even, subnormals and overflow to inf included
// (the branch-free method of the FP16 library: scale so that the float adder rounds).
R2P1D_HD uint16_t f16_from_float(float f) {
  const float scale_to_inf = bits_float(0x77800000u);   // 2^112
  const float scale_to_zero = bits_float(0x08800000u);  // 2^-110
  float base = (f < 0 ? -f : f) * scale_to_inf * scale_to_zero;
  const uint32_t w = float_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xff000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007c00u;
  const uint32_t mantissa_bits = bits & 0x00000fffu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

R2P1D_HD float f16_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_float((two_w >> 4) + (0xe0u << 23)) * bits_float(0x07800000u);  // * 2^-112
  const float denormalized = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t result = sign | (two_w < (1u << 27) ? float_bits(denormalized) : float_bits(normalized));
  return bits_float(result);
}

// TF32: 10 explicit mantissa bits, kept in a float32 container.
R2P1D_HD uint32_t tf32_from_float(float f) {
#if R2P1D_ON_DEVICE
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
  return r;
#else
  const uint32_t u = float_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // inf and NaN unchanged
  return (u + 0x1000u) & 0xffffe000u;
#endif
}

template <ElemKind K>
struct Elem;

// gmem_t: how the tensor stores an element; smem_t: how the MMA consumes it.
template <>
struct Elem<ElemKind::kBF16> {
  using gmem_t = uint16_t;
  using smem_t = uint16_t;
  static constexpr int kMmaK = 16;  // mma.m16n8k16
  R2P1D_HD static float to_float(gmem_t v) { return bf16_to_float(v); }
  R2P1D_HD static gmem_t from_float(float f) { return bf16_from_float(f); }
  R2P1D_HD static smem_t to_smem(gmem_t v) { return v; }
  R2P1D_HD static smem_t smem_from_float(float f) { return bf16_from_float(f); }
  R2P1D_HD static float smem_to_float(smem_t v) { return bf16_to_float(v); }
};

template <>
struct Elem<ElemKind::kF16> {
  using gmem_t = uint16_t;
  using smem_t = uint16_t;
  static constexpr int kMmaK = 16;
  R2P1D_HD static float to_float(gmem_t v) {
#if R2P1D_ON_DEVICE
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
#else
    return f16_to_float(v);
#endif
  }
  R2P1D_HD static gmem_t from_float(float f) {
#if R2P1D_ON_DEVICE
    uint16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    return f16_from_float(f);
#endif
  }
  R2P1D_HD static smem_t to_smem(gmem_t v) { return v; }
  R2P1D_HD static smem_t smem_from_float(float f) { return from_float(f); }
  R2P1D_HD static float smem_to_float(smem_t v) { return to_float(v); }
};

template <>
struct Elem<ElemKind::kTF32> {
  using gmem_t = float;
  using smem_t = uint32_t;
  static constexpr int kMmaK = 8;  // mma.m16n8k8
  R2P1D_HD static float to_float(gmem_t v) { return v; }
  R2P1D_HD static gmem_t from_float(float f) { return f; }
  R2P1D_HD static smem_t to_smem(gmem_t v) { return tf32_from_float(v); }
  R2P1D_HD static smem_t smem_from_float(float f) { return tf32_from_float(f); }
  R2P1D_HD static float smem_to_float(smem_t v) { return bits_float(v); }
};

}  // namespace r2p1d::tc
