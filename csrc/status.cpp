// Status strings, the version, and the CUDA entry points of a build without CUDA (they report HL_ERR_UNSUPPORTED).
#include "hyperloss/hyperloss.h"

extern "C" const char* hl_version(void) { return HYPERLOSS_VERSION_STRING; }

extern "C" const char* hl_status_string(hl_status status) {
  switch (status) {
    case HL_OK: return "ok";
    case HL_ERR_INVALID_ARGUMENT: return "invalid argument (shapes, sizes, t or alpha)";
    case HL_ERR_OUT_OF_MEMORY: return "out of memory";
    case HL_ERR_UNSUPPORTED: return "unsupported dtype, or a device this build has no kernels for";
    case HL_ERR_CUDA: return "CUDA error (launch, configuration or an earlier asynchronous error)";
  }
  return "unknown status";
}

#ifndef HYPERLOSS_WITH_CUDA
extern "C" int hl_has_cuda(void) { return 0; }
extern "C" const char* hl_cuda_uniform_kernels(void) { return "none"; }
extern "C" size_t hl_uniform_workspace_bytes_cuda(hl_dtype, int64_t, int64_t, int64_t, int, int) { return 0; }
extern "C" hl_status hl_uniform_lse_cuda(hl_dtype, hl_precision, hl_matrix, hl_matrix, double, int, void*, void*,
                                         void*, void*, size_t, void*) {
  return HL_ERR_UNSUPPORTED;
}
extern "C" hl_status hl_uniform_lse_f64_cuda(hl_dtype, hl_precision, hl_matrix, hl_matrix, double, int, double*,
                                             void*, void*, void*, size_t, void*) {
  return HL_ERR_UNSUPPORTED;
}
extern "C" size_t hl_align_workspace_bytes_cuda(hl_dtype, int64_t) { return 0; }
extern "C" hl_status hl_align_cuda(hl_dtype, hl_matrix, hl_matrix, double, void*, void*, void*, void*, size_t,
                                   void*) {
  return HL_ERR_UNSUPPORTED;
}
#endif
