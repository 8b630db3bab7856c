// The r2p1d operator schemas, written once: csrc/r2p1d.cpp defines the r2p1d ops from them,
// and the tensor-core emulator (csrc/emulate/tc_emulate.cpp) defines its twins, the same
// schemas with the plan arguments appended, so the two cannot drift apart.
//
// Tensors are NCDHW. The block is
//   y   = spatial conv (1,kh,kw) of x              -> spatial_conv_stats (+ batch mean/var of y)
//   out = temporal conv (kt,1,1) of relu((y-mean)*scale+shift), zero padding in z space
//                                                  -> temporal_conv_bnrelu
// with scale = gamma/sqrt(var+eps) and shift = beta computed in Python (a few per-channel
// ops, differentiable by autograd). The BatchNorm map is applied in its centred form so the
// backward reduces sum(g*(y-mean)) directly: the uncentred sum(g*y) - mean*sum(g) cancels
// badly in float32 when |mean| >> std.
#pragma once
#include <string>

namespace r2p1d::schemas {

struct OpSchema {
  const char* name;
  const char* arguments;  // the text between the parentheses
  const char* returns;
};

// y = conv(x, weight (M,C,1,kh,kw), bias) with stride (1,sh,sw), padding (0,ph,pw); also
// returns the per-channel batch mean and biased variance of y (float64 for float64 input,
// float32 otherwise), merged with Chan's formula.
inline constexpr OpSchema kSpatialConvStats{
    "spatial_conv_stats", "Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding",
    "(Tensor y, Tensor mean, Tensor var)"};

// Gradients of spatial_conv_stats. The gradient reaching y is
//   grad_y + (grad_mean + 2 * grad_var * (y - mean)) / count,
// count = N*T*Ho*Wo; with neither grad_mean nor grad_var (the statistics unused, as in
// eval) it is grad_y alone, so that a non-finite y stays in its own sample.
// output_mask selects (grad_x, grad_weight, grad_bias).
inline constexpr OpSchema kSpatialConvBackward{
    "spatial_conv_backward",
    "Tensor grad_y, Tensor x, Tensor weight, Tensor y, Tensor mean, Tensor? grad_mean, Tensor? grad_var,"
    " int[2] stride, int[2] padding, bool[3] output_mask",
    "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias)"};

// out = conv(relu((y - mean) * scale + shift), weight (O,M,kt,1,1), bias) with stride
// (st,1,1) and padding (pt,0,0); the padded time steps are zeros of relu(...) (z space),
// and the activation is never written to memory.
inline constexpr OpSchema kTemporalConvBnrelu{
    "temporal_conv_bnrelu",
    "Tensor y, Tensor mean, Tensor scale, Tensor shift, Tensor weight, Tensor? bias, int stride, int padding",
    "Tensor"};

// Gradients of temporal_conv_bnrelu, recomputing the activation from y; output_mask
// selects (grad_y, grad_mean, grad_scale, grad_shift, grad_weight, grad_bias).
inline constexpr OpSchema kTemporalConvBnreluBackward{
    "temporal_conv_bnrelu_backward",
    "Tensor grad_out, Tensor y, Tensor mean, Tensor scale, Tensor shift, Tensor weight, int stride,"
    " int padding, bool[6] output_mask",
    "(Tensor grad_y, Tensor grad_mean, Tensor grad_scale, Tensor grad_shift, Tensor grad_weight,"
    " Tensor grad_bias)"};

// Inference: out = temporal(relu(spatial(x))) with BatchNorm already folded into the
// spatial weight and bias; the intermediate is kept per tile, never as a whole tensor.
// For a whole residual network (docs/inference.md): out += residual (a tensor of out's
// shape) and then, with relu, out = relu(out), both in the temporal conv's output loop;
// a BatchNorm after the block is folded into the temporal weight and bias by the caller.
inline constexpr OpSchema kFusedEval{
    "fused_eval",
    "Tensor x, Tensor spatial_weight, Tensor? spatial_bias, Tensor temporal_weight, Tensor? temporal_bias,"
    " int[3] stride, int[3] padding, Tensor? residual=None, bool relu=False",
    "Tensor"};

// nn.BatchNorm running-statistics update from a batch's mean and biased variance over
// `count` values: num_batches_tracked += 1, factor = momentum or 1/num_batches_tracked,
// running_mean += factor*(mean - running_mean), running_var likewise with the unbiased
// variance var*count/(count-1).
inline constexpr OpSchema kUpdateRunningStats{
    "update_running_stats",
    "Tensor(a!) running_mean, Tensor(b!) running_var, Tensor(c!) num_batches_tracked, Tensor mean,"
    " Tensor var, int count, float? momentum",
    "()"};

// The CPU kernels' bfloat16 path (csrc/cpu/bf16/path.h: "amx", "avx512-bf16", "float32" or
// "emulated-amx"), as R2P1D_CPU_KERNELS gives it now; for r2p1d check, the benchmarks and
// the tests.
inline constexpr OpSchema kCpuBf16Path{"cpu_bf16_path", "", "str"};

// The CPU bfloat16 GEMM alone (csrc/cpu/bf16/gemm.h), for its tests: float32 a @ b (+ c),
// a and b bfloat16 of any strides, on the path cpu_bf16_path names.
inline constexpr OpSchema kBf16Gemm{"bf16_gemm", "Tensor a, Tensor b, Tensor? c=None", "Tensor"};

// Video clips as the network takes them: uint8 RGB clips (N, T, H, W, C) -- or one clip
// (T, H, W, C) -- as the data loader delivers them, to (N, C, T, H, W) / (C, T, H, W) of
// dtype, (x - 255 mean[c]) / (255 std[c]) with 255 mean and 255 std rounded to float32 and
// the arithmetic in float32, then rounded to dtype (r2p1d_ext/data/dataset.py's former
// worker-side normalisation, to the bit). One elementwise pass; the result's memory is the
// input's order (NTHWC: channels_last_3d for a batch).
inline constexpr OpSchema kNormalizeClips{
    "normalize_clips", "Tensor clips, float[] mean, float[] std, ScalarType dtype", "Tensor"};

// The five ops of the block's computation (the tensor-core kernels compute these; the
// running-statistics update is a per-channel step beside them).
inline constexpr OpSchema kBlockOps[] = {kSpatialConvStats, kSpatialConvBackward, kTemporalConvBnrelu,
                                         kTemporalConvBnreluBackward, kFusedEval};

// "name(arguments<extra_arguments>) -> returns".
inline std::string text(const OpSchema& op, const char* extra_arguments = "") {
  return std::string(op.name) + "(" + op.arguments + extra_arguments + ") -> " + op.returns;
}

// Registers the static functions of `Impl`, named as the ops, as the kernels of the five
// block ops in `m` (a TORCH_LIBRARY_IMPL's library): the CUDA router and the emulator
// register theirs through this one list.
template <class Impl, class Library>
void impl_block_ops(Library& m) {
  m.impl(kSpatialConvStats.name, &Impl::spatial_conv_stats);
  m.impl(kSpatialConvBackward.name, &Impl::spatial_conv_backward);
  m.impl(kTemporalConvBnrelu.name, &Impl::temporal_conv_bnrelu);
  m.impl(kTemporalConvBnreluBackward.name, &Impl::temporal_conv_bnrelu_backward);
  m.impl(kFusedEval.name, &Impl::fused_eval);
}

}  // namespace r2p1d::schemas
