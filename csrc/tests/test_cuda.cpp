// The CUDA kernels against the CPU kernels, through the C API only (no framework). Exits 77 (skipped) where no
// GPU is present. Inputs of every dtype and precision; values and gradients, with and without a queue; rows with a
// large common offset (centered on the device) or one far outlier; near-zero losses through the double-result
// entry point (csrc/cuda/uniform.h) that hyperloss.jax uses. In a build with HYPERLOSS_TRITON_AOT, on the GPU
// generation its kernels were compiled for, the 16-bit cases (float16, bfloat16, float32 at tf32/bf16) with rows up
// to 256 wide run the Triton kernels compiled ahead of time: the test counts those calls and fails if such a dtype
// had none.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "../cuda/uniform.h"
#include "hyperloss/hyperloss.h"

static int failures = 0;
static std::map<std::string, int> aot_calls;       // per case name: calls that ran the ahead-of-time Triton kernels
static std::map<std::string, int> aot_grad_calls;  // the same, of calls with a gradient
static int aot_split_calls = 0;                    // AOT calls whose plan split a sweep's columns into segments
static int aot_planned_calls = 0;                  // calls this build has an AOT plan for, on a device it runs on

// Counts, per case name, the calls that run the ahead-of-time kernels (hyperloss::cuda::uniform_runs_aot). A call
// the build has a plan for (its dtype, precision and width compiled: any subset, e.g. `make ctest`'s float16 at
// D = 64) on a GPU of the generation the kernels were compiled for must run them: where it does not, the driver
// refused a cubin (the call then runs the hand-written kernels, which is correct but not what was built).
static bool note_path(hl_dtype dtype, hl_precision precision, int64_t na, int64_t nb, int64_t d, bool intra,
                      bool grad_a, bool grad_b, const char* name) {
  const bool aot = hyperloss::cuda::uniform_runs_aot(dtype, precision, na, nb, d, intra, grad_a, grad_b);
  aot_calls[name] += aot;
  if (grad_a || grad_b) aot_grad_calls[name] += aot;
  const int64_t segments = hyperloss::cuda::uniform_aot_segments(dtype, precision, na, nb, d, intra, grad_a, grad_b);
  aot_split_calls += aot && segments > 1;
  const bool planned =
      hyperloss::cuda::aot_built_for_current_device() &&
      hyperloss::cuda::aot_plan_json(dtype, precision, na, nb, d, intra, grad_a, grad_b).rfind("{\"plan\": true", 0) == 0;
  aot_planned_calls += planned;
  if (planned && !aot) {
    std::printf("FAIL %s (%lld x %lld, D = %lld): planned for the ahead-of-time kernels, ran the hand-written ones "
                "(a cubin the driver refused?)\n", name, (long long)na, (long long)nb, (long long)d);
    ++failures;
  }
  return aot;
}

// The gradient's rounding where the ahead-of-time (Triton) kernels run: their E.X product takes the weights p as
// a 16-bit operand (bfloat16 or float16, the call's operand dtype), so a gradient carries their rounding, relative
// to its largest entry: the Triton backend's tolerance model (tests/helpers.py: 3e-2 bfloat16, 1e-2 float16 and
// tf32); `unit`: one rounding of that operand (2^-8, 2^-11), for the exact two-row cases. 0 for the other kernels.
static double aot_grad_rounding(hl_dtype dtype, hl_precision precision, bool aot, bool unit) {
  if (!aot) return 0;
  const bool bf16 = dtype == HL_BFLOAT16 || (dtype == HL_FLOAT32 && precision == HL_PRECISION_BF16);
  return unit ? (bf16 ? 0x1p-8 : 0x1p-11) : (bf16 ? 3e-2 : 1e-2);
}

