// The CUDA uniformity call with more ways to return its result than the C API's lse_out: for this project's own
// bindings (csrc/jax; not installed). Plain C++ with no CUDA types, so host compilers can include it.
#pragma once

#include <cstddef>

#include "hyperloss/hyperloss.h"

namespace hyperloss::cuda {

// Device pointers, each NULL when not wanted (at least one given).
struct UniformResults {
  void* lse = nullptr;        // lse, one element of the compute type: what hl_uniform_lse_cuda writes to lse_out
  double* lse_f64 = nullptr;  // lse in double (for float32 inputs: before its rounding to float)
  void* loss = nullptr;       // the loss min(lse - log|P|, 0), formed in double, one element of the compute type
};

// hl_uniform_lse_cuda with these results; the same arguments, checks, status codes, workspace
// (hl_uniform_workspace_bytes_cuda) and stream semantics.
hl_status uniform_lse(hl_dtype dtype, hl_precision precision, hl_matrix a, hl_matrix b, double t, int intra_batch,
                      const UniformResults& results, void* grad_a, void* grad_b, void* workspace,
                      size_t workspace_bytes, void* stream);

}  // namespace hyperloss::cuda
