// Small device helpers shared by the CUDA kernels: element conversion, warp reductions, workspace layout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "hyperloss/hyperloss.h"

namespace hyperloss::cuda {

// Value of an input element in the compute type.
template <typename Tc>
__device__ __forceinline__ Tc to_compute(float v) { return static_cast<Tc>(v); }
template <typename Tc>
__device__ __forceinline__ Tc to_compute(double v) { return static_cast<Tc>(v); }
template <typename Tc>
__device__ __forceinline__ Tc to_compute(__half v) { return static_cast<Tc>(__half2float(v)); }
template <typename Tc>
__device__ __forceinline__ Tc to_compute(__nv_bfloat16 v) { return static_cast<Tc>(__bfloat162float(v)); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v, unsigned width = 32) {
  for (unsigned offset = width / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset, width);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v, unsigned width = 32) {
  for (unsigned offset = width / 2; offset > 0; offset /= 2) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset, width));
  return v;
}

// Carves aligned pieces out of one workspace allocation, in a fixed order shared by the size query and the use.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(int64_t count) {
    const size_t start = offset_;
    offset_ += (static_cast<size_t>(count) * sizeof(T) + 255) / 256 * 256;
    return base_ ? reinterpret_cast<T*>(base_ + start) : nullptr;
  }
  size_t bytes() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

// HL_OK, or HL_ERR_CUDA with the runtime's last error cleared: a failed call or launch leaves its error behind, and
// this call reports it; left there, the next call's status_of(cudaGetLastError()) would fail on it too.
inline hl_status status_of(cudaError_t error) {
  if (error == cudaSuccess) return HL_OK;
  (void)cudaGetLastError();
  return HL_ERR_CUDA;
}

}  // namespace hyperloss::cuda
