// Uniformity log-sum-exp and gradient on NVIDIA GPUs, with no N x N buffer and no atomics on the sums.
//
// First the rows of A and B are centered and scaled by a power of two into the workspace, x' = (x - c) 2^-E with
// c the sampled column midhinges of A and B together (../center.h, as on the CPU): distances do not move, so the
// Gram form below cancels only on the spread of the rows around c, not on their common offset, and no squared norm
// overflows. With t' = t 4^E, each thread block owns kTile rows i and sweeps the columns j of the pair set,
// flash-attention style:
//   s_ij = -t' * max(n_i + n_j - 2 g_ij, 0)                 (g from tensor cores for 16-bit or tf32 operands)
//   m_i  = running max of s_ij,  r_i = sum_j exp(s_ij - m_i),  acc_i = sum_j exp(s_ij - m_i) x'_j
// and rescales r_i and acc_i when m_i grows, so the result is an exact log-sum-exp even where every exp(s)
// underflows. r_i is summed in double. Then, in double,
//   lse = log sum_i exp(m_i) (f r_intra_i + r_cross_i)       f = 1/2 when each intra pair was seen from both rows
//   d lse / d x_i = -2t 2^E exp(m_i - lse) (w_i x'_i - acc_i),  w_i = r_intra_i + r_cross_i
// The queue side (rows of B) gets its gradient from a second sweep of B's rows over A's. A forward-only call
// sweeps only the tiles with j > i and skips acc.
//
// 16-bit inputs feed the tensor cores as they are, so their centered rows must be exact in the input type: each
// column's center is a value of that type for which every x - c is one too (the rounded midhinge usually is, where
// a common offset makes centering matter), and a column where it is not stays uncentered. Float16 rows are not
// scaled (E = 0: their squares cannot overflow, and scaling could push small values into float16's subnormals).
#include <mma.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../args.h"
#include "../center.h"
#include "common.cuh"
#include "uniform.h"
#ifdef HYPERLOSS_TRITON_AOT
#include "aot.h"
#include "hl_aot_kernels.h"
#endif

namespace hyperloss::cuda {
namespace {

using namespace nvcuda;

constexpr int kThreads = 256;
constexpr int kTile = 64;                       // rows and columns of a pair tile
constexpr int kDepth = 32;                      // feature columns per step of the Gram product
constexpr int kScorePitch = kTile + 4;          // row pitch of the score tile: conflict-free score pass
constexpr int kThreadsPerRow = kThreads / kTile;  // in the score pass: 4 threads share a row
constexpr int kColsPerThread = kTile / kThreadsPerRow;

enum class Gram { kSimt, kHalf, kBf16, kTf32 };

// Operand type of the Gram product in shared memory, and its row pitch in elements: +1 spreads SIMT reads over
// the banks; WMMA needs pitches that are multiples of 16 bytes.
template <typename Tc, Gram G>
struct GramTraits;
template <typename Tc>
struct GramTraits<Tc, Gram::kSimt> {
  using Op = Tc;
  static constexpr int kPitch = kDepth + 1;
};
template <typename Tc>
struct GramTraits<Tc, Gram::kHalf> {
  using Op = __half;
  static constexpr int kPitch = kDepth + 8;
};
template <typename Tc>
struct GramTraits<Tc, Gram::kBf16> {
  using Op = __nv_bfloat16;
  static constexpr int kPitch = kDepth + 8;
};
template <typename Tc>
struct GramTraits<Tc, Gram::kTf32> {
  using Op = float;
  static constexpr int kPitch = kDepth + 4;
};

template <typename Op, typename Tc>
__device__ __forceinline__ Op to_operand(Tc v) {
  if constexpr (std::is_same_v<Op, __half>) {
    return __float2half(static_cast<float>(v));
  } else if constexpr (std::is_same_v<Op, __nv_bfloat16>) {
    return __float2bfloat16(static_cast<float>(v));
  } else {
    return static_cast<Op>(v);
  }
}

template <typename Tin>
struct MatrixView {
  const Tin* data;
  int64_t rows, row_stride, col_stride;
  __device__ __forceinline__ Tin at(int64_t r, int64_t c) const { return data[r * row_stride + c * col_stride]; }
};

// The power of two E of the centered rows, x' = (x - c) 2^-E, from the bits of max |x - c| / 2 (a non-negative
// double, or 0 where nothing was recorded: float16 inputs, or all rows equal). 0 where that is not finite (the
// input was not: the result is NaN anyway).
__device__ __forceinline__ int scale_exponent(const unsigned long long* max_bits) {
  const double half_max = __longlong_as_double(static_cast<long long>(*max_bits));
  int e = 0;
  if (half_max > 0 && isfinite(half_max)) {
    frexp(half_max, &e);
    ++e;
  }
  return e;
}

// exp(a) for a <= 0. In float, where |a| < 2^-7, as 1 + (a + a^2/2 + a^3/6 + a^4/24) (relative error of the
// deficit 1 - e below 1e-10), so that e is rounded once, to nearest: expf goes through ex2.approx, whose relative
// error (up to ~2^-22) is several float ulps near 1 and need not average out, while a loss near 0 is made of
// exactly those deficits.
template <typename Tc>
__device__ __forceinline__ Tc exp_nonpositive(Tc a) {
  if constexpr (std::is_same_v<Tc, double>) {
    return exp(a);
  } else {
    const float series = a * (1.0f + a * (0.5f + a * (1.0f / 6.0f + a * (1.0f / 24.0f))));
    return a > -0.0078125f ? 1.0f + series : expf(a);
  }
}

template <typename Tin, typename Tc>
struct SweepArgs {
  MatrixView<Tin> rows;   // the rows this sweep owns (centered and scaled)
  MatrixView<Tin> cross;  // the cross set (data == nullptr: none)
  int64_t cols;
  const Tc* row_norms;
  const Tc* cross_norms;
  bool intra;       // also pair the rows among themselves
  bool upper_only;  // intra pairs j > i only (forward-only calls), else every j != i
  double t;         // the caller's t; the sweep uses t' = t 4^E
  const unsigned long long* max_bits;  // for E (scale_exponent)
  Tc* m;
  double* r_intra;  // nullptr when there are no intra pairs
  double* r_cross;
  Tc* acc;  // rows x cols, or nullptr when no gradient is needed
};

template <typename Tc, Gram G>
constexpr size_t sweep_smem_bytes() {
  using Op = typename GramTraits<Tc, G>::Op;
  constexpr size_t operands = 2 * kTile * GramTraits<Tc, G>::kPitch * sizeof(Op);
  constexpr size_t features = kTile * kTile * sizeof(Tc);
  return kTile * kScorePitch * sizeof(Tc) + (operands > features ? operands : features);
}

// Copies feature columns [k0, k0 + kDepth) of the tile's rows of R and C into shared memory as operands
// (zero outside the matrices).
template <typename Tin, typename Tc, Gram G>
__device__ void load_operands(const MatrixView<Tin>& R, int64_t row0, const MatrixView<Tin>& C, int64_t col0,
                              int64_t cols, int64_t k0, typename GramTraits<Tc, G>::Op* row_ops,
                              typename GramTraits<Tc, G>::Op* col_ops) {
  using Op = typename GramTraits<Tc, G>::Op;
  constexpr int P = GramTraits<Tc, G>::kPitch;
  for (int idx = threadIdx.x; idx < kTile * kDepth; idx += kThreads) {
    const int r = idx / kDepth, k = idx % kDepth;  // consecutive threads read consecutive features
    const int64_t gk = k0 + k;
    Tc vr = 0, vc = 0;
    if (gk < cols && row0 + r < R.rows) vr = to_compute<Tc>(R.at(row0 + r, gk));
    if (gk < cols && col0 + r < C.rows) vc = to_compute<Tc>(C.at(col0 + r, gk));
    row_ops[r * P + k] = to_operand<Op>(vr);
    col_ops[r * P + k] = to_operand<Op>(vc);
  }
}

// scores[i][j] = x_i . y_j for the tile's rows and columns, on the CUDA cores (exact float32 or float64).
// Thread (ty, tx) computes rows ty + 16 a and columns tx + 16 b: conflict-free shared-memory reads.
template <typename Tin, typename Tc>
__device__ void gram_tile_simt(const MatrixView<Tin>& R, int64_t row0, const MatrixView<Tin>& C, int64_t col0,
                               int64_t cols, Tc* row_ops, Tc* col_ops, Tc* scores) {
  constexpr int P = GramTraits<Tc, Gram::kSimt>::kPitch;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  Tc sum[4][4] = {};
  for (int64_t k0 = 0; k0 < cols; k0 += kDepth) {
    __syncthreads();  // the previous step's operands are consumed
    load_operands<Tin, Tc, Gram::kSimt>(R, row0, C, col0, cols, k0, row_ops, col_ops);
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kDepth; ++k) {
      Tc a[4], b[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        a[q] = row_ops[(ty + 16 * q) * P + k];
        b[q] = col_ops[(tx + 16 * q) * P + k];
      }
#pragma unroll
      for (int qa = 0; qa < 4; ++qa)
#pragma unroll
        for (int qb = 0; qb < 4; ++qb) sum[qa][qb] += a[qa] * b[qb];
    }
  }
#pragma unroll
  for (int qa = 0; qa < 4; ++qa)
#pragma unroll
    for (int qb = 0; qb < 4; ++qb) scores[(ty + 16 * qa) * kScorePitch + tx + 16 * qb] = sum[qa][qb];
}

// The same on the tensor cores (float16, bfloat16 or tf32 operands, float accumulation). Warp w computes the
// 16 x 32 block at rows 16 (w / 2), columns 32 (w % 2) as two 16 x 16 fragments.
template <typename Tin, Gram G>
__device__ void gram_tile_mma(const MatrixView<Tin>& R, int64_t row0, const MatrixView<Tin>& C, int64_t col0,
                              int64_t cols, typename GramTraits<float, G>::Op* row_ops,
                              typename GramTraits<float, G>::Op* col_ops, float* scores) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 and tf32 fragments need sm_80; the host picks the SIMT path on older GPUs
#else
  using Op = typename GramTraits<float, G>::Op;
  using Frag = std::conditional_t<G == Gram::kTf32, wmma::precision::tf32, Op>;
  constexpr int P = GramTraits<float, G>::kPitch;
  constexpr int kK = G == Gram::kTf32 ? 8 : 16;
  const int warp = threadIdx.x / 32;
  const int frag_row = (warp / 2) * 16, frag_col = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  for (int64_t k0 = 0; k0 < cols; k0 += kDepth) {
    __syncthreads();
    load_operands<Tin, float, G>(R, row0, C, col0, cols, k0, row_ops, col_ops);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kDepth; kk += kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, kK, Frag, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, row_ops + frag_row * P + kk, P);
      if constexpr (G == Gram::kTf32) {
#pragma unroll
        for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
      }
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        // B = C^T: element (k, n) lives at col_ops[n * P + k], i.e. column-major.
        wmma::fragment<wmma::matrix_b, 16, 16, kK, Frag, wmma::col_major> fb;
        wmma::load_matrix_sync(fb, col_ops + (frag_col + 16 * f) * P + kk, P);
        if constexpr (G == Gram::kTf32) {
#pragma unroll
          for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
        }
        wmma::mma_sync(acc[f], fa, fb, acc[f]);
      }
    }
  }
