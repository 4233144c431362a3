// Register-blocked small matrix products on packed tiles: the three products of the uniformity kernel (Gram tile,
// E * X_J, E^T * X_I) all have the form
//   C[r][c] (+)= alpha * sum_k P[r * p_row + k * p_depth] * Q[k * q_row + c]      r < rows, c < cols
// with Q rows contiguous and readable (zero-padded) up to the next multiple of kColBlock<T>, so the inner loops
// have fixed trip counts and vectorize. Any number of rows (blocks of kRowBlock, then a shorter block) and of
// columns (the last, partial column block is computed whole and stored in part).
//
// Included inside each instruction set's namespace by uniform_tile.inc (no namespace, no std code of its own: every
// function here must be compiled, and named, once per instruction set).

constexpr int64_t kRowBlock = 4;
template <typename T>
constexpr int64_t kColBlock = 64 / sizeof(T);  // 16 floats or 8 doubles: one or two SIMD registers

template <typename T, int64_t MR, bool kAccumulate>
inline void row_block_product(int64_t cols, int64_t depth, const T* __restrict__ P, int64_t p_row, int64_t p_depth,
                              const T* __restrict__ Q, int64_t q_row, T* __restrict__ C, int64_t c_row, T alpha) {
  constexpr int64_t NR = kColBlock<T>;
  for (int64_t c0 = 0; c0 < cols; c0 += NR) {
    T acc[MR][NR] = {};
    const T* q = Q + c0;
    for (int64_t k = 0; k < depth; ++k) {
      const T* qk = q + k * q_row;
#pragma GCC unroll 4
      for (int64_t r = 0; r < MR; ++r) {
        const T pr = P[r * p_row + k * p_depth];
#pragma omp simd
        for (int64_t c = 0; c < NR; ++c) acc[r][c] += pr * qk[c];
      }
    }
    const int64_t width = cols - c0 < NR ? cols - c0 : NR;
    for (int64_t r = 0; r < MR; ++r) {
      T* out = C + r * c_row + c0;
      if (width == NR) {
#pragma omp simd
        for (int64_t c = 0; c < NR; ++c) out[c] = kAccumulate ? out[c] + alpha * acc[r][c] : alpha * acc[r][c];
      } else {
        for (int64_t c = 0; c < width; ++c) out[c] = kAccumulate ? out[c] + alpha * acc[r][c] : alpha * acc[r][c];
      }
    }
  }
}

template <typename T, bool kAccumulate>
void tile_matmul(int64_t rows, int64_t cols, int64_t depth, const T* __restrict__ P, int64_t p_row, int64_t p_depth,
                 const T* __restrict__ Q, int64_t q_row, T* __restrict__ C, int64_t c_row, T alpha = T(1)) {
  int64_t r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock)
    row_block_product<T, kRowBlock, kAccumulate>(cols, depth, P + r * p_row, p_row, p_depth, Q, q_row, C + r * c_row,
                                                 c_row, alpha);
  const T* p = P + r * p_row;
  T* c = C + r * c_row;
  switch (rows - r) {
    case 3: row_block_product<T, 3, kAccumulate>(cols, depth, p, p_row, p_depth, Q, q_row, c, c_row, alpha); break;
    case 2: row_block_product<T, 2, kAccumulate>(cols, depth, p, p_row, p_depth, Q, q_row, c, c_row, alpha); break;
    case 1: row_block_product<T, 1, kAccumulate>(cols, depth, p, p_row, p_depth, Q, q_row, c, c_row, alpha); break;
    default: break;
  }
}
