// Uniformity log-sum-exp and gradient on NVIDIA GPUs, with no N x N buffer and no atomics on the sums.
//
// First the rows of A and B are centered and scaled by a power of two into the workspace, x' = (x - c) 2^-E with
// c the column means of A and B together (as on the CPU): distances do not move, so the Gram form below cancels
// only on the spread of the rows, not on their common offset, and no squared norm overflows. With t' = t 4^E, each
// thread block owns kTile rows i and sweeps the columns j of the pair set, flash-attention style:
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
// column's center is a value of that type for which every x - c is one too (the rounded mean usually is, where a
// common offset makes centering matter), and a column where it is not stays uncentered. Float16 rows are not
// scaled (E = 0: their squares cannot overflow, and scaling could push small values into float16's subnormals).
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../args.h"
#include "common.cuh"
#include "uniform.h"

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

template <typename Tin>
__device__ __forceinline__ Tin from_double(double v) {
  if constexpr (std::is_same_v<Tin, __half>) {
    return __float2half(static_cast<float>(v));
  } else if constexpr (std::is_same_v<Tin, __nv_bfloat16>) {
    return __float2bfloat16(static_cast<float>(v));
  } else {
    return static_cast<Tin>(v);
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

// Column means of A and B together (each column summed over the rows in one fixed order: reproducible), and the
// non-finite flag: any NaN or Inf element makes the result NaN, as on the CPU. x / n is summed, so a sum never
// overflows.
template <typename Tin>
__global__ void __launch_bounds__(32 * kStatWarps)
    column_mean_kernel(MatrixView<Tin> a, MatrixView<Tin> b, int64_t cols, double inv_rows, double* center,
                       unsigned long long* nonfinite) {
  __shared__ double partial[kStatWarps][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  bool finite = true;
  for (int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32; c0 < cols; c0 += static_cast<int64_t>(gridDim.x) * 32) {
    const int64_t c = c0 + lane;
    double sum = 0;
    if (c < cols)
      for (int set = 0; set < 2; ++set) {
        const MatrixView<Tin>& x = set == 0 ? a : b;
        for (int64_t r = warp; r < x.rows; r += kStatWarps) {
          const double v = to_double(x.at(r, c));
          finite = finite && isfinite(v);
          sum += v * inv_rows;
        }
      }
    __syncthreads();  // the previous columns' partial sums are read
    partial[warp][lane] = sum;
    __syncthreads();
    if (warp == 0 && c < cols) {
      double total = 0;
      for (int w = 0; w < kStatWarps; ++w) total += partial[w][lane];
      center[c] = total;
    }
  }
  if (!finite) atomicOr(nonfinite, 1ull);
}

// Replaces each column's mean by the center used (see the top of the file) and records max |x - c| / 2 over every
// column in *max_bits (halved: x - c cannot overflow; the bits of non-negative doubles order as their values,
// so an integer atomicMax is the maximum, in any order).
template <typename Tin>
__global__ void __launch_bounds__(32 * kStatWarps)
    center_kernel(MatrixView<Tin> a, MatrixView<Tin> b, int64_t cols, double* center, unsigned long long* max_bits) {
  constexpr bool k16 = sizeof(Tin) == 2;
  __shared__ double partial_dev[kStatWarps][32], partial_raw[kStatWarps][32];
  __shared__ bool partial_exact[kStatWarps][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double block_max = 0;
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
    const double half_dev = 0.5 * to_double(x.at(r, c)) - 0.5 * center[c];
    out[idx] = from_double<Tin>(ldexp(half_dev, 1 - e));
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
    double loss = lse - log_pairs;
    loss = loss > 0 ? 0.0 : loss;  // log mean exp(s) <= max s <= 0 (NaN stays NaN)
    if (out.lse) *out.lse = static_cast<Tc>(lse);
    if (out.lse_f64) *out.lse_f64 = lse;
    if (out.loss) *out.loss = static_cast<Tc>(loss);
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

template <typename Tin, typename Tc, Gram G>
hl_status launch_sweep(const SweepArgs<Tin, Tc>& args, cudaStream_t stream) {
  constexpr size_t smem = sweep_smem_bytes<Tc, G>();
  auto kernel = sweep_kernel<Tin, Tc, G>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return HL_ERR_CUDA;
  }
  const int64_t blocks = (args.rows.rows + kTile - 1) / kTile;
  kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(args);
  return status_of(cudaGetLastError());
}

// Grid of an element-wise or row-wise pass over n items, `per_block` a block.
unsigned grid_for(int64_t n, int64_t per_block, int64_t most = 65535) {
  return static_cast<unsigned>(std::max<int64_t>(std::min<int64_t>((n + per_block - 1) / per_block, most), 1));
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

  cudaError_t error = cudaMemsetAsync(ws.flags, 0, 2 * sizeof(unsigned long long), stream);
  if (grad_a && error == cudaSuccess) error = cudaMemsetAsync(ws.acc_a, 0, sizeof(Tc) * a.rows * cols, stream);
  if (grad_b && error == cudaSuccess) error = cudaMemsetAsync(ws.acc_b, 0, sizeof(Tc) * b.rows * cols, stream);
  if (error != cudaSuccess) return HL_ERR_CUDA;

  // Center and scale.
  const unsigned stat_blocks = grid_for(cols, 32, kMaxStatBlocks);
  column_mean_kernel<Tin><<<stat_blocks, 32 * kStatWarps, 0, stream>>>(
      a_raw, b_raw, cols, 1.0 / static_cast<double>(a.rows + b.rows), ws.center, nonfinite);
  center_kernel<Tin><<<stat_blocks, 32 * kStatWarps, 0, stream>>>(a_raw, b_raw, cols, ws.center, max_bits);
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
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
    return HL_ERR_CUDA;
  const bool tensor_cores = major >= 8;  // bf16 and tf32 fragments; older GPUs compute every product on SIMT
  if (dtype == HL_FLOAT64) {
    const Results<double> out{static_cast<double*>(results.lse), results.lse_f64, static_cast<double*>(results.loss)};
    return uniform<double, double, Gram::kSimt>(a, b, t, intra, out, static_cast<double*>(grad_a),
                                                static_cast<double*>(grad_b), workspace, stream);
  }
  const Results<float> out{static_cast<float*>(results.lse), results.lse_f64, static_cast<float*>(results.loss)};
  float* ga = static_cast<float*>(grad_a);
  float* gb = static_cast<float*>(grad_b);
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

}  // namespace hyperloss::cuda

extern "C" int hl_has_cuda(void) { return 1; }

extern "C" size_t hl_uniform_workspace_bytes_cuda(hl_dtype dtype, int64_t rows_a, int64_t rows_b, int64_t cols,
                                                  int need_grad_a, int need_grad_b) {
  using namespace hyperloss::cuda;
  if (!valid_sizes(dtype, rows_a, rows_b, cols)) return 0;  // 0: invalid arguments
  const bool ga = need_grad_a != 0, gb = need_grad_b != 0;
  switch (dtype) {
    case HL_FLOAT64: return workspace_bytes<double, double>(rows_a, rows_b, cols, ga, gb);
    case HL_FLOAT32: return workspace_bytes<float, float>(rows_a, rows_b, cols, ga, gb);
    case HL_FLOAT16: return workspace_bytes<__half, float>(rows_a, rows_b, cols, ga, gb);
    case HL_BFLOAT16: return workspace_bytes<__nv_bfloat16, float>(rows_a, rows_b, cols, ga, gb);
  }
  return 0;
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