#pragma unroll
  for (int f = 0; f < 2; ++f)
    wmma::store_matrix_sync(scores + frag_row * kScorePitch + frag_col + 16 * f, acc[f], kScorePitch,
                            wmma::mem_row_major);
#endif
}

// acc_i = acc_i * scale_i + sum_j e_ij y_j for the tile's rows, e in `weights`, y the tile's columns of C.
template <typename Tin, typename Tc>
__device__ void accumulate_features(const MatrixView<Tin>& C, int64_t col0, int64_t cols, int64_t row0,
                                    int64_t n_rows, const Tc* weights, const Tc* row_scale, Tc* features, Tc* acc) {
  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  for (int64_t d0 = 0; d0 < cols; d0 += kTile) {
    __syncthreads();  // `features` aliases the Gram operands and the previous chunk
    for (int idx = tid; idx < kTile * kTile; idx += kThreads) {
      const int j = idx / kTile, dd = idx % kTile;
      const bool inside = col0 + j < C.rows && d0 + dd < cols;
      features[j * kTile + dd] = inside ? to_compute<Tc>(C.at(col0 + j, d0 + dd)) : Tc(0);
    }
    __syncthreads();
    Tc out[4][4] = {};
    for (int j = 0; j < kTile; ++j) {
      Tc w[4], f[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        w[q] = weights[(ty + 16 * q) * kScorePitch + j];
        f[q] = features[j * kTile + tx + 16 * q];
      }
#pragma unroll
      for (int qa = 0; qa < 4; ++qa)
#pragma unroll
        for (int qb = 0; qb < 4; ++qb) out[qa][qb] += w[qa] * f[qb];
    }
#pragma unroll
    for (int qa = 0; qa < 4; ++qa) {
      const int64_t i = row0 + ty + 16 * qa;
      if (i >= n_rows) continue;
#pragma unroll
      for (int qb = 0; qb < 4; ++qb) {
        const int64_t d = d0 + tx + 16 * qb;
        if (d < cols) {
          Tc* a = acc + i * cols + d;
          *a = *a * row_scale[ty + 16 * qa] + out[qa][qb];
        }
      }
    }
  }
}

template <typename Tin, typename Tc, Gram G>
__global__ void __launch_bounds__(kThreads) sweep_kernel(SweepArgs<Tin, Tc> p) {
  using Op = typename GramTraits<Tc, G>::Op;
  extern __shared__ __align__(128) unsigned char smem[];
  Tc* scores = reinterpret_cast<Tc*>(smem);
  unsigned char* work = smem + kTile * kScorePitch * sizeof(Tc);  // Gram operands, later a chunk of features
  Op* row_ops = reinterpret_cast<Op*>(work);
  Op* col_ops = row_ops + kTile * GramTraits<Tc, G>::kPitch;
  Tc* features = reinterpret_cast<Tc*>(work);
  __shared__ Tc row_norm[kTile], col_norm[kTile], row_scale[kTile];

  const int tid = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int local_row = tid / kThreadsPerRow, part = tid % kThreadsPerRow;
  const int64_t i = row0 + local_row;
  const Tc neg_inf = static_cast<Tc>(-INFINITY);
  // t' = t 4^E; inf where it overflows Tc (then only the pairs at distance 0 keep a finite score).
  const Tc t = static_cast<Tc>(ldexp(p.t, 2 * scale_exponent(p.max_bits)));
  if (tid < kTile) row_norm[tid] = row0 + tid < p.rows.rows ? p.row_norms[row0 + tid] : Tc(0);
  Tc m = neg_inf;
  double r_intra = 0, r_cross = 0;

  for (int set = 0; set < 2; ++set) {
    const bool intra = set == 0;
    if (intra ? !p.intra : p.cross.data == nullptr) continue;
    const MatrixView<Tin>& C = intra ? p.rows : p.cross;
    const Tc* c_norms = intra ? p.row_norms : p.cross_norms;
    const int64_t first = intra && p.upper_only ? row0 : 0;  // tiles left of the diagonal hold no j > i
    for (int64_t col0 = first; col0 < C.rows; col0 += kTile) {
      __syncthreads();  // the previous tile's readers of shared memory are done
      if (tid < kTile) col_norm[tid] = col0 + tid < C.rows ? c_norms[col0 + tid] : Tc(0);
      if constexpr (G == Gram::kSimt)
        gram_tile_simt<Tin, Tc>(p.rows, row0, C, col0, p.cols, row_ops, col_ops, scores);
      else
        gram_tile_mma<Tin, G>(p.rows, row0, C, col0, p.cols, row_ops, col_ops, scores);
      __syncthreads();

      Tc* srow = scores + local_row * kScorePitch;
      Tc tile_max = neg_inf;
#pragma unroll 4
      for (int c = 0; c < kColsPerThread; ++c) {
        const int jj = c * kThreadsPerRow + part;  // interleaved: a warp's 32 reads hit 32 banks
        const int64_t j = col0 + jj;
        const bool valid = i < p.rows.rows && j < C.rows && (!intra || (p.upper_only ? j > i : j != i));
        const Tc d2 = row_norm[local_row] + col_norm[jj] - Tc(2) * srow[jj];
        const Tc s = !valid ? neg_inf : d2 > Tc(0) ? -t * d2 : Tc(0);  // never inf * 0
        srow[jj] = s;
        tile_max = fmax(tile_max, s);
      }
      tile_max = warp_max(tile_max, kThreadsPerRow);
      const Tc new_m = fmax(m, tile_max);
      const double scale = new_m == neg_inf ? 1.0 : exp(static_cast<double>(m) - static_cast<double>(new_m));
      // Summed in double: where every e is close to 1 (the loss is close to 0) a float sum would round away the
      // small deficits 1 - e that make up the loss.
      double tile_sum = 0;
#pragma unroll 4
      for (int c = 0; c < kColsPerThread; ++c) {
        const int jj = c * kThreadsPerRow + part;
        const Tc e = new_m == neg_inf ? Tc(0) : exp_nonpositive<Tc>(srow[jj] - new_m);
        srow[jj] = e;
        tile_sum += static_cast<double>(e);
      }
      tile_sum = warp_sum(tile_sum, kThreadsPerRow);
      m = new_m;
      r_intra *= scale;
      r_cross *= scale;
      (intra ? r_intra : r_cross) += tile_sum;
      if (part == 0) row_scale[local_row] = static_cast<Tc>(scale);
      if (p.acc != nullptr)  // uniform over the block
        accumulate_features<Tin, Tc>(C, col0, p.cols, row0, p.rows.rows, scores, row_scale, features, p.acc);
    }
  }
  if (part == 0 && i < p.rows.rows) {
    p.m[i] = m;
    if (p.r_intra != nullptr) p.r_intra[i] = r_intra;
    p.r_cross[i] = r_cross;
  }
}

// ---- Centering: x' = (x - c) 2^-E for the rows of A and B together, written to the workspace in the input type.

constexpr int kStatWarps = 8;  // column passes: 32 columns per block (a lane each), 8 warps over the rows
constexpr int kMaxStatBlocks = 1 << 16;

template <typename Tin>
__device__ __forceinline__ double to_double(Tin v) {
  return to_compute<double>(v);
}

// v rounded once to T (no detour through float, whose rounding could round a 16-bit value twice).
template <typename T>
__device__ __forceinline__ T from_double(double v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __double2half(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __double2bfloat16(v);
  } else {
    return static_cast<T>(v);
  }
}

// Whether x - c is computed exactly in double (TwoSum error 0) and is a value of Tin.
template <typename Tin>
__device__ __forceinline__ bool exact_difference(double x, double c) {
  const double d = x - c;
  const double z = d - x;
  const double error = (x - (d - z)) + (-c - z);
  return error == 0 && to_double(from_double<Tin>(d)) == d;
}

// Each column's center (../center.h): the midhinge of the sampled rows of A then B, one block per column, from a
// bitonic sort of the sample in shared memory (padded with +inf).
constexpr int kCenterThreads = 256;

template <typename Tin>
__global__ void __launch_bounds__(kCenterThreads)
    column_center_kernel(MatrixView<Tin> a, MatrixView<Tin> b, int64_t cols, double* center) {
  __shared__ double values[kCenterSortSize];
  const int64_t total = a.rows + b.rows, size = center_sample_size(total);
  for (int64_t c = blockIdx.x; c < cols; c += gridDim.x) {
    __syncthreads();  // the previous column's values are read
    for (int k = threadIdx.x; k < kCenterSortSize; k += blockDim.x) {
      const int64_t r = k < size ? center_sample_row(k, size, total) : 0;
      values[k] = k >= size ? INFINITY : to_double(r < a.rows ? a.at(r, c) : b.at(r - a.rows, c));
    }
    for (int len = 2; len <= kCenterSortSize; len <<= 1)
      for (int stride = len >> 1; stride > 0; stride >>= 1) {
        __syncthreads();
        for (int i = threadIdx.x; i < kCenterSortSize; i += blockDim.x) bitonic_step(values, len, stride, i);
      }
    __syncthreads();
    if (threadIdx.x == 0) center[c] = 0.5 * values[center_low_rank(size)] + 0.5 * values[center_high_rank(size)];
  }
}

