// Alignment loss on the CPU: one read of x and y, the gradient written in the same pass.
//   loss = 1/N sum_i (d_i)^(alpha/2),  d_i = ||x_i - y_i||^2
//   d loss / d x_i = alpha/N * d_i^(alpha/2 - 1) * (x_i - y_i)   (zero where d_i == 0; no square root taken)
#include <omp.h>

#include <cmath>

#include "hyperloss/hyperloss.h"

namespace hyperloss::cpu {
namespace {

// One row: its loss term, and its gradient when `grad` is non-null. Step is the column stride (1 vectorizes).
template <typename T>
inline T align_row(const T* __restrict__ xr, const T* __restrict__ yr, int64_t xs, int64_t ys, int64_t cols,
                   bool square, T half_alpha, T scale, T* __restrict__ grad) {
  T d2 = 0;
#pragma omp simd reduction(+ : d2)
  for (int64_t c = 0; c < cols; ++c) {
    const T diff = xr[c * xs] - yr[c * ys];
    d2 += diff * diff;
  }
  if (grad != nullptr) {
    // alpha = 2 needs no power; elsewhere a zero distance has a zero (sub)gradient, never 0 * inf.
    const T coef = square ? scale : (d2 > T(0) ? scale * std::pow(d2, half_alpha - T(1)) : T(0));
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
  const T half_alpha = static_cast<T>(alpha / 2), scale = static_cast<T>(alpha / static_cast<double>(rows));
  double total = 0;
#pragma omp parallel for reduction(+ : total) num_threads(num_threads > 0 ? num_threads : omp_get_max_threads())
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = xs + r * x.row_stride;
    const T* yr = ys + r * y.row_stride;
    T* g = grad_x ? grad_x + r * cols : nullptr;
    total += unit_stride ? align_row<T>(xr, yr, 1, 1, cols, square, half_alpha, scale, g)
                         : align_row<T>(xr, yr, x.col_stride, y.col_stride, cols, square, half_alpha, scale, g);
  }
  *loss_out = total / static_cast<double>(rows);
  return HL_OK;
}

}  // namespace
}  // namespace hyperloss::cpu

extern "C" hl_status hl_align_cpu(hl_dtype dtype, hl_matrix x, hl_matrix y, double alpha, int num_threads,
                                  double* loss_out, void* grad_x) {
  using namespace hyperloss::cpu;
  if (x.data == nullptr || y.data == nullptr || loss_out == nullptr) return HL_ERR_INVALID_ARGUMENT;
  if (x.rows <= 0 || x.cols <= 0 || x.rows != y.rows || x.cols != y.cols) return HL_ERR_INVALID_ARGUMENT;
  if (!(alpha > 0) || !std::isfinite(alpha)) return HL_ERR_INVALID_ARGUMENT;
  if (dtype == HL_FLOAT32) return align<float>(x, y, alpha, num_threads, loss_out, static_cast<float*>(grad_x));
  if (dtype == HL_FLOAT64) return align<double>(x, y, alpha, num_threads, loss_out, static_cast<double*>(grad_x));
  return HL_ERR_UNSUPPORTED;
}
