// CPU building blocks. A (1,kh,kw) convolution of one (n, t) frame of an NCDHW tensor is
// a GEMM between the weight (M, C*kh*kw) and the frame's im2col matrix (C*kh*kw, Ho*Wo);
// a (kt,1,1) convolution is, per output frame, a sum over taps of (O, M) x (M, H*W)
// products. The GEMM core is ATen's matrix product on views of our buffers (on the CPU the
// only library call the block allows: docs/kernels.md); everything around it (im2col/col2im,
// BN, ReLU, statistics) is ours.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "checks.h"
#include "row_kernels.h"

namespace r2p1d::cpu {

// The kernels call ATen matrix products on views of tensors that may require grad; those
// calls are implementation detail, below autograd (whose formulas live in ops.py).
struct KernelScope {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
};

// A (rows, cols) matrix view with row stride ld over memory we own (no copy).
template <typename T>
inline at::Tensor mat(T* ptr, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(ptr, {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// Channel c of frame f = (n, t) of an NCDHW tensor with C channels, T steps and `plane`
// values per frame.
template <typename T>
inline T* frame_channel(T* base, int64_t C, int64_t T_, int64_t plane, int64_t f, int64_t c) {
  return base + ((f / T_ * C + c) * T_ + f % T_) * plane;
}

// A row loader over an NCDHW tensor (C channels, T steps, H x W frames): writes row ih of
// channel c of frame f to dst. The Winograd transforms read their input through it.
template <typename T>
inline auto frame_rows(const T* base, int64_t C, int64_t T_, int64_t H, int64_t W) {
  return [=](int64_t f, int64_t c, int64_t ih, T* dst) {
    const T* src = frame_channel(base, C, T_, H * W, f, c) + ih * W;
    std::copy(src, src + W, dst);
  };
}

// col[(i,j), (oh,ow)] = x[oh*sh-ph+i, ow*sw-pw+j] (zero outside) for one channel plane x:
// kh*kw rows of Ho*Wo values, row r at col + r*ld.
template <typename T>
void im2col_channel(const T* x, const SpatialGeom& g, T* col, int64_t ld) {
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      T* row = col + (i * g.kw + j) * ld;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        const int64_t ih = oh * g.sh - g.ph + i;
        T* out = row + oh * g.Wo;
        if (ih < 0 || ih >= g.H) {
          std::fill(out, out + g.Wo, T(0));
          continue;
        }
        // Columns [ow0, ow1) read inside the row (iw = ow*sw - pw + j in [0, W)); the rest
        // is padding. The inner loop then has no branch and vectorises (a copy for sw = 1).
        const int64_t shift = j - g.pw;
        const int64_t ow0 = std::min<int64_t>(g.Wo, shift >= 0 ? 0 : (-shift + g.sw - 1) / g.sw);
        const int64_t ow1 = std::max<int64_t>(ow0, std::min<int64_t>(g.Wo, (g.W - shift + g.sw - 1) / g.sw));
        const T* xrow = x + ih * g.W;
        std::fill(out, out + ow0, T(0));
        if (g.sw == 1) {
          std::copy(xrow + ow0 + shift, xrow + ow1 + shift, out + ow0);
        } else {
          for (int64_t ow = ow0; ow < ow1; ++ow) out[ow] = xrow[ow * g.sw + shift];
        }
        std::fill(out + ow1, out + g.Wo, T(0));
      }
    }
  }
}

// The adjoint of im2col_channel: adds col's entries back onto the channel plane gx (which
// the caller zeroes first).
template <typename T>
void col2im_channel(const T* col, int64_t ld, const SpatialGeom& g, T* gx) {
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      const T* row = col + (i * g.kw + j) * ld;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        const int64_t ih = oh * g.sh - g.ph + i;
        if (ih < 0 || ih >= g.H) continue;
        T* grow = gx + ih * g.W;
        const T* in = row + oh * g.Wo;
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          const int64_t iw = ow * g.sw - g.pw + j;
          if (iw >= 0 && iw < g.W) grow[iw] += in[ow];
        }
      }
    }
  }
}

// im2col of a whole frame whose channel c starts at x + c*chan_stride: the (C*kh*kw,
// Ho*Wo) matrix col, row stride ld.
template <typename T>
void im2col_frame(const T* x, int64_t chan_stride, const SpatialGeom& g, T* col, int64_t ld) {
  for (int64_t c = 0; c < g.C; ++c) im2col_channel(x + c * chan_stride, g, col + c * g.kh * g.kw * ld, ld);
}

