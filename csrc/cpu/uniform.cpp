// Uniformity log-sum-exp and gradient on the CPU, in one pass over the pair tiles and with no N x N buffer.
//
// Math, for a pair (i, j) with Gram entry g_ij and squared norms n_i, n_j:
//   s_ij = -t * max(n_i + n_j - 2 g_ij, 0),   e_ij = exp(s_ij - shift)
//   lse  = shift + log sum e_ij
//   d lse / d x_i = -2t / Z * (w_i x_i - sum_j e_ij x_j),  w_i = sum_j e_ij,  Z = sum e_ij
// Each tile of pairs costs three small products (Gram, E X_J, E^T X_I): every pair's exp is computed once and
// feeds both of its rows. Each thread keeps its own shift and row sums (no atomics); a thread rescales its sums
// only when a tile maximum passes its shift by more than kRescaleMargin e-folds, so terms stay below
// exp(kRescaleMargin) and the result is an exact log-sum-exp even where every exp(s) underflows.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "hyperloss/hyperloss.h"
#include "tile_matmul.h"
#include "vec_exp.h"

namespace hyperloss::cpu {
namespace {

constexpr int64_t kTile = 64;            // rows on each side of a pair tile (a multiple of kColBlock)
constexpr double kRescaleMargin = 16.0;  // e-folds a tile maximum may exceed a thread's shift before rescaling

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// One side of the pair set, packed: rows padded to kTile with zeros, columns padded to kColBlock.
template <typename T>
struct PackedRows {
  int64_t rows = 0, padded_rows = 0, padded_cols = 0;
  std::vector<T> rows_major;  // padded_rows x padded_cols
  std::vector<T> sq_norms;    // padded_rows
  bool finite = true;

  PackedRows(const hl_matrix& m, int64_t padded_cols_)
      : rows(m.rows), padded_rows(round_up(m.rows, kTile)), padded_cols(padded_cols_),
        rows_major(padded_rows * padded_cols, T(0)), sq_norms(padded_rows, T(0)) {
    const T* src = static_cast<const T*>(m.data);
    bool all_finite = true;
#pragma omp parallel for reduction(&& : all_finite)
    for (int64_t r = 0; r < rows; ++r) {
      T norm = 0;
      for (int64_t c = 0; c < m.cols; ++c) {
        const T v = src[r * m.row_stride + c * m.col_stride];
        all_finite = all_finite && std::isfinite(v);
        rows_major[r * padded_cols + c] = v;
        norm += v * v;
      }
      sq_norms[r] = norm;
    }
    finite = all_finite;
  }
  const T* row(int64_t r) const { return rows_major.data() + r * padded_cols; }
};

// Per-thread running sums: sum of e_ij, and per row w_i and sum_j e_ij x_j, all relative to `shift`.
template <typename T>
struct ThreadSums {
  double shift;
  double total = 0;
  std::vector<T> weight_a, weighted_a, weight_b, weighted_b;

