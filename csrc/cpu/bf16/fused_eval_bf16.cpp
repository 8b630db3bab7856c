// The bfloat16 inference fusion (kernels.h; the float32 kernel is csrc/cpu/fused_eval_cpu.cpp):
// per unit of whole samples (or of a run of output steps of one large sample), the
// activated intermediate z = relu(spatial(x) + bias) of the unit's input frames, by the
// implicit bfloat16 GEMM (conv_packer.h), rounded to bfloat16 into scratch memory frame-major (frame j,
// channel m at z + (j*M + m)*Ho*Wo); then each output frame is one GEMM over its in-range
// taps (K = taps*M, consecutive frames of z) with bias, residual and ReLU applied in
// float32 while the frame is in cache, and rounded once.
#include <ATen/Parallel.h>

#include "cpu/bf16/conv_packer.h"
#include "cpu/bf16/gemm.h"
#include "cpu/bf16/kernels.h"
#include "cpu/bf16/rows.h"
#include "cpu/frame_gemm.h"
#include "cpu/scratch.h"

namespace r2p1d::cpu::bf16 {

using at::Tensor;

Tensor fused_eval(Path path, const SpatialGeom& g, const TemporalGeom& tg, const Tensor& x,
                  const Tensor& spatial_weight, const std::optional<Tensor>& spatial_bias,
                  const Tensor& temporal_weight, const std::optional<Tensor>& temporal_bias,
                  const std::optional<Tensor>& residual, bool relu) {
  const int64_t plane = g.out_plane(), O = tg.O, To = tg.To, M = g.M, kdim = g.C * g.kh * g.kw;
  const Tensor xc = x.contiguous();
  const Tensor w2 = spatial_weight.reshape({M, kdim}).contiguous();
  const Tensor wk = temporal_weight.reshape({O, M, tg.kt}).permute({0, 2, 1}).contiguous()
                        .view({O, tg.kt * M});  // columns in (tap, channel) order
  auto floats = [](const std::optional<Tensor>& t) {
    return t.has_value() && t->defined() ? t->to(at::kFloat).contiguous() : Tensor();
  };
  const Tensor bs = floats(spatial_bias), bt = floats(temporal_bias);
  const float* bsp = bs.defined() ? bs.data_ptr<float>() : nullptr;
  const float* btp = bt.defined() ? bt.data_ptr<float>() : nullptr;
  const Tensor res = residual.has_value() && residual->defined()
                         ? residual->to(x.scalar_type()).contiguous() : Tensor();
  const Bf* rp = res.defined() ? res.data_ptr<Bf>() : nullptr;
  Tensor out = at::empty({g.N, O, To, g.Ho, g.Wo}, x.options());
  const Bf *xp = xc.data_ptr<Bf>(), *w2p = w2.data_ptr<Bf>(), *wkp = wk.data_ptr<Bf>();
  Bf* op = out.data_ptr<Bf>();

  // Units: whole samples while z stays within ~16 MB, else runs of output steps.
  const int64_t frame_bytes = M * plane * 2, budget = 16 << 20;
  const int64_t samples = std::clamp<int64_t>(budget / (frame_bytes * g.T), 1, g.N);
  const bool whole = frame_bytes * g.T <= budget;
  const int64_t run = whole ? To : std::clamp<int64_t>(budget / (frame_bytes * tg.st), 1, To);
  const int64_t unit_frames = whole ? samples * g.T : std::min<int64_t>(g.T, run * tg.st + tg.kt);
  // The spatial GEMM over groups of frames with >= 512 columns (its float32 output stays
  // in L2 for the epilogue).
  const int64_t group = std::clamp<int64_t>((512 + plane - 1) / plane, 1, unit_frames);
  const Scratch zs = Scratch::of<Bf>(unit_frames * M * plane);
  const Scratch outs = Scratch::of<float>(M * group * plane);
  Bf* zp = zs.data<Bf>();
  float* sp = outs.data<float>();
  const int64_t threads = at::get_num_threads();

  for (int64_t n0 = 0; n0 < g.N; n0 += samples) {
    const int64_t n1 = std::min(g.N, n0 + samples);
    for (int64_t to0 = 0; to0 < To; to0 += run) {
      const int64_t to1 = std::min(To, to0 + run);
      int64_t lo = 0, hi = g.T;  // the input steps the unit's outputs read
      if (!whole) {
        lo = std::max<int64_t>(0, to0 * tg.st - tg.pt);
        hi = std::min<int64_t>(g.T, (to1 - 1) * tg.st - tg.pt + tg.kt);
      }
      const int64_t span = std::max<int64_t>(hi - lo, 0), frames = (n1 - n0) * span;
      for (int64_t j0 = 0; j0 < frames; j0 += group) {
        const int64_t cnt = std::min(group, frames - j0), ld = cnt * plane;
        std::vector<int64_t> bases(cnt);
        for (int64_t j = 0; j < cnt; ++j) {
          const int64_t u = j0 + j;  // the unit's frame u: sample n0 + u / span, step lo + u % span
          bases[j] = frame_offset((n0 + u / span) * g.T + lo + u % span, g.C, g.T, g.in_plane());
        }
        const ConvGeom cg{g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.Ho, g.Wo};
        gemm(path, {bits(w2p), M, kdim, kdim, 1},
             ConvPacker(bits(xp), g.T * g.in_plane(), std::move(bases), cg), sp, ld, false);
        at::parallel_for(0, cnt * M, 1, [&](int64_t begin, int64_t end) {
          for (int64_t item = begin; item < end; ++item) {
            const int64_t j = item / M, m = item % M;
            float* row = sp + m * ld + j * plane;
            rows::output_epilogue(row, static_cast<const float*>(nullptr), bsp ? bsp[m] : 0.f,
                                  true, plane);
            narrow(row, zp + ((j0 + j) * M + m) * plane, plane);
          }
        });
      }
      // The temporal conv: one GEMM per (sample, output step) over its in-range taps.
      const int64_t steps = to1 - to0;
      auto frames_out = [&](int64_t begin, int64_t end) {
        std::vector<float> acc(O * plane), rbuf(res.defined() ? plane : 0);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = n0 + item / steps, to = to0 + item % steps;
          const int64_t first = to * tg.st - tg.pt;  // the input step of tap 0
          const int64_t k0 = std::max<int64_t>(0, -first), k1 = std::min<int64_t>(tg.kt, g.T - first);
          if (k1 > k0) {
            const Bf* z = zp + ((n - n0) * span + first + k0 - lo) * M * plane;
            gemm(path, {bits(wkp + k0 * M), O, (k1 - k0) * M, tg.kt * M, 1},
                 {bits(z), (k1 - k0) * M, plane, plane, 1}, acc.data(), plane, false);
          } else {
            std::fill(acc.begin(), acc.end(), 0.f);
          }
          for (int64_t o = 0; o < O; ++o) {
            const int64_t at = ((n * O + o) * To + to) * plane;
            float* row = acc.data() + o * plane;
            if (rp != nullptr) widen(rp + at, rbuf.data(), plane);
            rows::output_epilogue(row, rp ? static_cast<const float*>(rbuf.data()) : nullptr,
                                  btp ? btp[o] : 0.f, relu, plane);
            narrow(row, op + at, plane);
          }
        }
      };
      // One output frame per thread; with fewer frames than threads, each GEMM is spread
      // over the threads instead.
      if ((n1 - n0) * steps >= threads) {
        at::parallel_for(0, (n1 - n0) * steps, 1, frames_out);
      } else {
        frames_out(0, (n1 - n0) * steps);
      }
    }
  }
  return out;
}

}  // namespace r2p1d::cpu::bf16
