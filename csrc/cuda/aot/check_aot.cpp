// The ahead-of-time Triton kernels in libhyperloss (HYPERLOSS_TRITON_AOT). Without a GPU: the table answers its own
// keys; the build holds every kernel hl_uniform_lse_cuda needs for each operand dtype and block width it was asked
// for (HL_AOT_BUILD_DTYPES x HL_AOT_BUILD_D, from CMake); for every call shape the C API routes to these kernels
// (hyperloss::cuda::aot_plan_problems: dtype, precision, width 1..256, queue, gradients) the set is complete, the C
// side's values bind to each kernel's arguments by name and type, and the workspace query covers the plan; a launch
// without a GPU fails with an error (no crash, no exit). On a GPU, also: every kernel loads (hl_aot_prepare), and
// each all-pairs lean sweep on rows that are
// all equal (every pair has d = 0, p = 1: each row's plain sum is its pair count, its deficit 0, and it is flagged
// as all terms near 1), which checks loading, argument binding, grid and shared memory. The numbers of the whole
// pipeline against the CPU are csrc/tests/test_cuda.cpp's. Exit 77 (skipped) without a GPU, after the checks that
// need none.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../uniform.h"
#include "aot.h"
#include "hl_aot_kernels.h"

extern "C" {
extern const hl_aot_kernel hl_aot_kernel_table[];
extern const int hl_aot_kernel_count;
}

