// Register-blocked small matrix products on packed tiles: the three products of the uniformity kernel (Gram tile,
// E * X_J, E^T * X_I) all have the form
//   C[r][c] (+)= alpha * sum_k P[r * p_row + k * p_depth] * Q[k * q_row + c]      r < rows, c < cols
// with Q rows contiguous and readable (zero-padded) up to the next multiple of kColBlock<T> (64 bytes).
//
// The micro-kernel keeps an MR x (NV vectors) block of C in registers for the whole depth: per k it loads NV
// vectors of Q, broadcasts MR scalars of P and issues MR * NV independent fused multiply-adds. MR * NV is chosen
// per instruction set so that there are enough independent accumulators to cover the FMA latency at full
// throughput (latency 4 x 2 ports: >= 8) and few loads per FMA, while accumulators, Q vectors and a broadcast fit
// the register file (below; measured on the Gram and E * X tiles of 64 x 64 x 128 against 4 x 4 / 4 x 2 / 4 x 2:
// 10-20% faster). Blocks at the edges (fewer rows, fewer vectors of columns) take smaller instances of the same
// kernel; the last partial vector is computed whole and stored in part.
//
// Included inside each instruction set's namespace by uniform_tile.inc (no namespace, no std code of its own: every
// function here must be compiled, and named, once per instruction set). GCC/Clang vector extensions, not
// intrinsics: the one source compiles to SSE2, AVX2 or AVX-512 code by the unit's flags.

#if defined(__AVX512F__)
constexpr int64_t kVectorBytes = 64;
constexpr int64_t kMicroRows = 6, kMicroVectors = 4;  // 24 accumulators + 4 Q vectors of 32 registers
#elif defined(__AVX__)
constexpr int64_t kVectorBytes = 32;
constexpr int64_t kMicroRows = 6, kMicroVectors = 2;  // 12 + 2 + a broadcast of 16
#else
constexpr int64_t kVectorBytes = 16;
constexpr int64_t kMicroRows = 4, kMicroVectors = 3;  // 12 + 3 + a broadcast of 16 (no FMA: mul and add)
#endif

// Unaligned, aliasing vectors of kVectorBytes (the rows they load may start at any element).
typedef float FloatVector __attribute__((vector_size(kVectorBytes), aligned(alignof(float)), may_alias));
typedef double DoubleVector __attribute__((vector_size(kVectorBytes), aligned(alignof(double)), may_alias));
template <typename T>
struct VectorOf;
template <>
struct VectorOf<float> {
  using type = FloatVector;
};
template <>
struct VectorOf<double> {
  using type = DoubleVector;
};
template <typename T>
using Vector = typename VectorOf<T>::type;
template <typename T>
constexpr int64_t kLanes = kVectorBytes / static_cast<int64_t>(sizeof(T));

template <typename T>
constexpr int64_t kColBlock = 64 / sizeof(T);  // the padding of Q's rows: 16 floats or 8 doubles

template <typename T>
__attribute__((always_inline)) inline Vector<T> load_vector(const T* p) {
  return *reinterpret_cast<const Vector<T>*>(p);
}

// s in every lane (s - 0 is s exactly, -0 and NaN included, so this folds to a plain broadcast; s + 0 would not).
template <typename T>
__attribute__((always_inline)) inline Vector<T> broadcast(T s) {
  return s - Vector<T>{};
}

// C[r][c0 + c] (+)= alpha * acc, r < MR, c < NV vectors; only the first `width` columns are stored.
template <typename T, int64_t MR, int64_t NV, bool kAccumulate>
__attribute__((always_inline)) inline void micro_kernel(int64_t depth, const T* __restrict__ P, int64_t p_row,
                                                        int64_t p_depth, const T* __restrict__ Q, int64_t q_row,
                                                        T* __restrict__ C, int64_t c_row, T alpha, int64_t width) {
  using V = Vector<T>;
  constexpr int64_t W = kLanes<T>;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int64_t r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int64_t v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t k = 0; k < depth; ++k) {
    const T* qk = Q + k * q_row;
    V q[NV];
#pragma GCC unroll 16
    for (int64_t v = 0; v < NV; ++v) q[v] = load_vector(qk + v * W);
    const T* pk = P + k * p_depth;
#pragma GCC unroll 16
    for (int64_t r = 0; r < MR; ++r) {
      const V p = broadcast(pk[r * p_row]);
#pragma GCC unroll 16
      for (int64_t v = 0; v < NV; ++v) acc[r][v] += p * q[v];
    }
  }
  const V a = broadcast(alpha);
