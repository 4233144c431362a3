// The CUDA uniformity call with more ways to return its result than the C API's lse_out: for this project's own
// bindings (csrc/jax; not installed). Plain C++ with no CUDA types, so host compilers can include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

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

// Whether a call with these arguments runs the Triton kernels compiled ahead of time (a build with
// HYPERLOSS_TRITON_AOT, a GPU of the generation they were compiled for, and a dtype, precision and width they
// cover); false otherwise. For the tests: the answer does not change what a call computes, only which kernels do.
bool uniform_runs_aot(hl_dtype dtype, hl_precision precision, int64_t rows_a, int64_t rows_b, int64_t cols,
                      int intra_batch, bool grad_a, bool grad_b);

// For the tests, host only: the column segments the ahead-of-time plan of such a call splits a sweep into (the
// larger of x's sweep and the queue's; 1: none split, or no plan), as uniform._segments would on a 132-SM GPU.
int64_t uniform_aot_segments(hl_dtype dtype, hl_precision precision, int64_t rows_a, int64_t rows_b, int64_t cols,
                             int intra_batch, bool grad_a, bool grad_b);

// For the tests, host only: how the ahead-of-time path splits `rows` rows against `other` columns (accumulators of
// `width` floats per row when `need_acc`) among the segment lengths `compiled`: {segments, columns per segment},
// {1, 0} where it does not split (always, in a build without those kernels). With every power of two from 1024
// compiled it is uniform._segments' choice on a 132-SM GPU (csrc/cuda/aot/check_aot.cpp holds such cases, and
// tests/test_aot.py checks them against the Python).
std::pair<int64_t, int64_t> aot_split_rule(int64_t rows, int64_t other, int64_t width, bool need_acc,
                                           const std::vector<int64_t>& compiled);

// For the tests, host only: the ahead-of-time plan of such a call as JSON: {"plan": false} where the build has
// none, else the workspace bytes (and the query's), the splits, the offsets of the buffers the launches read and
// write, and each launch in order (kernel name, grid, its arguments by name: pointers as byte offsets into the
// workspace). tests/test_aot_replay.py runs it with the Triton interpreter on the CPU (`test_aot --plan ...`).
std::string aot_plan_json(hl_dtype dtype, hl_precision precision, int64_t rows_a, int64_t rows_b, int64_t cols,
                          int intra_batch, bool grad_a, bool grad_b);

// For the tests: whether this build has ahead-of-time kernels compiled for the current device's generation (so that
// 16-bit calls should run them; uniform_runs_aot also needs the driver to load them).
bool aot_built_for_current_device();

// For the tests, host only (no device call): every call shape the C API could route to the ahead-of-time kernels
// (dtype, precision, width 1..256, queue, gradients) is checked for a complete set of kernels where the table
// holds any for that operand dtype and block width, for each kernel's arguments bound by name, and for a workspace
// query at least the plan's need. One line per problem; empty in a build without them.
std::vector<std::string> aot_plan_problems();

}  // namespace hyperloss::cuda
