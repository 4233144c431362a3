/* Triton kernels compiled ahead of time (tools/triton_aot.py) and launched from libhyperloss: the table the
 * generator emits, the lookup, and the loader/launcher (aot.cpp). Built with HYPERLOSS_TRITON_AOT (CMake's AUTO or ON).
 *
 * The generated hl_aot_kernels.c holds each kernel's cubin (sm_90 machine code, no PTX) and one hl_aot_kernel entry
 * per compilation, with the kernel's own non-constexpr arguments (names and Triton types, in order, derived from the
 * Python kernel). Callers pass their values by name (hl_aot_arg), so that a kernel that gains, loses or reorders an
 * argument fails the binding (a test without a GPU, and cudaErrorInvalidValue at run time) instead of receiving a
 * wrong value. Plain C. */
#ifndef HYPERLOSS_AOT_H_
#define HYPERLOSS_AOT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HL_AOT_ANY (-1) /* a key field that does not select this kernel */

typedef struct hl_aot_kernel {
  const char* name;            /* unique per compilation, e.g. "lean_bf16_grad_d128" */
  const char* function;        /* the cubin's entry point (the Triton kernel's name) */
  const unsigned char* cubin;  /* ELF image, loaded with cudaLibraryLoadData on first use */
  size_t cubin_bytes;
  int num_warps;                  /* block = 32 * num_warps threads */
  int shared_bytes;               /* dynamic shared memory of every launch (above 48 KiB: opted in per device) */
  int num_args;                   /* the kernel's own (non-constexpr) arguments */
  int num_hidden;                 /* trailing pointer arguments Triton adds (global and profile scratch: NULL) */
  const char* const* arg_names;   /* num_args names, in the kernel's order */
  const char* const* arg_types;   /* their Triton types: "*bf16", "*fp16", "*fp32", "*fp64", "*i32", "i32" */
  /* Dispatch key (HL_AOT_ANY where a field does not apply to the kernel). */
  int dtype;                           /* hl_dtype of the operand rows */
  int self_mode, has_other, need_acc;  /* the row kernels' sweep (SELF_MODE, HAS_OTHER, NEED_ACC); combine: SELF_MODE;
                                          merge: NEED_ACC */
  int block_d;                         /* BLOCK_D: the row width the kernel was compiled for (D == BLOCK_D) */
  int segment_cols;                    /* row kernels: SEGMENT_COLS, the other set's columns per program (0: all) */
  int block_m, block_n;                /* row kernels: grid = ceil(rows / block_m) programs (x segments); merge: the
                                          rows and acc columns of a program; else 0 */
} hl_aot_kernel;

/* One argument value, matched to the kernel's argument of the same name. */
typedef struct hl_aot_arg {
  const char* name;
  const char* type; /* the Triton type the caller means (as arg_types): must equal the kernel's */
  const void* ptr;  /* pointer arguments */
  int64_t value;    /* integer arguments (checked against the type's range) */
} hl_aot_arg;

/* The compilation of `function` for this key, or NULL where none was generated (the caller then runs its own
 * kernels). Every field must equal the entry's (HL_AOT_ANY matches HL_AOT_ANY only). */
const hl_aot_kernel* hl_aot_find(const char* function, int dtype, int self_mode, int has_other, int need_acc,
                                 int block_d, int segment_cols);

/* Checks that `args` (any order; names the kernel lacks are ignored) give each of k's arguments exactly once, with
 * its type. No device call. Returns 0, or -1 with a message in `error` (which may be NULL). */
int hl_aot_check_args(const hl_aot_kernel* k, const hl_aot_arg* args, int num_args, char* error, size_t error_size);

/* Loads `k` (once) and allows its shared memory on the current device, without launching: a caller that checks
 * every kernel of a call first can take another path where one fails (a driver that rejects the cubin). Returns a
 * cudaError_t (0: ready); a load the driver refused is remembered and its error returned without retrying. */
int hl_aot_prepare(const hl_aot_kernel* k);

/* Launches `k` on grid (grid_x, grid_y, 1) on `stream` (a cudaStream_t; NULL: the legacy default stream) with `args`
 * bound by name (hl_aot_check_args; cudaErrorInvalidValue where they do not bind). Returns a cudaError_t (0:
 * launched). Loads the cubin on first use (thread-safe; one library for every device and context). */
int hl_aot_launch(const hl_aot_kernel* k, void* stream, unsigned grid_x, unsigned grid_y, const hl_aot_arg* args,
                  int num_args);

#ifdef __cplusplus
}
#endif

#endif /* HYPERLOSS_AOT_H_ */