// In an AOT build on the GPU generation its kernels were compiled for, the calls it has plans for ran them (each
// checked in note_path), and there were some. Expected from the build and the device alone, so a cubin the driver
// refuses fails here.
static void check_aot_ran() {
  int total = 0;
  for (const auto& [name, count] : aot_calls) total += count;
  std::printf("uniformity calls on the ahead-of-time Triton kernels: %d of %d planned (%d with a sweep split into "
              "segments)\n", total, aot_planned_calls, aot_split_calls);
  for (const auto& [name, count] : aot_calls)
    std::printf("  %s: %d (%d with a gradient)\n", name.c_str(), count, aot_grad_calls[name]);
#ifdef HYPERLOSS_TRITON_AOT
  const bool aot_device = hyperloss::cuda::aot_built_for_current_device();
  const char* env = std::getenv("HYPERLOSS_TRITON_AOT");
  std::printf("this GPU %s the ahead-of-time kernels%s\n", aot_device ? "runs" : "does not run",
              aot_device || env == nullptr ? "" : " (or HYPERLOSS_TRITON_AOT in the environment turns them off)");
  if (aot_device && aot_planned_calls == 0) {
    std::printf("FAIL: no call had an ahead-of-time plan (the build's dtypes and widths cover none of the cases)\n");
    ++failures;
  }
#endif
}

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

// A matrix stored with a row pitch of cols + pad, or transposed (column-major) when `transposed`.
struct Layout {
  int64_t pad = 0;
  bool transposed = false;
};

template <typename T>
static std::vector<T> lay_out(const std::vector<T>& dense, int64_t rows, int64_t cols, Layout layout,
                              hl_matrix& view) {
  const int64_t pitch = cols + layout.pad;
  std::vector<T> stored(std::max<int64_t>(rows * pitch, 1));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      stored[layout.transposed ? c * rows + r : r * pitch + c] = dense[r * cols + c];
  view.rows = rows;
  view.cols = cols;
  view.row_stride = layout.transposed ? 1 : pitch;
  view.col_stride = layout.transposed ? rows : 1;
  return stored;
}

// Within rel_tol of the largest reference entry (at least 1e-3).
template <typename Tc>
static void compare_grad(const Tc* dev, const std::vector<double>& ref, double rel_tol, const char* name,
                         const char* what) {
  const std::vector<Tc> g = to_host(dev, ref.size());
  double scale = 1e-3, err = 0;
  for (double r : ref) scale = std::fmax(scale, std::fabs(r));
  for (size_t k = 0; k < ref.size(); ++k) err = std::fmax(err, std::fabs(double(g[k]) - ref[k]));
  if (!(err <= rel_tol * scale)) {
    std::printf("FAIL %s %s: max error %.3g (scale %.3g)\n", name, what, err, scale);
    ++failures;
  }
}

// Rows: spread * (unit-scale normal rows) + offset in every coordinate; the first row of A then times `outlier`.
static void make_rows(std::vector<double>& a, std::vector<double>& b, int64_t na, int64_t nb, int64_t d,
                      double spread, double offset, double outlier) {
  std::mt19937 rng(static_cast<unsigned>(na * 7 + nb * 3 + d));
  std::normal_distribution<double> normal;
  a.resize(na * d);
  b.resize(nb * d);
  for (auto& v : a) v = spread * normal(rng) / std::sqrt(double(d)) + offset;
  for (auto& v : b) v = spread * normal(rng) / std::sqrt(double(d)) + offset;
  for (int64_t c = 0; c < d; ++c) a[c] *= outlier;
}