// Replaces each column's midhinge by the center used (see the top of the file), records max |x - c| / 2 over every
// column in *max_bits (halved: x - c cannot overflow; the bits of non-negative doubles order as their values,
// so an integer atomicMax is the maximum, in any order), and sets *nonfinite if an element is NaN or infinite
// (the result is then NaN, as on the CPU).
template <typename Tin>
__global__ void __launch_bounds__(32 * kStatWarps)
    center_kernel(MatrixView<Tin> a, MatrixView<Tin> b, int64_t cols, double* center, unsigned long long* max_bits,
                  unsigned long long* nonfinite) {
  constexpr bool k16 = sizeof(Tin) == 2;
  __shared__ double partial_dev[kStatWarps][32], partial_raw[kStatWarps][32];
  __shared__ bool partial_exact[kStatWarps][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double block_max = 0;
  bool finite = true;
  for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32; c0 < cols; c0 += static_cast<int64_t>(gridDim.x) * 32) {
    const int64_t c = c0 + lane;
    double dev = 0, raw = 0, cv = 0;
    bool exact = true;
    if (c < cols) {
      cv = k16 ? to_double(from_double<Tin>(center[c])) : center[c];
      for (int set = 0; set < 2; ++set) {
        const MatrixView<Tin>& x = set == 0 ? a : b;
        for (int64_t r = warp; r < x.rows; r += kStatWarps) {
          const double v = to_double(x.at(r, c));
          finite = finite && isfinite(v);
          dev = fmax(dev, fabs(0.5 * v - 0.5 * cv));
          if constexpr (k16) {
            raw = fmax(raw, fabs(0.5 * v));
            exact = exact && exact_difference<Tin>(v, cv);
          }
        }
      }
    }
    __syncthreads();
    partial_dev[warp][lane] = dev;
    partial_raw[warp][lane] = raw;
    partial_exact[warp][lane] = exact;
    __syncthreads();
    if (warp == 0 && c < cols) {
      bool all_exact = true;
      for (int w = 0; w < kStatWarps; ++w) {
        dev = fmax(dev, partial_dev[w][lane]);
        raw = fmax(raw, partial_raw[w][lane]);
        all_exact = all_exact && partial_exact[w][lane];
      }
      const bool centered = !k16 || all_exact;
      center[c] = centered ? cv : 0.0;
      block_max = fmax(block_max, centered ? dev : raw);
    }
  }
  if (warp == 0 && !std::is_same_v<Tin, __half>) {  // float16 rows are not scaled
    block_max = warp_max(block_max);
    if (lane == 0 && block_max > 0)
      atomicMax(max_bits, static_cast<unsigned long long>(__double_as_longlong(block_max)));
  }
  if (!finite) atomicOr(nonfinite, 1ull);
}

// (x - c) 2^-E rounded once to T (halved first: x - c cannot overflow).
template <typename T, typename Tin>
__device__ __forceinline__ T centered(Tin x, double c, int e) {
  return from_double<T>(ldexp(0.5 * to_double(x) - 0.5 * c, 1 - e));
}

// out = (x - c) 2^-E, contiguous rows x cols of the input type.
template <typename Tin>
__global__ void center_copy_kernel(MatrixView<Tin> x, int64_t cols, const double* center,
                                   const unsigned long long* max_bits, Tin* out) {
  const int e = scale_exponent(max_bits);
  const int64_t total = x.rows * cols;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = idx / cols, c = idx % cols;
    out[idx] = centered<Tin>(x.at(r, c), center[c], e);
  }
}

// Squared norms of the centered rows (contiguous), summed in double.
template <typename Tin, typename Tc>
__global__ void sq_norms_kernel(const Tin* x, int64_t rows, int64_t cols, Tc* norms) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  double sum = 0;
  for (int64_t c = threadIdx.x % 32; c < cols; c += 32) {
    const double v = to_double(x[row * cols + c]);
    sum += v * v;
  }
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) norms[row] = static_cast<Tc>(sum);
}

// Where the result goes: lse and/or the loss in the compute type, lse in double (any may be nullptr).
template <typename Tc>
struct Results {
  Tc* lse;
  double* lse_f64;
  Tc* loss;
};

template <typename Tc>
__device__ void write_results(const Results<Tc>& out, double lse, double log_pairs) {
  double loss = lse - log_pairs;
  loss = loss > 0 ? 0.0 : loss;  // log mean exp(s) <= max s <= 0 (NaN stays NaN)
  if (out.lse) *out.lse = static_cast<Tc>(lse);
  if (out.lse_f64) *out.lse_f64 = lse;
  if (out.loss) *out.loss = static_cast<Tc>(loss);
}

// lse = M + log sum_i exp(m_i - M) (intra_factor r_intra_i + r_cross_i), at most M + log |P| (every score is at
// most M), in double; one block. Also lse into the workspace for the gradients.
template <typename Tc>
__global__ void __launch_bounds__(1024)
    lse_kernel(int64_t rows, const Tc* m, const double* r_intra, const double* r_cross, double intra_factor,
               double log_pairs, const unsigned long long* nonfinite, Results<Tc> out, double* lse_copy) {
  __shared__ double partial[32];
  __shared__ double shift;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, warps = blockDim.x / 32;
  double local = -INFINITY;
  for (int64_t i = tid; i < rows; i += blockDim.x) local = fmax(local, static_cast<double>(m[i]));
  local = warp_max(local);
  if (lane == 0) partial[warp] = local;
  __syncthreads();
  if (tid == 0) {
    double v = -INFINITY;
    for (int w = 0; w < warps; ++w) v = fmax(v, partial[w]);
    shift = v;
  }
  __syncthreads();
  double sum = 0;
  for (int64_t i = tid; i < rows; i += blockDim.x)
    if (m[i] != static_cast<Tc>(-INFINITY))
      sum += exp(static_cast<double>(m[i]) - shift) * (intra_factor * r_intra[i] + r_cross[i]);
  sum = warp_sum(sum);
  __syncthreads();
  if (lane == 0) partial[warp] = sum;
  __syncthreads();
  if (tid == 0) {
    double total = 0;
    for (int w = 0; w < warps; ++w) total += partial[w];
    const double lse = *nonfinite ? NAN : fmin(shift + log(total), shift + log_pairs);
    write_results(out, lse, log_pairs);
    *lse_copy = lse;
  }
}

// grad_i = -2t 2^E exp(m_i - lse) (w_i x'_i - acc_i), w_i = r_intra_i + r_cross_i (r_intra may be nullptr); the
// coefficient in double (t 2^E alone may overflow Tc). Rows without a finite score get 0.
template <typename Tin, typename Tc>
__global__ void finish_kernel(const Tin* x, int64_t rows, int64_t cols, double t, const unsigned long long* max_bits,
                              const Tc* m, const double* r_intra, const double* r_cross, const Tc* acc,
                              const double* lse, const unsigned long long* nonfinite, Tc* grad) {
  const int e = scale_exponent(max_bits);
  const int64_t total = rows * cols;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / cols;
    Tc coef = 0;
    if (*nonfinite)
      coef = static_cast<Tc>(NAN);
    else if (m[i] != static_cast<Tc>(-INFINITY))
      coef = static_cast<Tc>(-2.0 * ldexp(t * exp(static_cast<double>(m[i]) - *lse), e));
    const Tc w = static_cast<Tc>((r_intra ? r_intra[i] : 0.0) + r_cross[i]);
    grad[idx] = coef * (w * to_compute<Tc>(x[idx]) - acc[idx]);
  }
}

// Workspace pieces, carved in this order by both the size query and the call.
template <typename Tin, typename Tc>
struct Workspace {
  Tc *m_a, *norms_a, *acc_a;
  double *r_intra_a, *r_cross_a;
  Tc *m_b, *norms_b, *acc_b;
  double* r_b;
  Tin *x_a, *x_b;  // the centered, scaled rows
  double* center;  // cols
  double* lse;
  unsigned long long* flags;  // [0]: bits of max |x - c| / 2, [1]: non-finite input
  size_t bytes;

  Workspace(void* base, int64_t rows_a, int64_t rows_b, int64_t cols, bool grad_a, bool grad_b) {
    WorkspaceCarver carve(base);
    m_a = carve.take<Tc>(rows_a);
    norms_a = carve.take<Tc>(rows_a);
    acc_a = carve.take<Tc>(grad_a ? rows_a * cols : 0);
    r_intra_a = carve.take<double>(rows_a);
    r_cross_a = carve.take<double>(rows_a);
    m_b = carve.take<Tc>(rows_b);
    norms_b = carve.take<Tc>(rows_b);
    acc_b = carve.take<Tc>(grad_b ? rows_b * cols : 0);
    r_b = carve.take<double>(rows_b);
    x_a = carve.take<Tin>(rows_a * cols);
    x_b = carve.take<Tin>(rows_b * cols);
    center = carve.take<double>(cols);
    lse = carve.take<double>(1);
    flags = carve.take<unsigned long long>(2);
    bytes = carve.bytes();
  }
};

// Grid of an element-wise or row-wise pass over n items, `per_block` a block.
unsigned grid_for(int64_t n, int64_t per_block, int64_t most = 65535) {
  return static_cast<unsigned>(std::max<int64_t>(std::min<int64_t>((n + per_block - 1) / per_block, most), 1));
}

// The centering statistics of A and B together: the column centers into `center`, flags[0] = the bits of
// max |x - c| / 2 (for E), flags[1] = whether an element is not finite.
template <typename Tin>
hl_status launch_centering(const MatrixView<Tin>& a, const MatrixView<Tin>& b, int64_t cols, double* center,
                           unsigned long long* flags, cudaStream_t stream) {
  if (const cudaError_t e = cudaMemsetAsync(flags, 0, 2 * sizeof(unsigned long long), stream); e != cudaSuccess)
    return status_of(e);
  column_center_kernel<Tin><<<grid_for(cols, 1, kMaxStatBlocks), kCenterThreads, 0, stream>>>(a, b, cols, center);
  center_kernel<Tin><<<grid_for(cols, 32, kMaxStatBlocks), 32 * kStatWarps, 0, stream>>>(a, b, cols, center, flags,
                                                                                          flags + 1);
  return status_of(cudaGetLastError());
}

