// The ahead-of-time Triton kernels in libhyperloss (HYPERLOSS_TRITON_AOT): the table answers the keys it was
// generated for, a launch without a GPU fails with an error (no crash, no exit), and on a GPU each lean kernel runs on
// rows that are all equal: every pair then has d = 0, p = 1, so each row's plain sum is its pair count, its deficit
// and gradient sum 0, and it is flagged (all terms near 1). That checks loading, arguments, grid and shared memory.
// Exit 77 (skipped) where no GPU is present, after the checks that need none.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "aot.h"

extern "C" {
extern const hl_aot_kernel hl_aot_kernel_table[];
extern const int hl_aot_kernel_count;
}

namespace {

int failures = 0;

void check(bool ok, const char* what, const char* name) {
  if (!ok) {
    std::printf("FAIL %s: %s\n", name, what);
    ++failures;
  }
}

// One lean sweep over n equal rows (zeros), no queue; the sums as the kernel wrote them.
bool run_lean(const hl_aot_kernel& k, int n, std::vector<double>* sums, std::vector<int>* flags) {
  const int d = k.block_d;
  void *rows, *rowb, *consts, *info, *dref, *sums_d, *acc, *flags_d;
  bool ok = cudaMalloc(&rows, size_t(n) * d * 2) == cudaSuccess && cudaMalloc(&rowb, n * 4) == cudaSuccess &&
            cudaMalloc(&consts, 4 * 8) == cudaSuccess && cudaMalloc(&info, 2 * 8) == cudaSuccess &&
            cudaMalloc(&dref, n * 4) == cudaSuccess && cudaMalloc(&sums_d, 4 * n * 8) == cudaSuccess &&
            cudaMalloc(&acc, size_t(n) * d * 4) == cudaSuccess && cudaMalloc(&flags_d, n * 4) == cudaSuccess;
  if (!ok) return false;
  cudaMemset(rows, 0, size_t(n) * d * 2);
  cudaMemset(rowb, 0, n * 4);  // -||x'||^2 / 2 = 0
  const double t = 1.0, pairs = 0.5 * n * (n - 1);
  const double host_consts[4] = {t, t * 1.4426950408889634, std::log(2.0), pairs};
  const double host_info[2] = {0.0, 1.0};  // E = 0, every input finite
  cudaMemcpy(consts, host_consts, sizeof host_consts, cudaMemcpyHostToDevice);
  cudaMemcpy(info, host_info, sizeof host_info, cudaMemcpyHostToDevice);
  int32_t n_rows = n, n_other = 0, width = d, bucket = 0;
  void* other = rows;
  void* otherb = rowb;
  void* args[] = {&rows, &rowb, &n_rows, &other, &otherb, &n_other, &consts, &info,
                  &dref, &sums_d, &acc, &flags_d, &width, &bucket};
  ok = k.num_args == 14 && hl_aot_launch(&k, nullptr, (n + k.block_m - 1) / k.block_m, args) == cudaSuccess &&
       cudaDeviceSynchronize() == cudaSuccess;
  sums->resize(4 * n);
  flags->resize(n);
  ok = ok && cudaMemcpy(sums->data(), sums_d, 4 * n * 8, cudaMemcpyDeviceToHost) == cudaSuccess &&
       cudaMemcpy(flags->data(), flags_d, n * 4, cudaMemcpyDeviceToHost) == cudaSuccess;
  for (void* p : {rows, rowb, consts, info, dref, sums_d, acc, flags_d}) cudaFree(p);
  return ok;
}

}  // namespace

int main() {
  check(hl_aot_kernel_count > 0, "an empty table", "table");
  for (int i = 0; i < hl_aot_kernel_count; ++i) {
    const hl_aot_kernel& k = hl_aot_kernel_table[i];
    const hl_aot_kernel* found = hl_aot_find(k.kernel, k.dtype, k.self_mode, k.has_other, k.need_acc, k.block_d);
    check(found == &k || (found && found->block_d == k.block_d && found->dtype == k.dtype), "not found", k.name);
  }
  check(hl_aot_find("_uniform_lean_kernel", 1, 2, 0, 1, 128) == nullptr, "a float64 kernel", "find");

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    void* no_args[64] = {};
    check(hl_aot_launch(&hl_aot_kernel_table[0], nullptr, 1, no_args) != cudaSuccess, "launched without a GPU",
          "launch");
    std::printf("%s; no GPU: the launches are skipped\n", failures ? "FAILED" : "table checks passed");
    return failures ? 1 : 77;
  }
  const int n = 256;  // a multiple of every BLOCK_M: no padding rows
  for (int i = 0; i < hl_aot_kernel_count; ++i) {
    const hl_aot_kernel& k = hl_aot_kernel_table[i];
    if (k.has_other || k.self_mode != 2) continue;  // the all-pairs (gradient) sweep: every row has n - 1 pairs
    std::vector<double> sums;
    std::vector<int> flags;
    if (!run_lean(k, n, &sums, &flags)) {
      check(false, "launch failed", k.name);
      continue;
    }
    bool ok = true;
    for (int r = 0; r < n; ++r)
      ok = ok && sums[r] == n - 1 && sums[n + r] == 0 && sums[2 * n + r] == 0 && flags[r] == 1;
    check(ok, "sums of equal rows", k.name);
  }
  std::printf("%s\n", failures ? "FAILED" : "passed");
  return failures ? 1 : 0;
}
