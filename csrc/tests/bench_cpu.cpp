// Times the CPU kernels through the C API alone (no framework), for profiling and instruction counts:
//   bench_cpu uniform|align N D [threads [calls]]
// float32, L2-normalized random rows, gradients on (align: grad_x and grad_y into buffers reused across calls).
// Prints the best wall and process CPU time of the calls after the first. On a shared machine compare builds by
// instruction count, which does not depend on the load:
//   valgrind --tool=callgrind build-cmake/bench_cpu uniform 4096 128 1 1
// (valgrind runs the AVX2 path: it has no AVX-512; HYPERLOSS_CPU_ISA=generic picks the baseline one.)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

#include "hyperloss/hyperloss.h"

static double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

static std::vector<float> normalized_rows(int64_t n, int64_t d, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n * d);
  for (int64_t r = 0; r < n; ++r) {
    double norm = 0;
    for (int64_t c = 0; c < d; ++c) norm += std::pow(x[r * d + c] = normal(rng), 2);
    for (int64_t c = 0; c < d; ++c) x[r * d + c] = static_cast<float>(x[r * d + c] / std::sqrt(norm));
  }
  return x;
}

int main(int argc, char** argv) {
  if (argc < 4 || (std::strcmp(argv[1], "uniform") != 0 && std::strcmp(argv[1], "align") != 0)) {
    std::fprintf(stderr, "usage: %s uniform|align N D [threads [calls]]\n", argv[0]);
    return 2;
  }
  const bool uniform = std::strcmp(argv[1], "uniform") == 0;
  const int64_t n = std::atoll(argv[2]), d = std::atoll(argv[3]);
  const int threads = argc > 4 ? std::atoi(argv[4]) : 0;
  const int calls = argc > 5 ? std::max(1, std::atoi(argv[5])) : 5;
  const std::vector<float> x = normalized_rows(n, d, 1), y = uniform ? std::vector<float>() : normalized_rows(n, d, 2);
  std::vector<float> gx(n * d), gy(uniform ? 0 : n * d);
  const hl_matrix xm{x.data(), n, d, d, 1}, ym{uniform ? nullptr : y.data(), uniform ? 0 : n, d, d, 1};
  double value = 0, best_wall = INFINITY, best_cpu = INFINITY;
  for (int call = 0; call < calls; ++call) {
    const auto wall0 = std::chrono::steady_clock::now();
    const double cpu0 = cpu_seconds();
    const hl_status status = uniform ? hl_uniform_lse_cpu(HL_FLOAT32, xm, ym, 2.0, 1, threads, &value, gx.data(), nullptr)
                                     : hl_align_cpu(HL_FLOAT32, xm, ym, 2.0, threads, &value, gx.data(), gy.data());
    const double cpu = cpu_seconds() - cpu0;
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    if (status != HL_OK) {
      std::fprintf(stderr, "%s\n", hl_status_string(status));
      return 1;
    }
    if (call > 0 || calls == 1) {
      best_wall = std::min(best_wall, wall);
      best_cpu = std::min(best_cpu, cpu);
    }
  }
  std::printf("%s N=%lld D=%lld isa=%s threads=%d: %s %.17g, best of %d: %.3f ms wall, %.3f ms cpu\n", argv[1],
              static_cast<long long>(n), static_cast<long long>(d), hl_cpu_isa(), threads, uniform ? "lse" : "loss",
              value, calls > 1 ? calls - 1 : 1, 1e3 * best_wall, 1e3 * best_cpu);
  return 0;
}
