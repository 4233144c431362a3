// Alignment loss on NVIDIA GPUs: one warp per row reads x_i and y_i, writes the row's loss term and, in the
// same kernel, its gradients; a one-block reduction then averages the terms (deterministic, no atomics).
//   loss = 1/N sum_i d_i^(alpha/2),  d_i = ||x_i - y_i||^2
//   g_i = d loss / d x_i = alpha/N d_i^(alpha/2 - 1) (x_i - y_i)   (zero where d_i == 0),  d loss / d y_i = -g_i
#include <cmath>
#include <cstdint>

#include "../args.h"
#include "common.cuh"

namespace hyperloss::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row

template <typename Tin>
struct Rows {
  const Tin* data;
  int64_t row_stride, col_stride;
  __device__ __forceinline__ Tin at(int64_t r, int64_t c) const { return data[r * row_stride + c * col_stride]; }
};

template <typename Tin, typename Tc>
__global__ void align_rows_kernel(Rows<Tin> x, Rows<Tin> y, int64_t rows, int64_t cols, Tc alpha, Tc* terms,
                                  Tc* grad_x, Tc* grad_y) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  // Squares, d, the powers and the gradient's products in double (the kernel is memory-bound): a float square
  // overflows for differences beyond ~1.8e19 and underflows below ~1e-23, and at alpha < 1 the coefficient of rows
  // 1e-30 apart (~1e44) overflows float while the gradient does not.
  double d2 = 0;
  for (int64_t c = lane; c < cols; c += 32) {
    const double diff = static_cast<double>(to_compute<Tc>(x.at(row, c)) - to_compute<Tc>(y.at(row, c)));
    d2 += diff * diff;
  }
  d2 = warp_sum(d2);
  const double half_alpha = static_cast<double>(alpha) / 2;
  const bool square = half_alpha == 1;
  if (lane == 0) terms[row] = static_cast<Tc>(square ? d2 : pow(d2, half_alpha));
  if (grad_x == nullptr && grad_y == nullptr) return;
  const double scale = static_cast<double>(alpha) / static_cast<double>(rows);
  const double coef = square ? scale : (d2 > 0 ? scale * pow(d2, half_alpha - 1) : 0.0);
  for (int64_t c = lane; c < cols; c += 32) {  // the row is still in L1/L2
    const double diff = static_cast<double>(to_compute<Tc>(x.at(row, c)) - to_compute<Tc>(y.at(row, c)));
    const Tc g = static_cast<Tc>(coef * diff);
    if (grad_x != nullptr) grad_x[row * cols + c] = g;
    if (grad_y != nullptr) grad_y[row * cols + c] = -g;
  }
}

template <typename Tc>
__global__ void __launch_bounds__(1024) mean_kernel(const Tc* terms, int64_t rows, Tc* out) {
  __shared__ double partial[32];
  double sum = 0;
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) sum += static_cast<double>(terms[i]);
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) total += partial[w];
    *out = static_cast<Tc>(total / static_cast<double>(rows));
  }
}

// Pieces of the workspace, carved in this order by both the size query and the call.
template <typename Tc>
size_t workspace_bytes_for(int64_t rows, Tc** terms = nullptr, void* base = nullptr) {
  WorkspaceCarver carve(base);
  Tc* t = carve.take<Tc>(rows);
  if (terms) *terms = t;
  return carve.bytes();
}

template <typename Tin, typename Tc>
hl_status align(const hl_matrix& x, const hl_matrix& y, double alpha, Tc* loss, Tc* grad_x, Tc* grad_y,
                void* workspace, cudaStream_t stream) {
  Tc* terms = nullptr;
  workspace_bytes_for<Tc>(x.rows, &terms, workspace);
  const Rows<Tin> xr{static_cast<const Tin*>(x.data), x.row_stride, x.col_stride};
  const Rows<Tin> yr{static_cast<const Tin*>(y.data), y.row_stride, y.col_stride};
  const auto blocks = static_cast<unsigned>((x.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  align_rows_kernel<Tin, Tc>
      <<<blocks, 32 * kRowsPerBlock, 0, stream>>>(xr, yr, x.rows, x.cols, Tc(alpha), terms, grad_x, grad_y);
  mean_kernel<Tc><<<1, 1024, 0, stream>>>(terms, x.rows, loss);
  return status_of(cudaGetLastError());
}

}  // namespace
}  // namespace hyperloss::cuda

extern "C" size_t hl_align_workspace_bytes_cuda(hl_dtype dtype, int64_t rows) {
  using namespace hyperloss;
  if (!known_dtype(dtype) || !valid_shape(rows, 1)) return 0;  // 0: invalid arguments
  return dtype == HL_FLOAT64 ? cuda::workspace_bytes_for<double>(rows) : cuda::workspace_bytes_for<float>(rows);
}

extern "C" hl_status hl_align_cuda(hl_dtype dtype, hl_matrix x, hl_matrix y, double alpha, void* loss_out,
                                   void* grad_x, void* grad_y, void* workspace, size_t workspace_bytes,
                                   void* stream_ptr) {
  using namespace hyperloss::cuda;
  // Every argument is checked before anything is launched.
  if (const hl_status status = hyperloss::check_align_args(dtype, x, y, alpha); status != HL_OK) return status;
  if (loss_out == nullptr) return HL_ERR_INVALID_ARGUMENT;
  const size_t needed = hl_align_workspace_bytes_cuda(dtype, x.rows);
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 256 != 0 || workspace_bytes < needed)
    return HL_ERR_INVALID_ARGUMENT;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  float* loss_f = static_cast<float*>(loss_out);
  float* gx_f = static_cast<float*>(grad_x);
  float* gy_f = static_cast<float*>(grad_y);
  switch (dtype) {
    case HL_FLOAT64:
      return align<double, double>(x, y, alpha, static_cast<double*>(loss_out), static_cast<double*>(grad_x),
                                   static_cast<double*>(grad_y), workspace, stream);
    case HL_FLOAT32:
      return align<float, float>(x, y, alpha, loss_f, gx_f, gy_f, workspace, stream);
    case HL_FLOAT16:
      return align<__half, float>(x, y, alpha, loss_f, gx_f, gy_f, workspace, stream);
    case HL_BFLOAT16:
      return align<__nv_bfloat16, float>(x, y, alpha, loss_f, gx_f, gy_f, workspace, stream);
  }
  return HL_ERR_UNSUPPORTED;
}
