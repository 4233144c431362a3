// Argument rules of the C API, written once and shared by the CPU and CUDA entry points: every call validates
// its arguments with these before it touches memory or a device.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "hyperloss/hyperloss.h"

namespace hyperloss {

inline bool known_dtype(hl_dtype dtype) {
  return dtype == HL_FLOAT32 || dtype == HL_FLOAT64 || dtype == HL_FLOAT16 || dtype == HL_BFLOAT16;
}

// rows x cols elements fit in int64 (and so in every size computation derived from them).
inline bool valid_shape(int64_t rows, int64_t cols) {
  return rows > 0 && cols > 0 && rows <= std::numeric_limits<int64_t>::max() / 64 / cols;
}

// |P|: the i < j pairs within A (when intra) plus the A x B cross pairs, in double (exact below 2^53).
inline double num_pairs(int64_t rows_a, int64_t rows_b, bool intra) {
  const double n = static_cast<double>(rows_a);
  return (intra ? n * (n - 1) / 2 : 0.0) + n * static_cast<double>(rows_b);
}

// Uniformity: a required, b optional (data == NULL), a non-empty pair set, t finite and > 0.
inline hl_status check_uniform_args(hl_dtype dtype, const hl_matrix& a, const hl_matrix& b, double t,
                                    int intra_batch) {
  if (!known_dtype(dtype)) return HL_ERR_INVALID_ARGUMENT;
  const bool cross = b.data != nullptr;
  if (a.data == nullptr || !valid_shape(a.rows, a.cols)) return HL_ERR_INVALID_ARGUMENT;
  if (cross && (!valid_shape(b.rows, b.cols) || b.cols != a.cols)) return HL_ERR_INVALID_ARGUMENT;
  if (cross && a.rows > std::numeric_limits<int64_t>::max() / 64 / a.cols - b.rows) return HL_ERR_INVALID_ARGUMENT;
  if (!intra_batch && !cross) return HL_ERR_INVALID_ARGUMENT;
  if (intra_batch && !cross && a.rows < 2) return HL_ERR_INVALID_ARGUMENT;
  if (!(t > 0) || !std::isfinite(t)) return HL_ERR_INVALID_ARGUMENT;
  return HL_OK;
}

// Alignment: x and y of one shape, alpha finite and > 0.
inline hl_status check_align_args(hl_dtype dtype, const hl_matrix& x, const hl_matrix& y, double alpha) {
  if (!known_dtype(dtype)) return HL_ERR_INVALID_ARGUMENT;
  if (x.data == nullptr || y.data == nullptr || !valid_shape(x.rows, x.cols)) return HL_ERR_INVALID_ARGUMENT;
  if (x.rows != y.rows || x.cols != y.cols) return HL_ERR_INVALID_ARGUMENT;
  if (!(alpha > 0) || !std::isfinite(alpha)) return HL_ERR_INVALID_ARGUMENT;
  return HL_OK;
}

}  // namespace hyperloss
