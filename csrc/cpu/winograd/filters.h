// The Winograd filter transforms G g G^T of F(2x2, 3x3) and F(4x4, 3x3), for all filters of a
// weight at once (one matrix product), and the 1-D matrices G that the temporal F(4, 3)
// (winograd/temporal.h) shares.
#pragma once
#include <ATen/ATen.h>

namespace r2p1d::cpu::winograd {

// The filter transforms G (points x taps) of F(2, 3) and F(4, 3); the temporal F(4, 3) of
// winograd/temporal.h uses kG4 too.
constexpr double kG2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
constexpr double kG4[6][3] = {{1.0 / 4, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                              {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                              {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};

// The filter transform as a matrix: K[(a,b)][(i,j)] = G[a][i] * G[b][j], so that for
// every filter g, (G g G^T)[a][b] = sum over taps (i,j) of K[(a,b)][(i,j)] * g[i][j]. The
// transform of all filters at once is then one (P x 9) x (9 x filters) matrix product.
// Built in double and rounded once.
inline at::Tensor filter_matrix(int64_t R, const at::TensorOptions& opts) {
  const int64_t n = R + 2;
  auto G = [&](int64_t a, int64_t i) { return R == 2 ? kG2[a][i] : kG4[a][i]; };
  at::Tensor K = at::empty({n * n, 9}, at::TensorOptions().dtype(at::kDouble));
  double* k = K.data_ptr<double>();
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b)
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 3; ++j) k[(a * n + b) * 9 + i * 3 + j] = G(a, i) * G(b, j);
  return K.to(opts.dtype());
}

// The weight (Mw, Cw, 3, 3) as the source of transformed filters for R x R tiles, a chunk
// of its rows at a time. `flip` gives those of the input-gradient convolution: channels
// transposed and each filter rotated by 180 degrees, done by reversing K's tap order and
// by a transposed view (the weight is never copied).
struct Filters {
  at::Tensor w9;  // (Mw * Cw, 9): one filter per row
  at::Tensor K;   // (P, 9), the filter matrix
  int64_t Mw, Cw, R;
  bool flip;
  Filters(const at::Tensor& weight, bool flip_, int64_t R_)
      : w9(weight.contiguous().view({weight.size(0) * weight.size(1), 9})),
        K(flip_ ? filter_matrix(R_, weight.options()).flip({1}) : filter_matrix(R_, weight.options())),
        Mw(weight.size(0)), Cw(weight.size(1)), R(R_), flip(flip_) {}

  // The transformed filters u[xi] = G g G^T of weight rows [lo, hi), written to mem (P *
  // (hi - lo) * Cw values): (P, hi - lo, Cw), output channels [lo, hi) of the forward
  // convolution; flipped (P, Cw, hi - lo), input channels [lo, hi) of the input gradient's.
  // One (P x 9) x (9 x filters) matrix product.
  template <typename T>
  at::Tensor chunk(int64_t lo, int64_t hi, T* mem) const {
    const int64_t P = K.size(0), n = hi - lo;
    at::Tensor u = at::from_blob(mem, {P, n * Cw}, w9.options());
    at::mm_out(u, K, w9.narrow(0, lo * Cw, n * Cw).t());
    return flip ? u.view({P, n, Cw}).transpose(1, 2) : u.view({P, n, Cw});
  }
};

}  // namespace r2p1d::cpu::winograd