// col (C*kh*kw rows, row stride ld) = im2col of the consecutive (n, t) frames [f0, f0 +
// cnt) of an NCDHW tensor, frame j in the column block at j*Ho*Wo: one GEMM then serves
// the whole group.
template <typename T>
void im2col_group(const SpatialGeom& g, const T* xp, int64_t f0, int64_t cnt, T* col,
                  int64_t ld) {
  at::parallel_for(0, cnt * g.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t j = item / g.C, c = item % g.C;
      im2col_channel(frame_channel(xp, g.C, g.T, g.in_plane(), f0 + j, c), g,
                     col + c * g.kh * g.kw * ld + j * g.out_plane(), ld);
    }
  });
}

// The input time step that tap k of output step `to` reads, or -1 in the zero padding.
inline int64_t tap_input(int64_t to, int64_t k, int64_t st, int64_t pt, int64_t T) {
  const int64_t ti = to * st - pt + k;
  return (ti >= 0 && ti < T) ? ti : -1;
}

// The output time step that tap k feeds from input step ti, or -1 if none.
inline int64_t tap_output(int64_t ti, int64_t k, int64_t st, int64_t pt, int64_t To) {
  const int64_t num = ti + pt - k;
  if (num < 0 || num % st != 0) return -1;
  const int64_t to = num / st;
  return to < To ? to : -1;
}

// out_f (O, HW) = sum over taps k of W_k (O, M) @ z(ti_k) (M, HW) + bias, where z(ti)
// yields the activated input frame for an in-range time step ti. Taps in the padding add
// nothing (zero padding in z space).
template <typename T, typename ZOf>
void temporal_output_frame(at::Tensor& out_f, const at::Tensor& w_taps, const T* bias,
                           int64_t to, int64_t st, int64_t pt, int64_t T_in, ZOf&& z_of) {
  bool written = false;
  for (int64_t k = 0; k < w_taps.size(0); ++k) {
    const int64_t ti = tap_input(to, k, st, pt, T_in);
    if (ti < 0) continue;
    const at::Tensor z = z_of(ti);
    if (written) {
      out_f.addmm_(w_taps[k], z);
    } else {
      at::mm_out(out_f, w_taps[k], z);
      written = true;
    }
  }
  if (!written) out_f.zero_();
  if (bias != nullptr) {
    T* p = out_f.data_ptr<T>();
    const int64_t ld = out_f.stride(0), cols = out_f.size(1);
    for (int64_t o = 0; o < out_f.size(0); ++o)
      rows::output_epilogue<T>(p + o * ld, nullptr, bias[o], false, cols);
  }
}

// The temporal backward's units (csrc/cpu/temporal_conv_cpu.cpp, csrc/cpu/bf16/temporal_bf16.cpp):
// whole samples, as many as keep their activations within ~4 MB but at least two frames per
// thread, or, when one sample alone is larger, runs of `span` of its time steps. The unit's z
// is scratch on top of the step's activations: 16 MB units put the fused block's conv3_x
// training peak above eager's (bench/NOTES.md, item 17).
struct TemporalUnits {
  int64_t samples, span;
};
inline TemporalUnits temporal_units(const TemporalGeom& g, int64_t elem_size) {
  const int64_t frame_bytes = g.M * g.HW * elem_size;
  const int64_t budget = std::max<int64_t>(4 << 20, 2 * frame_bytes * at::get_num_threads());
  const int64_t samples = std::clamp<int64_t>(budget / (frame_bytes * g.T), 1, g.N);
  const int64_t span = samples > 1 || frame_bytes * g.T <= budget
                           ? g.T : std::clamp<int64_t>(budget / frame_bytes, 1, g.T);
  return {samples, span};
}

// Temporal weight (O, M, kt, 1, 1) as kt contiguous (O, M) matrices.
inline at::Tensor taps_major(const at::Tensor& weight) {
  return weight.reshape({weight.size(0), weight.size(1), weight.size(2)})
      .permute({2, 0, 1})
      .contiguous();
}

inline bool is_reduced(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

// float16/bfloat16 on the CPU: computed in float32 and rounded once at the end.
inline at::Tensor to_float(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }
inline std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return t->to(at::kFloat);
}
inline at::Tensor to_dtype(const at::Tensor& t, at::ScalarType dt) {
  return t.defined() ? t.to(dt) : t;
}

}  // namespace r2p1d::cpu
