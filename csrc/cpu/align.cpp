// Alignment loss on the CPU: one pass that reads x and y once and writes both gradients once (the op's memory
// floor), with no temporary the size of the input.
//   loss = 1/N sum_i (d_i)^(alpha/2),  d_i = ||x_i - y_i||^2
//   g_i = d loss / d x_i = alpha/N * d_i^(alpha/2 - 1) * (x_i - y_i)   (zero where d_i == 0; no square root taken)
//   d loss / d y_i = -g_i                                                (written as the exact negation of g_i)
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../args.h"
#include "hyperloss/hyperloss.h"
#include "page_buffer.h"
#include "threads.h"

namespace hyperloss::cpu {
namespace {

// Rows per unit of work. Each chunk's loss terms are summed on their own and the chunk sums then added in order,
// so the loss is the same bit for bit whatever the number of threads (and with none).
constexpr int64_t kChunkRows = 256;
// Below this many elements a call runs on the calling thread: forking the team (and, on a busy machine, waiting
// for a descheduled thread) costs more than reading the rows.
constexpr int64_t kParallelElements = int64_t(1) << 16;
// From this many gradient bytes on, the gradients are written with non-temporal stores: they exceed the last-level
// cache (32 MB on the machines measured), so a plain store would first read each line from memory (and evict x
// and y) only to write it back; a streaming store writes it once. Such outputs are usually freshly allocated
// (torch.empty), and first touching them costs as much as the pass itself with 4 kB pages (262,144 faults for two
// 512 MB gradients, ~200 ms of a ~260 ms call on a 2-core VM): their untouched pages are advised to huge pages
// (advise_huge_pages), so the parallel loop faults them 2 MiB at a time, each by the thread that fills it. Measured
// there: streaming stores gain ~1.6x on fresh huge pages but lose ~1.5x on fresh 4 kB pages (which the kernel
// zeroes into the cache, where plain stores then land), so the two go together.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

struct AlignArgs {
  int64_t cols;
  bool square;  // alpha == 2: d_i itself, no power
  double half_alpha, scale;
  bool stream;  // non-temporal gradient stores
};

#if defined(__SSE2__)
// SSE2 (every x86-64 CPU) vectors of float or double: what the streaming stores need, nothing more.
inline __m128 vload(const float* p) { return _mm_loadu_ps(p); }
inline __m128d vload(const double* p) { return _mm_loadu_pd(p); }
inline __m128 vset(float v) { return _mm_set1_ps(v); }
inline __m128d vset(double v) { return _mm_set1_pd(v); }
inline __m128 vgrad(__m128 coef, __m128 x, __m128 y) { return _mm_mul_ps(coef, _mm_sub_ps(x, y)); }
inline __m128d vgrad(__m128d coef, __m128d x, __m128d y) { return _mm_mul_pd(coef, _mm_sub_pd(x, y)); }
inline __m128 vneg(__m128 v) { return _mm_xor_ps(v, _mm_set1_ps(-0.0f)); }  // a sign flip, as unary minus
inline __m128d vneg(__m128d v) { return _mm_xor_pd(v, _mm_set1_pd(-0.0)); }
inline void vstream(float* p, __m128 v) { _mm_stream_ps(p, v); }
inline void vstream(double* p, __m128d v) { _mm_stream_pd(p, v); }
#endif

// g = coef * (x - y) and its exact negation for columns [first, last) of a row, plain stores (column strides xs,
// ys; 1 vectorizes). C: the type the difference and the product are formed in (double for a coefficient beyond T's
// range whose gradient is not: rows 1e-30 apart at alpha = 0.5, coefficient ~1e44, gradient ~1e14), rounded once.
template <typename T, typename C = T>
inline void gradient_span(const T* __restrict__ xr, const T* __restrict__ yr, int64_t xs, int64_t ys, C coef,
                          int64_t first, int64_t last, T* __restrict__ gx, T* __restrict__ gy) {
  const auto g = [&](int64_t c) {
    return static_cast<T>(coef * (static_cast<C>(xr[c * xs]) - static_cast<C>(yr[c * ys])));
  };
  if (gx != nullptr && gy != nullptr) {
#pragma omp simd
    for (int64_t c = first; c < last; ++c) {
      const T v = g(c);
      gx[c] = v;
      gy[c] = -v;
    }
  } else if (gx != nullptr) {
#pragma omp simd
    for (int64_t c = first; c < last; ++c) gx[c] = g(c);
  } else {
#pragma omp simd
    for (int64_t c = first; c < last; ++c) gy[c] = -g(c);
  }
}

// The same for a unit-stride row, with streaming stores where the outputs allow them (16-byte aligned vectors;
// both outputs equally misaligned): plain stores for the head up to the first aligned vector and the tail. The values are those of
// gradient_span bit for bit (the same IEEE operations, one element per lane).
template <typename T>
inline void gradient_row(const T* __restrict__ xr, const T* __restrict__ yr, T coef, int64_t cols, bool stream,
                         T* __restrict__ gx, T* __restrict__ gy) {
  int64_t done = 0;
#if defined(__SSE2__)
  const T* out = gx != nullptr ? gx : gy;
  const uintptr_t misalign = reinterpret_cast<uintptr_t>(out) % 16;
  const bool same = gx == nullptr || gy == nullptr || reinterpret_cast<uintptr_t>(gy) % 16 == misalign;
  if (stream && same && misalign % sizeof(T) == 0) {
    constexpr int64_t kWidth = 16 / sizeof(T);
    const int64_t head = std::min<int64_t>(cols, ((16 - misalign) % 16) / sizeof(T));
    const int64_t body_end = head + (cols - head) / kWidth * kWidth;
    gradient_span<T>(xr, yr, 1, 1, coef, 0, head, gx, gy);
    const auto k = vset(coef);
    for (int64_t c = head; c < body_end; c += kWidth) {
      const auto g = vgrad(k, vload(xr + c), vload(yr + c));
      if (gx != nullptr) vstream(gx + c, g);
      if (gy != nullptr) vstream(gy + c, vneg(g));
    }
    done = body_end;
  }
#endif
  gradient_span<T>(xr, yr, 1, 1, coef, done, cols, gx, gy);
}

// Whether a coefficient formed in double keeps its digits in T: 0, or a normal T.
template <typename T>
inline bool fits(double coef) {
  const double a = std::fabs(coef);
  return a == 0 || (a <= static_cast<double>(std::numeric_limits<T>::max()) &&
                    a >= static_cast<double>(std::numeric_limits<T>::min()));
}

// One row: its loss term, and its gradients where the pointers are non-null. The squared distance is summed in
// double (rows may be millions of columns long, and x - y of two floats is exact in double); the gradient is
// formed in T, the row still in L1 from the first loop. Step is the column stride (1 vectorizes).
template <typename T>
inline double align_row(const T* __restrict__ xr, const T* __restrict__ yr, int64_t xs, int64_t ys,
                        const AlignArgs& args, T* __restrict__ gx, T* __restrict__ gy) {
  const int64_t cols = args.cols;
  double d2 = 0;
#pragma omp simd reduction(+ : d2)
  for (int64_t c = 0; c < cols; ++c) {
    const double diff = static_cast<double>(xr[c * xs]) - static_cast<double>(yr[c * ys]);
    d2 += diff * diff;
  }
  if (gx != nullptr || gy != nullptr) {
    // alpha = 2 needs no power; elsewhere a zero distance has a zero (sub)gradient, never 0 * inf.
    const double wide = args.square ? args.scale : (d2 > 0 ? args.scale * std::pow(d2, args.half_alpha - 1) : 0.0);
    const T coef = static_cast<T>(wide);
    if (!fits<T>(wide)) {
      gradient_span<T, double>(xr, yr, xs, ys, wide, 0, cols, gx, gy);  // products in double, rounded once
    } else if (xs == 1 && ys == 1) {
      gradient_row<T>(xr, yr, coef, cols, args.stream, gx, gy);
    } else {
      gradient_span<T>(xr, yr, xs, ys, coef, 0, cols, gx, gy);
    }
  }
  return args.square ? d2 : std::pow(d2, args.half_alpha);
}

// The loss terms of rows [first, last), summed in row order; their gradients written.
template <typename T>
double align_rows(const hl_matrix& x, const hl_matrix& y, const AlignArgs& args, int64_t first, int64_t last,
                  T* grad_x, T* grad_y) {
  const T* xs = static_cast<const T*>(x.data);
  const T* ys = static_cast<const T*>(y.data);
  const bool unit_stride = x.col_stride == 1 && y.col_stride == 1;
  double sum = 0;
  for (int64_t r = first; r < last; ++r) {
    const T* xr = xs + r * x.row_stride;
    const T* yr = ys + r * y.row_stride;
    T* gx = grad_x ? grad_x + r * args.cols : nullptr;
    T* gy = grad_y ? grad_y + r * args.cols : nullptr;
    sum += unit_stride ? align_row<T>(xr, yr, 1, 1, args, gx, gy)
                       : align_row<T>(xr, yr, x.col_stride, y.col_stride, args, gx, gy);
  }
#if defined(__SSE2__)
  if (args.stream) _mm_sfence();  // streaming stores are weakly ordered: this thread's land before the call returns
#endif
  return sum;
}

template <typename T>
hl_status align(const hl_matrix& x, const hl_matrix& y, double alpha, int num_threads, double* loss_out, T* grad_x,
                T* grad_y) {
  const int64_t rows = x.rows;
  const int64_t grad_bytes = rows * x.cols * int64_t(sizeof(T)) * ((grad_x != nullptr) + (grad_y != nullptr));
  const AlignArgs args{x.cols, alpha == 2.0, alpha / 2, alpha / static_cast<double>(rows), grad_bytes >= kStreamBytes};
  if (args.stream) {
    const size_t bytes = static_cast<size_t>(rows * x.cols) * sizeof(T);
    if (grad_x != nullptr) advise_huge_pages(grad_x, bytes);
    if (grad_y != nullptr) advise_huge_pages(grad_y, bytes);
  }
  const int64_t chunks = (rows + kChunkRows - 1) / kChunkRows;
  const auto chunk_sum = [&](int64_t k) {
    return align_rows<T>(x, y, args, k * kChunkRows, std::min(rows, (k + 1) * kChunkRows), grad_x, grad_y);
  };
  double total = 0;
  if (num_threads > 1 && chunks > 1 && rows * x.cols >= kParallelElements) {
    std::vector<double> partial(chunks);
    // Dynamic: on shared cores a descheduled thread's rows are taken by the others instead of holding the call.
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 4)
    for (int64_t k = 0; k < chunks; ++k) partial[k] = chunk_sum(k);
    for (const double p : partial) total += p;
  } else {
    for (int64_t k = 0; k < chunks; ++k) total += chunk_sum(k);
  }
  *loss_out = total / static_cast<double>(rows);
  return HL_OK;
}

}  // namespace
}  // namespace hyperloss::cpu

extern "C" hl_status hl_align_cpu(hl_dtype dtype, hl_matrix x, hl_matrix y, double alpha, int num_threads,
                                  double* loss_out, void* grad_x, void* grad_y) {
  using namespace hyperloss;
  if (const hl_status status = check_align_args(dtype, x, y, alpha); status != HL_OK) return status;
  if (loss_out == nullptr || num_threads < 0) return HL_ERR_INVALID_ARGUMENT;
  const int threads = cpu::cpu_threads(num_threads);
  if (dtype == HL_FLOAT32)
    return cpu::align<float>(x, y, alpha, threads, loss_out, static_cast<float*>(grad_x),
                             static_cast<float*>(grad_y));
  if (dtype == HL_FLOAT64)
    return cpu::align<double>(x, y, alpha, threads, loss_out, static_cast<double*>(grad_x),
                              static_cast<double*>(grad_y));
  return HL_ERR_UNSUPPORTED;
}
