// Runtime detection of the CPU's bfloat16 units (cpuid, the OS's register-state support
// in XCR0, and for AMX the Linux permission to use the tile registers).
#include "path.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define R2P1D_X86 1
#endif

namespace r2p1d::cpu::bf16 {
namespace {

#ifdef R2P1D_X86
unsigned long long xcr0() {
  unsigned int lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

struct Features {
  bool avx512_bf16 = false, amx = false;
};

Features detect() {
  Features f;
  unsigned int a, b, c, d;
  if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !(c & (1u << 27))) return f;  // OSXSAVE
  const unsigned long long xcr = xcr0();
  // The OS saves the AVX-512 state: XCR0 bits 1, 2 (SSE, AVX) and 5-7 (opmask, zmm).
  const bool os_avx512 = (xcr & 0xE6) == 0xE6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31));  // F, BW, VL
  const bool amx_tile = d & (1u << 24), amx_bf16 = d & (1u << 22);
  unsigned int a1 = 0, b1, c1, d1;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  f.avx512_bf16 = os_avx512 && avx512 && (a1 & (1u << 5));
  // AMX: the tile state in XCR0 (bits 17, 18), then Linux's per-process permission for
  // it (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without it the first tile
  // instruction raises SIGILL.
  if (f.avx512_bf16 && amx_tile && amx_bf16 && (xcr & (3ull << 17)) == (3ull << 17)) {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    f.amx = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }
  return f;
}
#endif

const auto& features() {
#ifdef R2P1D_X86
  static const Features f = detect();
#else
  static const struct { bool avx512_bf16 = false, amx = false; } f;
#endif
  return f;
}

}  // namespace

Path best_path() {
  if (features().amx) return Path::kAmx;
  if (features().avx512_bf16) return Path::kAvx512Bf16;
  return Path::kFloat32;
}

Path path() {
  const char* env = std::getenv("R2P1D_CPU_KERNELS");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return best_path();
  if (std::strcmp(env, "float32") == 0) return Path::kFloat32;
  if (std::strcmp(env, "emulated-amx") == 0) return Path::kAmxEmulated;
  if (std::strcmp(env, "avx512-bf16") == 0) {
    TORCH_CHECK(features().avx512_bf16,
                "r2p1d: R2P1D_CPU_KERNELS=avx512-bf16, but this CPU (or its OS) has no "
                "AVX512-BF16; expected auto, float32 or emulated-amx here");
    return Path::kAvx512Bf16;
  }
  if (std::strcmp(env, "amx") == 0) {
    TORCH_CHECK(features().amx,
                "r2p1d: R2P1D_CPU_KERNELS=amx, but this CPU has no AMX-BF16 (or Linux refused "
                "the tile permission); expected ", name(best_path()), ", auto, float32 or emulated-amx here");
    return Path::kAmx;
  }
  TORCH_CHECK_VALUE(false, "r2p1d: expected R2P1D_CPU_KERNELS to be auto, amx, avx512-bf16, "
                    "float32 or emulated-amx, but got '", env, "'");
}

const char* name(Path p) {
  switch (p) {
    case Path::kAmx: return "amx";
    case Path::kAvx512Bf16: return "avx512-bf16";
    case Path::kAmxEmulated: return "emulated-amx";
    default: return "float32";
  }
}

}  // namespace r2p1d::cpu::bf16
