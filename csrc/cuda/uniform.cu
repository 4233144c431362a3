// Uniformity log-sum-exp and gradient on NVIDIA GPUs, with no N x N buffer and no atomics on the sums.
//
// Each thread block owns kTile rows i and sweeps the columns j of the pair set, flash-attention style:
//   s_ij = -t * max(n_i + n_j - 2 g_ij, 0)                  (g from tensor cores for 16-bit or tf32 operands)
//   m_i  = running max of s_ij,  r_i = sum_j exp(s_ij - m_i),  acc_i = sum_j exp(s_ij - m_i) x_j
// and rescales r_i and acc_i when m_i grows, so the result is an exact log-sum-exp even where every exp(s)
// underflows. Then
//   lse = log sum_i exp(m_i) (f r_intra_i + r_cross_i)       f = 1/2 when each intra pair was seen from both rows
//   d lse / d x_i = -2t exp(m_i - lse) (w_i x_i - acc_i),  w_i = r_intra_i + r_cross_i
// The queue side (rows of B) gets its gradient from a second sweep of B's rows over A's. A forward-only call
// sweeps only the tiles with j > i and skips acc.
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../args.h"
#include "common.cuh"

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

template <typename Tin, typename Tc>
struct SweepArgs {
  MatrixView<Tin> rows;   // the rows this sweep owns
  MatrixView<Tin> cross;  // the cross set (data == nullptr: none)
  int64_t cols;
  const Tc* row_norms;
  const Tc* cross_norms;
  bool intra;       // also pair the rows among themselves
  bool upper_only;  // intra pairs j > i only (forward-only calls), else every j != i
  Tc t;
  Tc* m;
  Tc* r_intra;  // nullptr when there are no intra pairs
  Tc* r_cross;
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
  if (tid < kTile) row_norm[tid] = row0 + tid < p.rows.rows ? p.row_norms[row0 + tid] : Tc(0);
  Tc m = neg_inf, r_intra = 0, r_cross = 0;

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
        Tc d2 = row_norm[local_row] + col_norm[jj] - Tc(2) * srow[jj];
        d2 = d2 < Tc(0) ? Tc(0) : d2;
        const Tc s = valid ? -p.t * d2 : neg_inf;
        srow[jj] = s;
        tile_max = fmax(tile_max, s);
      }
      tile_max = warp_max(tile_max, kThreadsPerRow);
      const Tc new_m = fmax(m, tile_max);
      const Tc scale = new_m == neg_inf ? Tc(1) : exp(m - new_m);
      Tc tile_sum = 0;
#pragma unroll 4
      for (int c = 0; c < kColsPerThread; ++c) {
        const int jj = c * kThreadsPerRow + part;
        const Tc e = new_m == neg_inf ? Tc(0) : exp(srow[jj] - new_m);
        srow[jj] = e;
        tile_sum += e;
      }
      tile_sum = warp_sum(tile_sum, kThreadsPerRow);
      m = new_m;
      r_intra *= scale;
      r_cross *= scale;
      (intra ? r_intra : r_cross) += tile_sum;
      if (part == 0) row_scale[local_row] = scale;
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

// Squared row norms, and the non-finite flag (any NaN or Inf element makes the result NaN, as on the CPU).
template <typename Tin, typename Tc>
__global__ void sq_norms_kernel(MatrixView<Tin> x, int64_t cols, Tc* norms, int* nonfinite) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= x.rows) return;
  Tc sum = 0;
  bool finite = true;
  for (int64_t c = threadIdx.x % 32; c < cols; c += 32) {
    const Tc v = to_compute<Tc>(x.at(row, c));
    finite = finite && isfinite(v);
    sum += v * v;
  }
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) norms[row] = sum;
  if (!finite) atomicOr(nonfinite, 1);
}

// lse = M + log sum_i exp(m_i - M) (intra_factor r_intra_i + r_cross_i), one block.
template <typename Tc>
__global__ void __launch_bounds__(1024) lse_kernel(int64_t rows, const Tc* m, const Tc* r_intra, const Tc* r_cross, Tc intra_factor,
                           const int* nonfinite, Tc* lse_out, Tc* lse_copy) {
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
      sum += exp(static_cast<double>(m[i]) - shift) *
             (static_cast<double>(intra_factor) * r_intra[i] + static_cast<double>(r_cross[i]));
  sum = warp_sum(sum);
  __syncthreads();
  if (lane == 0) partial[warp] = sum;
  __syncthreads();
  if (tid == 0) {
    double total = 0;
    for (int w = 0; w < warps; ++w) total += partial[w];
    const double lse = *nonfinite ? NAN : shift + log(total);
    *lse_out = static_cast<Tc>(lse);
    *lse_copy = static_cast<Tc>(lse);
  }
}