template <typename Tin, typename Tc, Gram G>
hl_status launch_sweep(const SweepArgs<Tin, Tc>& args, cudaStream_t stream) {
  constexpr size_t smem = sweep_smem_bytes<Tc, G>();
  auto kernel = sweep_kernel<Tin, Tc, G>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return status_of(e);
  }
  const int64_t blocks = (args.rows.rows + kTile - 1) / kTile;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(args);
  return status_of(cudaGetLastError());
}

// The arguments were checked by the caller (check_uniform_args, the workspace size and alignment).
template <typename Tin, typename Tc, Gram G>
hl_status uniform(const hl_matrix& a_in, const hl_matrix& b_in, double t, bool intra, const Results<Tc>& out,
                  Tc* grad_a, Tc* grad_b, void* workspace, cudaStream_t stream) {
  const bool cross = b_in.data != nullptr;
  const int64_t cols = a_in.cols;
  const Workspace<Tin, Tc> ws(workspace, a_in.rows, cross ? b_in.rows : 0, cols, grad_a != nullptr,
                              grad_b != nullptr);
  const MatrixView<Tin> a_raw{static_cast<const Tin*>(a_in.data), a_in.rows, a_in.row_stride, a_in.col_stride};
  const MatrixView<Tin> b_raw{static_cast<const Tin*>(b_in.data), cross ? b_in.rows : 0, b_in.row_stride,
                              b_in.col_stride};
  const MatrixView<Tin> a{ws.x_a, a_raw.rows, cols, 1}, b{ws.x_b, b_raw.rows, cols, 1};  // the centered rows
  unsigned long long* max_bits = ws.flags;
  unsigned long long* nonfinite = ws.flags + 1;

  cudaError_t error = cudaSuccess;
  if (grad_a) error = cudaMemsetAsync(ws.acc_a, 0, sizeof(Tc) * a.rows * cols, stream);
  if (grad_b && error == cudaSuccess) error = cudaMemsetAsync(ws.acc_b, 0, sizeof(Tc) * b.rows * cols, stream);
  if (error != cudaSuccess) return status_of(error);

  // Center and scale.
  if (launch_centering(a_raw, b_raw, cols, ws.center, ws.flags, stream) != HL_OK) return HL_ERR_CUDA;
  constexpr int kCopyThreads = 256;
  center_copy_kernel<Tin><<<grid_for(a.rows * cols, kCopyThreads), kCopyThreads, 0, stream>>>(a_raw, cols, ws.center,
                                                                                             max_bits, ws.x_a);
  if (cross)
    center_copy_kernel<Tin><<<grid_for(b.rows * cols, kCopyThreads), kCopyThreads, 0, stream>>>(
        b_raw, cols, ws.center, max_bits, ws.x_b);
  constexpr int kNormRowsPerBlock = 8;
  sq_norms_kernel<Tin, Tc><<<grid_for(a.rows, kNormRowsPerBlock, (int64_t(1) << 31) - 1), 32 * kNormRowsPerBlock, 0,
                             stream>>>(ws.x_a, a.rows, cols, ws.norms_a);
  if (cross)
    sq_norms_kernel<Tin, Tc><<<grid_for(b.rows, kNormRowsPerBlock, (int64_t(1) << 31) - 1), 32 * kNormRowsPerBlock, 0,
                               stream>>>(ws.x_b, b.rows, cols, ws.norms_b);

  // A's rows against A (intra) and B (cross). Without a gradient for A, the j > i half suffices for lse.
  const bool upper_only = grad_a == nullptr;
  SweepArgs<Tin, Tc> args{a,       b,          cols,   ws.norms_a,   ws.norms_b,   intra, upper_only,
                          t,       max_bits,   ws.m_a, ws.r_intra_a, ws.r_cross_a, grad_a ? ws.acc_a : nullptr};
  if (!cross) args.cross.data = nullptr;
  hl_status status = launch_sweep<Tin, Tc, G>(args, stream);
  if (status != HL_OK) return status;
  const double log_pairs = std::log(num_pairs(a.rows, b.rows, intra));
  lse_kernel<Tc><<<1, 1024, 0, stream>>>(a.rows, ws.m_a, ws.r_intra_a, ws.r_cross_a, upper_only ? 1.0 : 0.5,
                                          log_pairs, nonfinite, out, ws.lse);
  constexpr int kFinishThreads = 256;
  if (grad_a)
    finish_kernel<Tin, Tc><<<grid_for(a.rows * cols, kFinishThreads), kFinishThreads, 0, stream>>>(
        ws.x_a, a.rows, cols, t, max_bits, ws.m_a, ws.r_intra_a, ws.r_cross_a, ws.acc_a, ws.lse, nonfinite, grad_a);
  if (grad_b && cross) {
    // B's rows against A: the same sweep with the roles swapped, cross pairs only.
    SweepArgs<Tin, Tc> back{b,       a,        cols,   ws.norms_b, ws.norms_a, false, false,
                            t,       max_bits, ws.m_b, nullptr,    ws.r_b,     ws.acc_b};
    status = launch_sweep<Tin, Tc, G>(back, stream);
    if (status != HL_OK) return status;
    finish_kernel<Tin, Tc><<<grid_for(b.rows * cols, kFinishThreads), kFinishThreads, 0, stream>>>(
        ws.x_b, b.rows, cols, t, max_bits, ws.m_b, nullptr, ws.r_b, ws.acc_b, ws.lse, nonfinite, grad_b);
  }
  return status_of(cudaGetLastError());
}

