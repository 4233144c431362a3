// Register-blocked small matrix products on packed, padded tiles: the three products of the uniformity kernel
// (Gram tile, E * X_J, E^T * X_I) all have the form
//   C[r][c] (+)= sum_k P[r * p_row + k * p_depth] * Q[k * q_row + c]
// with Q rows contiguous. Rows are a multiple of kRowBlock, columns a multiple of kColBlock<T> (tiles are padded
// with zeros), so the inner loops have fixed trip counts and vectorize.
#pragma once

#include <cstdint>

namespace hyperloss::cpu {

constexpr int64_t kRowBlock = 4;
template <typename T>
constexpr int64_t kColBlock = 64 / sizeof(T);  // 16 floats or 8 doubles: one or two SIMD registers

template <typename T, bool kAccumulate>
void tile_matmul(int64_t rows, int64_t cols, int64_t depth, const T* __restrict__ P, int64_t p_row,
                 int64_t p_depth, const T* __restrict__ Q, int64_t q_row, T* __restrict__ C, int64_t c_row) {
  constexpr int64_t MR = kRowBlock;
  constexpr int64_t NR = kColBlock<T>;
  for (int64_t r0 = 0; r0 < rows; r0 += MR) {
    for (int64_t c0 = 0; c0 < cols; c0 += NR) {
      T acc[MR][NR] = {};
      const T* p = P + r0 * p_row;
      const T* q = Q + c0;
      for (int64_t k = 0; k < depth; ++k) {
        const T* qk = q + k * q_row;
#pragma GCC unroll 8
        for (int64_t r = 0; r < MR; ++r) {
          const T pr = p[r * p_row + k * p_depth];
#pragma omp simd
          for (int64_t c = 0; c < NR; ++c) acc[r][c] += pr * qk[c];
        }
      }
      for (int64_t r = 0; r < MR; ++r) {
        T* out = C + (r0 + r) * c_row + c0;
#pragma omp simd
        for (int64_t c = 0; c < NR; ++c) out[c] = kAccumulate ? out[c] + acc[r][c] : acc[r][c];
      }
    }
  }
}

}  // namespace hyperloss::cpu
