// The Winograd plan of a spatial 3x3 stride-1 convolution on the CPU (winograd/spatial.h has
// the algorithm): whether Winograd applies and pays, the tile size, the batches of tile rows
// and the chunks of weight rows, chosen so that the scratch stays within the activations'
// size. The measurements behind each choice are in bench/NOTES.md.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace r2p1d::cpu::winograd {

// The R2P1D_WINOGRAD environment variable (read at every call, for benchmarks and
// tests): "2" or "4" forces that tile size, "off" the im2col path; unset or "auto" lets
// tile_size() choose.
inline int64_t setting() {
  const char* env = std::getenv("R2P1D_WINOGRAD");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return 0;
  if (std::strcmp(env, "2") == 0) return 2;
  if (std::strcmp(env, "4") == 0) return 4;
  if (std::strcmp(env, "off") == 0) return -1;
  TORCH_CHECK_VALUE(false, "r2p1d: expected R2P1D_WINOGRAD to be auto, 2, 4 or off, but got '",
                    env, "'");
}

// Whether the spatial convolution can take the Winograd path.
inline bool applies(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  return kh == 3 && kw == 3 && sh == 1 && sw == 1 && ph <= 2 && pw <= 2 && setting() >= 0;
}

// Whether Winograd pays for itself in inference (fused_eval), where nothing amortises the
// filter transform over a backward pass: it writes P*M*C values per call (16/9 of the
// weight for F(2x2)), while the GEMMs it shortens shrink with the tile count. On
// R(2+1)D-18's conv5_x (512 -> 1152 channels, 7x7 frames) one frame's 16 tiles lost to
// im2col and four frames' 64 tied (bench/NOTES.md). A forced R2P1D_WINOGRAD tile size
// always takes it.
inline bool pays_in_inference(int64_t F, int64_t Ho, int64_t Wo) {
  return setting() > 0 || F * ((Ho + 1) / 2) * ((Wo + 1) / 2) >= 64;
}

// The output tile size for F frames of Ho x Wo outputs. F(4x4) does 1.78x fewer
// multiply-adds than F(2x2) on frames whose sides are multiples of 4, fewer on others (the
// last tiles are part padding); it is taken where it saves at least a quarter of them and
// has enough tiles (GEMM columns, at least 128) for efficient GEMMs: R(2+1)D-18's
// conv2_x-conv4_x at batch 4. Its transformed filters are 4x the weights (F(2x2): 1.8x),
// but never whole in memory where they would outweigh the activations (chunk_rows);
// bench/NOTES.md (items 10 and 18) has the measurements.
inline int64_t tile_size(int64_t F, int64_t Ho, int64_t Wo) {
  if (const int64_t forced = setting(); forced > 0) return forced;
  const int64_t tiles2 = F * ((Ho + 1) / 2) * ((Wo + 1) / 2);
  const int64_t tiles4 = F * ((Ho + 3) / 4) * ((Wo + 3) / 4);
  return tiles4 >= 128 && 4 * 36 * tiles4 <= 3 * 16 * tiles2 ? 4 : 2;
}

// The shape of one spatial 3x3 stride-1 convolution of F frames with R x R output tiles.
struct Plan {
  int64_t F, C, H, W;  // input frames, channels, size
  int64_t M, ph, pw;   // output channels, padding
  int64_t R, N, P;     // output tile size, input tile size R + 2, points N * N
  int64_t Ho, Wo;      // output size
  int64_t TH, TW;      // tiles per frame (rows, columns)
  Plan(int64_t F_, int64_t C_, int64_t H_, int64_t W_, int64_t M_, int64_t ph_, int64_t pw_,
       int64_t R_)
      : F(F_), C(C_), H(H_), W(W_), M(M_), ph(ph_), pw(pw_), R(R_), N(R_ + 2),
        P((R_ + 2) * (R_ + 2)), Ho(H_ + 2 * ph_ - 2), Wo(W_ + 2 * pw_ - 2),
        TH((Ho + R_ - 1) / R_), TW((Wo + R_ - 1) / R_) {
    TORCH_INTERNAL_ASSERT(R == 2 || R == 4, "r2p1d: Winograd tile size must be 2 or 4");
  }
  int64_t tile_rows() const { return F * TH; }
  int64_t padded_width() const { return R * TW + 2; }  // input columns of a tile row
  // Tile rows per batch: enough columns for efficient GEMMs, while the batch's
  // transformed input and output (P*(C+M) values per tile) stay within ~24 MB; batches
  // are made equal in size (no short last batch with inefficient GEMMs).
  int64_t rows_per_batch(int64_t elem_size) const {
    const int64_t per_tile = P * (C + M) * elem_size;
    const int64_t tiles = std::max<int64_t>(256, (24 << 20) / per_tile);
    const int64_t most = std::clamp<int64_t>(tiles / TW, 1, tile_rows());
    const int64_t batches = (tile_rows() + most - 1) / most;
    return (tile_rows() + batches - 1) / batches;
  }
};

// The distance between the point planes of a transformed-tile buffer holding `n` values
// per plane: rounded up to an odd number of 64-byte lines (for float). When the planes
// are a multiple of 4 KiB apart, the streams that every tile's transform reads or writes
// share the same cache sets, which made conv2_x's weight gradient several times slower
// at some tile counts (bench/NOTES.md).
inline int64_t plane_stride(int64_t n) {
  int64_t stride = (n + 15) / 16 * 16;
  if ((stride / 16) % 2 == 0) stride += 16;
  return stride;
}

// One batch of tile rows [r0, r1): S tiles.
struct Batch {
  int64_t r0, r1, S;
};

// The batches of a plan, largest first (they are equal but for a shorter last one).
inline std::vector<Batch> batches(const Plan& p, int64_t elem_size) {
  std::vector<Batch> out;
  const int64_t rows = p.rows_per_batch(elem_size);
  for (int64_t r0 = 0; r0 < p.tile_rows(); r0 += rows) {
    const int64_t r1 = std::min(p.tile_rows(), r0 + rows);
    out.push_back({r0, r1, (r1 - r0) * p.TW});
  }
  return out;
}

// Weight rows per chunk, for `rows` rows of `row_bytes` each (a row's transformed filters
// and its transformed tiles of the first batch): chunks no larger than half the
// convolution's activations (its input and output) or 8 MB, whichever is more, but of at
// least 64 rows (GEMMs of fewer rows lose efficiency), made equal in size. Chunks cost
// some speed (bench/NOTES.md, item 16), so conv2_x, whose activations dwarf its scratch,
// takes one; conv3_x takes 3, conv4_x 4 and conv5_x 6.
inline int64_t chunk_rows(const Plan& p, int64_t rows, int64_t row_bytes, int64_t elem_size) {
  const int64_t activations = p.F * (p.C * p.H * p.W + p.M * p.Ho * p.Wo) * elem_size;
  const int64_t budget = std::max<int64_t>(8 << 20, activations / 2), least = 64;
  const int64_t wanted = (rows * row_bytes + budget - 1) / budget;
  const int64_t chunks = std::clamp<int64_t>(wanted, 1, std::max<int64_t>(1, rows / least));
  return (rows + chunks - 1) / chunks;
}

}  // namespace r2p1d::cpu::winograd