#ifdef HYPERLOSS_TRITON_AOT
// ---- The Triton pipeline's kernels, compiled ahead of time (HYPERLOSS_TRITON_AOT; csrc/cuda/aot/README.md) ----
// For 16-bit operands (float16, bfloat16, and float32 at tf32 or bf16 precision through a 16-bit copy) and rows up
// to the widest generated block width, on the GPU generation the cubins were compiled for. The buffers are what the
// Triton backend's prepare step gives its kernels (hyperloss/triton/_prepare.py, uniform.py): x' in the operand
// dtype, rows padded to HL_AOT_ROW_PAD (zeros) and columns to the block width (zeros: distances do not change, and
// the kernel then reads whole rows, as it does with masked loads where D < BLOCK_D), float64 squared norms (+inf on
// the padding rows), float32 biases -||x'||^2 / 2 (-inf there), consts = [t, t log2 e, ln 2, |P|] and
// info = [E, finite] in float64. The centering is this file's (centered exactly for 16-bit inputs, float16 unscaled).
namespace aot {

constexpr const char* kLean = "_uniform_lean_kernel";
constexpr const char* kFallback = "_uniform_rows_kernel";
constexpr const char* kCombine = "_combine_kernel";
constexpr const char* kGrad = "_grad_kernel";
constexpr const char* kMerge = "_merge_segments_kernel";
constexpr int64_t kMaxRows = int64_t(1) << 28;  // the kernels' row counts and offsets into sums are 32-bit
constexpr int kSelfNone = 0, kSelfUpper = 1, kSelfAll = 2;  // SELF_MODE (uniform.py)

// The hl_dtype the kernels multiply, as hyperloss.triton.uniform._operand_dtype picks it: 16-bit inputs as they
// are; float32 at tf32 as float16 (tf32 rounds the products' operands to float16's 10 mantissa bits), at bf16 as
// bfloat16; -1 (float64, exact float32): the hand-written kernels.
int operand_dtype(hl_dtype dtype, hl_precision precision) {
  if (dtype == HL_FLOAT16 || dtype == HL_BFLOAT16) return dtype;
  if (dtype == HL_FLOAT32 && precision == HL_PRECISION_TF32) return HL_FLOAT16;
  if (dtype == HL_FLOAT32 && precision == HL_PRECISION_BF16) return HL_BFLOAT16;
  return -1;
}

const char* operand_type(int op) { return op == HL_FLOAT16 ? "*fp16" : "*bf16"; }

int64_t block_width(int64_t cols) {
  int64_t b = 16;  // tl.dot needs K >= 16
  while (b < cols) b *= 2;
  return b;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t padded_rows(int64_t rows) { return ceil_div(rows, HL_AOT_ROW_PAD) * HL_AOT_ROW_PAD; }

// How one side's sweep splits the other set's columns (uniform._segments): `segments` programs per row block, each
// over `cols` columns of the other set, into its own slot of the partial results; 1 and 0: not split.
struct Split {
  int64_t segments = 1, cols = 0;
};

// The sm_90 GPUs the cubins run on have 132 SMs (H100 SXM, H200; 114 on an H100 PCIe). The Triton backend asks the
// device; this side takes the number as fixed so that the workspace query, which has no device, sizes the partial
// results exactly.
constexpr int64_t kSmCount = 132;

// uniform._segments for `rows` rows against `other` columns (accumulators of `width` floats per row when
// `need_acc`), then the compiled segment length nearest to its choice: the longest not above it whose partial
// accumulators fit HL_AOT_SEGMENT_BYTES, else the shortest above it that fits; none compiled (or one segment): not
// split. `compiled(length)` says whether the build holds the split sweeps of that length.
template <typename Compiled>
Split split_columns(int64_t rows, int64_t other, int64_t width, bool need_acc, Compiled compiled) {
  const int64_t target = HL_AOT_SEGMENT_PROGRAMS_PER_SM * kSmCount;
  const int64_t row_blocks = ceil_div(rows, HL_AOT_SEGMENT_ROWS);
  if (other == 0 || row_blocks >= target) return {};
  auto fits = [&](int64_t cols) {
    return !need_acc || ceil_div(other, cols) * rows * width * int64_t(sizeof(float)) <= HL_AOT_SEGMENT_BYTES;
  };
  // The longest power-of-two segments that still make the target (at most twice as many as needed).
  const int64_t per_segment = ceil_div(ceil_div(other, HL_AOT_SEGMENT_ALIGN), ceil_div(target, row_blocks));
  int64_t wanted = HL_AOT_SEGMENT_ALIGN;
  while (wanted * 2 <= per_segment * HL_AOT_SEGMENT_ALIGN) wanted *= 2;
  wanted = std::max<int64_t>(HL_AOT_SEGMENT_MIN_COLS, wanted);
  while (!fits(wanted) && wanted < other) wanted *= 2;
  if (ceil_div(other, wanted) <= 1) return {};
  // Shorter segments than wanted: more programs and partial results, up to kMaxSegments (within the grid's y limit).
  constexpr int64_t kMaxSegments = 4 * HL_AOT_SEGMENT_PROGRAMS_PER_SM * kSmCount;
  int64_t best = 0;
  for (int64_t cols = HL_AOT_SEGMENT_MIN_COLS; cols <= wanted; cols *= 2)
    if (compiled(cols) && fits(cols) && ceil_div(other, cols) <= kMaxSegments) best = cols;
  for (int64_t cols = wanted * 2; best == 0 && cols < 2 * other; cols *= 2)
    if (compiled(cols) && fits(cols)) best = cols;
  if (best == 0 || ceil_div(other, best) <= 1) return {};
  return {ceil_div(other, best), best};
}

struct Launch {
  const hl_aot_kernel* kernel = nullptr;
  unsigned grid = 0, grid_y = 1;
  bool partial = false;  // writes (row kernels) or reads (merge) the per-segment slots of dref and sums
};

// The kernels of one call and their grids; host only (no device call).
struct Plan {
  int op = -1;
  int64_t rows_a = 0, rows_b = 0, cols = 0, width = 0;
  bool intra = false, grad_a = false, grad_b = false;
  int self_mode = kSelfNone;
  Split split_a, split_b;
  Launch lean_a, fallback_a, merge_a, combine, grad, lean_b, fallback_b, merge_b;
};

// Workspace pieces, carved in this order by both the size query and the call. A side whose sweep is split writes
// S slots of dref, sums, flags and acc (uniform._segment_slot), merged into dref and sums and into acc's slot 0.
struct Workspace {
  void *x_a, *x_b;                    // x' (padded rows x block width, operand dtype)
  double *norms_a, *norms_b;          // per padded row
  float *bias_a, *bias_b;             // per padded row
  float *dref_a, *dref_b;             // per row
  double *sums_a, *sums_b;            // 4 per row
  float *part_dref_a, *part_dref_b;   // S x rows (split sweeps; else dref)
  double *part_sums_a, *part_sums_b;  // S x 4 x rows (split sweeps; else sums)
  int32_t *flags_a, *flags_b;         // S x rows
  float *acc_a, *acc_b;               // S x rows x block width (gradients only)
  double *center, *consts, *info, *comb, *lse;
  unsigned long long* stats;  // [0]: bits of max |x - c| / 2, [1]: non-finite input (launch_centering)
  size_t bytes;

  Workspace(void* base, const Plan& p) {
    const int64_t width = p.width, pad_a = padded_rows(p.rows_a), pad_b = padded_rows(p.rows_b);
    const int64_t rows_a = p.rows_a, rows_b = p.grad_b ? p.rows_b : 0;  // B's sweep runs for its gradient only
    const int64_t s_a = p.split_a.segments, s_b = p.split_b.segments;
    WorkspaceCarver carve(base);
    x_a = carve.take<uint16_t>(pad_a * width);
    x_b = carve.take<uint16_t>(pad_b * width);
    norms_a = carve.take<double>(pad_a);
    norms_b = carve.take<double>(pad_b);
    bias_a = carve.take<float>(pad_a);
    bias_b = carve.take<float>(pad_b);
    dref_a = carve.take<float>(rows_a);
    dref_b = carve.take<float>(rows_b);
    sums_a = carve.take<double>(4 * rows_a);
    sums_b = carve.take<double>(4 * rows_b);
    part_dref_a = s_a > 1 ? carve.take<float>(s_a * rows_a) : dref_a;
    part_dref_b = s_b > 1 ? carve.take<float>(s_b * rows_b) : dref_b;
    part_sums_a = s_a > 1 ? carve.take<double>(s_a * 4 * rows_a) : sums_a;
    part_sums_b = s_b > 1 ? carve.take<double>(s_b * 4 * rows_b) : sums_b;
    flags_a = carve.take<int32_t>(s_a * rows_a);
    flags_b = carve.take<int32_t>(s_b * rows_b);
    acc_a = carve.take<float>(p.grad_a ? s_a * rows_a * width : 0);
    acc_b = carve.take<float>(s_b * rows_b * width);
    center = carve.take<double>(p.cols);
    consts = carve.take<double>(4);
    info = carve.take<double>(2);
    comb = carve.take<double>(2);
    lse = carve.take<double>(1);
    stats = carve.take<unsigned long long>(2);
    bytes = carve.bytes();
  }
};

Launch row_launch(const char* function, int op, int self_mode, bool has_other, bool need_acc, int64_t width,
                  int64_t rows, const Split& split) {
  Launch l;
  l.kernel = hl_aot_find(function, op, self_mode, has_other, need_acc, static_cast<int>(width),
                         static_cast<int>(split.cols));
  if (l.kernel != nullptr && l.kernel->block_m > 0)
    l.grid = static_cast<unsigned>(ceil_div(rows, l.kernel->block_m));
  l.grid_y = static_cast<unsigned>(split.segments);
  l.partial = split.segments > 1;
  return l;
}

// The merge of a split side's slots (uniform._sweep's launch): a program per block of rows and of acc's columns.
Launch merge_launch(bool need_acc, int64_t width, int64_t rows, const Split& split) {
  Launch l;
  if (split.segments <= 1) return l;
  l.kernel = hl_aot_find(kMerge, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, need_acc, HL_AOT_ANY, HL_AOT_ANY);
  if (l.kernel != nullptr && l.kernel->block_m > 0 && l.kernel->block_n > 0) {
    l.grid = static_cast<unsigned>(ceil_div(rows, l.kernel->block_m));
    l.grid_y = need_acc ? static_cast<unsigned>(ceil_div(width, l.kernel->block_n)) : 1;
  }
  l.partial = true;
  return l;
}

// The split of one side's sweep, among the segment lengths the build holds for it (lean, fallback and the merge).
Split plan_split(int op, int self_mode, bool need_acc, int64_t width, int64_t rows, int64_t other) {
  auto compiled = [&](int64_t cols) {
    const int w = static_cast<int>(width), c = static_cast<int>(cols);
    return hl_aot_find(kLean, op, self_mode, true, need_acc, w, c) != nullptr &&
           hl_aot_find(kFallback, op, self_mode, true, need_acc, w, c) != nullptr &&
           hl_aot_find(kMerge, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, need_acc, HL_AOT_ANY, HL_AOT_ANY) != nullptr;
  };
  return split_columns(rows, other, width, need_acc, compiled);
}

// The plan of a call, or false where this build has no kernel for it (the hand-written kernels then run). The
// sweeps are those of uniform.triton_uniform_lse: x's rows over x (every j != i with a gradient, j > i without)
// and the queue; then, for the queue's gradient, the queue's rows over x.
bool make_plan(hl_dtype dtype, hl_precision precision, int64_t rows_a, int64_t rows_b, int64_t cols, bool intra,
               bool grad_a, bool grad_b, Plan* plan) {
  Plan p;
  p.op = operand_dtype(dtype, precision);
  if (p.op < 0 || cols > 256 || padded_rows(rows_a) > kMaxRows || padded_rows(rows_b) > kMaxRows) return false;
  p.rows_a = rows_a;
  p.rows_b = rows_b;
  p.cols = cols;
  p.width = block_width(cols);
  p.intra = intra;
  p.grad_a = grad_a;
  p.grad_b = grad_b && rows_b > 0;
  p.self_mode = !intra ? kSelfNone : grad_a ? kSelfAll : kSelfUpper;
  const bool has_other = rows_b > 0;
  if (has_other) p.split_a = plan_split(p.op, p.self_mode, grad_a, p.width, rows_a, rows_b);
  p.lean_a = row_launch(kLean, p.op, p.self_mode, has_other, grad_a, p.width, rows_a, p.split_a);
  p.fallback_a = row_launch(kFallback, p.op, p.self_mode, has_other, grad_a, p.width, rows_a, p.split_a);
  p.merge_a = merge_launch(grad_a, p.width, rows_a, p.split_a);
  p.combine.kernel = hl_aot_find(kCombine, HL_AOT_ANY, p.self_mode, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY);
  p.combine.grid = 1;
  bool found = p.lean_a.kernel && p.fallback_a.kernel && p.combine.kernel;
  found = found && (p.split_a.segments <= 1 || p.merge_a.kernel);
  if (p.grad_a || p.grad_b) {
    p.grad.kernel = hl_aot_find(kGrad, p.op, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY);
    found = found && p.grad.kernel && p.grad.kernel->block_m > 0;
  }
  if (p.grad_b) {
    p.split_b = plan_split(p.op, kSelfNone, true, p.width, rows_b, rows_a);
    p.lean_b = row_launch(kLean, p.op, kSelfNone, true, true, p.width, rows_b, p.split_b);
    p.fallback_b = row_launch(kFallback, p.op, kSelfNone, true, true, p.width, rows_b, p.split_b);
    p.merge_b = merge_launch(true, p.width, rows_b, p.split_b);
    found = found && p.lean_b.kernel && p.fallback_b.kernel && (p.split_b.segments <= 1 || p.merge_b.kernel);
  }
  if (found) *plan = p;
  return found;
}

hl_aot_arg ptr(const char* name, const char* type, const void* value) { return hl_aot_arg{name, type, value, 0}; }
hl_aot_arg i32(const char* name, int64_t value) { return hl_aot_arg{name, "i32", nullptr, value}; }

constexpr int kSideArgs = 25;

// Every value the Triton kernels of one side take (its rows against the other side's), by argument name: the
// kernels pick theirs (hl_aot_launch), so that each value is named once here for all of them. A's side without a
// queue: the other set's pointers are A's own (HAS_OTHER is false: never read) and n_other = 0, as the combine needs.
// `partial`: dref and sums are the split sweep's per-segment slots (the row kernels write them, the merge reads them
// into dref_out and sums_out), else the merged ones (combine, gradient finish).
struct SideArgs {
  hl_aot_arg args[kSideArgs];
};

SideArgs side_args(const Plan& p, const Workspace& ws, bool side_b, bool partial) {
  const char* op = operand_type(p.op);
  const void* x = side_b ? ws.x_b : ws.x_a;
  const void* norms = side_b ? ws.norms_b : ws.norms_a;
  const void* bias = side_b ? ws.bias_b : ws.bias_a;
  const bool has_other = side_b || p.rows_b > 0;
  const void* other = !has_other ? x : side_b ? ws.x_a : ws.x_b;
  const void* other_norms = !has_other ? norms : side_b ? ws.norms_a : ws.norms_b;
  const void* other_bias = !has_other ? bias : side_b ? ws.bias_a : ws.bias_b;
  const float* dref = side_b ? ws.dref_b : ws.dref_a;
  const double* sums = side_b ? ws.sums_b : ws.sums_a;
  const float* part_dref = side_b ? ws.part_dref_b : ws.part_dref_a;
  const double* part_sums = side_b ? ws.part_sums_b : ws.part_sums_a;
  const float* acc = side_b ? ws.acc_b : ws.acc_a;
  const bool need_acc = side_b || p.grad_a;
  const Split& split = side_b ? p.split_b : p.split_a;
  return SideArgs{{
      ptr("rows_ptr", op, x),
      ptr("v_ptr", op, x),
      // The second parts of exact float32's split operands (SPLIT): never read by the 16-bit kernels run here.
      ptr("rows_lo_ptr", op, x),
      ptr("v_lo_ptr", op, x),
      ptr("rowb_ptr", "*fp32", bias),
      ptr("a_rows_ptr", "*fp64", norms),
      i32("n_rows", side_b ? p.rows_b : p.rows_a),
      ptr("other_ptr", op, other),
      ptr("other_lo_ptr", op, other),
      ptr("otherb_ptr", "*fp32", other_bias),
      ptr("a_other_ptr", "*fp64", other_norms),
      i32("n_other", side_b ? p.rows_a : p.rows_b),
      ptr("consts_ptr", "*fp64", ws.consts),
      ptr("info_ptr", "*fp64", ws.info),
      ptr("dref_ptr", "*fp32", partial ? part_dref : dref),
      ptr("sums_ptr", "*fp64", partial ? part_sums : sums),
      ptr("acc_ptr", "*fp32", need_acc ? static_cast<const void*>(acc) : dref),  // never written without NEED_ACC
      ptr("flags_ptr", "*i32", side_b ? ws.flags_b : ws.flags_a),
      ptr("dref_out_ptr", "*fp32", dref),
      ptr("sums_out_ptr", "*fp64", sums),
      i32("n_segments", split.segments),
      i32("D", p.width),
      i32("size_bucket", 0),  // an autotuning key only
      ptr("lse_ptr", "*fp64", ws.lse),
      ptr("comb_ptr", "*fp64", ws.comb),
  }};
}

// The launches of one call in order, with their side (false: A, true: B).
struct Step {
  const Launch* launch;
  bool side_b;
};

// The step's grid along x: its launch's, but for the gradient finish, which runs once per side on that side's rows.
unsigned grid_of(const Plan& p, const Step& step) {
  if (step.launch != &p.grad) return step.launch->grid;
  return static_cast<unsigned>(ceil_div(step.side_b ? p.rows_b : p.rows_a, p.grad.kernel->block_m));
}

constexpr int kMaxSteps = 9;

int steps(const Plan& p, Step out[kMaxSteps]) {
  int n = 0;
  out[n++] = {&p.lean_a, false};
  out[n++] = {&p.fallback_a, false};
  if (p.split_a.segments > 1) out[n++] = {&p.merge_a, false};
  out[n++] = {&p.combine, false};
  if (p.grad_a) out[n++] = {&p.grad, false};
  if (p.grad_b) {
    out[n++] = {&p.lean_b, true};
    out[n++] = {&p.fallback_b, true};
    if (p.split_b.segments > 1) out[n++] = {&p.merge_b, true};
    out[n++] = {&p.grad, true};
  }
  return n;
}

// Whether every kernel of the plan is loaded and allowed its shared memory on the current device (loading them on
// first use). Where one cannot be (a driver that rejects the cubin), the call runs the hand-written kernels instead
// of failing, and the runtime's last error is cleared so that no later check reports it.
bool kernels_ready(const Plan& p) {
  Step todo[kMaxSteps];
  const int n = steps(p, todo);
  for (int k = 0; k < n; ++k) {
    if (hl_aot_prepare(todo[k].launch->kernel) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
  }
  return true;
}

hl_status launch(const Plan& p, const Workspace& ws, const Step& step, cudaStream_t stream) {
  const SideArgs args = side_args(p, ws, step.side_b, step.launch->partial);
  return status_of(static_cast<cudaError_t>(
      hl_aot_launch(step.launch->kernel, stream, grid_of(p, step), step.launch->grid_y, args.args, kSideArgs)));
}

// x' = (x - c) 2^-E in the operand type, rows padded to `rows_out` and columns to `width` with zeros, and per row
// its squared norm (float64, of the stored values; +inf on the padding rows) and bias -norm / 2 (float32, -inf
// there; uniform._bias_kernel). A warp per row.
template <typename Tin, typename Op>
__global__ void operand_rows_kernel(MatrixView<Tin> x, int64_t cols, int64_t width, int64_t rows_out,
                                    const double* center, const unsigned long long* max_bits, Op* out,
                                    double* norms, float* bias) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows_out) return;
  const int e = scale_exponent(max_bits);
  const bool inside = row < x.rows;
  double sum = 0;
  for (int64_t c = threadIdx.x % 32; c < width; c += 32) {
    Op v = from_double<Op>(0.0);
    if (inside && c < cols) {
      v = centered<Op>(x.at(row, c), center[c], e);
      const double w = to_double(v);
      sum += w * w;
    }
    out[row * width + c] = v;
  }
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) {
    norms[row] = inside ? sum : INFINITY;
    bias[row] = inside ? static_cast<float>(-0.5 * sum) : -INFINITY;
  }
}