#pragma GCC unroll 16
  for (int64_t r = 0; r < MR; ++r) {
    T* out = C + r * c_row;
#pragma GCC unroll 16
    for (int64_t v = 0; v < NV; ++v) {
      const int64_t lanes = width - v * W;
      if (lanes >= W) {
        V* o = reinterpret_cast<V*>(out + v * W);
        *o = kAccumulate ? *o + a * acc[r][v] : a * acc[r][v];
      } else if (lanes > 0) {  // the block's last, partial vector
        T part[W];
        *reinterpret_cast<V*>(part) = a * acc[r][v];
        for (int64_t c = 0; c < lanes; ++c) out[v * W + c] = kAccumulate ? out[v * W + c] + part[c] : part[c];
      }
    }
  }
}

// The last rows (fewer than MR) of a column block: one micro-kernel instance of their count.
template <typename T, int64_t M, int64_t NV, bool kAccumulate>
__attribute__((always_inline)) inline void remainder_rows(int64_t left, int64_t width, int64_t depth,
                                                          const T* __restrict__ P, int64_t p_row, int64_t p_depth,
                                                          const T* __restrict__ Q, int64_t q_row, T* __restrict__ C,
                                                          int64_t c_row, T alpha) {
  if constexpr (M > 0) {
    if (left == M)
      micro_kernel<T, M, NV, kAccumulate>(depth, P, p_row, p_depth, Q, q_row, C, c_row, alpha, width);
    else
      remainder_rows<T, M - 1, NV, kAccumulate>(left, width, depth, P, p_row, p_depth, Q, q_row, C, c_row, alpha);
  }
}

// All row blocks of one column block of NV vectors.
template <typename T, int64_t NV, bool kAccumulate>
inline void column_block(int64_t rows, int64_t width, int64_t depth, const T* __restrict__ P, int64_t p_row,
                         int64_t p_depth, const T* __restrict__ Q, int64_t q_row, T* __restrict__ C, int64_t c_row,
                         T alpha) {
  constexpr int64_t MR = kMicroRows;
  int64_t r = 0;
  for (; r + MR <= rows; r += MR)
    micro_kernel<T, MR, NV, kAccumulate>(depth, P + r * p_row, p_row, p_depth, Q, q_row, C + r * c_row, c_row, alpha,
                                         width);
  remainder_rows<T, MR - 1, NV, kAccumulate>(rows - r, width, depth, P + r * p_row, p_row, p_depth, Q, q_row,
                                             C + r * c_row, c_row, alpha);
}

template <typename T, bool kAccumulate>
void tile_matmul(int64_t rows, int64_t cols, int64_t depth, const T* __restrict__ P, int64_t p_row, int64_t p_depth,
                 const T* __restrict__ Q, int64_t q_row, T* __restrict__ C, int64_t c_row, T alpha = T(1)) {
  static_assert(kMicroVectors <= 4, "the column remainders handled below");
  constexpr int64_t W = kLanes<T>, NV = kMicroVectors, block = NV * W;
  int64_t c0 = 0;
  for (; c0 + block <= cols; c0 += block)
    column_block<T, NV, kAccumulate>(rows, block, depth, P, p_row, p_depth, Q + c0, q_row, C + c0, c_row, alpha);
  if (c0 == cols) return;
  // The last columns: as many whole vectors as Q's padding allows reading (64 bytes at a time), stored in part.
  const int64_t width = cols - c0, vectors = (width + W - 1) / W;  // 1 .. NV
  const T* q = Q + c0;
  T* c = C + c0;
  if constexpr (NV >= 4) {
    if (vectors == 4) return column_block<T, 4, kAccumulate>(rows, width, depth, P, p_row, p_depth, q, q_row, c, c_row, alpha);
  }
  if constexpr (NV >= 3) {
    if (vectors == 3) return column_block<T, 3, kAccumulate>(rows, width, depth, P, p_row, p_depth, q, q_row, c, c_row, alpha);
  }
  if constexpr (NV >= 2) {
    if (vectors == 2) return column_block<T, 2, kAccumulate>(rows, width, depth, P, p_row, p_depth, q, q_row, c, c_row, alpha);
  }
  column_block<T, 1, kAccumulate>(rows, width, depth, P, p_row, p_depth, q, q_row, c, c_row, alpha);
}
