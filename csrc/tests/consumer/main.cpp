// A program outside the project that finds the installed library with find_package(hyperloss) and calls the C
// API: checks the install step and the CMake package (run by `make ctest`).
#include <hyperloss/hyperloss.h>

#include <cmath>
#include <cstdio>
#include <string>

int main() {
  // Three unit vectors: (1, 0), (0, 1), (0.6, 0.8); squared distances 2, 0.8, 0.4.
  const float x[6] = {1, 0, 0, 1, 0.6f, 0.8f};
  double lse = 0;
  const hl_status status = hl_uniform_lse_cpu(HL_FLOAT32, hl_matrix{x, 3, 2, 2, 1}, hl_matrix{nullptr, 0, 2, 0, 0},
                                              2.0, 1, 0, &lse, nullptr, nullptr);
  const double want = std::log(std::exp(-4.0) + std::exp(-1.6) + std::exp(-0.8));
  std::printf("%s: lse %.6f (want %.6f), hyperloss %s (header %s), CPU kernels %s, CUDA kernels %s\n",
              hl_status_string(status), lse, want, hl_version(), HYPERLOSS_VERSION_STRING, hl_cpu_isa(),
              hl_has_cuda() ? "built" : "absent");
  const bool same_version = std::string(hl_version()) == HYPERLOSS_VERSION_STRING;
  return status == HL_OK && std::fabs(lse - want) < 1e-5 && same_version ? 0 : 1;
}
