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

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>

#include "hyperloss/hyperloss.h"

static_assert(HL_FLOAT16 == 2 && HL_BFLOAT16 == 3, "the hl_dtype values tools/triton_aot.py writes (HL_DTYPE)");

extern "C" {
extern const hl_aot_kernel hl_aot_kernel_table[];  // generated (hl_aot_kernels.c)
extern const int hl_aot_kernel_count;
}

namespace {

struct Loaded {
  cudaLibrary_t library = nullptr;
  cudaKernel_t kernel = nullptr;
  cudaError_t refused = cudaSuccess;  // the driver refused the cubin: not retried on every call
  std::set<int> ready;                // devices on which the kernel is loaded and allowed its shared memory
};

// Errors that say the cubin cannot run here (remembered); others (no device yet, out of memory, an error left by
// earlier work, stream capture) may pass, and are returned without being remembered.
bool refuses_image(cudaError_t e) {
  switch (e) {
    case cudaErrorInvalidKernelImage:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorInvalidPtx:
    case cudaErrorInvalidSource:
    case cudaErrorSharedObjectInitFailed:
    case cudaErrorSharedObjectSymbolNotFound:
    case cudaErrorSymbolNotFound:
    case cudaErrorInvalidDeviceFunction:
      return true;
    default:
      return false;
  }
}

std::mutex mutex;
std::unordered_map<const hl_aot_kernel*, Loaded>& loaded() {
  static auto* map = new std::unordered_map<const hl_aot_kernel*, Loaded>;  // never destroyed: no exit-order races
  return *map;
}

// The kernel handle of `k`, its library loaded on first use, and on `device` (once per device) the kernel itself
// loaded and allowed its shared memory. With lazy loading (CUDA's default since 12.2) cudaLibraryLoadData does not
// load kernels into a context; asking for the kernel's attributes does, so a cubin the driver refuses fails here,
// before any launch of the call, rather than at its launch.
cudaError_t prepare(const hl_aot_kernel* k, int device, cudaKernel_t* out) {
  std::lock_guard<std::mutex> lock(mutex);
  Loaded& entry = loaded()[k];
  if (entry.refused != cudaSuccess) return entry.refused;
  auto fail = [&](cudaError_t e) {
    if (refuses_image(e)) entry.refused = e;
    return e;
  };
  if (entry.kernel == nullptr) {
    cudaError_t e = cudaLibraryLoadData(&entry.library, k->cubin, nullptr, nullptr, 0, nullptr, nullptr, 0);
    if (e != cudaSuccess) return fail(e);
    e = cudaLibraryGetKernel(&entry.kernel, entry.library, k->function);
    if (e != cudaSuccess) {
      cudaLibraryUnload(entry.library);
      entry.library = nullptr;
      entry.kernel = nullptr;
      return fail(e);
    }
  }
  if (entry.ready.count(device) == 0) {
    cudaFuncAttributes attributes{};
    cudaError_t e = cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(entry.kernel));
    if (e != cudaSuccess) return fail(e);
    if (attributes.maxThreadsPerBlock < 32 * k->num_warps) return fail(cudaErrorInvalidDeviceFunction);
    if (k->shared_bytes > 48 * 1024) {
      e = cudaKernelSetAttributeForDevice(entry.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, k->shared_bytes,
                                          device);
      if (e != cudaSuccess) return e;  // e.g. a device with less shared memory: not the cubin's fault
    }
    entry.ready.insert(device);
  }
  *out = entry.kernel;
  return cudaSuccess;
}

}  // namespace

