/* Triton kernels compiled ahead of time (tools/triton_aot.py) and launched from libhyperloss: the table the
 * generator emits, and the loader/launcher (aot.cpp). Built only with -DHYPERLOSS_TRITON_AOT=ON.
 *
 * The generated hl_aot_kernels.c holds each kernel's cubin (sm_90 machine code, no PTX) and one hl_aot_kernel entry
 * per compilation; hl_aot_kernels.h declares one typed launcher per Triton kernel function, whose arguments are the
 * kernel's own non-constexpr arguments in order (names and C types derived from the Python kernel). Plain C. */
#ifndef HYPERLOSS_AOT_H_
#define HYPERLOSS_AOT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hl_aot_kernel {
  const char* name;            /* unique per compilation, e.g. "uniform_lean_bf16_grad_d128" */
  const char* function;        /* the cubin's entry point (the Triton kernel's name) */
  const unsigned char* cubin;  /* ELF image, loaded with cudaLibraryLoadData on first use */
  size_t cubin_bytes;
  int num_warps;       /* block = 32 * num_warps threads */
  int shared_bytes;    /* dynamic shared memory of every launch (above 48 KiB: opted in per device) */
  int num_args;        /* the kernel's own (non-constexpr) arguments */
  int num_hidden;      /* trailing pointer arguments Triton adds (global and profile scratch: passed as NULL) */
  /* Dispatch key: what the caller selects on. */
  const char* kernel;  /* the Triton kernel function */
  int dtype;           /* hl_dtype of the operand rows */
  int self_mode, has_other, need_acc;  /* the row kernels' variant (SELF_MODE, HAS_OTHER, NEED_ACC) */
  int block_d, even_d;                 /* BLOCK_D = max(16, next_pow2(D)), EVEN_D = (D == BLOCK_D) */
  int block_m, block_n;                /* grid = ceil(rows / block_m) programs */
} hl_aot_kernel;

/* The compilation for this key, or NULL where none was generated (the caller then runs its own kernel). */
const hl_aot_kernel* hl_aot_find(const char* kernel, int dtype, int self_mode, int has_other, int need_acc,
                                 int64_t d);

/* Launches `k` on grid (grid_x, 1, 1) on `stream` (a cudaStream_t; NULL: the legacy default stream) with
 * args[0 .. num_args): pointers to the argument values, as cudaLaunchKernel takes them. Returns a cudaError_t
 * (0: launched). Loads the cubin on first use (thread-safe; one library for every device and context). */
int hl_aot_launch(const hl_aot_kernel* k, void* stream, unsigned grid_x, void** args);

#ifdef __cplusplus
}
#endif

#endif /* HYPERLOSS_AOT_H_ */
