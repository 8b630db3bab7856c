// CPU kernels of the temporal (kt,1,1) convolution whose input is relu((y-mean)*scale+shift):
// the activation is made one frame at a time in a thread-local buffer, never as a tensor
// of the intermediate's size; backward recomputes it from y the same way.
#include <torch/library.h>

#include "cpu/bf16/kernels.h"
#include "frame_gemm.h"
#include "row_kernels.h"
#include "scratch.h"

namespace r2p1d::cpu {
namespace {

using at::Tensor;

// The per-channel BatchNorm vectors in the kernel's dtype.
template <typename T>
struct BnVectors {
  at::Tensor mean, scale, shift;
  BnVectors(const at::Tensor& m, const at::Tensor& sc, const at::Tensor& sh, at::ScalarType dt)
      : mean(m.to(dt).contiguous()), scale(sc.to(dt).contiguous()), shift(sh.to(dt).contiguous()) {}
  const T* mu() const { return mean.data_ptr<T>(); }
  const T* sc() const { return scale.data_ptr<T>(); }
  const T* sh() const { return shift.data_ptr<T>(); }
};

// z = relu((y - mean)*scale + shift) for one frame: M channels of `plane` values, channel
// strides y_ld in y and z_ld in z.
template <typename T>
void activate_frame(const T* y, int64_t y_ld, const BnVectors<T>& bn, int64_t M, int64_t plane,
                    T* z, int64_t z_ld) {
  const T *mu = bn.mu(), *sc = bn.sc(), *sh = bn.sh();
  for (int64_t m = 0; m < M; ++m)
    rows::bn_relu(y + m * y_ld, z + m * z_ld, mu[m], sc[m], sh[m], plane);
}

Tensor temporal_conv_bnrelu_cpu(const Tensor& y, const Tensor& mean, const Tensor& scale,
                                const Tensor& shift, const Tensor& weight,
                                const std::optional<Tensor>& bias, int64_t stride,
                                int64_t padding) {
  KernelScope scope;
  const TemporalGeom g = check_temporal(y, mean, scale, shift, weight, bias, stride, padding);
  bf16::Path path;
  if (bf16::takes_bf16_kernels(y, path))
    return bf16::temporal_conv_bnrelu(path, g, y, mean, scale, shift, weight, bias);
  if (is_reduced(y)) {
    return temporal_conv_bnrelu_cpu(to_float(y), mean, scale, shift, to_float(weight),
                                    to_float(bias), stride, padding)
        .to(y.scalar_type());
  }
  const Tensor yc = y.contiguous();
  const Tensor wk = taps_major(weight);
  const Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : Tensor();
  Tensor out = at::empty({g.N, g.O, g.To, y.size(3), y.size(4)}, y.options());

  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "temporal_conv_bnrelu_cpu", [&] {
    const scalar_t* yp = yc.data_ptr<scalar_t>();
    const BnVectors<scalar_t> bn(mean, scale, shift, y.scalar_type());
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.N * g.To, 1, [&](int64_t begin, int64_t end) {
      // A thread's output steps are consecutive, so neighbouring steps share kt - 1 input
      // frames: keep the last kt activated frames (slot ti % kt) instead of activating
      // each input frame once per tap.
      Tensor z = at::empty({g.kt, g.M, g.HW}, yc.options());
      std::vector<int64_t> held(g.kt, -1);  // the frame (n * T + ti) each slot holds
      for (int64_t f = begin; f < end; ++f) {
        const int64_t n = f / g.To, to = f % g.To;
        Tensor out_f = mat(op + (n * g.O * g.To + to) * g.HW, g.O, g.HW, g.To * g.HW);
        temporal_output_frame<scalar_t>(out_f, wk, bp, to, g.st, g.pt, g.T, [&](int64_t ti) {
          const int64_t slot = ti % g.kt;
          if (held[slot] != n * g.T + ti) {
            activate_frame(yp + (n * g.M * g.T + ti) * g.HW, g.T * g.HW, bn, g.M, g.HW,
                           z[slot].data_ptr<scalar_t>(), g.HW);
            held[slot] = n * g.T + ti;
          }
          return z[slot];
        });
      }
    });
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> temporal_conv_bnrelu_backward_cpu(
    const Tensor& grad_out, const Tensor& y, const Tensor& mean, const Tensor& scale,
    const Tensor& shift, const Tensor& weight, int64_t stride, int64_t padding,
    std::array<bool, 6> mask) {
  KernelScope scope;
  const TemporalGeom g = check_temporal_backward(grad_out, y, mean, scale, shift, weight, stride,
                                                 padding);
  bf16::Path path;
  if (bf16::takes_bf16_kernels(y, path))
    return bf16::temporal_conv_bnrelu_backward(path, g, grad_out, y, mean, scale, shift, weight, mask);
  if (is_reduced(y)) {
    auto [gy, gmu, gsc, gsh, gw, gb] = temporal_conv_bnrelu_backward_cpu(
        to_float(grad_out), to_float(y), mean, scale, shift, to_float(weight), stride, padding,
        mask);
    const auto dt = y.scalar_type();
    return {to_dtype(gy, dt), gmu, gsc, gsh, to_dtype(gw, dt), to_dtype(gb, dt)};
  }
  const Tensor go = grad_out.contiguous(), yc = y.contiguous();
  const Tensor wk = taps_major(weight);  // (kt, O, M)
  const int64_t frames = g.N * g.T;
  const bool need_gz = mask[0] || mask[1] || mask[2] || mask[3];

  Tensor grad_y = mask[0] ? at::empty_like(yc) : Tensor();
  // Per input frame and channel: sum(gpre*(y-mean)) and sum(gpre), gpre = gz*[pre>0], for
  // the scale, shift and mean gradients.
  Tensor bn_part = at::zeros({frames, g.M, 2}, y.options().dtype(at::kDouble));
  Tensor gw = mask[4] ? at::empty({g.kt, g.O, g.M}, y.options()) : Tensor();
  std::vector<char> tap_written(g.kt, 0);  // whether gw[k] holds a first product yet

  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "temporal_conv_bnrelu_backward_cpu", [&] {
    const scalar_t* yp = yc.data_ptr<scalar_t>();
    scalar_t* gop = const_cast<scalar_t*>(go.data_ptr<scalar_t>());
    const BnVectors<scalar_t> bn(mean, scale, shift, y.scalar_type());
    const scalar_t *mup = bn.mu(), *scp = bn.sc();
    double* bnp = bn_part.data_ptr<double>();
    // Units of whole samples or runs of one sample's steps (temporal_units). A unit's
    // activated frames z are kept in scratch memory, channel-major (M rows of `span`
    // frames), so that the weight gradient of a tap is one GEMM per sample over all its
    // frames in the unit:
    //   dW_k += grad_out[n, :, to range] (O, cnt*HW) @ z[n, :, ti range]^T
    // run at the top level (multi-threaded), in a fixed order, with no partial buffers.
    const TemporalUnits units = temporal_units(g, sizeof(scalar_t));
    const int64_t samples = units.samples, span = units.span;
    const Scratch zs = Scratch::of<scalar_t>(samples * g.M * span * g.HW);
    scalar_t* zp = zs.data<scalar_t>();
    const int64_t ld = span * g.HW;  // z row stride: channel m of unit sample s at (s*M + m)*ld
    auto go_mat = [&](int64_t n, int64_t to, int64_t cnt) {
      return mat(gop + (n * g.O * g.To + to) * g.HW, g.O, cnt * g.HW, g.To * g.HW);
    };
    for (int64_t n0 = 0; n0 < g.N; n0 += samples) {
      const int64_t n1 = std::min(g.N, n0 + samples);
      for (int64_t t0 = 0; t0 < g.T; t0 += span) {
        const int64_t t1 = std::min(g.T, t0 + span), len = t1 - t0;
        // Per frame: z, gz = sum over taps of W_k^T @ grad_out(to_k), then the BN+ReLU
        // backward (grad_y and the per-frame BN sums).
        at::parallel_for(0, (n1 - n0) * len, 1, [&](int64_t begin, int64_t end) {
          Tensor gz = need_gz ? at::empty({g.M, g.HW}, yc.options()) : Tensor();
          for (int64_t item = begin; item < end; ++item) {
            const int64_t n = n0 + item / len, ti = t0 + item % len, f = n * g.T + ti;
            const int64_t y_off = (n * g.M * g.T + ti) * g.HW;
            scalar_t* z = zp + (n - n0) * g.M * ld + (ti - t0) * g.HW;
            activate_frame(yp + y_off, g.T * g.HW, bn, g.M, g.HW, z, ld);
            if (!need_gz) continue;
            bool written = false;
            for (int64_t k = 0; k < g.kt; ++k) {
              const int64_t to = tap_output(ti, k, g.st, g.pt, g.To);
              if (to < 0) continue;
              if (written) {
                gz.addmm_(wk[k].t(), go_mat(n, to, 1));
              } else {
                at::mm_out(gz, wk[k].t(), go_mat(n, to, 1));
                written = true;
              }
            }
            if (!written) gz.zero_();
            const scalar_t* gzp = gz.data_ptr<scalar_t>();
            for (int64_t m = 0; m < g.M; ++m) {
              scalar_t* gyr = mask[0] ? grad_y.data_ptr<scalar_t>() + y_off + m * g.T * g.HW
                                      : nullptr;
              const auto [s_scale, s_shift] = rows::bn_relu_backward(
                  yp + y_off + m * g.T * g.HW, z + m * ld, gzp + m * g.HW, gyr, mup[m], scp[m],
                  g.HW);
              bnp[(f * g.M + m) * 2] = s_scale;
              bnp[(f * g.M + m) * 2 + 1] = s_shift;
            }
          }
        });
        if (!mask[4]) continue;
        // dW_k += grad_out(to) @ z(ti)^T over the unit's (to, ti = to*st - pt + k) pairs.
        auto accumulate = [&](int64_t k, const Tensor& a, const Tensor& b) {
          Tensor gwk = gw[k];
          if (tap_written[k]) {
            gwk.addmm_(a, b.t());
          } else {
            at::mm_out(gwk, a, b.t());
            tap_written[k] = 1;
          }
        };
        for (int64_t n = n0; n < n1; ++n) {
          const scalar_t* zn = zp + (n - n0) * g.M * ld;
          for (int64_t k = 0; k < g.kt; ++k) {
            if (g.st == 1) {  // the unit's frames pair with a contiguous range of outputs
              const int64_t to_lo = std::max<int64_t>(0, t0 + g.pt - k);
              const int64_t to_hi = std::min<int64_t>(g.To, t1 + g.pt - k);
              if (to_lo >= to_hi) continue;
              const int64_t cnt = to_hi - to_lo, ti_lo = to_lo - g.pt + k;
              accumulate(k, go_mat(n, to_lo, cnt),
                         mat(const_cast<scalar_t*>(zn) + (ti_lo - t0) * g.HW, g.M, cnt * g.HW, ld));
            } else {
              for (int64_t ti = t0; ti < t1; ++ti) {
                const int64_t to = tap_output(ti, k, g.st, g.pt, g.To);
                if (to < 0) continue;
                accumulate(k, go_mat(n, to, 1),
                           mat(const_cast<scalar_t*>(zn) + (ti - t0) * g.HW, g.M, g.HW, ld));
              }
            }
          }
        }
      }
    }
  });
  const Tensor bn = bn_part.sum(0);
  Tensor grad_mean = mask[1] ? (-bn.select(1, 1) * scale.to(at::kDouble)).to(mean.scalar_type())
                             : Tensor();
  // Copies (copy=true), never views of `bn`: outputs must not alias each other.
  Tensor grad_scale = mask[2] ? bn.select(1, 0).to(scale.scalar_type(), false, true) : Tensor();
  Tensor grad_shift = mask[3] ? bn.select(1, 1).to(shift.scalar_type(), false, true) : Tensor();
  for (int64_t k = 0; k < g.kt; ++k)
    if (mask[4] && !tap_written[k]) gw[k].zero_();  // a tap that only ever reads the padding
  Tensor grad_w = mask[4] ? gw.permute({1, 2, 0}).reshape(weight.sizes()).contiguous() : Tensor();
  Tensor grad_b = mask[5] ? go.sum(at::IntArrayRef{0, 2, 3, 4}) : Tensor();
  return {grad_y, grad_mean, grad_scale, grad_shift, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) {
  m.impl("temporal_conv_bnrelu", &temporal_conv_bnrelu_cpu);
  m.impl("temporal_conv_bnrelu_backward", &temporal_conv_bnrelu_backward_cpu);
}

}  // namespace r2p1d::cpu