  void rescale_to(double new_shift) {
    const double factor = std::exp(shift - new_shift);
    total *= factor;
    for (auto* v : {&weight_a, &weighted_a, &weight_b, &weighted_b})
      for (T& e : *v) e = static_cast<T>(e * factor);
    shift = new_shift;
  }
};

struct PairTile {
  int64_t i0, j0;
  bool cross;     // rows of B on the j side, else rows of A
  bool diagonal;  // an intra tile with i0 == j0: only j > i counts
};

template <typename T>
T pair_score(const T* u, const T* v, int64_t cols, double t) {
  T d2 = 0;
  for (int64_t c = 0; c < cols; ++c) d2 += (u[c] - v[c]) * (u[c] - v[c]);
  return static_cast<T>(-t * d2);
}

template <typename T>
hl_status uniform_lse(const hl_matrix& a_in, const hl_matrix& b_in, double t, bool intra, int num_threads,
                      double* lse_out, T* grad_a, T* grad_b) {
  const bool cross = b_in.data != nullptr;
  const int64_t cols = a_in.cols;
  const int64_t padded_cols = round_up(cols, kColBlock<T>);
  const PackedRows<T> a(a_in, padded_cols);
  const PackedRows<T> b = cross ? PackedRows<T>(b_in, padded_cols) : PackedRows<T>(hl_matrix{nullptr, 0, cols, 0, 0},
                                                                                  padded_cols);
  const bool need_grad = grad_a != nullptr || grad_b != nullptr;
  const double nan = std::numeric_limits<double>::quiet_NaN();

  if (!a.finite || !b.finite) {  // as torch would: non-finite input, NaN result
    *lse_out = nan;
    if (grad_a) std::fill(grad_a, grad_a + a.rows * cols, static_cast<T>(nan));
    if (grad_b) std::fill(grad_b, grad_b + b.rows * cols, static_cast<T>(nan));
    return HL_OK;
  }

  // Starting shift: the largest score among a few real pairs, a cheap lower bound of the maximum.
  double start_shift = -std::numeric_limits<double>::infinity();
  if (intra)
    for (int64_t i = 0; i + 1 < a.rows; ++i)
      start_shift = std::max<double>(start_shift, pair_score(a.row(i), a.row(i + 1), cols, t));
  if (cross)
    for (int64_t i = 0; i < a.rows; ++i)
      start_shift = std::max<double>(start_shift, pair_score(a.row(i), b.row(i % b.rows), cols, t));

  std::vector<PairTile> tiles;
  if (intra)
    for (int64_t i0 = 0; i0 < a.rows; i0 += kTile)
      for (int64_t j0 = i0; j0 < a.rows; j0 += kTile) tiles.push_back({i0, j0, false, i0 == j0});
  if (cross)
    for (int64_t i0 = 0; i0 < a.rows; i0 += kTile)
      for (int64_t j0 = 0; j0 < b.rows; j0 += kTile) tiles.push_back({i0, j0, true, false});

  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  std::vector<ThreadSums<T>> sums(threads);
  for (auto& s : sums) {
    s.shift = start_shift;
    if (need_grad) {
      s.weight_a.assign(a.padded_rows, T(0));
      s.weighted_a.assign(a.padded_rows * padded_cols, T(0));
      if (cross) {
        s.weight_b.assign(b.padded_rows, T(0));
        s.weighted_b.assign(b.padded_rows * padded_cols, T(0));
      }
    }
  }

  // Tile scratch for every thread, allocated here once: buffers allocated inside the threads would land in
  // per-thread malloc arenas that keep growing the process over repeated calls.
  const int64_t scratch_per_thread = kTile * kTile + padded_cols * kTile;
  std::vector<T> scratch(threads * scratch_per_thread);
  const T neg_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel num_threads(threads)
  {
    ThreadSums<T>& mine = sums[omp_get_thread_num()];
    T* e = scratch.data() + omp_get_thread_num() * scratch_per_thread;  // kTile x kTile scores, then weights
    T* side_tile = e + kTile * kTile;                                    // padded_cols x kTile
#pragma omp for schedule(dynamic, 1)
    for (size_t k = 0; k < tiles.size(); ++k) {
      const PairTile& p = tiles[k];
      const PackedRows<T>& side = p.cross ? b : a;
      // Gram tile: g_ij = x_i . y_j, with the j side transposed into a contiguous tile first so that the
      // product's inner loop runs along j.
      for (int64_t j = 0; j < kTile; ++j) {
        const T* yj = side.row(p.j0 + j);
        for (int64_t c = 0; c < padded_cols; ++c) side_tile[c * kTile + j] = yj[c];
      }
      tile_matmul<T, false>(kTile, kTile, padded_cols, a.row(p.i0), padded_cols, 1, side_tile, kTile, e, kTile);
      // Scores, masked where the pair does not exist (padding, j <= i on the diagonal).
      T tile_max = neg_inf;
      const int64_t valid_i = std::min(kTile, a.rows - p.i0), valid_j = std::min(kTile, side.rows - p.j0);
      for (int64_t i = 0; i < kTile; ++i) {
        const T ni = a.sq_norms[p.i0 + i];
        const T* nj = side.sq_norms.data() + p.j0;
        T* ei = e + i * kTile;
        const int64_t first_j = p.diagonal ? i + 1 : 0;
#pragma omp simd reduction(max : tile_max)
        for (int64_t j = 0; j < kTile; ++j) {
          T d2 = ni + nj[j] - T(2) * ei[j];
          d2 = d2 < T(0) ? T(0) : d2;
          const bool valid = i < valid_i && j < valid_j && j >= first_j;
          const T s = valid ? static_cast<T>(-t) * d2 : neg_inf;
          ei[j] = s;
          tile_max = s > tile_max ? s : tile_max;
        }
      }
      if (tile_max == neg_inf) continue;
      if (tile_max > mine.shift + kRescaleMargin) mine.rescale_to(tile_max);
      const T shift = static_cast<T>(mine.shift);
      T tile_total = 0;
#pragma omp simd reduction(+ : tile_total)
      for (int64_t q = 0; q < kTile * kTile; ++q) {
        e[q] = vec_exp<T>(e[q] - shift);
        tile_total += e[q];
      }
      mine.total += tile_total;
      if (!need_grad) continue;
      // Row side: w_i += sum_j e_ij, sum_j e_ij y_j.   Column side: w_j += sum_i e_ij, sum_i e_ij x_i.
      T* weight_j = (p.cross ? mine.weight_b : mine.weight_a).data() + p.j0;
      T* weighted_j = (p.cross ? mine.weighted_b : mine.weighted_a).data() + p.j0 * padded_cols;
      for (int64_t i = 0; i < kTile; ++i) {
        T row_total = 0;
        const T* ei = e + i * kTile;
#pragma omp simd reduction(+ : row_total)
        for (int64_t j = 0; j < kTile; ++j) {
          row_total += ei[j];
          weight_j[j] += ei[j];
        }
        mine.weight_a[p.i0 + i] += row_total;
      }
      tile_matmul<T, true>(kTile, padded_cols, kTile, e, kTile, 1, side.row(p.j0), padded_cols,
                           mine.weighted_a.data() + p.i0 * padded_cols, padded_cols);
      tile_matmul<T, true>(kTile, padded_cols, kTile, e, 1, kTile, a.row(p.i0), padded_cols, weighted_j, padded_cols);
    }
  }

  // Combine the threads on the largest shift.
  double shift = -std::numeric_limits<double>::infinity();
  for (const auto& s : sums) shift = std::max(shift, s.shift);
  double total = 0;
  for (const auto& s : sums) total += s.total * std::exp(s.shift - shift);
  *lse_out = shift + std::log(total);
  if (!need_grad) return HL_OK;

  std::vector<T> coef(threads);
  for (int k = 0; k < threads; ++k) coef[k] = static_cast<T>(std::exp(sums[k].shift - shift) / total);
  const T minus_two_t = static_cast<T>(-2.0 * t);
  auto finish = [&](const PackedRows<T>& side, bool is_b, T* out) {
#pragma omp parallel for num_threads(threads)
    for (int64_t r = 0; r < side.rows; ++r) {
      T w = 0;
      for (int k = 0; k < threads; ++k) w += coef[k] * (is_b ? sums[k].weight_b : sums[k].weight_a)[r];
      const T* x = side.row(r);
      T* o = out + r * cols;
      for (int64_t c = 0; c < cols; ++c) o[c] = w * x[c];
      for (int k = 0; k < threads; ++k) {
        const T* g = (is_b ? sums[k].weighted_b : sums[k].weighted_a).data() + r * padded_cols;
        for (int64_t c = 0; c < cols; ++c) o[c] -= coef[k] * g[c];
      }
      for (int64_t c = 0; c < cols; ++c) o[c] *= minus_two_t;
    }
  };
  if (grad_a) finish(a, false, grad_a);
  if (cross && grad_b) finish(b, true, grad_b);
  return HL_OK;
}

}  // namespace
}  // namespace hyperloss::cpu