namespace {

int failures = 0;

void check(bool ok, const std::string& what, const char* name) {
  if (!ok) {
    std::printf("FAIL %s: %s\n", name, what.c_str());
    ++failures;
  }
}

std::vector<std::string> split(const char* list) {
  std::vector<std::string> out;
  std::string item;
  for (const char* c = list;; ++c) {
    if (*c == ',' || *c == '\0') {
      if (!item.empty()) out.push_back(item);
      item.clear();
      if (*c == '\0') return out;
    } else {
      item += *c;
    }
  }
}

// The sweeps hl_uniform_lse_cuda runs: (SELF_MODE, HAS_OTHER, NEED_ACC).
constexpr int kSweeps[6][3] = {{2, 0, 1}, {1, 0, 0}, {2, 1, 1}, {1, 1, 0}, {0, 1, 1}, {0, 1, 0}};

// The build's (dtype, width) list: every sweep's lean and fallback kernels, the gradient finish, every combine.
void check_build_coverage() {
#if defined(HL_AOT_BUILD_D) && defined(HL_AOT_BUILD_DTYPES)
  for (const std::string& dtype_name : split(HL_AOT_BUILD_DTYPES)) {
    const int dtype = dtype_name == "bf16" ? HL_BFLOAT16 : dtype_name == "fp16" ? HL_FLOAT16 : -1;
    check(dtype >= 0, "unknown dtype " + dtype_name, "build");
    check(hl_aot_find("_grad_kernel", dtype, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY) != nullptr,
          "no gradient finish for " + dtype_name, "build");
    // Every sweep unsplit; those with a queue also split at every segment length the build asked for.
    std::vector<std::string> lengths = {"0"};
#ifdef HL_AOT_BUILD_SEGMENT_COLS
    for (const std::string& cols : split(HL_AOT_BUILD_SEGMENT_COLS)) lengths.push_back(cols);
#endif
    for (const std::string& width : split(HL_AOT_BUILD_D))
      for (const auto& s : kSweeps)
        for (const std::string& cols : lengths) {
          if (cols != "0" && !s[1]) continue;
          for (const char* function : {"_uniform_lean_kernel", "_uniform_rows_kernel"})
            check(hl_aot_find(function, dtype, s[0], s[1], s[2], std::atoi(width.c_str()), std::atoi(cols.c_str())) !=
                      nullptr,
                  std::string("no ") + function + " for " + dtype_name + " width " + width + " sweep " +
                      std::to_string(s[0]) + std::to_string(s[1]) + std::to_string(s[2]) + " segments of " + cols,
                  "build");
        }
  }
  for (int self_mode = 0; self_mode < 3; ++self_mode)
    check(hl_aot_find("_combine_kernel", HL_AOT_ANY, self_mode, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY) !=
              nullptr,
          "no combine for SELF_MODE " + std::to_string(self_mode), "build");
#ifdef HL_AOT_BUILD_SEGMENT_COLS
  if (!split(HL_AOT_BUILD_SEGMENT_COLS).empty())
    for (int need_acc = 0; need_acc < 2; ++need_acc)
      check(hl_aot_find("_merge_segments_kernel", HL_AOT_ANY, HL_AOT_ANY, HL_AOT_ANY, need_acc, HL_AOT_ANY,
                        HL_AOT_ANY) != nullptr,
            "no merge for NEED_ACC " + std::to_string(need_acc), "build");
#endif
#endif
}

// How a sweep of `rows` rows against `other` columns splits them (accumulators `width` floats wide when need_acc):
// {rows, other, width, need_acc, segments, columns}. With every power-of-two length compiled: uniform._segments'
// choice on a 132-SM GPU (tests/test_aot.py reads this table and checks it against the Python function).
constexpr int64_t kSplitRule[][6] = {
    {256, 65536, 128, 1, 64, 1024},  // MoCo: a batch of 256 against a 65536-row queue
    {256, 65536, 128, 0, 64, 1024},     {256, 65536, 256, 1, 64, 1024},     {100, 5000, 64, 1, 5, 1024},
    {20, 3000, 32, 1, 3, 1024},         {130, 4096, 128, 1, 4, 1024},       {1024, 65536, 128, 1, 32, 2048},
    {1024, 65536, 256, 1, 32, 2048},    {256, 1048576, 128, 1, 256, 4096},  {1, 1048576, 16, 0, 256, 4096},
    {33792, 65536, 128, 1, 1, 0},       {33791, 65536, 128, 1, 1, 0},       {4096, 2048, 64, 1, 2, 1024},
    {128, 2048, 16, 0, 2, 1024},        {2048, 65536, 256, 1, 16, 4096},    {128, 1024, 64, 1, 1, 0},
};
// Only 1024 compiled (`make ctest`, CI): the nearest length that fits the partial accumulators' budget, or no split.
constexpr int64_t kSplitRule1024[][6] = {
    {256, 65536, 128, 1, 64, 1024},   // as above
    {1024, 65536, 128, 1, 64, 1024},  // shorter than uniform._segments' 2048: 64 segments, 32 MiB of partials
    {1024, 65536, 256, 1, 1, 0},      // 1024 would take 64 MiB: not split
    {256, 1048576, 128, 1, 1, 0},     // 1024 segments would take 128 MiB
    {2048, 65536, 256, 1, 1, 0},
};

// 1024 and 4096 compiled (the default build).
constexpr int64_t kSplitRuleDefault[][6] = {
    {256, 65536, 128, 1, 64, 1024},     // as uniform._segments
    {1024, 65536, 128, 1, 64, 1024},    // shorter than its 2048: 64 segments, 32 MiB of partials
    {2048, 65536, 128, 1, 16, 4096},    // 1024 would take 64 MiB: the longer 4096 (it picks 32 of 2048)
    {1024, 65536, 256, 1, 16, 4096},    //
    {256, 1048576, 128, 1, 256, 4096},  // as uniform._segments
    {1100, 65536, 128, 1, 16, 4096},
};

void check_split_rule() {
  std::vector<int64_t> every;
  for (int64_t cols = HL_AOT_SEGMENT_MIN_COLS; cols <= (int64_t(1) << 30); cols *= 2) every.push_back(cols);
  auto check_table = [](const auto& table, const std::vector<int64_t>& compiled, const char* name) {
    for (const auto& c : table) {
      const auto [segments, cols] = hyperloss::cuda::aot_split_rule(c[0], c[1], c[2], c[3] != 0, compiled);
      check(segments == c[4] && cols == c[5],
            std::to_string(c[0]) + " rows against " + std::to_string(c[1]) + " width " + std::to_string(c[2]) +
                " acc " + std::to_string(c[3]) + ": " + std::to_string(segments) + " segments of " +
                std::to_string(cols) + ", expected " + std::to_string(c[4]) + " of " + std::to_string(c[5]),
            name);
    }
  };
  check_table(kSplitRule, every, "split rule");
  check_table(kSplitRule1024, {1024}, "split rule, 1024 only");
  check_table(kSplitRuleDefault, {1024, 4096}, "split rule, 1024 and 4096");
}

// The all-pairs lean sweep's arguments over n rows (no queue; the low parts, read only by a split, are the rows):
// what run_lean launches with, and without a GPU bound against the kernel's own list (an argument the kernel gains
// must be added here: the GPU half of this test would otherwise fail to launch).
std::vector<hl_aot_arg> lean_args(const hl_aot_kernel& k, int n, void* rows, void* rowb, void* consts, void* info,
                                  void* dref, void* sums, void* acc, void* flags) {
  const char* op = k.dtype == HL_FLOAT16 ? "*fp16" : "*bf16";
  return {
      {"rows_ptr", op, rows, 0},          {"rows_lo_ptr", op, rows, 0},     {"rowb_ptr", "*fp32", rowb, 0},
      {"n_rows", "i32", nullptr, n},      {"other_ptr", op, rows, 0},       {"other_lo_ptr", op, rows, 0},
      {"otherb_ptr", "*fp32", rowb, 0},   {"n_other", "i32", nullptr, 0},   {"consts_ptr", "*fp64", consts, 0},
      {"info_ptr", "*fp64", info, 0},     {"dref_ptr", "*fp32", dref, 0},   {"sums_ptr", "*fp64", sums, 0},
      {"acc_ptr", "*fp32", acc, 0},       {"flags_ptr", "*i32", flags, 0},  {"D", "i32", nullptr, k.block_d},
      {"size_bucket", "i32", nullptr, 0},
  };
}

bool is_all_pairs_lean(const hl_aot_kernel& k) {
  return std::strcmp(k.function, "_uniform_lean_kernel") == 0 && !k.has_other && k.self_mode == 2 &&
         k.segment_cols == 0;
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
  const std::vector<hl_aot_arg> args = lean_args(k, n, rows, rowb, consts, info, dref, sums_d, acc, flags_d);
  const int num_args = static_cast<int>(args.size());
  ok = hl_aot_launch(&k, nullptr, (n + k.block_m - 1) / k.block_m, 1, args.data(), num_args) == cudaSuccess &&
       cudaDeviceSynchronize() == cudaSuccess;
  sums->resize(4 * n);
  flags->resize(n);
  ok = ok && cudaMemcpy(sums->data(), sums_d, 4 * n * 8, cudaMemcpyDeviceToHost) == cudaSuccess &&
       cudaMemcpy(flags->data(), flags_d, n * 4, cudaMemcpyDeviceToHost) == cudaSuccess;
  for (void* p : {rows, rowb, consts, info, dref, sums_d, acc, flags_d}) cudaFree(p);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 10 && std::strcmp(argv[1], "--plan") == 0) {
    // test_aot --plan DTYPE PRECISION ROWS_A ROWS_B COLS INTRA GRAD_A GRAD_B: the plan of that call as JSON
    // (hyperloss::cuda::aot_plan_json; tests/test_aot_replay.py). No device call.
    const std::string plan = hyperloss::cuda::aot_plan_json(
        hl_dtype(std::atoi(argv[2])), hl_precision(std::atoi(argv[3])), std::atoll(argv[4]), std::atoll(argv[5]),
        std::atoll(argv[6]), std::atoi(argv[7]), std::atoi(argv[8]) != 0, std::atoi(argv[9]) != 0);
    std::printf("%s\n", plan.c_str());
    return 0;
  }
  check(hl_aot_kernel_count > 0, "an empty table", "table");
  for (int i = 0; i < hl_aot_kernel_count; ++i) {
    const hl_aot_kernel& k = hl_aot_kernel_table[i];
    check(hl_aot_find(k.function, k.dtype, k.self_mode, k.has_other, k.need_acc, k.block_d, k.segment_cols) == &k,
          "not found by its key (or a duplicate key)", k.name);
  }
  check(hl_aot_find("_uniform_lean_kernel", HL_FLOAT64, 2, 0, 1, 128, 0) == nullptr, "a float64 kernel", "find");
  check_build_coverage();
  check_split_rule();
  for (const std::string& problem : hyperloss::cuda::aot_plan_problems()) check(false, problem, "plan");
  // A binding that cannot match: a missing argument and a wrong type are refused before any device call.
  const hl_aot_arg wrong[] = {{"rows_ptr", "*fp64", nullptr, 0}};
  char error[160] = "";
  check(hl_aot_check_args(&hl_aot_kernel_table[0], wrong, 1, error, sizeof error) != 0 && error[0] != '\0',
        "a wrong binding was accepted", "bind");

  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    // Every argument bound (its own name and type, dummy values): the launch itself must fail, not crash or exit.
    const hl_aot_kernel& k = hl_aot_kernel_table[0];
    std::vector<hl_aot_arg> dummy;
    for (int i = 0; i < k.num_args; ++i) dummy.push_back({k.arg_names[i], k.arg_types[i], nullptr, 1});
    check(hl_aot_check_args(&k, dummy.data(), k.num_args, nullptr, 0) == 0, "its own argument list", "bind");
    check(hl_aot_launch(&k, nullptr, 1, 1, dummy.data(), k.num_args) != cudaSuccess, "launched without a GPU",
          "launch");
    // The GPU half's own argument list binds to every kernel it would launch.
    for (int i = 0; i < hl_aot_kernel_count; ++i) {
      const hl_aot_kernel& lean = hl_aot_kernel_table[i];
      if (!is_all_pairs_lean(lean)) continue;
      const std::vector<hl_aot_arg> args = lean_args(lean, 1, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                                     nullptr, nullptr);
      error[0] = '\0';
      const int num_args = static_cast<int>(args.size());
      const bool binds = hl_aot_check_args(&lean, args.data(), num_args, error, sizeof error) == 0;
      check(binds, std::string("the launch test's arguments do not bind: ") + error, lean.name);
    }
    std::printf("%s (%d kernels); no GPU: the launches are skipped\n",
                failures ? "FAILED" : "table, coverage and binding checks passed", hl_aot_kernel_count);
    return failures ? 1 : 77;
  }
  // Every kernel of the table loads on this device and is allowed its shared memory (only the all-pairs lean
  // kernels are launched below; the C API would send a call whose kernels do not load to the hand-written ones).
  for (int i = 0; i < hl_aot_kernel_count; ++i) {
    const cudaError_t e = static_cast<cudaError_t>(hl_aot_prepare(&hl_aot_kernel_table[i]));
    check(e == cudaSuccess, std::string("not loaded: ") + cudaGetErrorString(e), hl_aot_kernel_table[i].name);
  }
  const int n = 256;  // a multiple of every BLOCK_M: no padding rows
  for (int i = 0; i < hl_aot_kernel_count; ++i) {
    const hl_aot_kernel& k = hl_aot_kernel_table[i];
    if (!is_all_pairs_lean(k)) continue;
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
