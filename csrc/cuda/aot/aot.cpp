// Loader and launcher of the ahead-of-time compiled Triton kernels (see aot.h).
//
// Through the CUDA runtime that libhyperloss already links statically, not the driver API that Triton's own
// generated launcher calls (cuModuleLoadData, cuLaunchKernel): the library then needs no libcuda at link time and
// still loads on a machine without a GPU driver, like the rest of it. cudaLibraryLoadData (CUDA 12.0+) loads the
// cubin once as a context-independent library: its kernel handle is valid on every device and context (a module from
// cuModuleLoadData belongs to the context current when it was loaded), and cudaLaunchKernel takes that handle as its
// function. Errors come back as the cudaError_t of the failing call; nothing prints or exits.
#include "aot.h"

#include <cuda_runtime.h>

#include <cstring>
#include <mutex>
#include <set>
#include <unordered_map>

#include "hyperloss/hyperloss.h"

static_assert(HL_FLOAT16 == 2 && HL_BFLOAT16 == 3, "the hl_dtype values tools/triton_aot.py writes (HL_DTYPE)");

extern "C" {
extern const hl_aot_kernel hl_aot_kernel_table[];  // generated (hl_aot_kernels.c)
extern const int hl_aot_kernel_count;
}

namespace {

int block_width(int64_t d) {
  int64_t b = 16;  // tl.dot needs K >= 16
  while (b < d) b *= 2;
  return b > (int64_t(1) << 30) ? 0 : static_cast<int>(b);
}

struct Loaded {
  cudaLibrary_t library = nullptr;
  cudaKernel_t kernel = nullptr;
  std::set<int> shared_opt_in;  // devices on which the dynamic shared memory above 48 KiB is allowed
};

std::mutex mutex;
std::unordered_map<const hl_aot_kernel*, Loaded>& loaded() {
  static auto* map = new std::unordered_map<const hl_aot_kernel*, Loaded>;  // never destroyed: no exit-order races
  return *map;
}

// The kernel handle of `k`, loaded on first use and allowed its shared memory on `device`.
cudaError_t prepare(const hl_aot_kernel* k, int device, cudaKernel_t* out) {
  std::lock_guard<std::mutex> lock(mutex);
  Loaded& entry = loaded()[k];
  if (entry.kernel == nullptr) {
    cudaError_t e = cudaLibraryLoadData(&entry.library, k->cubin, nullptr, nullptr, 0, nullptr, nullptr, 0);
    if (e != cudaSuccess) return e;
    e = cudaLibraryGetKernel(&entry.kernel, entry.library, k->function);
    if (e != cudaSuccess) {
      cudaLibraryUnload(entry.library);
      entry.library = nullptr;
      return e;
    }
  }
  if (k->shared_bytes > 48 * 1024 && entry.shared_opt_in.count(device) == 0) {
    const cudaError_t e = cudaKernelSetAttributeForDevice(entry.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                          k->shared_bytes, device);
    if (e != cudaSuccess) return e;
    entry.shared_opt_in.insert(device);
  }
  *out = entry.kernel;
  return cudaSuccess;
}

}  // namespace

extern "C" const hl_aot_kernel* hl_aot_find(const char* kernel, int dtype, int self_mode, int has_other,
                                            int need_acc, int64_t d) {
  const int block_d = block_width(d);
  const int even_d = d == block_d;
  for (int i = 0; i < hl_aot_kernel_count; ++i) {
    const hl_aot_kernel& k = hl_aot_kernel_table[i];
    if (std::strcmp(k.kernel, kernel) == 0 && k.dtype == dtype && k.self_mode == self_mode &&
        k.has_other == (has_other != 0) && k.need_acc == (need_acc != 0) && k.block_d == block_d &&
        k.even_d == even_d)
      return &k;
  }
  return nullptr;
}

extern "C" int hl_aot_launch(const hl_aot_kernel* k, void* stream, unsigned grid_x, void** args) {
  if (grid_x == 0) return cudaSuccess;
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  cudaKernel_t kernel = nullptr;
  if (e == cudaSuccess) e = prepare(k, device, &kernel);
  if (e != cudaSuccess) return e;
  // The kernel's arguments, then Triton's hidden scratch pointers (NULL: the generator rejects kernels that use them).
  constexpr int kMaxParams = 64;
  void* params[kMaxParams];
  void* hidden = nullptr;
  if (k->num_args + k->num_hidden > kMaxParams) return cudaErrorInvalidValue;
  for (int i = 0; i < k->num_args; ++i) params[i] = args[i];
  for (int i = 0; i < k->num_hidden; ++i) params[k->num_args + i] = &hidden;
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(grid_x), dim3(32 * k->num_warps), params,
                          static_cast<size_t>(k->shared_bytes), static_cast<cudaStream_t>(stream));
}