// consts = [t, t log2 e, ln 2, |P|] (from the host, as uniform.triton_uniform_lse makes them), info = [E, finite].
__global__ void constants_kernel(double t, double t_log2e, double ln2, double pairs,
                                 const unsigned long long* stats, double* consts, double* info) {
  consts[0] = t;
  consts[1] = t_log2e;
  consts[2] = ln2;
  consts[3] = pairs;
  info[0] = scale_exponent(stats);
  info[1] = stats[1] ? 0.0 : 1.0;
}

template <typename Tc>
__global__ void results_kernel(const double* lse, double log_pairs, Results<Tc> out) {
  write_results(out, *lse, log_pairs);
}

// grad (rows x cols, contiguous) = the first cols columns of acc (rows x width).
__global__ void strip_columns_kernel(const float* acc, int64_t rows, int64_t cols, int64_t width, float* grad) {
  const int64_t total = rows * cols;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)
    grad[idx] = acc[(idx / cols) * width + idx % cols];
}

template <typename Tin, typename Op>
hl_status launch_operand_rows(const MatrixView<Tin>& x, const Plan& p, const Workspace& ws, void* out,
                              double* norms, float* bias, cudaStream_t stream) {
  constexpr int kRowsPerBlock = 8;
  const int64_t rows_out = padded_rows(x.rows);
  operand_rows_kernel<Tin, Op><<<grid_for(rows_out, kRowsPerBlock, kMaxRows), 32 * kRowsPerBlock, 0, stream>>>(
      x, p.cols, p.width, rows_out, ws.center, ws.stats, static_cast<Op*>(out), norms, bias);
  return status_of(cudaGetLastError());
}

template <typename Tin, typename Op>
hl_status run(const Plan& p, const hl_matrix& a_in, const hl_matrix& b_in, double t, const Results<float>& out,
              float* grad_a, float* grad_b, void* workspace, cudaStream_t stream) {
  const Workspace ws(workspace, p);
  const MatrixView<Tin> a{static_cast<const Tin*>(a_in.data), p.rows_a, a_in.row_stride, a_in.col_stride};
  const MatrixView<Tin> b{static_cast<const Tin*>(b_in.data), p.rows_b, b_in.row_stride, b_in.col_stride};
  hl_status status = launch_centering(a, b, p.cols, ws.center, ws.stats, stream);
  if (status == HL_OK) status = launch_operand_rows<Tin, Op>(a, p, ws, ws.x_a, ws.norms_a, ws.bias_a, stream);
  if (status == HL_OK && p.rows_b > 0)
    status = launch_operand_rows<Tin, Op>(b, p, ws, ws.x_b, ws.norms_b, ws.bias_b, stream);
  if (status != HL_OK) return status;
  const double pairs = num_pairs(p.rows_a, p.rows_b, p.intra);
  constants_kernel<<<1, 1, 0, stream>>>(t, t * 1.4426950408889634, std::log(2.0), pairs, ws.stats, ws.consts,
                                        ws.info);
  Step todo[kMaxSteps];
  const int n = steps(p, todo);
  constexpr int kCopyThreads = 256;
  for (int k = 0; k < n; ++k) {
    status = launch(p, ws, todo[k], stream);
    if (status != HL_OK) break;  // nothing after a failed launch: the results would be garbage
    const Launch* done = todo[k].launch;
    if (done == &p.combine) results_kernel<float><<<1, 1, 0, stream>>>(ws.lse, std::log(pairs), out);
    if (done == &p.grad) {
      const bool side_b = todo[k].side_b;
      const int64_t rows = side_b ? p.rows_b : p.rows_a;
      strip_columns_kernel<<<grid_for(rows * p.cols, kCopyThreads), kCopyThreads, 0, stream>>>(
          side_b ? ws.acc_b : ws.acc_a, rows, p.cols, p.width, side_b ? grad_b : grad_a);
    }
  }
  if (status != HL_OK) return status;
  return status_of(cudaGetLastError());
}

