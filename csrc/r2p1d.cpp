// The r2p1d operator library: every schema lives here, the kernels register
// themselves per dispatch key in cpu/ and cuda/, and the fake (meta) kernels and
// autograd formulas are registered from Python (r2p1d_ext/ops.py).
//
// Tensors are NCDHW. The block is
//   y   = spatial conv (1,kh,kw) of x              -> spatial_conv_stats (+ batch mean/var of y)
//   out = temporal conv (kt,1,1) of relu((y-mean)*scale+shift), zero padding in z space
//                                                  -> temporal_conv_bnrelu
// with scale = gamma/sqrt(var+eps) and shift = beta computed in Python (a few per-channel
// ops, differentiable by autograd). The BatchNorm map is applied in its centred form so the
// backward reduces sum(g*(y-mean)) directly: the uncentred sum(g*y) - mean*sum(g) cancels
// badly in float32 when |mean| >> std.
#include <Python.h>
#include <torch/library.h>

// An importable (empty) module so that `import r2p1d_ext._C` loads this library
// and runs the TORCH_LIBRARY registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(r2p1d, m) {
  // y = conv(x, weight (M,C,1,kh,kw), bias) with stride (1,sh,sw), padding (0,ph,pw);
  // also returns the per-channel batch mean and biased variance of y
  // (float64 for float64 input, float32 otherwise), merged with Chan's formula.
  m.def(
      "spatial_conv_stats(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding)"
      " -> (Tensor y, Tensor mean, Tensor var)");
  // Gradients of spatial_conv_stats. The gradient reaching y is
  //   grad_y + (grad_mean + 2 * grad_var * (y - mean)) / count,
  // count = N*T*Ho*Wo; with neither grad_mean nor grad_var (the statistics unused, as in
  // eval) it is grad_y alone, so that a non-finite y stays in its own sample.
  // output_mask selects (grad_x, grad_weight, grad_bias).
  m.def(
      "spatial_conv_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor y, Tensor mean,"
      " Tensor? grad_mean, Tensor? grad_var, int[2] stride, int[2] padding, bool[3] output_mask)"
      " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // out = conv(relu((y - mean) * scale + shift), weight (O,M,kt,1,1), bias) with stride
  // (st,1,1) and padding (pt,0,0); the padded time steps are zeros of relu(...) (z space),
  // and the activation is never written to memory.
  m.def(
      "temporal_conv_bnrelu(Tensor y, Tensor mean, Tensor scale, Tensor shift, Tensor weight,"
      " Tensor? bias, int stride, int padding) -> Tensor");
  // Gradients of temporal_conv_bnrelu, recomputing the activation from y; output_mask
  // selects (grad_y, grad_mean, grad_scale, grad_shift, grad_weight, grad_bias).
  m.def(
      "temporal_conv_bnrelu_backward(Tensor grad_out, Tensor y, Tensor mean, Tensor scale,"
      " Tensor shift, Tensor weight, int stride, int padding, bool[6] output_mask)"
      " -> (Tensor grad_y, Tensor grad_mean, Tensor grad_scale, Tensor grad_shift,"
      " Tensor grad_weight, Tensor grad_bias)");
  // Inference: out = temporal(relu(spatial(x))) with BatchNorm already folded into the
  // spatial weight and bias; the intermediate is kept per tile, never as a whole tensor.
  // For a whole residual network (docs/inference.md): out += residual (a tensor of out's
  // shape) and then, with relu, out = relu(out), both in the temporal conv's output loop;
  // a BatchNorm after the block is folded into the temporal weight and bias by the caller.
  m.def(
      "fused_eval(Tensor x, Tensor spatial_weight, Tensor? spatial_bias, Tensor temporal_weight,"
      " Tensor? temporal_bias, int[3] stride, int[3] padding, Tensor? residual=None,"
      " bool relu=False) -> Tensor");
  // nn.BatchNorm running-statistics update from a batch's mean and biased variance over
  // `count` values: num_batches_tracked += 1, factor = momentum or 1/num_batches_tracked,
  // running_mean += factor*(mean - running_mean), running_var likewise with the unbiased
  // variance var*count/(count-1).
  m.def(
      "update_running_stats(Tensor(a!) running_mean, Tensor(b!) running_var,"
      " Tensor(c!) num_batches_tracked, Tensor mean, Tensor var, int count, float? momentum)"
      " -> ()");
}
