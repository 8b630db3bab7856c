// CPU kernel of the BatchNorm running-statistics update (nn.BatchNorm semantics).
#include <torch/library.h>

#include "frame_gemm.h"

namespace r2p1d::cpu {
namespace {

using at::Tensor;

void update_running_stats_cpu(Tensor& running_mean, Tensor& running_var,
                              Tensor& num_batches_tracked, const Tensor& mean, const Tensor& var,
                              int64_t count, std::optional<double> momentum) {
  check_running_stats(running_mean, running_var, num_batches_tracked, mean, var, count);
  int64_t* nbt = num_batches_tracked.data_ptr<int64_t>();
  *nbt += 1;
  const double factor = momentum.has_value() ? *momentum : 1.0 / static_cast<double>(*nbt);
  const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
  const Tensor mu = mean.to(at::kDouble).contiguous(), v = var.to(at::kDouble).contiguous();
  const double *mp = mu.data_ptr<double>(), *vp = v.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, running_mean.scalar_type(),
                                  "update_running_stats_cpu", [&] {
    scalar_t* rm = running_mean.data_ptr<scalar_t>();
    scalar_t* rv = running_var.data_ptr<scalar_t>();
    for (int64_t c = 0; c < running_mean.numel(); ++c) {
      rm[c] = static_cast<scalar_t>((1 - factor) * static_cast<double>(rm[c]) + factor * mp[c]);
      rv[c] = static_cast<scalar_t>((1 - factor) * static_cast<double>(rv[c]) +
                                    factor * vp[c] * unbias);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(r2p1d, CPU, m) { m.impl("update_running_stats", &update_running_stats_cpu); }

}  // namespace r2p1d::cpu
