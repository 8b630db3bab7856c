// The r2p1d operator library: the ops are defined here from their schemas (csrc/schemas.h),
// the kernels register themselves per dispatch key (csrc/cpu/, and csrc/cuda/ops_cuda.cpp
// for every CUDA op), and the fake (meta) kernels and autograd formulas are registered from
// Python (r2p1d_ext/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

// An importable (empty) module so that `import r2p1d_ext._C` loads this library
// and runs the TORCH_LIBRARY registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(r2p1d, m) {
  for (const auto& op : r2p1d::schemas::kBlockOps) m.def(torch::schema(r2p1d::schemas::text(op).c_str()));
  m.def(torch::schema(r2p1d::schemas::text(r2p1d::schemas::kUpdateRunningStats).c_str()));
  m.def(torch::schema(r2p1d::schemas::text(r2p1d::schemas::kCpuBf16Path).c_str()));
  m.def(torch::schema(r2p1d::schemas::text(r2p1d::schemas::kBf16Gemm).c_str()));
  m.def(torch::schema(r2p1d::schemas::text(r2p1d::schemas::kNormalizeClips).c_str()));
}