// The input and operand types of the plan.
hl_status dispatch(hl_dtype dtype, const Plan& p, const hl_matrix& a, const hl_matrix& b, double t,
                   const Results<float>& out, float* ga, float* gb, void* workspace, cudaStream_t stream) {
  const bool half = p.op == HL_FLOAT16;
  switch (dtype) {
    case HL_FLOAT16: return run<__half, __half>(p, a, b, t, out, ga, gb, workspace, stream);
    case HL_BFLOAT16: return run<__nv_bfloat16, __nv_bfloat16>(p, a, b, t, out, ga, gb, workspace, stream);
    case HL_FLOAT32:
      return half ? run<float, __half>(p, a, b, t, out, ga, gb, workspace, stream)
                  : run<float, __nv_bfloat16>(p, a, b, t, out, ga, gb, workspace, stream);
    default: return HL_ERR_INVALID_ARGUMENT;  // unreachable: make_plan has no plan for float64
  }
}

// HYPERLOSS_TRITON_AOT=0 (or off, false, no) in the environment sends every call to the hand-written kernels: the
// way back while this path has not run on a GPU, and a side-by-side comparison with one library. Read once.
bool disabled_by_environment() {
  static const bool disabled = [] {
    const char* value = std::getenv("HYPERLOSS_TRITON_AOT");
    if (value == nullptr) return false;
    std::string v(value);
    for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return v == "0" || v == "off" || v == "false" || v == "no";
  }();
  return disabled;
}

// Whether the current device runs the cubins (compiled for one compute capability), unless the environment says no.
bool device_matches(int device) {
  if (disabled_by_environment()) return false;
  int major = 0, minor = 0;
  return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
         major * 10 + minor == HL_AOT_ARCH;
}

// The workspace of the AOT path for a call of any precision and intra_batch (the query has neither): the largest
// of their plans' (they differ where the build splits one sweep and not another), 0 where none has a plan. The
// precisions that give an operand dtype already planned (all three, for 16-bit inputs) add nothing.
size_t workspace_bytes(hl_dtype dtype, int64_t rows_a, int64_t rows_b, int64_t cols, bool grad_a, bool grad_b) {
  size_t bytes = 0;
  int planned[3] = {-1, -1, -1};
  int n = 0;
  for (hl_precision precision : {HL_PRECISION_IEEE, HL_PRECISION_TF32, HL_PRECISION_BF16}) {
    const int op = operand_dtype(dtype, precision);
    if (op < 0 || std::find(planned, planned + n, op) != planned + n) continue;
    planned[n++] = op;
    for (bool intra : {true, false}) {
      Plan p;
      if (make_plan(dtype, precision, rows_a, rows_b, cols, intra, grad_a, grad_b, &p))
        bytes = std::max(bytes, Workspace(nullptr, p).bytes);
    }
  }
  return bytes;
}

}  // namespace aot
#endif  // HYPERLOSS_TRITON_AOT

// Sizes the workspace query accepts: those check_uniform_args accepts (rows_b == 0: no queue).
bool valid_sizes(hl_dtype dtype, int64_t rows_a, int64_t rows_b, int64_t cols) {
  if (!known_dtype(dtype) || !valid_shape(rows_a, cols) || rows_b < 0) return false;
  if (rows_b > 0 && (!valid_shape(rows_b, cols) || rows_a > std::numeric_limits<int64_t>::max() / 64 / cols - rows_b))
    return false;
  return true;
}

template <typename Tin, typename Tc>
size_t workspace_bytes(int64_t rows_a, int64_t rows_b, int64_t cols, bool grad_a, bool grad_b) {
  return Workspace<Tin, Tc>(nullptr, rows_a, rows_b, cols, grad_a, grad_b).bytes;
}

// Validation first (no device call before it), then the kernels for the dtype, precision and GPU generation.
hl_status dispatch(hl_dtype dtype, hl_precision precision, const hl_matrix& a, const hl_matrix& b, double t,
                   int intra_batch, const UniformResults& results, void* grad_a, void* grad_b, void* workspace,
                   size_t workspace_bytes_given, cudaStream_t stream) {
  if (const hl_status status = check_uniform_args(dtype, a, b, t, intra_batch); status != HL_OK) return status;
  if (!results.lse && !results.lse_f64 && !results.loss) return HL_ERR_INVALID_ARGUMENT;
  if (precision != HL_PRECISION_IEEE && precision != HL_PRECISION_TF32 && precision != HL_PRECISION_BF16)
    return HL_ERR_INVALID_ARGUMENT;
  const bool cross = b.data != nullptr;
  const size_t needed = hl_uniform_workspace_bytes_cuda(dtype, a.rows, cross ? b.rows : 0, a.cols, grad_a != nullptr,
                                                        cross && grad_b != nullptr);
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 256 != 0 || workspace_bytes_given < needed)
    return HL_ERR_INVALID_ARGUMENT;

  const bool intra = intra_batch != 0;
  int device = 0, major = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return status_of(e);
  if (const cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
      e != cudaSuccess)
    return status_of(e);
  const bool tensor_cores = major >= 8;  // bf16 and tf32 fragments; older GPUs compute every product on SIMT
  if (dtype == HL_FLOAT64) {
    const Results<double> out{static_cast<double*>(results.lse), results.lse_f64, static_cast<double*>(results.loss)};
    return uniform<double, double, Gram::kSimt>(a, b, t, intra, out, static_cast<double*>(grad_a),
                                                static_cast<double*>(grad_b), workspace, stream);
  }
  const Results<float> out{static_cast<float*>(results.lse), results.lse_f64, static_cast<float*>(results.loss)};
  float* ga = static_cast<float*>(grad_a);
  float* gb = static_cast<float*>(grad_b);
#ifdef HYPERLOSS_TRITON_AOT
  aot::Plan plan;
  if (aot::make_plan(dtype, precision, a.rows, cross ? b.rows : 0, a.cols, intra, ga != nullptr,
                     cross && gb != nullptr, &plan) &&
      aot::device_matches(device) && aot::kernels_ready(plan))
    return aot::dispatch(dtype, plan, a, b, t, out, ga, gb, workspace, stream);
#endif
  switch (dtype) {
    case HL_FLOAT16:
      if (!tensor_cores) return uniform<__half, float, Gram::kSimt>(a, b, t, intra, out, ga, gb, workspace, stream);
      return uniform<__half, float, Gram::kHalf>(a, b, t, intra, out, ga, gb, workspace, stream);
    case HL_BFLOAT16:
      if (!tensor_cores)
        return uniform<__nv_bfloat16, float, Gram::kSimt>(a, b, t, intra, out, ga, gb, workspace, stream);
      return uniform<__nv_bfloat16, float, Gram::kBf16>(a, b, t, intra, out, ga, gb, workspace, stream);
    case HL_FLOAT32:
      if (tensor_cores && precision == HL_PRECISION_TF32)
        return uniform<float, float, Gram::kTf32>(a, b, t, intra, out, ga, gb, workspace, stream);
      if (tensor_cores && precision == HL_PRECISION_BF16)
        return uniform<float, float, Gram::kBf16>(a, b, t, intra, out, ga, gb, workspace, stream);
      return uniform<float, float, Gram::kSimt>(a, b, t, intra, out, ga, gb, workspace, stream);
    default:
      return HL_ERR_INVALID_ARGUMENT;  // unreachable: check_uniform_args knows the dtypes
  }
}

}  // namespace

hl_status uniform_lse(hl_dtype dtype, hl_precision precision, hl_matrix a, hl_matrix b, double t, int intra_batch,
                      const UniformResults& results, void* grad_a, void* grad_b, void* workspace,
                      size_t workspace_bytes, void* stream) {
  return dispatch(dtype, precision, a, b, t, intra_batch, results, grad_a, grad_b, workspace, workspace_bytes,
                  static_cast<cudaStream_t>(stream));
}

bool aot_built_for_current_device() {
#ifdef HYPERLOSS_TRITON_AOT
  int device = 0;
  return cudaGetDevice(&device) == cudaSuccess && aot::device_matches(device);
#else
  return false;
#endif
}

bool uniform_runs_aot(hl_dtype dtype, hl_precision precision, int64_t rows_a, int64_t rows_b, int64_t cols,
                      int intra_batch, bool grad_a, bool grad_b) {
#ifdef HYPERLOSS_TRITON_AOT
  aot::Plan plan;
  return aot::make_plan(dtype, precision, rows_a, rows_b, cols, intra_batch != 0, grad_a, grad_b, &plan) &&
         aot_built_for_current_device() && aot::kernels_ready(plan);
#else
  (void)dtype, (void)precision, (void)rows_a, (void)rows_b, (void)cols, (void)intra_batch, (void)grad_a, (void)grad_b;
  return false;
#endif
}

int64_t uniform_aot_segments(hl_dtype dtype, hl_precision precision, int64_t rows_a, int64_t rows_b, int64_t cols,
                             int intra_batch, bool grad_a, bool grad_b) {
#ifdef HYPERLOSS_TRITON_AOT
  aot::Plan plan;
  if (aot::make_plan(dtype, precision, rows_a, rows_b, cols, intra_batch != 0, grad_a, grad_b, &plan))
    return std::max(plan.split_a.segments, plan.split_b.segments);
#else
  (void)dtype, (void)precision, (void)rows_a, (void)rows_b, (void)cols, (void)intra_batch, (void)grad_a, (void)grad_b;
#endif
  return 1;
}

std::pair<int64_t, int64_t> aot_split_rule(int64_t rows, int64_t other, int64_t width, bool need_acc,
                                           const std::vector<int64_t>& compiled) {
#ifdef HYPERLOSS_TRITON_AOT
  const aot::Split split = aot::split_columns(rows, other, width, need_acc, [&](int64_t cols) {
    return std::find(compiled.begin(), compiled.end(), cols) != compiled.end();
  });
  return {split.segments, split.cols};
#else
  (void)rows, (void)other, (void)width, (void)need_acc, (void)compiled;
  return {1, 0};
#endif
}

