// The center of the uniformity kernels' rows, one rule for the CPU and CUDA kernels (hyperloss/_common.py,
// sampled_center, states the same rule for the torch backends): per column, the midhinge (Q1 + Q3) / 2 of a fixed
// sample of the rows of A followed by B's.
//
// Why: the Gram form |u|^2 + |v|^2 - 2 u.v of centered rows is off by ~eps (|u|^2 + |v|^2), so the center must lie
// near the rows whose pairs dominate the loss. The mean does where the rows form one cloud, but one row of norm 1e6
// among 256 unit rows moves it ~4000 away from all the others (float32: -1.1 for -3.5). Quartiles ignore up to a
// quarter of the rows on either side, and a pair with such an outlier keeps its relative accuracy (its distance is
// about the outlier's own norm); where two groups of rows hold more than a quarter each, the midhinge lies between
// them, as the mean does (a median would sit in one group, twice as far from the other). A common offset is removed
// as by the mean. Any center is exact math: distances do not move.
//
// The sample: S = min(total, 1023) rows, row k = floor(k total / S) + (k A mod floor(total / S)), one per stretch of
// total / S rows at a jittered place in it (A a large prime), so that rows of a period dividing the stretch (every
// third row from one group) are sampled in their share, not all or none.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__CUDACC__)
#define HL_HOST_DEVICE __host__ __device__
#else
#define HL_HOST_DEVICE
#endif

namespace hyperloss {

constexpr int64_t kCenterSampleRows = 1023;
constexpr int64_t kCenterJitter = 2654435761;  // prime
constexpr int kCenterSortSize = 1024;          // the sample padded to a power of two (bitonic sort)

// The sample's size for `total` rows (A and B together).
HL_HOST_DEVICE inline int64_t center_sample_size(int64_t total) {
  return total < kCenterSampleRows ? total : kCenterSampleRows;
}

// Sampled row k of `total` (k < size; ascending in k): floor(k total / size) computed without the product k total,
// plus the jitter, which stays within the stretch.
HL_HOST_DEVICE inline int64_t center_sample_row(int64_t k, int64_t size, int64_t total) {
  const int64_t stretch = total / size;
  return k * stretch + k * (total % size) / size + k * kCenterJitter % stretch;
}

// The ranks (0-based, ascending) of Q1 and Q3 among the `size` sampled values; the center is their mean.
HL_HOST_DEVICE inline int64_t center_low_rank(int64_t size) { return (size - 1) / 4; }
HL_HOST_DEVICE inline int64_t center_high_rank(int64_t size) { return size - 1 - (size - 1) / 4; }

// The center of `size` sampled values by selection (the CPU kernel; reorders them): (Q1 + Q3) / 2.
inline double midhinge_by_selection(double* values, int64_t size) {
  double* const low = values + center_low_rank(size);
  double* const high = values + center_high_rank(size);
  std::nth_element(values, low, values + size);
  const double q1 = *low;  // the second selection may move it: the values from low on are not below it
  std::nth_element(low, high, values + size);
  return 0.5 * q1 + 0.5 * *high;
}

// One compare-exchange of a bitonic sort of kCenterSortSize values into ascending order, for element i of the
// step (len, stride): the CUDA kernel runs every i of a step on its threads between barriers, for len = 2, 4, ...,
// kCenterSortSize and stride = len / 2, ..., 1 (NaN compares false: the order is then undefined, and the call's
// result NaN anyway).
HL_HOST_DEVICE inline void bitonic_step(double* values, int len, int stride, int i) {
  const int partner = i ^ stride;
  if (partner <= i) return;
  const bool ascending = (i & len) == 0;
  const double a = values[i], b = values[partner];
  if ((a > b) == ascending && a != b) {
    values[i] = b;
    values[partner] = a;
  }
}

}  // namespace hyperloss