extern "C" hl_status hl_uniform_lse_cpu(hl_dtype dtype, hl_matrix a, hl_matrix b, double t, int intra_batch,
                                        int num_threads, double* lse_out, void* grad_a, void* grad_b) {
  using namespace hyperloss::cpu;
  const bool cross = b.data != nullptr;
  if (a.data == nullptr || lse_out == nullptr || a.cols <= 0 || a.rows <= 0) return HL_ERR_INVALID_ARGUMENT;
  if (cross && (b.cols != a.cols || b.rows <= 0)) return HL_ERR_INVALID_ARGUMENT;
  if (!intra_batch && !cross) return HL_ERR_INVALID_ARGUMENT;
  if (intra_batch && !cross && a.rows < 2) return HL_ERR_INVALID_ARGUMENT;
  if (!(t > 0) || !std::isfinite(t)) return HL_ERR_INVALID_ARGUMENT;
  try {
    if (dtype == HL_FLOAT32)
      return uniform_lse<float>(a, b, t, intra_batch != 0, num_threads, lse_out, static_cast<float*>(grad_a),
                                static_cast<float*>(grad_b));
    if (dtype == HL_FLOAT64)
      return uniform_lse<double>(a, b, t, intra_batch != 0, num_threads, lse_out, static_cast<double*>(grad_a),
                                 static_cast<double*>(grad_b));
    return HL_ERR_UNSUPPORTED;
  } catch (const std::bad_alloc&) {
    return HL_ERR_OUT_OF_MEMORY;
  }
}