// grad_i = -2t exp(m_i - lse) (w_i x_i - acc_i), w_i = r_intra_i + r_cross_i (r_intra may be nullptr).
template <typename Tin, typename Tc>
__global__ void finish_kernel(MatrixView<Tin> x, int64_t cols, Tc t, const Tc* m, const Tc* r_intra, const Tc* r_cross,
                              const Tc* acc, const Tc* lse, const int* nonfinite, Tc* grad) {
  const int64_t total = x.rows * cols;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / cols, d = idx % cols;
    const Tc coef = *nonfinite ? static_cast<Tc>(NAN) : Tc(-2) * t * exp(m[i] - *lse);
    const Tc w = (r_intra ? r_intra[i] : Tc(0)) + r_cross[i];
    grad[idx] = coef * (w * to_compute<Tc>(x.at(i, d)) - acc[idx]);
  }
}

// Workspace pieces, carved in this order by both the size query and the call.
template <typename Tc>
struct Workspace {
  Tc *m_a, *r_intra_a, *r_cross_a, *norms_a, *acc_a;
  Tc *m_b, *r_b, *norms_b, *acc_b;
  Tc* lse;
  int* nonfinite;
  size_t bytes;

  Workspace(void* base, int64_t rows_a, int64_t rows_b, int64_t cols, bool grad_a, bool grad_b) {
    WorkspaceCarver carve(base);
    m_a = carve.take<Tc>(rows_a);
    r_intra_a = carve.take<Tc>(rows_a);
    r_cross_a = carve.take<Tc>(rows_a);
    norms_a = carve.take<Tc>(rows_a);
    acc_a = carve.take<Tc>(grad_a ? rows_a * cols : 0);
    m_b = carve.take<Tc>(rows_b);
    r_b = carve.take<Tc>(rows_b);
    norms_b = carve.take<Tc>(rows_b);
    acc_b = carve.take<Tc>(grad_b ? rows_b * cols : 0);
    lse = carve.take<Tc>(1);
    nonfinite = carve.take<int>(1);
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

template <typename Tin, typename Tc, Gram G>
hl_status uniform(const hl_matrix& a_in, const hl_matrix& b_in, double t, bool intra, Tc* lse_out, Tc* grad_a,
                  Tc* grad_b, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const bool cross = b_in.data != nullptr;
  const int64_t cols = a_in.cols;
  const Workspace<Tc> ws(workspace, a_in.rows, cross ? b_in.rows : 0, cols, grad_a != nullptr, grad_b != nullptr);
  (void)workspace_bytes;  // checked by the caller, before any device call
  const MatrixView<Tin> a{static_cast<const Tin*>(a_in.data), a_in.rows, a_in.row_stride, a_in.col_stride};
  const MatrixView<Tin> b{static_cast<const Tin*>(b_in.data), cross ? b_in.rows : 0, b_in.row_stride,
                          b_in.col_stride};

  cudaError_t error = cudaMemsetAsync(ws.nonfinite, 0, sizeof(int), stream);
  if (grad_a && error == cudaSuccess) error = cudaMemsetAsync(ws.acc_a, 0, sizeof(Tc) * a.rows * cols, stream);
  if (grad_b && error == cudaSuccess) error = cudaMemsetAsync(ws.acc_b, 0, sizeof(Tc) * b.rows * cols, stream);
  if (error != cudaSuccess) return HL_ERR_CUDA;
  constexpr int kNormRowsPerBlock = 8;
  sq_norms_kernel<Tin, Tc><<<unsigned((a.rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock), 32 * kNormRowsPerBlock, 0,
                             stream>>>(a, cols, ws.norms_a, ws.nonfinite);
  if (cross)
    sq_norms_kernel<Tin, Tc><<<unsigned((b.rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock),
                               32 * kNormRowsPerBlock, 0, stream>>>(b, cols, ws.norms_b, ws.nonfinite);

  // A's rows against A (intra) and B (cross). Without a gradient for A, the j > i half suffices for lse.
  const bool upper_only = grad_a == nullptr;
  SweepArgs<Tin, Tc> args{a,     b,      cols,         ws.norms_a,   ws.norms_b, intra, upper_only,
                          Tc(t), ws.m_a, ws.r_intra_a, ws.r_cross_a, grad_a ? ws.acc_a : nullptr};
  if (!cross) args.cross.data = nullptr;
  hl_status status = launch_sweep<Tin, Tc, G>(args, stream);
  if (status != HL_OK) return status;
  lse_kernel<Tc><<<1, 1024, 0, stream>>>(a.rows, ws.m_a, ws.r_intra_a, ws.r_cross_a, Tc(upper_only ? 1.0 : 0.5),
                                          ws.nonfinite, lse_out, ws.lse);
  constexpr int kFinishThreads = 256;
  auto finish_blocks = [](int64_t n) { return unsigned(std::min<int64_t>((n + kFinishThreads - 1) / kFinishThreads, 65535)); };
  if (grad_a)
    finish_kernel<Tin, Tc><<<finish_blocks(a.rows * cols), kFinishThreads, 0, stream>>>(
        a, cols, Tc(t), ws.m_a, ws.r_intra_a, ws.r_cross_a, ws.acc_a, ws.lse, ws.nonfinite, grad_a);
  if (grad_b && cross) {
    // B's rows against A: the same sweep with the roles swapped, cross pairs only.
    SweepArgs<Tin, Tc> back{b, a, cols, ws.norms_b, ws.norms_a, false, false, Tc(t), ws.m_b, nullptr, ws.r_b, ws.acc_b};
    status = launch_sweep<Tin, Tc, G>(back, stream);
    if (status != HL_OK) return status;
    finish_kernel<Tin, Tc><<<finish_blocks(b.rows * cols), kFinishThreads, 0, stream>>>(
        b, cols, Tc(t), ws.m_b, nullptr, ws.r_b, ws.acc_b, ws.lse, ws.nonfinite, grad_b);
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

}  // namespace
}  // namespace hyperloss::cuda

extern "C" int hl_has_cuda(void) { return 1; }

extern "C" size_t hl_uniform_workspace_bytes_cuda(hl_dtype dtype, int64_t rows_a, int64_t rows_b, int64_t cols,
                                                  int need_grad_a, int need_grad_b) {
  using namespace hyperloss::cuda;
  if (!valid_sizes(dtype, rows_a, rows_b, cols)) return 0;
  if (dtype == HL_FLOAT64) return Workspace<double>(nullptr, rows_a, rows_b, cols, need_grad_a, need_grad_b).bytes;
  return Workspace<float>(nullptr, rows_a, rows_b, cols, need_grad_a, need_grad_b).bytes;
}

extern "C" hl_status hl_uniform_lse_cuda(hl_dtype dtype, hl_precision precision, hl_matrix a, hl_matrix b, double t,
                                         int intra_batch, void* lse_out, void* grad_a, void* grad_b, void* workspace,
                                         size_t workspace_bytes, void* stream_ptr) {
  using namespace hyperloss::cuda;
  // Every argument is checked before the device is touched: a bad call fails the same way with or without a GPU.
  if (const hl_status status = hyperloss::check_uniform_args(dtype, a, b, t, intra_batch); status != HL_OK)
    return status;
  if (lse_out == nullptr) return HL_ERR_INVALID_ARGUMENT;
  if (precision != HL_PRECISION_IEEE && precision != HL_PRECISION_TF32 && precision != HL_PRECISION_BF16)
    return HL_ERR_INVALID_ARGUMENT;
  const bool cross = b.data != nullptr;
  const size_t needed = hl_uniform_workspace_bytes_cuda(dtype, a.rows, cross ? b.rows : 0, a.cols, grad_a != nullptr,
                                                        cross && grad_b != nullptr);
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 256 != 0 || workspace_bytes < needed)
    return HL_ERR_INVALID_ARGUMENT;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const bool intra = intra_batch != 0;
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
    return HL_ERR_CUDA;
  const bool tensor_cores = major >= 8;  // bf16 and tf32 fragments; older GPUs compute every product on SIMT
  float* lse_f = static_cast<float*>(lse_out);
  float* ga_f = static_cast<float*>(grad_a);
  float* gb_f = static_cast<float*>(grad_b);
  switch (dtype) {
    case HL_FLOAT64:
      return uniform<double, double, Gram::kSimt>(a, b, t, intra, static_cast<double*>(lse_out),
                                                  static_cast<double*>(grad_a), static_cast<double*>(grad_b), workspace,
                                                  workspace_bytes, stream);
    case HL_FLOAT16:
      if (!tensor_cores)
        return uniform<__half, float, Gram::kSimt>(a, b, t, intra, lse_f, ga_f, gb_f, workspace, workspace_bytes,
                                                   stream);
      return uniform<__half, float, Gram::kHalf>(a, b, t, intra, lse_f, ga_f, gb_f, workspace, workspace_bytes,
                                                 stream);
    case HL_BFLOAT16:
      if (!tensor_cores)
        return uniform<__nv_bfloat16, float, Gram::kSimt>(a, b, t, intra, lse_f, ga_f, gb_f, workspace,
                                                          workspace_bytes, stream);
      return uniform<__nv_bfloat16, float, Gram::kBf16>(a, b, t, intra, lse_f, ga_f, gb_f, workspace,
                                                        workspace_bytes, stream);
    case HL_FLOAT32:
      if (!tensor_cores)
        return uniform<float, float, Gram::kSimt>(a, b, t, intra, lse_f, ga_f, gb_f, workspace, workspace_bytes,
                                                  stream);
      if (precision == HL_PRECISION_TF32)
        return uniform<float, float, Gram::kTf32>(a, b, t, intra, lse_f, ga_f, gb_f, workspace, workspace_bytes,
                                                  stream);
      if (precision == HL_PRECISION_BF16)
        return uniform<float, float, Gram::kBf16>(a, b, t, intra, lse_f, ga_f, gb_f, workspace, workspace_bytes,
                                                  stream);
      return uniform<float, float, Gram::kSimt>(a, b, t, intra, lse_f, ga_f, gb_f, workspace, workspace_bytes,
                                                stream);
  }
  return HL_ERR_UNSUPPORTED;
}
