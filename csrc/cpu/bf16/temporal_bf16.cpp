// The bfloat16 temporal conv (kernels.h): the activation z = relu((y-mean)*scale+shift) is
// made in float32 one frame at a time and rounded to bfloat16 (the GEMM operand, as
// autocast rounds the BatchNorm+ReLU output that feeds eager's conv); each output frame is
// the sum over its in-range taps of W_k z(ti_k), accumulated in float32 and rounded once.
#include <ATen/Parallel.h>

#include "cpu/bf16/gemm.h"
#include "cpu/bf16/kernels.h"
#include "cpu/bf16/rows.h"
#include "cpu/frame_gemm.h"
#include "cpu/scratch.h"

namespace r2p1d::cpu::bf16 {
namespace {

using at::Tensor;

// The BatchNorm vectors in float32.
struct Bn {
  Tensor mean, scale, shift;
  Bn(const Tensor& m, const Tensor& sc, const Tensor& sh)
      : mean(m.to(at::kFloat).contiguous()), scale(sc.to(at::kFloat).contiguous()),
        shift(sh.to(at::kFloat).contiguous()) {}
  const float* mu() const { return mean.data_ptr<float>(); }
  const float* sc() const { return scale.data_ptr<float>(); }
  const float* sh() const { return shift.data_ptr<float>(); }
};

// z (M rows at stride z_ld, bfloat16) of one frame of y (M rows at stride y_ld); buf: 2*HW
// floats.
void activate_frame(const Bf* y, int64_t y_ld, const Bn& bn, int64_t M, int64_t HW, Bf* z,
                    int64_t z_ld, float* buf) {
  for (int64_t m = 0; m < M; ++m) {
    widen(y + m * y_ld, buf, HW);
    rows::bn_relu(static_cast<const float*>(buf), buf + HW, bn.mu()[m], bn.sc()[m], bn.sh()[m], HW);
    narrow(buf + HW, z + m * z_ld, HW);
  }
}

}  // namespace

Tensor temporal_conv_bnrelu(Path path, const TemporalGeom& g, const Tensor& y, const Tensor& mean,
                            const Tensor& scale, const Tensor& shift, const Tensor& weight,
                            const std::optional<Tensor>& bias) {
  const Tensor yc = y.contiguous();
  const Tensor wk = taps_major(weight);  // (kt, O, M) bfloat16
  const Tensor b = bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const Bn bn(mean, scale, shift);
  Tensor out = at::empty({g.N, g.O, g.To, y.size(3), y.size(4)}, y.options());
  const Bf* yp = yc.data_ptr<Bf>();
  const Bf* wp = wk.data_ptr<Bf>();
  Bf* op = out.data_ptr<Bf>();
  at::parallel_for(0, g.N * g.To, 1, [&](int64_t begin, int64_t end) {
    // The last kt activated frames (slot ti % kt): a thread's output steps are consecutive,
    // so neighbours share kt - 1 of them. Then the frame's float32 accumulator.
    std::vector<Bf> z(g.kt * g.M * g.HW);
    std::vector<float> acc(g.O * g.HW), buf(2 * g.HW);
    std::vector<int64_t> held(g.kt, -1);
    for (int64_t f = begin; f < end; ++f) {
      const int64_t n = f / g.To, to = f % g.To;
      bool written = false;
      for (int64_t k = 0; k < g.kt; ++k) {
        const int64_t ti = tap_input(to, k, g.st, g.pt, g.T);
        if (ti < 0) continue;
        Bf* zs = z.data() + (ti % g.kt) * g.M * g.HW;
        if (held[ti % g.kt] != n * g.T + ti) {
          activate_frame(yp + (n * g.M * g.T + ti) * g.HW, g.T * g.HW, bn, g.M, g.HW, zs, g.HW,
                         buf.data());
          held[ti % g.kt] = n * g.T + ti;
        }
        gemm(path, {bits(wp + k * g.O * g.M), g.O, g.M, g.M, 1}, {bits(zs), g.M, g.HW, g.HW, 1},
             acc.data(), g.HW, written);
        written = true;
      }
      if (!written) std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t o = 0; o < g.O; ++o) {
        float* row = acc.data() + o * g.HW;
        rows::output_epilogue(row, static_cast<const float*>(nullptr), bp ? bp[o] : 0.f, false, g.HW);
        narrow(row, op + ((n * g.O + o) * g.To + to) * g.HW, g.HW);
      }
    }
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> temporal_conv_bnrelu_backward(
    Path path, const TemporalGeom& g, const Tensor& grad_out, const Tensor& y, const Tensor& mean,
    const Tensor& scale, const Tensor& shift, const Tensor& weight, std::array<bool, 6> mask) {
  const Tensor go = grad_out.contiguous(), yc = y.contiguous();
  const Tensor wk = taps_major(weight);  // (kt, O, M)
  const Bn bn(mean, scale, shift);
  const bool need_gz = mask[0] || mask[1] || mask[2] || mask[3];
  Tensor grad_y = mask[0] ? at::empty_like(yc) : Tensor();
  Tensor bn_part = at::zeros({g.N * g.T, g.M, 2}, y.options().dtype(at::kDouble));
  Tensor gw = mask[4] ? at::zeros({g.kt, g.O, g.M}, y.options().dtype(at::kFloat)) : Tensor();
  const Bf *yp = yc.data_ptr<Bf>(), *gop = go.data_ptr<Bf>(), *wp = wk.data_ptr<Bf>();
  double* bnp = bn_part.data_ptr<double>();
  // Units of whole samples or runs of one sample's steps (temporal_units), z kept
  // channel-major (M rows of `span` frames) so that a tap's weight gradient is one GEMM
  // per sample over the unit's frames, as in the float32 kernel
  // (csrc/cpu/temporal_conv_cpu.cpp).
  const TemporalUnits units = temporal_units(g, sizeof(Bf));
  const int64_t samples = units.samples, span = units.span;
  const Scratch zs = Scratch::of<Bf>(samples * g.M * span * g.HW);
  Bf* zp = zs.data<Bf>();
  const int64_t ld = span * g.HW;
  auto go_view = [&](int64_t n, int64_t to, int64_t cnt) {
    return View{bits(gop + (n * g.O * g.To + to) * g.HW), g.O, cnt * g.HW, g.To * g.HW, 1};
  };
  for (int64_t n0 = 0; n0 < g.N; n0 += samples) {
    const int64_t n1 = std::min(g.N, n0 + samples);
    for (int64_t t0 = 0; t0 < g.T; t0 += span) {
      const int64_t t1 = std::min(g.T, t0 + span), len = t1 - t0;
      // Per frame: z; gz = sum over taps of W_k^T grad_out(to_k) in float32; the
      // BatchNorm+ReLU backward (grad_y and the frame's BatchNorm sums).
      at::parallel_for(0, (n1 - n0) * len, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> gz(need_gz ? g.M * g.HW : 0), buf(4 * g.HW);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = n0 + item / len, ti = t0 + item % len, f = n * g.T + ti;
          const int64_t y_off = (n * g.M * g.T + ti) * g.HW;
          Bf* z = zp + (n - n0) * g.M * ld + (ti - t0) * g.HW;
          activate_frame(yp + y_off, g.T * g.HW, bn, g.M, g.HW, z, ld, buf.data());
          if (!need_gz) continue;
          bool written = false;
          for (int64_t k = 0; k < g.kt; ++k) {
            const int64_t to = tap_output(ti, k, g.st, g.pt, g.To);
            if (to < 0) continue;
            gemm(path, View{bits(wp + k * g.O * g.M), g.O, g.M, g.M, 1}.t(), go_view(n, to, 1),
                 gz.data(), g.HW, written);
            written = true;
          }
          if (!written) std::fill(gz.begin(), gz.end(), 0.f);
          float *yf = buf.data(), *zf = yf + g.HW, *gyf = zf + g.HW;
          for (int64_t m = 0; m < g.M; ++m) {
            widen(yp + y_off + m * g.T * g.HW, yf, g.HW);
            widen(z + m * ld, zf, g.HW);
            const auto [s_scale, s_shift] = rows::bn_relu_backward(
                static_cast<const float*>(yf), static_cast<const float*>(zf),
                static_cast<const float*>(gz.data() + m * g.HW), mask[0] ? gyf : nullptr,
                bn.mu()[m], bn.sc()[m], g.HW);
            if (mask[0]) narrow(gyf, grad_y.data_ptr<Bf>() + y_off + m * g.T * g.HW, g.HW);
            bnp[(f * g.M + m) * 2] = s_scale;
            bnp[(f * g.M + m) * 2 + 1] = s_shift;
          }
        }
      });
      if (!mask[4]) continue;
      // dW_k += grad_out(to) z(ti)^T over the unit's (to, ti = to*st - pt + k) pairs.
      for (int64_t n = n0; n < n1; ++n) {
        const Bf* zn = zp + (n - n0) * g.M * ld;
        for (int64_t k = 0; k < g.kt; ++k) {
          float* gwk = gw.data_ptr<float>() + k * g.O * g.M;
          auto add = [&](int64_t to, int64_t ti, int64_t cnt) {
            gemm(path, go_view(n, to, cnt), View{bits(zn + (ti - t0) * g.HW), g.M, cnt * g.HW, ld, 1}.t(),
                 gwk, g.M, true);
          };
          if (g.st == 1) {  // the unit's frames pair with a contiguous range of outputs
            const int64_t to_lo = std::max<int64_t>(0, t0 + g.pt - k);
            const int64_t to_hi = std::min<int64_t>(g.To, t1 + g.pt - k);
            if (to_lo < to_hi) add(to_lo, to_lo - g.pt + k, to_hi - to_lo);
          } else {
            for (int64_t ti = t0; ti < t1; ++ti) {
              const int64_t to = tap_output(ti, k, g.st, g.pt, g.To);
              if (to >= 0) add(to, ti, 1);
            }
          }
        }
      }
    }
  }
  const Tensor bns = bn_part.sum(0);
  Tensor grad_mean = mask[1] ? (-bns.select(1, 1) * scale.to(at::kDouble)).to(mean.scalar_type())
                             : Tensor();
  Tensor grad_scale = mask[2] ? bns.select(1, 0).to(scale.scalar_type(), false, true) : Tensor();
  Tensor grad_shift = mask[3] ? bns.select(1, 1).to(shift.scalar_type(), false, true) : Tensor();
  Tensor grad_w = mask[4] ? gw.permute({1, 2, 0}).reshape(weight.sizes()).to(weight.scalar_type())
                          : Tensor();
  Tensor grad_b = mask[5] ? go.sum(at::IntArrayRef{0, 2, 3, 4}) : Tensor();
  return {grad_y, grad_mean, grad_scale, grad_shift, grad_w, grad_b};
}

}  // namespace r2p1d::cpu::bf16
