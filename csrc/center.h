// The center of the uniformity kernels' rows, one rule for the CPU and CUDA kernels (hyperloss/_common.py,
// sampled_median_center, states the same rule for the torch backends): per column, the median of a fixed sample
// of the rows of A followed by B's, the lower one of an even count, so always one of the values.
//
// Why a median: the Gram form |u|^2 + |v|^2 - 2 u.v of centered rows is off by ~eps (|u|^2 + |v|^2), so the center
// must lie among the rows whose pairs dominate the loss. The mean does where the rows form one cloud, but one row of
// norm 1e6 among 256 unit rows moves it ~4000 away from all the others (float32 losses of -1.1 for -3.5). The
// median of most rows stays among them, and a pair with the outlier keeps its relative accuracy (its distance is
// about the outlier's own norm). A common offset is removed as by the mean. Any center is exact math: distances do
// not move.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HL_HOST_DEVICE __host__ __device__
#else
#define HL_HOST_DEVICE
#endif

namespace hyperloss {

// At most this many rows are sampled: the median costs one small selection whatever N.
constexpr int64_t kCenterSampleRows = 1023;

// The sample's size for `total` rows (A and B together).
HL_HOST_DEVICE inline int64_t center_sample_size(int64_t total) {
  return total < kCenterSampleRows ? total : kCenterSampleRows;
}

// Sampled row k of `total` (k < size): floor(k total / size), computed without the product k * total.
HL_HOST_DEVICE inline int64_t center_sample_row(int64_t k, int64_t size, int64_t total) {
  return k * (total / size) + k * (total % size) / size;
}

// The median's rank (0-based, ascending) among the `size` sampled values.
HL_HOST_DEVICE inline int64_t center_rank(int64_t size) { return (size - 1) / 2; }

// The rank of values[k] among values[0, size): how many come before it in (value, index) order. Exactly one value
// has each rank 0 .. size - 1 (NaN aside): the CUDA kernel's selection of the median, one thread per value.
HL_HOST_DEVICE inline int64_t rank_in_sample(const double* values, int64_t size, int64_t k) {
  const double v = values[k];
  int64_t before = 0;
  for (int64_t j = 0; j < size; ++j) before += values[j] < v || (values[j] == v && j < k);
  return before;
}

}  // namespace hyperloss
