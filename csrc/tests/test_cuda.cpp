// The CUDA kernels against the CPU kernels, through the C API only (no framework). Exits 77 (skipped) where no
// GPU is present. Inputs of every dtype and precision; values and gradients, with and without a queue.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "hyperloss/hyperloss.h"

static int failures = 0;

#define CUDA_OK(call)                                                                  \
  do {                                                                                 \
    const cudaError_t e_ = (call);                                                     \
    if (e_ != cudaSuccess) {                                                           \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

template <typename T>
static T* to_device(const std::vector<T>& host) {
  T* dev = nullptr;
  CUDA_OK(cudaMalloc(&dev, host.size() * sizeof(T) + 1));
  CUDA_OK(cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return dev;
}

template <typename T>
static std::vector<T> to_host(const T* dev, size_t count) {
  std::vector<T> host(count);
  CUDA_OK(cudaMemcpy(host.data(), dev, count * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// Stores doubles as the input dtype; returns the values that dtype actually holds (the CPU reference's input).
template <typename Tin>
static std::vector<double> round_to(const std::vector<double>& v, std::vector<Tin>& out) {
  out.resize(v.size());
  std::vector<double> held(v.size());
  for (size_t k = 0; k < v.size(); ++k) {
    if constexpr (std::is_same_v<Tin, __half>) {
      out[k] = __float2half(static_cast<float>(v[k]));
      held[k] = __half2float(out[k]);
    } else if constexpr (std::is_same_v<Tin, __nv_bfloat16>) {
      out[k] = __float2bfloat16(static_cast<float>(v[k]));
      held[k] = __bfloat162float(out[k]);
    } else {
      out[k] = static_cast<Tin>(v[k]);
      held[k] = static_cast<double>(out[k]);
    }
  }
  return held;
}

template <typename Tin, typename Tc>
static void check_uniform(hl_dtype dtype, hl_precision precision, int64_t na, int64_t nb, int64_t d, double t,
                          bool intra, double tol, const char* name) {
  std::mt19937 rng(static_cast<unsigned>(na * 7 + nb * 3 + d));
  std::normal_distribution<double> normal;
  std::vector<double> a(na * d), b(nb * d);
  for (auto& v : a) v = normal(rng) / std::sqrt(double(d));
  for (auto& v : b) v = normal(rng) / std::sqrt(double(d));
  std::vector<Tin> a_in, b_in;
  const std::vector<double> a_held = round_to(a, a_in), b_held = round_to(b, b_in);

  // CPU reference in float64 on the values the GPU sees.
  double want = 0;
  std::vector<double> ga_ref(na * d), gb_ref(nb * d);
  hl_uniform_lse_cpu(HL_FLOAT64, hl_matrix{a_held.data(), na, d, d, 1},
                     hl_matrix{nb ? b_held.data() : nullptr, nb, d, d, 1}, t, intra, 0, &want, ga_ref.data(),
                     nb ? gb_ref.data() : nullptr);

  for (bool grad : {false, true}) {
    Tin* a_dev = to_device(a_in);
    Tin* b_dev = nb ? to_device(b_in) : nullptr;
    Tc *lse_dev = nullptr, *ga_dev = nullptr, *gb_dev = nullptr;
    CUDA_OK(cudaMalloc(&lse_dev, sizeof(Tc)));
    if (grad) CUDA_OK(cudaMalloc(&ga_dev, sizeof(Tc) * na * d));
    if (grad && nb) CUDA_OK(cudaMalloc(&gb_dev, sizeof(Tc) * nb * d));
    const size_t bytes = hl_uniform_workspace_bytes_cuda(dtype, na, nb, d, grad, grad && nb);
    void* ws = nullptr;
    CUDA_OK(cudaMalloc(&ws, bytes));
    const hl_status st = hl_uniform_lse_cuda(dtype, precision, hl_matrix{a_dev, na, d, d, 1},
                                             hl_matrix{b_dev, nb, d, d, 1}, t, intra, lse_dev, ga_dev, gb_dev, ws,
                                             bytes, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    if (st != HL_OK) {
      std::printf("FAIL %s: %s\n", name, hl_status_string(st));
      ++failures;
    } else {
      const double got = to_host(lse_dev, 1)[0];
      if (!(std::fabs(got - want) <= tol * (1 + std::fabs(want)))) {
        std::printf("FAIL %s grad=%d na=%lld nb=%lld d=%lld: lse %.9g want %.9g\n", name, grad, (long long)na,
                    (long long)nb, (long long)d, got, want);
        ++failures;
      }
      if (grad) {
        auto compare = [&](const Tc* dev, const std::vector<double>& ref, const char* what) {
          const std::vector<Tc> g = to_host(dev, ref.size());
          double scale = 1e-3, err = 0;
          for (double r : ref) scale = std::fmax(scale, std::fabs(r));
          for (size_t k = 0; k < ref.size(); ++k) err = std::fmax(err, std::fabs(double(g[k]) - ref[k]));
          if (!(err <= 10 * tol * scale)) {
            std::printf("FAIL %s %s: max error %.3g (scale %.3g)\n", name, what, err, scale);
            ++failures;
          }
        };
        compare(ga_dev, ga_ref, "grad_a");
        if (nb) compare(gb_dev, gb_ref, "grad_b");
      }
    }
    cudaFree(a_dev);
    cudaFree(b_dev);
    cudaFree(lse_dev);
    cudaFree(ga_dev);
    cudaFree(gb_dev);
    cudaFree(ws);
  }
}

template <typename Tin, typename Tc>
static void check_all(hl_dtype dtype, hl_precision precision, double tol, const char* name) {
  check_uniform<Tin, Tc>(dtype, precision, 2, 0, 1, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 130, 0, 33, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 200, 0, 128, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 97, 45, 70, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 97, 45, 70, 2.0, false, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 65, 0, 5, 50.0, true, tol, name);  // every exp(s) underflows in float
  check_uniform<Tin, Tc>(dtype, precision, 40, 0, 300, 2.0, true, tol, name);
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  check_all<double, double>(HL_FLOAT64, HL_PRECISION_IEEE, 1e-10, "float64");
  check_all<float, float>(HL_FLOAT32, HL_PRECISION_IEEE, 2e-5, "float32 ieee");
  check_all<float, float>(HL_FLOAT32, HL_PRECISION_TF32, 3e-3, "float32 tf32");
  check_all<float, float>(HL_FLOAT32, HL_PRECISION_BF16, 2e-2, "float32 bf16");
  check_all<__half, float>(HL_FLOAT16, HL_PRECISION_IEEE, 2e-5, "float16");
  check_all<__nv_bfloat16, float>(HL_BFLOAT16, HL_PRECISION_IEEE, 2e-5, "bfloat16");
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
