/* hyperloss C API: alignment and uniformity losses (Wang & Isola, ICML 2020) without an N x N matrix.
 *
 * The core knows no framework types: plain pointers, sizes, element strides, a dtype enum and status codes.
 * The torch extension and any other binding call through these functions.
 *
 * Uniformity works on a pair set P over rows of A (n_a x d) and optionally B (n_b x d):
 *   P = {(i, j) : i < j in A}  (when intra_batch)   union   {(i, k) : i in A, k in B}  (when B is given)
 *   s_p  = -t * ||a_i - b_k||^2                     (or a_j for the intra pairs)
 *   lse  = log sum_{p in P} exp(s_p)                 (the loss is lse - log |P|)
 *   grad_a = d lse / d A,  grad_b = d lse / d B      (written only when the pointers are non-null)
 * Alignment: loss = mean_i ||x_i - y_i||^alpha, grad_x = d loss / d x, grad_y = d loss / d y = -grad_x.
 */
#ifndef HYPERLOSS_H_
#define HYPERLOSS_H_

#include <stddef.h>
#include <stdint.h>

#include "hyperloss/version.h" /* HYPERLOSS_VERSION_MAJOR/_MINOR/_PATCH/_STRING, generated at build time */

#ifdef __cplusplus
extern "C" {
#endif

/* Element types. The CPU functions take float32 and float64; the CUDA ones also float16 and bfloat16 inputs
 * (computed with float32 accumulation; their outputs are float32). */
typedef enum { HL_FLOAT32 = 0, HL_FLOAT64 = 1, HL_FLOAT16 = 2, HL_BFLOAT16 = 3 } hl_dtype;

/* Products of float32 inputs on the GPU: exact float32 (no tensor cores), tf32 or bfloat16 tensor cores. */
typedef enum { HL_PRECISION_IEEE = 0, HL_PRECISION_TF32 = 1, HL_PRECISION_BF16 = 2 } hl_precision;

typedef enum {
  HL_OK = 0,
  HL_ERR_INVALID_ARGUMENT = 1,
  HL_ERR_OUT_OF_MEMORY = 2,
  HL_ERR_UNSUPPORTED = 3,
  HL_ERR_CUDA = 4,
} hl_status;

/* A read-only row-major-or-strided matrix view: element (r, c) is at data[r * row_stride + c * col_stride]. */
typedef struct {
  const void* data;
  int64_t rows;
  int64_t cols;
  int64_t row_stride;
  int64_t col_stride;
} hl_matrix;

/* Uniformity log-sum-exp and its gradient on the CPU.
 * a: required. b: data == NULL means no cross pairs. grad_a / grad_b: contiguous rows x cols outputs of the
 * same dtype, each NULL when not wanted (both NULL skips the gradient work). lse_out: one double. num_threads:
 * OpenMP threads, 0 for the OpenMP default, more than the processors (or that default) clamped to them, negative:
 * HL_ERR_INVALID_ARGUMENT. Results are bitwise the same for every num_threads. Any non-finite input element makes
 * the result (and gradients) NaN. */
hl_status hl_uniform_lse_cpu(hl_dtype dtype, hl_matrix a, hl_matrix b, double t, int intra_batch, int num_threads,
                             double* lse_out, void* grad_a, void* grad_b);

/* Uniformity with per-row weights on the CPU: lse = log sum_{p in P} w_p exp(s_p), the pair weight w_p being
 * weights_a[i] weights_a[j] for an intra pair and weights_a[i] weights_b[k] for a cross pair.
 * weights_a / weights_b: a.rows / b.rows doubles, finite and >= 0, or NULL (every weight 1). A negative weight gives
 * HL_ERR_INVALID_ARGUMENT; a non-finite one (as any non-finite input element) makes every output NaN. Where no pair
 * has a positive weight lse is -inf (the caller checks that the pair weights sum to more than 0).
 * grad_a / grad_b: as for hl_uniform_lse_cpu, d lse / d A and d lse / d B (0 for a row of weight 0).
 * grad_weights_a / grad_weights_b: a.rows / b.rows doubles d lse / d weights, each NULL when not wanted; a row of
 * weight 0 gets its gradient too (r_i / S, r_i = sum over its partners j of w_j exp(s_ij), S = the weighted sum).
 * The loss a caller reports is lse - log sum_p w_p. num_threads and reproducibility as for hl_uniform_lse_cpu; with
 * every weight 1 the results equal hl_uniform_lse_cpu's to rounding (not bitwise: other sums). */
hl_status hl_uniform_lse_weighted_cpu(hl_dtype dtype, hl_matrix a, hl_matrix b, const double* weights_a,
                                      const double* weights_b, double t, int intra_batch, int num_threads,
                                      double* lse_out, void* grad_a, void* grad_b, double* grad_weights_a,
                                      double* grad_weights_b);

/* Alignment loss and its gradients on the CPU, in one pass that reads x and y once. grad_x / grad_y: contiguous
 * rows x cols outputs of the input dtype, each NULL when not wanted; grad_y is written as the exact negation of
 * grad_x. Where x_i == y_i the gradient of that row is zero (the subgradient torch's norm uses), for every alpha.
 * num_threads as for hl_uniform_lse_cpu (small calls run on the calling thread); the results are bitwise the same
 * for every num_threads. Outputs of 16 MB or more are written with streaming stores, and their whole 2 MiB pages are
 * advised to transparent huge pages (madvise, a paging hint: contents untouched) before they are first written. */
hl_status hl_align_cpu(hl_dtype dtype, hl_matrix x, hl_matrix y, double alpha, int num_threads, double* loss_out,
                       void* grad_x, void* grad_y);

/* CUDA versions (present when the library is built with CUDA; HL_ERR_UNSUPPORTED otherwise).
 * Every pointer is device memory, every call is asynchronous on `stream` (a cudaStream_t, NULL for the default).
 * lse_out / loss_out: one element of the compute type (double for float64 inputs, float otherwise).
 * grad_a / grad_b / grad_x / grad_y: rows x cols of the compute type, or NULL. workspace: 256-byte aligned, at least the
 * bytes that hl_uniform_workspace_bytes_cuda / hl_align_workspace_bytes_cuda return for the same arguments.
 * Every argument (dtype, shapes, t or alpha, precision, output pointer, workspace size and alignment) is checked
 * before the device is touched: a bad one gives HL_ERR_INVALID_ARGUMENT, with or without a GPU present; only a
 * valid call can give HL_ERR_CUDA. As on the CPU, the rows are centered (and scaled by a power of two) before the
 * pair sweep, on the device and in the workspace, so a common offset of the rows costs no precision; lse is
 * reduced in double before its rounding to lse_out.
 *
 * The workspace queries return 0 for invalid arguments (an unknown dtype, a size <= 0 (rows_b: < 0; 0 means no
 * queue), or sizes whose products overflow), and in a build without CUDA. */
size_t hl_uniform_workspace_bytes_cuda(hl_dtype dtype, int64_t rows_a, int64_t rows_b, int64_t cols, int need_grad_a,
                                       int need_grad_b);
hl_status hl_uniform_lse_cuda(hl_dtype dtype, hl_precision precision, hl_matrix a, hl_matrix b, double t,
                              int intra_batch, void* lse_out, void* grad_a, void* grad_b, void* workspace,
                              size_t workspace_bytes, void* stream);
/* The same with lse written as one double (device memory) for every dtype: for float32 inputs the float lse_out
 * of hl_uniform_lse_cuda drops the digits of a loss lse - log|P| near 0. */
hl_status hl_uniform_lse_f64_cuda(hl_dtype dtype, hl_precision precision, hl_matrix a, hl_matrix b, double t,
                                  int intra_batch, double* lse_out, void* grad_a, void* grad_b, void* workspace,
                                  size_t workspace_bytes, void* stream);
size_t hl_align_workspace_bytes_cuda(hl_dtype dtype, int64_t rows);
/* grad_y, where wanted, is written by the same kernel as grad_x (its exact negation): x and y are read once. */
hl_status hl_align_cuda(hl_dtype dtype, hl_matrix x, hl_matrix y, double alpha, void* loss_out, void* grad_x,
                        void* grad_y, void* workspace, size_t workspace_bytes, void* stream);

/* Whether this build has the CUDA kernels. */
int hl_has_cuda(void);

/* Which kernels hl_uniform_lse_cuda runs for 16-bit operands (float16, bfloat16, float32 at tf32/bf16; D <= 256) on
 * the current device: "triton-aot" (the Triton backend's kernels, compiled into this build ahead of time for sm_90:
 * for the operand dtypes and widths it compiled, all of them by default; a cubin the driver refuses still sends its
 * calls to the hand-written kernels), "cuda" (the hand-written kernels: a build without the ahead-of-time kernels,
 * another GPU, or HYPERLOSS_TRITON_AOT=0 in the environment), or "none" (no CUDA kernels in this build, or no
 * device). float64 and float32 at IEEE precision always run the hand-written kernels. */
const char* hl_cuda_uniform_kernels(void);

/* The instruction set the CPU kernels use on this machine now: "avx512", "avx2" or "generic". The best one the CPU
 * has is chosen at run time; the environment variable HYPERLOSS_CPU_ISA may name a lower one (read on each call). */
const char* hl_cpu_isa(void);

/* The library's version, "major.minor.patch" (the Python package's version): HYPERLOSS_VERSION_STRING of the build,
 * against which a program compiled with another header can be checked. */
const char* hl_version(void);

/* A static, human-readable message for a status code. */
const char* hl_status_string(hl_status status);

#ifdef __cplusplus
}
#endif

#endif /* HYPERLOSS_H_ */
