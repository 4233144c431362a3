// How many OpenMP threads a CPU call uses.
#pragma once

#include <omp.h>

#include <algorithm>

namespace hyperloss::cpu {

// 0: the OpenMP default. More than the machine has is clamped to its processor count (or OpenMP's default where
// that is larger): asking libgomp for thousands of threads aborts the process when they cannot be created.
inline int cpu_threads(int requested) {
  const int most = std::max(omp_get_num_procs(), omp_get_max_threads());
  return requested <= 0 ? omp_get_max_threads() : std::min(requested, most);
}

}  // namespace hyperloss::cpu