// Every combination of wanted gradients (none, A, B, both) against the float64 CPU kernel on the same values.
template <typename Tin, typename Tc>
static void check_uniform(hl_dtype dtype, hl_precision precision, int64_t na, int64_t nb, int64_t d, double t,
                          bool intra, double tol, const char* name, Layout layout = {}, double spread = 1.0,
                          double offset = 0.0, double outlier = 1.0) {
  std::vector<double> a, b;
  make_rows(a, b, na, nb, d, spread, offset, outlier);
  std::vector<Tin> a_in, b_in;
  const std::vector<double> a_held = round_to(a, a_in), b_held = round_to(b, b_in);

  double want = 0;
  std::vector<double> ga_ref(na * d), gb_ref(nb * d);
  hl_uniform_lse_cpu(HL_FLOAT64, hl_matrix{a_held.data(), na, d, d, 1},
                     hl_matrix{nb ? b_held.data() : nullptr, nb, d, d, 1}, t, intra, 0, &want, ga_ref.data(),
                     nb ? gb_ref.data() : nullptr);

  hl_matrix av{}, bv{};
  Tin* a_dev = to_device(lay_out(a_in, na, d, layout, av));
  Tin* b_dev = nb ? to_device(lay_out(b_in, nb, d, layout, bv)) : nullptr;
  av.data = a_dev;
  bv = nb ? hl_matrix{b_dev, bv.rows, bv.cols, bv.row_stride, bv.col_stride} : hl_matrix{nullptr, 0, d, 0, 0};
  for (int wanted = 0; wanted < 4; ++wanted) {
    const bool grad_a = wanted & 1, grad_b = (wanted & 2) && nb;
    if ((wanted & 2) && !nb) continue;
    Tc *lse_dev = nullptr, *ga_dev = nullptr, *gb_dev = nullptr;
    CUDA_OK(cudaMalloc(&lse_dev, sizeof(Tc)));
    if (grad_a) CUDA_OK(cudaMalloc(&ga_dev, sizeof(Tc) * na * d));
    if (grad_b) CUDA_OK(cudaMalloc(&gb_dev, sizeof(Tc) * nb * d));
    const size_t bytes = hl_uniform_workspace_bytes_cuda(dtype, na, nb, d, grad_a, grad_b);
    void* ws = nullptr;
    CUDA_OK(cudaMalloc(&ws, bytes));
    const bool aot = note_path(dtype, precision, na, nb, d, intra, grad_a, grad_b, name);
    const double grad_tol = std::max(10 * tol, aot_grad_rounding(dtype, precision, aot, false));
    const hl_status st =
        hl_uniform_lse_cuda(dtype, precision, av, bv, t, intra, lse_dev, ga_dev, gb_dev, ws, bytes, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    if (st != HL_OK) {
      std::printf("FAIL %s: %s\n", name, hl_status_string(st));
      ++failures;
    } else {
      const double got = to_host(lse_dev, 1)[0];
      if (!(std::fabs(got - want) <= tol * (1 + std::fabs(want)))) {
        std::printf("FAIL %s grads=%d na=%lld nb=%lld d=%lld t=%g spread=%g offset=%g: lse %.9g want %.9g\n", name,
                    wanted, (long long)na, (long long)nb, (long long)d, t, spread, offset, got, want);
        ++failures;
      }
      if (grad_a) compare_grad(ga_dev, ga_ref, grad_tol, name, "grad_a");
      if (grad_b) compare_grad(gb_dev, gb_ref, grad_tol, name, "grad_b");
    }
    cudaFree(lse_dev);
    cudaFree(ga_dev);
    cudaFree(gb_dev);
    cudaFree(ws);
  }
  cudaFree(a_dev);
  cudaFree(b_dev);
}

// Two rows with a large common offset, exact answers: [[1e4, 0], [1e4, 1]] at t = 2 gives lse = -2 (gradient
// -+4 on the second column); [[12345, 0], [12345, 3]] at t = 50 gives -450 (gradient +-300). Every dtype holds
// these rows' differences exactly, so every precision gets them exactly; also as x against a one-row queue.
template <typename Tin, typename Tc>
static void check_offset(hl_dtype dtype, hl_precision precision, const char* name) {
  struct Case {
    double rows[4];
    double t, lse, grad;
  } cases[] = {{{1e4, 0, 1e4, 1}, 2.0, -2.0, 4.0}, {{12345, 0, 12345, 3}, 50.0, -450.0, 300.0}};
  for (const Case& c : cases)
    for (int with_queue = 0; with_queue < 2; ++with_queue) {
      std::vector<Tin> rows;
      round_to(std::vector<double>(c.rows, c.rows + 4), rows);
      Tin* dev = to_device(rows);
      Tc *lse = nullptr, *grad = nullptr;
      CUDA_OK(cudaMalloc(&lse, sizeof(Tc)));
      CUDA_OK(cudaMalloc(&grad, 4 * sizeof(Tc)));
      const hl_matrix a = with_queue ? hl_matrix{dev, 1, 2, 2, 1} : hl_matrix{dev, 2, 2, 2, 1};
      const hl_matrix b = with_queue ? hl_matrix{dev + 2, 1, 2, 2, 1} : hl_matrix{nullptr, 0, 2, 0, 0};
      const size_t bytes = hl_uniform_workspace_bytes_cuda(dtype, a.rows, b.rows, 2, 1, with_queue);
      void* ws = nullptr;
      CUDA_OK(cudaMalloc(&ws, bytes));
      const bool aot = note_path(dtype, precision, a.rows, b.rows, 2, !with_queue, true, with_queue, name);
      const double grad_tol = std::max(1e-6, aot_grad_rounding(dtype, precision, aot, true));
      const hl_status st = hl_uniform_lse_cuda(dtype, precision, a, b, c.t, !with_queue, lse, grad,
                                               with_queue ? grad + 2 : nullptr, ws, bytes, nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      const double got = to_host(lse, 1)[0];
      const std::vector<Tc> g = to_host(grad, 4);
      const double want_g[4] = {0, c.grad, 0, -c.grad};
      bool ok = st == HL_OK && std::fabs(got - c.lse) <= 1e-6 * std::fabs(c.lse);
      for (int k = 0; k < 4; ++k) ok = ok && std::fabs(double(g[k]) - want_g[k]) <= grad_tol * std::fabs(c.grad);
      if (!ok) {
        std::printf("FAIL %s offset %g t=%g queue=%d: %s, lse %.9g want %.9g, grad [%g %g %g %g] want [0 %g 0 %g]\n",
                    name, c.rows[0], c.t, with_queue, hl_status_string(st), got, c.lse, double(g[0]), double(g[1]),
                    double(g[2]), double(g[3]), c.grad, -c.grad);
        ++failures;
      }
      cudaFree(dev);
      cudaFree(lse);
      cudaFree(grad);
      cudaFree(ws);
    }
}

// A loss near 0 (1000 unit rows, t = 1e-6: about -2e-6, far below float32's resolution of log|P| = 13.1) through
// hyperloss::cuda::uniform_lse, which forms lse - log|P| in double: within 1e-4 (float32) of the float64 CPU kernel
// on the same values, never positive; lse_f64 agrees, and the public lse_out is lse rounded to the compute type.
template <typename Tin, typename Tc>
static void check_near_zero(hl_dtype dtype, hl_precision precision, double tol, const char* name) {
  const int64_t n = 1000, d = 16;
  std::mt19937 rng(17);
  std::normal_distribution<double> normal;
  std::vector<double> x(n * d);
  for (int64_t r = 0; r < n; ++r) {
    double norm = 0;
    for (int64_t c = 0; c < d; ++c) norm += (x[r * d + c] = normal(rng)) * x[r * d + c];
    for (int64_t c = 0; c < d; ++c) x[r * d + c] /= std::sqrt(norm);
  }
  std::vector<Tin> x_in;
  const std::vector<double> held = round_to(x, x_in);
  const double t = 1e-6, log_pairs = std::log(n * (n - 1) / 2.0);
  double lse_cpu = 0;
  hl_uniform_lse_cpu(HL_FLOAT64, hl_matrix{held.data(), n, d, d, 1}, hl_matrix{nullptr, 0, d, 0, 0}, t, 1, 0,
                     &lse_cpu, nullptr, nullptr);
  const double want = lse_cpu - log_pairs;
  Tin* dev = to_device(x_in);
  for (int with_grad = 0; with_grad < 2; ++with_grad) {
    Tc *loss = nullptr, *lse = nullptr, *grad = nullptr;
    double* lse64 = nullptr;
    CUDA_OK(cudaMalloc(&loss, sizeof(Tc)));
    CUDA_OK(cudaMalloc(&lse, sizeof(Tc)));
    CUDA_OK(cudaMalloc(&lse64, sizeof(double)));
    if (with_grad) CUDA_OK(cudaMalloc(&grad, sizeof(Tc) * n * d));
    const size_t bytes = hl_uniform_workspace_bytes_cuda(dtype, n, 0, d, with_grad, 0);
    void* ws = nullptr;
    CUDA_OK(cudaMalloc(&ws, bytes));
    hyperloss::cuda::UniformResults results;
    results.lse = lse;
    results.lse_f64 = lse64;
    results.loss = loss;
    note_path(dtype, precision, n, 0, d, true, with_grad, false, name);
    const hl_status st = hyperloss::cuda::uniform_lse(dtype, precision, hl_matrix{dev, n, d, d, 1},
                                                      hl_matrix{nullptr, 0, d, 0, 0}, t, 1, results, grad, nullptr,
                                                      ws, bytes, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    const double got = to_host(loss, 1)[0], got64 = to_host(lse64, 1)[0] - log_pairs, got_lse = to_host(lse, 1)[0];
    const double err = std::fabs(got - want) / std::fabs(want), err64 = std::fabs(got64 - want) / std::fabs(want);
    std::printf("%s near-zero loss (grad=%d): %.9g want %.9g, relative error %.3g (lse_f64: %.3g)\n", name,
                with_grad, got, want, err, err64);
    if (st != HL_OK || !(got <= 0) || !(err <= tol) || !(err64 <= tol) ||
        !(std::fabs(got_lse - lse_cpu) <= 4 * std::numeric_limits<Tc>::epsilon() * std::fabs(lse_cpu))) {
      std::printf("FAIL %s near-zero loss (grad=%d): %s, loss %.9g, lse %.12g want %.12g\n", name, with_grad,
                  hl_status_string(st), got, got_lse, lse_cpu);
      ++failures;
    }
    cudaFree(loss);
    cudaFree(lse);
    cudaFree(lse64);
    cudaFree(grad);
    cudaFree(ws);
  }
  cudaFree(dev);
}

template <typename Tin, typename Tc>
static void check_all(hl_dtype dtype, hl_precision precision, double tol, const char* name) {
  check_uniform<Tin, Tc>(dtype, precision, 2, 0, 1, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 130, 0, 33, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 200, 0, 128, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 97, 45, 70, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 97, 45, 70, 2.0, false, tol, name);
  // Every exp(s) underflows in float: the closest pairs are about 1 apart, so the largest s is about -150.
  check_uniform<Tin, Tc>(dtype, precision, 65, 0, 64, 150.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 97, 45, 64, 150.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 40, 0, 300, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 150, 30, 256, 2.0, true, tol, name);  // the widest AOT block width
  check_uniform<Tin, Tc>(dtype, precision, 140, 0, 200, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 70, 20, 33, 2.0, true, tol, name, Layout{3, false});  // padded rows
  check_uniform<Tin, Tc>(dtype, precision, 70, 20, 33, 2.0, true, tol, name, Layout{0, true});   // column-major
  // A common offset far larger than the spread: centered on the device, so as accurate as without it.
  check_uniform<Tin, Tc>(dtype, precision, 100, 40, 24, 2.0, true, tol, name, Layout{}, 1.0, 1000.0);
  check_uniform<Tin, Tc>(dtype, precision, 100, 40, 24, 2.0, false, tol, name, Layout{0, true}, 1.0, 1000.0);
  check_uniform<Tin, Tc>(dtype, precision, 130, 0, 33, 2.0, true, tol, name, Layout{}, 1.0, -300.0);
  // Offset 1e4, spread 100 (distinct rows in every dtype, bfloat16's steps of 64 included), t scaled to match.
  check_uniform<Tin, Tc>(dtype, precision, 80, 30, 24, 2e-4, true, tol, name, Layout{}, 100.0, 1e4);
  if constexpr (!std::is_same_v<Tin, __half>) {
    // Squared norms far beyond float range (1e60): scaled by a power of two on the device.
    check_uniform<Tin, Tc>(dtype, precision, 90, 30, 20, 1e-58, true, tol, name, Layout{}, 1e29, 1e30);
    // Tiny rows (squared norms below float's normal range) and a large t.
    check_uniform<Tin, Tc>(dtype, precision, 90, 0, 20, 1e36, true, tol, name, Layout{}, 1e-18, 3e-18);
  }
  // One row far from the others (norm ~1e6, float16's ~1e4): the center is their midhinge, not a mean it moves.
  const double outlier = std::is_same_v<Tin, __half> ? 1e4 : 1e6;
  check_uniform<Tin, Tc>(dtype, precision, 256, 0, 16, 2.0, true, tol, name, Layout{}, 1.0, 0.0, outlier);
  check_uniform<Tin, Tc>(dtype, precision, 64, 192, 16, 2.0, true, tol, name, Layout{}, 1.0, 0.0, outlier);
  // Few rows against many (uniform._segments; the AOT path's split sweeps and their merge): x's rows against a
  // 5000-row queue (5 segments of 1024 columns, the last one short), and for the queue's gradient its 20 rows
  // against x's 3000 (3 segments).
  check_uniform<Tin, Tc>(dtype, precision, 100, 5000, 64, 2.0, true, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 100, 5000, 64, 2.0, false, tol, name);
  check_uniform<Tin, Tc>(dtype, precision, 3000, 20, 32, 2.0, true, tol, name);
  check_offset<Tin, Tc>(dtype, precision, name);
}

// A NaN in the queue or an Inf in x makes the loss and every gradient element NaN.
static void check_nonfinite(hl_precision precision) {
  for (int where = 0; where < 2; ++where) {
    std::vector<float> a(40 * 8, 0.25f), b(10 * 8, -0.5f);
    for (size_t k = 0; k < a.size(); ++k) a[k] = std::sin(0.37f * k);
    (where ? a[17] : b[3]) = where ? INFINITY : NAN;
    float *a_dev = to_device(a), *b_dev = to_device(b), *lse = nullptr, *ga = nullptr, *gb = nullptr;
    CUDA_OK(cudaMalloc(&lse, sizeof(float)));
    CUDA_OK(cudaMalloc(&ga, sizeof(float) * a.size()));
    CUDA_OK(cudaMalloc(&gb, sizeof(float) * b.size()));
    const size_t bytes = hl_uniform_workspace_bytes_cuda(HL_FLOAT32, 40, 10, 8, 1, 1);
    void* ws = nullptr;
    CUDA_OK(cudaMalloc(&ws, bytes));
    note_path(HL_FLOAT32, precision, 40, 10, 8, true, true, true, "non-finite");
    hl_uniform_lse_cuda(HL_FLOAT32, precision, hl_matrix{a_dev, 40, 8, 8, 1}, hl_matrix{b_dev, 10, 8, 8, 1}, 2.0, 1,
                        lse, ga, gb, ws, bytes, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    bool all_nan = std::isnan(to_host(lse, 1)[0]);
    for (float g : to_host(ga, a.size())) all_nan = all_nan && std::isnan(g);
    for (float g : to_host(gb, b.size())) all_nan = all_nan && std::isnan(g);
    if (!all_nan) {
      std::printf("FAIL non-finite input (%s) did not give NaN everywhere\n", where ? "Inf in x" : "NaN in queue");
      ++failures;
    }
    cudaFree(a_dev);
    cudaFree(b_dev);
    cudaFree(lse);
    cudaFree(ga);
    cudaFree(gb);
    cudaFree(ws);
  }
}

// Alignment of every input dtype against the CPU kernel in float64 (on the values the dtype holds), with each
// combination of gradient outputs; grad_y must be the exact negation of grad_x.
template <typename Tin, typename Tc>
static void check_align(hl_dtype dtype, double alpha, double tol, const char* name) {
  const int64_t n = 300, d = 70;
  std::vector<double> x(n * d), y(n * d);
  std::mt19937 rng(11);
  std::normal_distribution<double> normal;
  for (auto& v : x) v = normal(rng);
  for (auto& v : y) v = normal(rng);
  for (int64_t c = 0; c < d; ++c) y[5 * d + c] = x[5 * d + c];  // one row with x_i == y_i
  std::vector<Tin> x_in, y_in;
  const std::vector<double> x_held = round_to(x, x_in), y_held = round_to(y, y_in);
  double want = 0;
  std::vector<double> gx_ref(n * d), gy_ref(n * d);
  hl_align_cpu(HL_FLOAT64, hl_matrix{x_held.data(), n, d, d, 1}, hl_matrix{y_held.data(), n, d, d, 1}, alpha, 0,
               &want, gx_ref.data(), gy_ref.data());
  Tin *x_dev = to_device(x_in), *y_dev = to_device(y_in);
  Tc *loss = nullptr, *gx = nullptr, *gy = nullptr;
  CUDA_OK(cudaMalloc(&loss, sizeof(Tc)));
  CUDA_OK(cudaMalloc(&gx, sizeof(Tc) * n * d));
  CUDA_OK(cudaMalloc(&gy, sizeof(Tc) * n * d));
  const size_t bytes = hl_align_workspace_bytes_cuda(dtype, n);
  void* ws = nullptr;
  CUDA_OK(cudaMalloc(&ws, bytes));
  char what[96];
  for (int outputs = 0; outputs < 4; ++outputs) {  // bit 0: grad_x, bit 1: grad_y
    CUDA_OK(cudaMemset(gx, 0, sizeof(Tc) * n * d));
    CUDA_OK(cudaMemset(gy, 0, sizeof(Tc) * n * d));
    const hl_status st = hl_align_cuda(dtype, hl_matrix{x_dev, n, d, d, 1}, hl_matrix{y_dev, n, d, d, 1}, alpha,
                                       loss, outputs & 1 ? gx : nullptr, outputs & 2 ? gy : nullptr, ws, bytes,
                                       nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    const double got = to_host(loss, 1)[0];
    std::snprintf(what, sizeof what, "align %s alpha=%g outputs=%d", name, alpha, outputs);
    if (st != HL_OK || !(std::fabs(got - want) <= tol * (1 + std::fabs(want)))) {
      std::printf("FAIL %s: %.9g want %.9g (%s)\n", what, got, want, hl_status_string(st));
      ++failures;
    }
    if (outputs & 1) compare_grad(gx, gx_ref, 10 * tol, what, "grad_x");
    if (outputs & 2) compare_grad(gy, gy_ref, 10 * tol, what, "grad_y");
    if (outputs == 3) {
      const std::vector<Tc> hx = to_host(gx, n * d), hy = to_host(gy, n * d);
      int bad = 0;
      for (int64_t k = 0; k < n * d; ++k) bad += !(hy[k] == -hx[k]);
      if (bad) {
        std::printf("FAIL %s: grad_y != -grad_x at %d elements\n", what, bad);
        ++failures;
      }
    }
  }
  cudaFree(x_dev);
  cudaFree(y_dev);
  cudaFree(loss);
  cudaFree(gx);
  cudaFree(gy);
  cudaFree(ws);
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
  check_near_zero<double, double>(HL_FLOAT64, HL_PRECISION_IEEE, 1e-8, "float64");
  check_near_zero<float, float>(HL_FLOAT32, HL_PRECISION_IEEE, 1e-4, "float32");
  // The lean sweep flags every row (all terms near 1): the fallback sweep recomputes them with the deficits' series.
  check_near_zero<float, float>(HL_FLOAT32, HL_PRECISION_TF32, 3e-3, "float32 tf32");  // float16-rounded rows
  check_near_zero<__half, float>(HL_FLOAT16, HL_PRECISION_IEEE, 1e-4, "float16");
  check_near_zero<__nv_bfloat16, float>(HL_BFLOAT16, HL_PRECISION_IEEE, 1e-4, "bfloat16");
  check_nonfinite(HL_PRECISION_IEEE);
  check_nonfinite(HL_PRECISION_TF32);
  for (double alpha : {2.0, 1.0, 0.5}) {
    check_align<double, double>(HL_FLOAT64, alpha, 1e-10, "float64");
    check_align<float, float>(HL_FLOAT32, alpha, 1e-5, "float32");
    check_align<__half, float>(HL_FLOAT16, alpha, 1e-5, "float16");
    check_align<__nv_bfloat16, float>(HL_BFLOAT16, alpha, 1e-5, "bfloat16");
  }
  check_aot_ran();
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
