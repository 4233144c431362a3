// The arithmetic of one tile of pairs, the part of the uniformity kernel worth vectorizing for each instruction set.
// It is compiled once per instruction set (uniform_tile.inc, included by tile_generic.cpp, tile_avx2.cpp and
// tile_avx512.cpp, each in a namespace of its own and with its own compiler flags) and chosen at run time
// (isa.cpp), so one build runs on any x86-64 CPU and uses AVX2 or AVX-512 where present. This header holds only
// types and declarations: no code that a compiler could emit once per instruction set and let the linker mix up.
#pragma once

#include <cstdint>

namespace hyperloss::cpu {

constexpr int64_t kTile = 64;         // rows on each side of a pair tile (a multiple of every column block)
constexpr int64_t kDepthChunk = 256;  // Gram columns per pass; longer rows add their chunks in double

// One tile of pairs: packed rows [xi, xi + vi) against [xj, xj + vj) (vi, vj <= kTile), and their squared norms
// (readable kTile entries past each start). `diagonal`: xi == xj, only the pairs j > i exist. xj_panel: the j rows
// transposed once for the whole call (element (j, c) at xj_panel[c * kTile + j], zero past vj), or null: the
// tile transposes them itself.
template <typename T>
struct TileView {
  const T* xi;
  const T* xj;
  const T* xj_panel;
  const T* ni;
  const T* nj;
  int64_t vi, vj, padded_cols;
  bool diagonal;
};

// Per-thread scratch: e (kTile x kTile), side (kDepthChunk x kTile, used where the tile has no xj_panel), gram
// (kTile x kTile doubles, or null when the rows fit one depth chunk).
template <typename T>
struct TileScratch {
  T* e;
  T* side;
  double* gram;
};

template <typename T>
struct TileKernels {
  // e := squared distances of the tile's pairs (+inf where a pair does not exist); returns their minimum.
  T (*distances)(const TileView<T>& tile, const TileScratch<T>& scratch);
  // e := exp(-t (d - d_min)) (0 for absent pairs, 1 for the closest), given t_log2e = t log2(e) in T (inf beyond
  // its range); row_sums[i], col_sums[j] (kTile each, filled); returns the tile's total in double (each row's sum
  // taken as sum e, or as its count minus sum (1 - e) where that keeps more digits).
  double (*exponentials)(const TileView<T>& tile, T* e, T d_min, T t_log2e, T* row_sums, T* col_sums);
  // Per-row weights (see uniform.cpp), on e = the distances() of the tile, with the log2-weights bi (vi entries)
  // and bj (vj) (<= 0, -inf for weight 0), t_log2e = t' log2(e) in double (inf beyond its range), in log2 units
  // and relative to -t' d_min: rel_ij = -t_log2e (d_ij - d_min) (0 for the closest pairs, -inf for absent ones).
  //   row side:    row_top[i] = max_j (bj_j + rel_ij),  row_part[i] = sum_j 2^(bj_j + rel_ij - row_top[i])
  //   column side: col_top[j] = max_i (bi_i + rel_ij),  col_part[j] = sum_i 2^(bi_i + rel_ij - col_top[j])
  //                (only where col_top is not null)
  //   *top = max_ij (bi_i + bj_j + rel_ij),  e := 2^(bi_i + bj_j + rel_ij - *top), formed as the row side's term times
  //   2^(bi_i + row_top[i] - *top) (both <= 1), and its row_sums, col_sums (kTile each, filled) and total (returned,
  //   in double). Where no pair has positive weight, *top is -inf and e is 0. Sides without a top are -inf / 0.
  double (*weighted_exponentials)(const TileView<T>& tile, T* e, T d_min, double t_log2e, const double* bi,
                                  const double* bj, T* row_sums, T* col_sums, double* top, double* row_top,
                                  double* row_part, double* col_top, double* col_part);
  // C[r][c] += alpha * sum_k P[r * p_row + k * p_depth] * Q[k * q_row + c], r < rows, c < cols; Q readable up to
  // the next multiple of 64 bytes of columns.
  void (*accumulate)(int64_t rows, int64_t cols, int64_t depth, const T* P, int64_t p_row, int64_t p_depth,
                     const T* Q, int64_t q_row, T* C, int64_t c_row, T alpha);
};

// The kernels for the instruction set chosen at run time (see isa.cpp).
const TileKernels<float>& tile_kernels(float);
const TileKernels<double>& tile_kernels(double);

// Each instruction set's kernels (defined in tile_<isa>.cpp).
#define HYPERLOSS_DECLARE_TILE_KERNELS(isa)       \
  namespace isa {                                 \
  extern const TileKernels<float> kFloatKernels;   \
  extern const TileKernels<double> kDoubleKernels; \
  }
HYPERLOSS_DECLARE_TILE_KERNELS(generic)
HYPERLOSS_DECLARE_TILE_KERNELS(avx2)
HYPERLOSS_DECLARE_TILE_KERNELS(avx512)
#undef HYPERLOSS_DECLARE_TILE_KERNELS

}  // namespace hyperloss::cpu
