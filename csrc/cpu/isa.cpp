// Which instruction set the CPU kernels use: the best one this CPU has among those built (AVX-512, AVX2, the
// compiler's baseline), or a lower one named by the environment variable HYPERLOSS_CPU_ISA ("generic", "avx2",
// "avx512"; a set the CPU lacks is never chosen). Read on every call, so a test can compare the paths.
#include <cstdlib>
#include <cstring>

#include "hyperloss/hyperloss.h"
#include "tile_kernels.h"

namespace hyperloss::cpu {
namespace {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

Isa best_supported() {
#if defined(HYPERLOSS_HAVE_AVX512) || defined(HYPERLOSS_HAVE_AVX2)
  __builtin_cpu_init();
#endif
#ifdef HYPERLOSS_HAVE_AVX512
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
#endif
#ifdef HYPERLOSS_HAVE_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

Isa chosen() {
  static const Isa best = best_supported();
  Isa isa = best;
  if (const char* wanted = std::getenv("HYPERLOSS_CPU_ISA")) {
    if (std::strcmp(wanted, "generic") == 0) isa = Isa::kGeneric;
    if (std::strcmp(wanted, "avx2") == 0) isa = Isa::kAvx2;
    if (std::strcmp(wanted, "avx512") == 0) isa = Isa::kAvx512;
    if (static_cast<int>(isa) > static_cast<int>(best)) isa = best;
  }
  return isa;
}

template <typename T>
const TileKernels<T>& pick(const TileKernels<T>& generic_kernels, const TileKernels<T>* avx2_kernels,
                           const TileKernels<T>* avx512_kernels) {
  switch (chosen()) {
    case Isa::kAvx512: return *avx512_kernels;
    case Isa::kAvx2: return *avx2_kernels;
    default: return generic_kernels;
  }
}

#ifdef HYPERLOSS_HAVE_AVX2
#define HYPERLOSS_AVX2_KERNELS(type) (&avx2::k##type##Kernels)
#else
#define HYPERLOSS_AVX2_KERNELS(type) nullptr
#endif
#ifdef HYPERLOSS_HAVE_AVX512
#define HYPERLOSS_AVX512_KERNELS(type) (&avx512::k##type##Kernels)
#else
#define HYPERLOSS_AVX512_KERNELS(type) nullptr
#endif

}  // namespace

const TileKernels<float>& tile_kernels(float) {
  return pick(generic::kFloatKernels, HYPERLOSS_AVX2_KERNELS(Float), HYPERLOSS_AVX512_KERNELS(Float));
}
const TileKernels<double>& tile_kernels(double) {
  return pick(generic::kDoubleKernels, HYPERLOSS_AVX2_KERNELS(Double), HYPERLOSS_AVX512_KERNELS(Double));
}

}  // namespace hyperloss::cpu

extern "C" const char* hl_cpu_isa(void) {
  using hyperloss::cpu::Isa;
  switch (hyperloss::cpu::chosen()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}
