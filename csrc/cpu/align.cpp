// Alignment loss on the CPU: one read of x and y, the gradient written in the same pass.
//   loss = 1/N sum_i (d_i)^(alpha/2),  d_i = ||x_i - y_i||^2
//   d loss / d x_i = alpha/N * d_i^(alpha/2 - 1) * (x_i - y_i)   (zero where d_i == 0; no square root taken)
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../args.h"
#include "hyperloss/hyperloss.h"
#include "threads.h"

namespace hyperloss::cpu {
namespace {

// One row: its loss term, and its gradient when `grad` is non-null. Step is the column stride (1 vectorizes). The
// squared distance is summed in double: rows may be millions of columns long.
template <typename T>
inline double align_row(const T* __restrict__ xr, const T* __restrict__ yr, int64_t xs, int64_t ys, int64_t cols,
                        bool square, double half_alpha, double scale, T* __restrict__ grad) {
  double d2 = 0;
#pragma omp simd reduction(+ : d2)
  for (int64_t c = 0; c < cols; ++c) {
    const double diff = static_cast<double>(xr[c * xs]) - static_cast<double>(yr[c * ys]);
    d2 += diff * diff;
  }
  if (grad != nullptr) {
    // alpha = 2 needs no power; elsewhere a zero distance has a zero (sub)gradient, never 0 * inf.
    const T coef = static_cast<T>(square ? scale : (d2 > 0 ? scale * std::pow(d2, half_alpha - 1) : 0.0));
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) grad[c] = coef * (xr[c * xs] - yr[c * ys]);
  }
  return square ? d2 : std::pow(d2, half_alpha);
}

template <typename T>
hl_status align(const hl_matrix& x, const hl_matrix& y, double alpha, int num_threads, double* loss_out,
                T* grad_x) {
  const T* xs = static_cast<const T*>(x.data);
  const T* ys = static_cast<const T*>(y.data);
  const int64_t rows = x.rows, cols = x.cols;
  const bool square = alpha == 2.0;
  const bool unit_stride = x.col_stride == 1 && y.col_stride == 1;
  const double half_alpha = alpha / 2, scale = alpha / static_cast<double>(rows);
  // Row chunks summed separately, then in order: the same loss bit for bit whatever the thread count.
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (rows + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  // Small inputs on the calling thread: forking the team costs more than the work.
#pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * cols >= (1 << 16))
  for (int64_t k = 0; k < chunks; ++k) {
    double sum = 0;
    for (int64_t r = k * kChunk; r < std::min(rows, (k + 1) * kChunk); ++r) {
      const T* xr = xs + r * x.row_stride;
      const T* yr = ys + r * y.row_stride;
      T* g = grad_x ? grad_x + r * cols : nullptr;
      sum += unit_stride ? align_row<T>(xr, yr, 1, 1, cols, square, half_alpha, scale, g)
                         : align_row<T>(xr, yr, x.col_stride, y.col_stride, cols, square, half_alpha, scale, g);
    }
    partial[k] = sum;
  }
  double total = 0;
  for (const double p : partial) total += p;
  *loss_out = total / static_cast<double>(rows);
  return HL_OK;
}

}  // namespace
}  // namespace hyperloss::cpu

extern "C" hl_status hl_align_cpu(hl_dtype dtype, hl_matrix x, hl_matrix y, double alpha, int num_threads,
                                  double* loss_out, void* grad_x) {
  using namespace hyperloss;
  if (const hl_status status = check_align_args(dtype, x, y, alpha); status != HL_OK) return status;
  if (loss_out == nullptr || num_threads < 0) return HL_ERR_INVALID_ARGUMENT;
  const int threads = cpu::cpu_threads(num_threads);
  if (dtype == HL_FLOAT32) return cpu::align<float>(x, y, alpha, threads, loss_out, static_cast<float*>(grad_x));
  if (dtype == HL_FLOAT64) return cpu::align<double>(x, y, alpha, threads, loss_out, static_cast<double*>(grad_x));
  return HL_ERR_UNSUPPORTED;
}
