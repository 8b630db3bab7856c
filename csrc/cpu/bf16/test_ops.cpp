// The kernels of two ops for r2p1d check, the benchmarks and the tests: which bfloat16 path the CPU
// kernels take (R2P1D_CPU_KERNELS, path.h), and the bfloat16 GEMM alone, so that each
// path's packing and micro-kernel are checked against a float64 product directly.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "gemm.h"

namespace r2p1d::cpu::bf16 {
namespace {

std::string cpu_bf16_path() { return name(path()); }

View view_of(const at::Tensor& t) {
  return {reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()), t.size(0), t.size(1),
          t.stride(0), t.stride(1)};
}

// c (float32, m x n) = a @ b (+ c when given: accumulate onto a copy of it).
at::Tensor bf16_gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c) {
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0),
                    "r2p1d: bf16_gemm expects a (m, k) and b (k, n), but got ", a.sizes(), " and ",
                    b.sizes());
  TORCH_CHECK_VALUE(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16,
                    "r2p1d: bf16_gemm expects bfloat16 a and b, but got ", a.scalar_type(),
                    " and ", b.scalar_type());
  const Path p = path();
  TORCH_CHECK(p != Path::kFloat32, "r2p1d: bf16_gemm: no bfloat16 path (R2P1D_CPU_KERNELS gives float32)");
  const bool acc = c.has_value() && c->defined();
  at::Tensor out = acc ? c->to(at::kFloat).contiguous().clone()
                       : at::empty({a.size(0), b.size(1)}, a.options().dtype(at::kFloat));
  TORCH_CHECK_VALUE(out.size(0) == a.size(0) && out.size(1) == b.size(1),
                    "r2p1d: bf16_gemm expects c of shape (", a.size(0), ", ", b.size(1), "), but got ",
                    out.sizes());
  // Strided views as given (transposed ones included): the packing reads any strides.
  gemm(p, view_of(a), view_of(b), out.data_ptr<float>(), out.stride(0), acc);
  return out;
}

}  // namespace

// Schemas in csrc/schemas.h (kCpuBf16Path, kBf16Gemm). cpu_bf16_path has no tensor to
// dispatch on: one kernel for every key.
TORCH_LIBRARY_IMPL(r2p1d, CompositeImplicitAutograd, m) { m.impl("cpu_bf16_path", &cpu_bf16_path); }

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) { m.impl("bf16_gemm", &bf16_gemm); }

}  // namespace r2p1d::cpu::bf16
