// Which bfloat16 GEMM the CPU kernels use, chosen at run time (one build serves every
// x86-64 CPU). docs/kernels.md ("bfloat16 on the CPU") describes the paths.
#pragma once
#include <string>

namespace r2p1d::cpu::bf16 {

enum class Path {
  kFloat32,     // no bfloat16 unit: the float32 kernels, on converted copies
  kAvx512Bf16,  // vdpbf16ps on zmm registers (Intel Cooper Lake, AMD Zen 4 and later)
  kAmx,         // AMX tiles, tdpbf16ps (Intel Xeon since Sapphire Rapids)
  kAmxEmulated  // the AMX kernels on a scalar model of the tiles: tests only, slow
};

// R2P1D_CPU_KERNELS (read at every call, like R2P1D_CUDA_KERNELS): "auto" (default) takes
// the best path this CPU has; "amx", "avx512-bf16" and "float32" force one, with an error
// naming what the CPU lacks; "emulated-amx" runs the AMX code on any CPU.
Path path();
const char* name(Path p);
// The CPU's own best path, what "auto" gives.
Path best_path();

}  // namespace r2p1d::cpu::bf16