std::string aot_plan_json(hl_dtype dtype, hl_precision precision, int64_t rows_a, int64_t rows_b, int64_t cols,
                          int intra_batch, bool grad_a, bool grad_b) {
#ifdef HYPERLOSS_TRITON_AOT
  aot::Plan p;
  if (!aot::make_plan(dtype, precision, rows_a, rows_b, cols, intra_batch != 0, grad_a, grad_b, &p))
    return "{\"plan\": false}";
  char* const base = reinterpret_cast<char*>(uintptr_t(1) << 40);  // never dereferenced: offsets only
  const aot::Workspace ws(base, p);
  auto offset = [&](const void* q) { return std::to_string(static_cast<const char*>(q) - base); };
  std::string out = "{\"plan\": true, \"bytes\": " + std::to_string(ws.bytes) +
                    ", \"query\": " + std::to_string(hl_uniform_workspace_bytes_cuda(dtype, rows_a, rows_b, cols,
                                                                                     grad_a, grad_b)) +
                    ", \"width\": " + std::to_string(p.width) + ", \"split_a\": [" +
                    std::to_string(p.split_a.segments) + ", " + std::to_string(p.split_a.cols) + "], \"split_b\": [" +
                    std::to_string(p.split_b.segments) + ", " + std::to_string(p.split_b.cols) + "], \"ws\": {";
  const std::pair<const char*, const void*> pieces[] = {
      {"x_a", ws.x_a},       {"x_b", ws.x_b},   {"norms_a", ws.norms_a}, {"norms_b", ws.norms_b},
      {"bias_a", ws.bias_a}, {"bias_b", ws.bias_b}, {"acc_a", ws.acc_a},   {"acc_b", ws.acc_b},
      {"consts", ws.consts}, {"info", ws.info},   {"lse", ws.lse}};
  for (size_t i = 0; i < std::size(pieces); ++i)
    out += std::string(i ? ", " : "") + "\"" + pieces[i].first + "\": " + offset(pieces[i].second);
  out += "}, \"steps\": [";
  aot::Step todo[aot::kMaxSteps];
  const int n = aot::steps(p, todo);
  for (int k = 0; k < n; ++k) {
    const aot::Launch* l = todo[k].launch;
    const aot::SideArgs args = aot::side_args(p, ws, todo[k].side_b, l->partial);
    const unsigned grid = aot::grid_of(p, todo[k]);
    out += std::string(k ? ", " : "") + "{\"name\": \"" + l->kernel->name + "\", \"side_b\": " +
           (todo[k].side_b ? "true" : "false") + ", \"grid\": [" + std::to_string(grid) + ", " +
           std::to_string(l->grid_y) + "], \"args\": {";
    for (int i = 0; i < l->kernel->num_args; ++i)
      for (const hl_aot_arg& a : args.args)
        if (std::strcmp(a.name, l->kernel->arg_names[i]) == 0)
          out += std::string(i ? ", " : "") + "\"" + a.name + "\": [\"" + a.type + "\", " +
                 (a.type[0] == '*' ? offset(a.ptr) : std::to_string(a.value)) + "]";
    out += "}}";
  }
  return out + "]}";
#else
  (void)dtype, (void)precision, (void)rows_a, (void)rows_b, (void)cols, (void)intra_batch, (void)grad_a, (void)grad_b;
  return "{\"plan\": false}";
#endif
}

std::vector<std::string> aot_plan_problems() {
  std::vector<std::string> problems;
#ifdef HYPERLOSS_TRITON_AOT
  // A workspace address that is never dereferenced: the plans and their arguments are built on the host only.
  void* const fake = reinterpret_cast<void*>(uintptr_t(1) << 40);
  char line[256];
  int plans = 0;
  // Rows of A and B: no queue, a queue, and the two splits (few rows of A against a long queue, few of B against A).
  const int64_t shapes[4][2] = {{130, 0}, {130, 45}, {130, 4096}, {4096, 45}};
  for (hl_dtype dtype : {HL_FLOAT32, HL_FLOAT16, HL_BFLOAT16})
    for (hl_precision precision : {HL_PRECISION_IEEE, HL_PRECISION_TF32, HL_PRECISION_BF16})
      for (int64_t cols = 1; cols <= 256; ++cols)
        for (const auto& shape : shapes)
          for (int mode = 0; mode < 8; ++mode) {
            const int64_t rows_a = shape[0], rows_b = shape[1];
            const bool intra = mode & 1, grad_a = mode & 2, grad_b = (mode & 4) && rows_b > 0;
            if ((mode & 4) && rows_b == 0) continue;
            if (!intra && rows_b == 0) continue;  // no pairs: check_uniform_args refuses it
            const int op = aot::operand_dtype(dtype, precision);
            // Every (operand dtype, width) the table holds a lean sweep for has all the kernels of every call.
            bool expected = false;
            for (int self_mode : {0, 1, 2})
              for (int other : {0, 1})
                for (int acc : {0, 1})
                  expected = expected || (op >= 0 && hl_aot_find(aot::kLean, op, self_mode, other, acc,
                                                                 int(aot::block_width(cols)), 0) != nullptr);
            aot::Plan plan;
            const bool planned = aot::make_plan(dtype, precision, rows_a, rows_b, cols, intra, grad_a, grad_b, &plan);
            std::snprintf(line, sizeof line,
                          "dtype %d precision %d cols %lld rows %lld queue %lld intra %d grads %d%d: ",
                          int(dtype), int(precision), (long long)cols, (long long)rows_a, (long long)rows_b,
                          int(intra), int(grad_a), int(grad_b));
            if (planned != expected) {
              problems.push_back(line + std::string(planned ? "planned, not expected" : "a kernel is missing"));
              continue;
            }
            if (!planned) continue;
            ++plans;
            // The split shapes split where the build holds split sweeps of the length uniform._segments picks
            // there (1024 columns: 4 segments of the 4096-row queue, 4 of A's 4096 rows for B's sweep).
            const bool split_built = hl_aot_find(aot::kMerge, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, 1, HL_AOT_ANY,
                                                 HL_AOT_ANY) != nullptr &&
                                     hl_aot_find(aot::kLean, op, 0, 1, 1, int(plan.width), 1024) != nullptr;
            if (split_built && rows_b == 4096 && plan.split_a.segments != 4)
              problems.push_back(std::string(line) + "A's sweep not split into 4 segments: " +
                                 std::to_string(plan.split_a.segments));
            if (split_built && rows_a == 4096 && plan.grad_b && plan.split_b.segments != 4)
              problems.push_back(std::string(line) + "B's sweep not split into 4 segments: " +
                                 std::to_string(plan.split_b.segments));
            const size_t need = aot::Workspace(nullptr, plan).bytes;
            if (hl_uniform_workspace_bytes_cuda(dtype, rows_a, rows_b, cols, grad_a, grad_b) < need)
              problems.push_back(line + std::string("the workspace query is below the plan's need"));
            const aot::Workspace ws(fake, plan);
            aot::Step todo[aot::kMaxSteps];
            const int n = aot::steps(plan, todo);
            for (int k = 0; k < n; ++k) {
              const aot::SideArgs args = aot::side_args(plan, ws, todo[k].side_b, todo[k].launch->partial);
              char error[160] = "";
              if (hl_aot_check_args(todo[k].launch->kernel, args.args, aot::kSideArgs, error, sizeof error) != 0)
                problems.push_back(line + std::string(error));
            }
          }
  if (plans == 0) problems.push_back("no call shape is routed to the ahead-of-time kernels");
#endif
  return problems;
}

}  // namespace hyperloss::cuda

extern "C" int hl_has_cuda(void) { return 1; }

extern "C" const char* hl_cuda_uniform_kernels(void) {
  int device = 0, count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 || cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();  // a machine without a driver or device: not an error for the caller's next call
    return "none";
  }
  return hyperloss::cuda::aot_built_for_current_device() ? "triton-aot" : "cuda";
}

extern "C" size_t hl_uniform_workspace_bytes_cuda(hl_dtype dtype, int64_t rows_a, int64_t rows_b, int64_t cols,
                                                  int need_grad_a, int need_grad_b) {
  using namespace hyperloss::cuda;
  if (!valid_sizes(dtype, rows_a, rows_b, cols)) return 0;  // 0: invalid arguments
  const bool ga = need_grad_a != 0, gb = need_grad_b != 0;
  size_t bytes = 0;
  switch (dtype) {
    case HL_FLOAT64: bytes = workspace_bytes<double, double>(rows_a, rows_b, cols, ga, gb); break;
    case HL_FLOAT32: bytes = workspace_bytes<float, float>(rows_a, rows_b, cols, ga, gb); break;
    case HL_FLOAT16: bytes = workspace_bytes<__half, float>(rows_a, rows_b, cols, ga, gb); break;
    case HL_BFLOAT16: bytes = workspace_bytes<__nv_bfloat16, float>(rows_a, rows_b, cols, ga, gb); break;
  }
#ifdef HYPERLOSS_TRITON_AOT
  // Either path may run (the device and, for float32, the precision decide): room for both.
  bytes = std::max(bytes, aot::workspace_bytes(dtype, rows_a, rows_b, cols, ga, gb));
#endif
  return bytes;
}

extern "C" hl_status hl_uniform_lse_cuda(hl_dtype dtype, hl_precision precision, hl_matrix a, hl_matrix b, double t,
                                         int intra_batch, void* lse_out, void* grad_a, void* grad_b, void* workspace,
                                         size_t workspace_bytes, void* stream) {
  // Every argument is checked before the device is touched: a bad call fails the same way with or without a GPU.
  hyperloss::cuda::UniformResults results;
  results.lse = lse_out;
  if (lse_out == nullptr) return HL_ERR_INVALID_ARGUMENT;
  return hyperloss::cuda::uniform_lse(dtype, precision, a, b, t, intra_batch, results, grad_a, grad_b, workspace,
                                      workspace_bytes, stream);
}

extern "C" hl_status hl_uniform_lse_f64_cuda(hl_dtype dtype, hl_precision precision, hl_matrix a, hl_matrix b,
                                             double t, int intra_batch, double* lse_out, void* grad_a, void* grad_b,
                                             void* workspace, size_t workspace_bytes, void* stream) {
  hyperloss::cuda::UniformResults results;
  results.lse_f64 = lse_out;
  if (lse_out == nullptr) return HL_ERR_INVALID_ARGUMENT;
  return hyperloss::cuda::uniform_lse(dtype, precision, a, b, t, intra_batch, results, grad_a, grad_b, workspace,
                                      workspace_bytes, stream);
}