namespace {

// Per argument of `k`: its value's bytes in `slots` and a pointer to them in `params` (what cudaLaunchKernel takes).
union Slot {
  const void* ptr;
  int32_t i32;
  int64_t i64;
};

bool bind(const hl_aot_kernel* k, const hl_aot_arg* args, int num_args, Slot* slots, void** params, char* error,
          size_t error_size) {
  auto fail = [&](const char* what, const char* name) {
    if (error != nullptr && error_size > 0) std::snprintf(error, error_size, "%s: %s %s", k->name, what, name);
    return false;
  };
  for (int i = 0; i < k->num_args; ++i) {
    const char* name = k->arg_names[i];
    const char* type = k->arg_types[i];
    const hl_aot_arg* given = nullptr;
    for (int j = 0; j < num_args; ++j) {
      if (std::strcmp(args[j].name, name) != 0) continue;
      if (given != nullptr) return fail("argument given twice:", name);
      given = &args[j];
    }
    if (given == nullptr) return fail("no value for the argument", name);
    if (std::strcmp(given->type, type) != 0) return fail("argument of another type:", name);
    if (type[0] == '*') {
      slots[i].ptr = given->ptr;
    } else if (std::strcmp(type, "i32") == 0) {
      if (given->value < INT32_MIN || given->value > INT32_MAX) return fail("value out of the i32 range:", name);
      slots[i].i32 = static_cast<int32_t>(given->value);
    } else if (std::strcmp(type, "i64") == 0) {
      slots[i].i64 = given->value;
    } else {
      return fail("argument type not supported by the launcher:", name);
    }
    params[i] = &slots[i];
  }
  return true;
}

constexpr int kMaxParams = 64;

}  // namespace

namespace {

using Key = std::tuple<std::string, int, int, int, int, int, int>;

Key key_of(const hl_aot_kernel& k) {
  return {k.function, k.dtype, k.self_mode, k.has_other, k.need_acc, k.block_d, k.segment_cols};
}

// The table by key, built on first use (thread-safe static initialization): a call plans several times (the
// workspace query, the split lengths), each with a few lookups, over a table of a few hundred kernels. The first
// entry of a key wins, as a scan would (check_aot reports duplicates).
const std::map<Key, const hl_aot_kernel*>& index() {
  static const auto* map = [] {
    auto* m = new std::map<Key, const hl_aot_kernel*>;  // never destroyed: no exit-order races
    for (int i = 0; i < hl_aot_kernel_count; ++i)
      m->emplace(key_of(hl_aot_kernel_table[i]), &hl_aot_kernel_table[i]);
    return m;
  }();
  return *map;
}

}  // namespace

extern "C" const hl_aot_kernel* hl_aot_find(const char* function, int dtype, int self_mode, int has_other,
                                            int need_acc, int block_d, int segment_cols) {
  const auto& map = index();
  const auto found = map.find(Key{function, dtype, self_mode, has_other, need_acc, block_d, segment_cols});
  return found == map.end() ? nullptr : found->second;
}

extern "C" int hl_aot_check_args(const hl_aot_kernel* k, const hl_aot_arg* args, int num_args, char* error,
                                 size_t error_size) {
  Slot slots[kMaxParams];
  void* params[kMaxParams];
  if (k->num_args + k->num_hidden > kMaxParams) {
    if (error != nullptr && error_size > 0) std::snprintf(error, error_size, "%s: too many arguments", k->name);
    return -1;
  }
  return bind(k, args, num_args, slots, params, error, error_size) ? 0 : -1;
}

extern "C" int hl_aot_prepare(const hl_aot_kernel* k) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  cudaKernel_t kernel = nullptr;
  if (e == cudaSuccess) e = prepare(k, device, &kernel);
  return e;
}

extern "C" int hl_aot_launch(const hl_aot_kernel* k, void* stream, unsigned grid_x, unsigned grid_y,
                             const hl_aot_arg* args, int num_args) {
  // The kernel's arguments, then Triton's hidden scratch pointers (NULL: the generator rejects kernels that use them).
  Slot slots[kMaxParams];
  void* params[kMaxParams];
  void* hidden = nullptr;
  if (k->num_args + k->num_hidden > kMaxParams || !bind(k, args, num_args, slots, params, nullptr, 0))
    return cudaErrorInvalidValue;
  for (int i = 0; i < k->num_hidden; ++i) params[k->num_args + i] = &hidden;
  if (grid_x == 0 || grid_y == 0) return cudaSuccess;
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  cudaKernel_t kernel = nullptr;
  if (e == cudaSuccess) e = prepare(k, device, &kernel);
  if (e != cudaSuccess) return e;
  return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(grid_x, grid_y), dim3(32 * k->num_warps),
                          params, static_cast<size_t>(k->shared_bytes), static_cast<cudaStream_t>(stream));
}
