// Register-blocked small matrix products on packed tiles: the three products of the uniformity kernel (Gram tile,
// E * X_J, E^T * X_I) all have the form
//   C[r][c] (+)= alpha * sum_k P[r * p_row + k * p_depth] * Q[k * q_row + c]      r < rows, c < cols
// with Q rows contiguous and readable (zero-padded) up to the next multiple of kColBlock<T> (64 bytes).
//
// The micro-kernel keeps an MR x (NV vectors) block of C in registers for the whole depth: per k it loads NV
// vectors of Q, broadcasts MR scalars of P and issues MR * NV independent fused multiply-adds. MR * NV is chosen
// per instruction set so that there are enough independent accumulators to cover the FMA latency at full
// throughput (latency 4 x 2 ports: >= 8) while accumulators, Q vectors and a broadcast fit the register file
// (AVX-512: 32 registers, 4 x 4 = 16 accumulators; AVX2 and SSE: 16 registers, 4 x 2 = 8). Blocks at the edges
// (fewer rows, fewer vectors of columns) take smaller instances of the same kernel; the last partial vector is
// computed whole and stored in part.
//
// Included inside each instruction set's namespace by uniform_tile.inc (no namespace, no std code of its own: every
// function here must be compiled, and named, once per instruction set). GCC/Clang vector extensions, not
// intrinsics: the one source compiles to SSE2, AVX2 or AVX-512 code by the unit's flags.

#if defined(__AVX512F__)
constexpr int64_t kVectorBytes = 64;
constexpr int64_t kMicroRows = 4, kMicroVectors = 4;
#elif defined(__AVX__)
constexpr int64_t kVectorBytes = 32;
constexpr int64_t kMicroRows = 4, kMicroVectors = 2;
#else
constexpr int64_t kVectorBytes = 16;
constexpr int64_t kMicroRows = 4, kMicroVectors = 2;
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
    if (width == NV * W) {
#pragma GCC unroll 16
      for (int64_t v = 0; v < NV; ++v) {
        V* o = reinterpret_cast<V*>(out + v * W);
        *o = kAccumulate ? *o + a * acc[r][v] : a * acc[r][v];
      }
    } else {
      for (int64_t c = 0; c < width; ++c) {
        const T value = alpha * acc[r][c / W][c % W];
        out[c] = kAccumulate ? out[c] + value : value;
      }
    }
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
  const T* p = P + r * p_row;
  T* c = C + r * c_row;
  switch (rows - r) {
    case 3: micro_kernel<T, 3, NV, kAccumulate>(depth, p, p_row, p_depth, Q, q_row, c, c_row, alpha, width); break;
    case 2: micro_kernel<T, 2, NV, kAccumulate>(depth, p, p_row, p_depth, Q, q_row, c, c_row, alpha, width); break;
    case 1: micro_kernel<T, 1, NV, kAccumulate>(depth, p, p_row, p_depth, Q, q_row, c, c_row, alpha, width); break;
    default: break;
  }
}

template <typename T, bool kAccumulate>
void tile_matmul(int64_t rows, int64_t cols, int64_t depth, const T* __restrict__ P, int64_t p_row, int64_t p_depth,
                 const T* __restrict__ Q, int64_t q_row, T* __restrict__ C, int64_t c_row, T alpha = T(1)) {
  static_assert(kMicroRows == 4 && kMicroVectors <= 4, "the remainders handled below");
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
    if (vectors == 3) return column_block<T, 3, kAccumulate>(rows, width, depth, P, p_row, p_depth, q, q_row, c, c_row, alpha);
  }
  if constexpr (NV >= 2) {
    if (vectors == 2) return column_block<T, 2, kAccumulate>(rows, width, depth, P, p_row, p_depth, q, q_row, c, c_row, alpha);
  }
  column_block<T, 1, kAccumulate>(rows, width, depth, P, p_row, p_depth, q, q_row, c, c_row, alpha);
}
