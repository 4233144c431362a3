// C++ unit tests of the C API against direct double-precision sums over every pair.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../center.h"
#include "hyperloss/hyperloss.h"

static int failures = 0;
#define EXPECT(cond, what)                                             \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::printf("FAIL %s (%s:%d)\n", what, __FILE__, __LINE__); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)
#define CHECK_CLOSE(got, want, tol, what)                                                                   \
  do {                                                                                                      \
    const double g_ = (got), w_ = (want);                                                                   \
    if (!(std::fabs(g_ - w_) <= (tol) * (1.0 + std::fabs(w_)))) {                                           \
      std::printf("FAIL %s: got %.12g want %.12g (%s:%d)\n", what, g_, w_, __FILE__, __LINE__);             \
      ++failures;                                                                                           \
    }                                                                                                       \
  } while (0)

// Direct reference: log-sum-exp over the pair set and its gradient, in double, by definition.
static double reference_lse(const std::vector<double>& a, int64_t na, const std::vector<double>& b, int64_t nb,
                            int64_t d, double t, bool intra, std::vector<double>& ga, std::vector<double>& gb) {
  std::vector<double> s_list;
  auto score = [&](const double* u, const double* v) {
    double d2 = 0;
    for (int64_t c = 0; c < d; ++c) d2 += (u[c] - v[c]) * (u[c] - v[c]);
    return -t * d2;
  };
  double mx = -INFINITY;
  for (int64_t i = 0; i < na; ++i) {
    if (intra)
      for (int64_t j = i + 1; j < na; ++j) mx = std::fmax(mx, score(&a[i * d], &a[j * d]));
    for (int64_t k = 0; k < nb; ++k) mx = std::fmax(mx, score(&a[i * d], &b[k * d]));
  }
  double z = 0;
  ga.assign(na * d, 0.0);
  gb.assign(nb * d, 0.0);
  auto add = [&](int64_t i, const double* u, std::vector<double>& gu, int64_t j, const double* v,
                 std::vector<double>& gv) {
    const double e = std::exp(score(u, v) - mx);
    z += e;
    for (int64_t c = 0; c < d; ++c) {
      gu[i * d + c] += -2 * t * e * (u[c] - v[c]);
      gv[j * d + c] += -2 * t * e * (v[c] - u[c]);
    }
  };
  for (int64_t i = 0; i < na; ++i) {
    if (intra)
      for (int64_t j = i + 1; j < na; ++j) add(i, &a[i * d], ga, j, &a[j * d], ga);
    for (int64_t k = 0; k < nb; ++k) add(i, &a[i * d], ga, k, &b[k * d], gb);
  }
  for (auto& g : ga) g /= z;
  for (auto& g : gb) g /= z;
  return mx + std::log(z);
}

template <typename T>
static void check_uniform(int64_t na, int64_t nb, int64_t d, double t, bool intra, double scale, double tol) {
  std::mt19937 rng(static_cast<unsigned>(na * 131 + nb * 17 + d));
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> a(na * d), b(nb * d);
  for (auto& v : a) v = normal(rng);
  for (auto& v : b) v = normal(rng);
  std::vector<double> ga_ref, gb_ref;
  const double want = reference_lse(a, na, b, nb, d, t, intra, ga_ref, gb_ref);

  std::vector<T> at(a.begin(), a.end()), bt(b.begin(), b.end()), ga(na * d), gb(nb * d);
  const hl_dtype dtype = sizeof(T) == 4 ? HL_FLOAT32 : HL_FLOAT64;
  const hl_matrix am{at.data(), na, d, d, 1};
  const hl_matrix bm{nb ? bt.data() : nullptr, nb, d, d, 1};
  double lse = 0;
  const hl_status st = hl_uniform_lse_cpu(dtype, am, bm, t, intra, 0, &lse, ga.data(), nb ? gb.data() : nullptr);
  if (st != HL_OK) {
    std::printf("FAIL status %s\n", hl_status_string(st));
    ++failures;
    return;
  }
  char what[128];
  std::snprintf(what, sizeof what, "lse na=%lld nb=%lld d=%lld t=%g", (long long)na, (long long)nb, (long long)d, t);
  CHECK_CLOSE(lse, want, tol, what);
  double gmax = 1e-30;
  for (double g : ga_ref) gmax = std::fmax(gmax, std::fabs(g));
  for (size_t k = 0; k < ga.size(); ++k) CHECK_CLOSE(ga[k] / gmax, ga_ref[k] / gmax, tol, "grad_a");
  for (size_t k = 0; k < gb.size(); ++k) CHECK_CLOSE(gb[k] / gmax, gb_ref[k] / gmax, tol, "grad_b");

  // Loss-only call gives the same value.
  double lse_only = 0;
  hl_uniform_lse_cpu(dtype, am, bm, t, intra, 0, &lse_only, nullptr, nullptr);
  CHECK_CLOSE(lse_only, lse, tol, "loss-only lse");
}

// Per-row weights: lse = log sum_pairs w_i w_j exp(s_ij) and its gradients (rows and weights) against direct double
// sums, for weights with zeros (some rows nearer each other than any pair of positive weight), exactly one pair of
// positive weight, a common scale far from 1, and NULL weights (all 1: the unweighted function's values).
struct WeightedReference {
  double lse;
  std::vector<double> ga, gb, gwa, gwb;
};

static WeightedReference reference_weighted(const std::vector<double>& a, const std::vector<double>& wa, int64_t na,
                                            const std::vector<double>& b, const std::vector<double>& wb, int64_t nb,
                                            int64_t d, double t, bool intra) {
  auto score = [&](const double* u, const double* v) {
    double d2 = 0;
    for (int64_t c = 0; c < d; ++c) d2 += (u[c] - v[c]) * (u[c] - v[c]);
    return -t * d2;
  };
  // Every pair once: f(i, row i, weight, j, row j, weight, side of j).
  auto pairs = [&](auto&& f) {
    for (int64_t i = 0; i < na; ++i) {
      if (intra)
        for (int64_t j = i + 1; j < na; ++j) f(i, &a[i * d], wa[i], j, &a[j * d], wa[j], false);
      for (int64_t k = 0; k < nb; ++k) f(i, &a[i * d], wa[i], k, &b[k * d], wb[k], true);
    }
  };
  // Weights scaled by their largest c (the pair weights by c^2), so that no product overflows.
  double c = 0;
  for (double w : wa) c = std::fmax(c, w);
  for (double w : wb) c = std::fmax(c, w);
  double mx = -INFINITY;
  pairs([&](int64_t, const double* u, double w, int64_t, const double* v, double w2, bool) {
    if (w * w2 > 0) mx = std::fmax(mx, score(u, v));
  });
  WeightedReference r{0, std::vector<double>(na * d), std::vector<double>(nb * d), std::vector<double>(na),
                      std::vector<double>(nb)};
  double z = 0;
  pairs([&](int64_t i, const double* u, double w, int64_t j, const double* v, double w2, bool cross) {
    const double e = std::exp(score(u, v) - mx);
    w /= c, w2 /= c;
    z += w * w2 * e;
    std::vector<double>& gv = cross ? r.gb : r.ga;
    for (int64_t c = 0; c < d; ++c) {
      r.ga[i * d + c] += -2 * t * w * w2 * e * (u[c] - v[c]);
      gv[j * d + c] += -2 * t * w * w2 * e * (v[c] - u[c]);
    }
    r.gwa[i] += w2 * e;
    (cross ? r.gwb : r.gwa)[j] += w * e;
  });
  for (auto* g : {&r.ga, &r.gb, &r.gwa, &r.gwb})
    for (double& v : *g) v /= z;
  for (auto* g : {&r.gwa, &r.gwb})
    for (double& v : *g) v /= c;
  r.lse = mx + std::log(z) + 2 * std::log(c);
  return r;
}

template <typename T>
static void check_weighted(int64_t na, int64_t nb, int64_t d, double t, bool intra, const char* pattern, double tol) {
  std::mt19937 rng(static_cast<unsigned>(na * 7 + nb * 3 + d));
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform(0.05, 1.0);
  std::vector<double> a(na * d), b(nb * d), wa(na), wb(nb);
  for (auto& v : a) v = normal(rng) / std::sqrt(static_cast<double>(d));
  for (auto& v : b) v = normal(rng) / std::sqrt(static_cast<double>(d));
  for (auto& w : wa) w = uniform(rng);
  for (auto& w : wb) w = uniform(rng);
  const bool null_weights = std::strcmp(pattern, "null") == 0;
  if (std::strcmp(pattern, "zeros") == 0) {
    for (int64_t i = 0; i < na; i += 2) wa[i] = 0;
    for (int64_t c = 0; c < d; ++c) a[2 * d + c] = a[4 * d + c] + 1e-3;  // a close pair of weight 0
  } else if (std::strcmp(pattern, "one pair") == 0) {
    std::fill(wa.begin(), wa.end(), 0.0);
    std::fill(wb.begin(), wb.end(), 0.0);
    wa[1] = 0.5;
    (intra ? wa[na - 1] : wb[nb - 1]) = 2.0;
  } else if (std::strcmp(pattern, "huge") == 0) {
    for (auto& w : wa) w *= 1e300;
    for (auto& w : wb) w *= 1e300;
  }
  if (null_weights) std::fill(wa.begin(), wa.end(), 1.0), std::fill(wb.begin(), wb.end(), 1.0);
  const WeightedReference want = reference_weighted(a, wa, na, b, wb, nb, d, t, intra);

  std::vector<T> at(a.begin(), a.end()), bt(b.begin(), b.end()), ga(na * d), gb(nb * d);
  std::vector<double> gwa(na), gwb(nb);
  const hl_dtype dtype = sizeof(T) == 4 ? HL_FLOAT32 : HL_FLOAT64;
  const hl_matrix am{at.data(), na, d, d, 1};
  const hl_matrix bm{nb ? bt.data() : nullptr, nb, d, d, 1};
  double lse = 0;
  const hl_status st = hl_uniform_lse_weighted_cpu(
      dtype, am, bm, null_weights ? nullptr : wa.data(), null_weights ? nullptr : wb.data(), t, intra, 0, &lse,
      ga.data(), nb ? gb.data() : nullptr, gwa.data(), nb ? gwb.data() : nullptr);
  char what[160];
  std::snprintf(what, sizeof what, "weighted %s na=%lld nb=%lld t=%g", pattern, (long long)na, (long long)nb, t);
  EXPECT(st == HL_OK, what);
  // The value relative to the pair-weight scale: lse moves by 2 log c when every weight is scaled by c.
  CHECK_CLOSE(lse, want.lse, tol, what);
  const auto close = [&](const auto& got, const std::vector<double>& ref, const char* name) {
    double top = 1e-300;
    for (double v : ref) top = std::fmax(top, std::fabs(v));
    char label[200];
    std::snprintf(label, sizeof label, "%s (%s)", name, what);
    for (size_t k = 0; k < ref.size(); ++k) CHECK_CLOSE(got[k] / top, ref[k] / top, tol, label);
  };
  close(ga, want.ga, "weighted grad_a");
  close(gb, want.gb, "weighted grad_b");
  close(gwa, want.gwa, "weighted grad_weights_a");
  close(gwb, want.gwb, "weighted grad_weights_b");
  if (std::strcmp(pattern, "zeros") == 0)
    for (int64_t c = 0; c < d; ++c) EXPECT(ga[2 * d + c] == 0, "a row of weight 0 has a zero gradient");
  if (null_weights) {  // every weight 1: the unweighted function's value
    double plain = 0;
    hl_uniform_lse_cpu(dtype, am, bm, t, intra, 0, &plain, nullptr, nullptr);
    CHECK_CLOSE(lse, plain, tol, "weighted with NULL weights = unweighted");
  }
  // One thread: bitwise the same.
  std::vector<T> ga1(na * d);
  std::vector<double> gwa1(na);
  double lse1 = 0;
  hl_uniform_lse_weighted_cpu(dtype, am, bm, null_weights ? nullptr : wa.data(), null_weights ? nullptr : wb.data(),
                              t, intra, 1, &lse1, ga1.data(), nullptr, gwa1.data(), nullptr);
  EXPECT(lse1 == lse && std::memcmp(ga1.data(), ga.data(), ga.size() * sizeof(T)) == 0 &&
             std::memcmp(gwa1.data(), gwa.data(), gwa.size() * sizeof(double)) == 0,
         "weighted: 1 thread, the same results");
}

static void check_weighted_errors() {
  std::vector<double> a(12, 0.5), w(3, 1.0);
  a[4] = 1.0;
  const hl_matrix am{a.data(), 3, 4, 4, 1}, none{nullptr, 0, 4, 0, 0};
  double lse = 0;
  w[1] = -1.0;
  EXPECT(hl_uniform_lse_weighted_cpu(HL_FLOAT64, am, none, w.data(), nullptr, 2.0, 1, 0, &lse, nullptr, nullptr,
                                     nullptr, nullptr) == HL_ERR_INVALID_ARGUMENT,
         "a negative weight is an invalid argument");
  w[1] = NAN;
  std::vector<double> gw(3);
  EXPECT(hl_uniform_lse_weighted_cpu(HL_FLOAT64, am, none, w.data(), nullptr, 2.0, 1, 0, &lse, nullptr, nullptr,
                                     gw.data(), nullptr) == HL_OK &&
             std::isnan(lse) && std::isnan(gw[0]),
         "a NaN weight gives NaN");
  w = {0.0, 0.0, 1.0};
  EXPECT(hl_uniform_lse_weighted_cpu(HL_FLOAT64, am, none, w.data(), nullptr, 2.0, 1, 0, &lse, nullptr, nullptr,
                                     nullptr, nullptr) == HL_OK &&
             lse == -INFINITY,
         "no pair of positive weight: lse = -inf");
}

// Alignment against a direct double sum and its analytic gradient, for every combination of gradient outputs;
// grad_y must be the exact negation of grad_x, one row has x_i == y_i (a zero gradient for every alpha), and a
// strided x (every other column of a wider matrix) must give the same results.
template <typename T>
static void check_align(int64_t n, int64_t d, double alpha, double tol) {
  const hl_dtype dtype = sizeof(T) == 4 ? HL_FLOAT32 : HL_FLOAT64;
  std::mt19937 rng(static_cast<unsigned>(7 + n + d));
  std::normal_distribution<double> normal;
  std::vector<T> x(n * d), y(n * d), x_wide(n * 2 * d);
  for (auto& v : x) v = static_cast<T>(normal(rng));
  for (auto& v : y) v = static_cast<T>(normal(rng));
  for (int64_t c = 0; c < d; ++c) y[c] = x[c];  // row 0: x_0 == y_0
  for (int64_t k = 0; k < n * d; ++k) x_wide[2 * k] = x[k];
  double want = 0;
  std::vector<double> g_ref(n * d);
  for (int64_t r = 0; r < n; ++r) {
    double d2 = 0;
    for (int64_t c = 0; c < d; ++c) d2 += std::pow(double(x[r * d + c]) - double(y[r * d + c]), 2);
    want += std::pow(std::sqrt(d2), alpha) / n;
    const double coef = d2 > 0 ? alpha / n * std::pow(d2, alpha / 2 - 1) : 0.0;
    for (int64_t c = 0; c < d; ++c) g_ref[r * d + c] = coef * (double(x[r * d + c]) - double(y[r * d + c]));
  }
  char what[160];
  const hl_matrix xm{x.data(), n, d, d, 1}, ym{y.data(), n, d, d, 1}, x_strided{x_wide.data(), n, d, 2 * d, 2};
  std::vector<T> gx(n * d), gy(n * d), gx_only(n * d), gy_only(n * d);
  double loss = 0, loss_none = 0, loss_x = 0, loss_y = 0, loss_strided = 0, loss_one_thread = 0;
  EXPECT(hl_align_cpu(dtype, xm, ym, alpha, 0, &loss, gx.data(), gy.data()) == HL_OK, "align: status");
  std::snprintf(what, sizeof what, "align n=%lld d=%lld alpha=%g %s", (long long)n, (long long)d, alpha,
                sizeof(T) == 4 ? "float32" : "float64");
  CHECK_CLOSE(loss, want, tol, what);
  double gmax = 1e-300;
  for (double g : g_ref) gmax = std::fmax(gmax, std::fabs(g));
  int bad = 0;
  for (int64_t k = 0; k < n * d; ++k) {
    bad += !(std::fabs(gx[k] - g_ref[k]) <= tol * gmax);
    bad += !(gy[k] == -gx[k]);
  }
  for (int64_t c = 0; c < d; ++c) bad += !(gx[c] == 0 && gy[c] == 0);  // the row with x_0 == y_0
  EXPECT(bad == 0, what);

  // One output, or none: the same loss and the same bits in the output that is written.
  hl_align_cpu(dtype, xm, ym, alpha, 0, &loss_none, nullptr, nullptr);
  hl_align_cpu(dtype, xm, ym, alpha, 0, &loss_x, gx_only.data(), nullptr);
  hl_align_cpu(dtype, xm, ym, alpha, 0, &loss_y, nullptr, gy_only.data());
  EXPECT(loss_none == loss && loss_x == loss && loss_y == loss, "align: the loss whatever gradients are asked for");
  EXPECT(std::memcmp(gx_only.data(), gx.data(), gx.size() * sizeof(T)) == 0, "align: grad_x alone");
  EXPECT(std::memcmp(gy_only.data(), gy.data(), gy.size() * sizeof(T)) == 0, "align: grad_y alone");

  // A strided x, and one thread: the same bits.
  std::fill(gx_only.begin(), gx_only.end(), T(0));
  hl_align_cpu(dtype, x_strided, ym, alpha, 0, &loss_strided, gx_only.data(), nullptr);
  EXPECT(loss_strided == loss, "align: strided x, the same loss");
  EXPECT(std::memcmp(gx_only.data(), gx.data(), gx.size() * sizeof(T)) == 0, "align: strided x, the same grad_x");
  std::fill(gx_only.begin(), gx_only.end(), T(0));
  std::fill(gy_only.begin(), gy_only.end(), T(0));
  hl_align_cpu(dtype, xm, ym, alpha, 1, &loss_one_thread, gx_only.data(), gy_only.data());
  EXPECT(loss_one_thread == loss, "align: 1 thread, the same loss");
  EXPECT(std::memcmp(gx_only.data(), gx.data(), gx.size() * sizeof(T)) == 0 &&
             std::memcmp(gy_only.data(), gy.data(), gy.size() * sizeof(T)) == 0,
         "align: 1 thread, the same gradients");
}

// Gradients large enough for the non-temporal stores (two outputs of 12 MB: past 16 MB together, one alone is below), 33 columns putting the rows at
// every alignment: the same bits as one output alone (plain stores), and as outputs aligned differently from each
// other (where streaming is not possible).
template <typename T>
static void check_align_streaming() {
  const hl_dtype dtype = sizeof(T) == 4 ? HL_FLOAT32 : HL_FLOAT64;
  const int64_t d = 33, n = (int64_t(12) << 20) / d / int64_t(sizeof(T));  // 12 MB per gradient
  std::mt19937 rng(11);
  std::normal_distribution<double> normal;
  std::vector<T> x(n * d), y(n * d), gx(n * d), gy(n * d), gx_alone(n * d), gx_shifted(n * d + 1), gy_other(n * d);
  for (auto& v : x) v = static_cast<T>(normal(rng));
  for (auto& v : y) v = static_cast<T>(normal(rng));
  const hl_matrix xm{x.data(), n, d, d, 1}, ym{y.data(), n, d, d, 1};
  double loss = 0, loss_alone = 0, loss_shifted = 0;
  EXPECT(hl_align_cpu(dtype, xm, ym, 1.5, 0, &loss, gx.data(), gy.data()) == HL_OK, "align streaming: status");
  hl_align_cpu(dtype, xm, ym, 1.5, 0, &loss_alone, gx_alone.data(), nullptr);
  hl_align_cpu(dtype, xm, ym, 1.5, 0, &loss_shifted, gx_shifted.data() + 1, gy_other.data());
  int bad = 0;
  for (int64_t k = 0; k < n * d; ++k) {
    bad += !(gy[k] == -gx[k]) + (std::memcmp(&gx[k], &gx_alone[k], sizeof(T)) != 0);
    bad += (std::memcmp(&gx[k], &gx_shifted[k + 1], sizeof(T)) != 0) + !(gy_other[k] == gy[k]);
  }
  EXPECT(bad == 0 && loss_alone == loss && loss_shifted == loss, "align streaming: the same bits as plain stores");
}

static void check_errors() {
  std::vector<float> a(8, 1.0f);
  double lse = 0;
  if (hl_uniform_lse_cpu(HL_FLOAT32, hl_matrix{a.data(), 1, 8, 8, 1}, hl_matrix{nullptr, 0, 8, 0, 0}, 2.0, 1, 0,
                         &lse, nullptr, nullptr) != HL_ERR_INVALID_ARGUMENT) {
    std::printf("FAIL one row accepted\n");
    ++failures;
  }
  if (hl_uniform_lse_cpu(HL_FLOAT32, hl_matrix{a.data(), 2, 4, 4, 1}, hl_matrix{nullptr, 0, 4, 0, 0}, -1.0, 1, 0,
                         &lse, nullptr, nullptr) != HL_ERR_INVALID_ARGUMENT) {
    std::printf("FAIL negative t accepted\n");
    ++failures;
  }
  a[3] = NAN;
  hl_uniform_lse_cpu(HL_FLOAT32, hl_matrix{a.data(), 2, 4, 4, 1}, hl_matrix{nullptr, 0, 4, 0, 0}, 2.0, 1, 0, &lse,
                     nullptr, nullptr);
  if (!std::isnan(lse)) {
    std::printf("FAIL NaN input gave %g\n", lse);
    ++failures;
  }
}


// num_threads: far more than the machine has is clamped (libgomp used to abort the process when it could not create
// 2000 threads), negative is an invalid argument.
static void check_thread_counts() {
  const int64_t n = 150, d = 12;
  std::mt19937 rng(11);
  std::normal_distribution<double> normal;
  std::vector<float> a(n * d);
  for (auto& v : a) v = static_cast<float>(normal(rng));
  const hl_matrix am{a.data(), n, d, d, 1}, none{nullptr, 0, d, 0, 0};
  double one = 0, many = 0, negative = 0;
  std::vector<float> g1(n * d), gm(n * d);
  EXPECT(hl_uniform_lse_cpu(HL_FLOAT32, am, none, 2.0, 1, 1, &one, g1.data(), nullptr) == HL_OK, "1 thread");
  EXPECT(hl_uniform_lse_cpu(HL_FLOAT32, am, none, 2.0, 1, 2000, &many, gm.data(), nullptr) == HL_OK,
         "2000 threads returns HL_OK");
  EXPECT(many == one, "2000 threads: the same lse as 1 thread");
  EXPECT(std::memcmp(g1.data(), gm.data(), g1.size() * sizeof(float)) == 0, "2000 threads: the same gradient");
  std::vector<double> a64(a.begin(), a.end()), ga_ref, gb_ref;
  CHECK_CLOSE(many, reference_lse(a64, n, {}, 0, d, 2.0, true, ga_ref, gb_ref), 2e-5, "2000 threads: lse");
  EXPECT(hl_uniform_lse_cpu(HL_FLOAT32, am, none, 2.0, 1, -1, &negative, nullptr, nullptr) == HL_ERR_INVALID_ARGUMENT,
         "num_threads = -1 is HL_ERR_INVALID_ARGUMENT");
  double loss = 0;
  EXPECT(hl_align_cpu(HL_FLOAT32, am, am, 2.0, 2000, &loss, nullptr, nullptr) == HL_OK && loss == 0,
         "align, 2000 threads");
  EXPECT(hl_align_cpu(HL_FLOAT32, am, am, 2.0, -3, &loss, nullptr, nullptr) == HL_ERR_INVALID_ARGUMENT,
         "align, -3 threads");
}

// Rows with a large common offset: the centered CPU kernel sees only their spread.
template <typename T>
static void check_common_offset() {
  const hl_dtype dtype = sizeof(T) == 4 ? HL_FLOAT32 : HL_FLOAT64;
  const char* name = sizeof(T) == 4 ? "float32" : "float64";
  char what[160];
  {  // [[1e4, 0], [1e4, 1]], t = 2: one pair at squared distance 1.
    const T a[4] = {T(1e4), T(0), T(1e4), T(1)};
    double lse = 0;
    EXPECT(hl_uniform_lse_cpu(dtype, hl_matrix{a, 2, 2, 2, 1}, hl_matrix{nullptr, 0, 2, 0, 0}, 2.0, 1, 0, &lse,
                              nullptr, nullptr) == HL_OK,
           "offset 1e4: status");
    std::snprintf(what, sizeof what, "offset 1e4, t=2, %s: lse", name);
    CHECK_CLOSE(lse, -2.0, 1e-6, what);
    // The same pair as a cross pair (x against a one-row queue, no intra pairs).
    const hl_matrix x{a, 1, 2, 2, 1}, q{a + 2, 1, 2, 2, 1};
    EXPECT(hl_uniform_lse_cpu(dtype, x, q, 2.0, 0, 0, &lse, nullptr, nullptr) == HL_OK, "offset 1e4 queue: status");
    std::snprintf(what, sizeof what, "offset 1e4 as a queue, %s: lse", name);
    CHECK_CLOSE(lse, -2.0, 1e-6, what);
  }
  {  // [[12345, 0], [12345, 3]], t = 50: lse = -450, d lse / d a = -2t (a_0 - a_1) = +-300 on the second column.
    const T a[4] = {T(12345), T(0), T(12345), T(3)};
    T g[4] = {};
    double lse = 0;
    EXPECT(hl_uniform_lse_cpu(dtype, hl_matrix{a, 2, 2, 2, 1}, hl_matrix{nullptr, 0, 2, 0, 0}, 50.0, 1, 0, &lse, g,
                              nullptr) == HL_OK,
           "offset 12345: status");
    std::snprintf(what, sizeof what, "offset 12345, t=50, %s: lse", name);
    CHECK_CLOSE(lse, -450.0, 1e-6, what);
    const double want[4] = {0, 300, 0, -300};
    for (int k = 0; k < 4; ++k) {
      std::snprintf(what, sizeof what, "offset 12345, t=50, %s: grad[%d]", name, k);
      CHECK_CLOSE(g[k], want[k], 1e-6, what);
    }
    // And with a queue: x = row 0, queue = row 1.
    T gx[2] = {}, gq[2] = {};
    EXPECT(hl_uniform_lse_cpu(dtype, hl_matrix{a, 1, 2, 2, 1}, hl_matrix{a + 2, 1, 2, 2, 1}, 50.0, 0, 0, &lse, gx,
                              gq) == HL_OK,
           "offset 12345 queue: status");
    std::snprintf(what, sizeof what, "offset 12345 as a queue, %s", name);
    CHECK_CLOSE(lse, -450.0, 1e-6, what);
    CHECK_CLOSE(gx[1], 300.0, 1e-6, what);
    CHECK_CLOSE(gq[1], -300.0, 1e-6, what);
    CHECK_CLOSE(gx[0], 0.0, 1e-6, what);
    CHECK_CLOSE(gq[0], 0.0, 1e-6, what);
  }
}

// Bitwise the same lse and gradients for 1, 2 and 3 threads (a fixed order of every sum), with a queue.
template <typename T>
static void check_thread_reproducible() {
  const int64_t na = 333, nb = 190, d = 47;
  const hl_dtype dtype = sizeof(T) == 4 ? HL_FLOAT32 : HL_FLOAT64;
  std::mt19937 rng(5);
  std::normal_distribution<double> normal(0.0, 0.3);
  std::vector<T> a(na * d), b(nb * d);
  for (auto& v : a) v = static_cast<T>(normal(rng));
  for (auto& v : b) v = static_cast<T>(normal(rng));
  for (bool intra : {true, false}) {
    double lse[3];
    std::vector<T> ga[3], gb[3];
    for (int k = 0; k < 3; ++k) {
      ga[k].assign(na * d, T(0));
      gb[k].assign(nb * d, T(0));
      EXPECT(hl_uniform_lse_cpu(dtype, hl_matrix{a.data(), na, d, d, 1}, hl_matrix{b.data(), nb, d, d, 1}, 2.0,
                                intra, k + 1, &lse[k], ga[k].data(), gb[k].data()) == HL_OK,
             "reproducible: status");
    }
    for (int k = 1; k < 3; ++k) {
      char what[128];
      std::snprintf(what, sizeof what, "%s intra=%d: %d threads bitwise equal to 1 (lse)",
                    sizeof(T) == 4 ? "float32" : "float64", intra, k + 1);
      EXPECT(std::memcmp(&lse[k], &lse[0], sizeof(double)) == 0, what);
      std::snprintf(what, sizeof what, "%s intra=%d: %d threads bitwise equal to 1 (grad_a, grad_b)",
                    sizeof(T) == 4 ? "float32" : "float64", intra, k + 1);
      EXPECT(std::memcmp(ga[k].data(), ga[0].data(), ga[0].size() * sizeof(T)) == 0 &&
                 std::memcmp(gb[k].data(), gb[0].data(), gb[0].size() * sizeof(T)) == 0,
             what);
    }
  }
}

// Two very long float32 rows: the Gram products add their 256-column chunks in double; the lse is within 1e-6
// relative of the direct sum of squared differences in double.
static void check_long_rows() {
  const int64_t d = 4000000;
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 1.0 / std::sqrt(double(d)));
  std::vector<float> a(2 * d);
  for (auto& v : a) v = static_cast<float>(normal(rng) + 0.25);  // with an offset too
  double d2 = 0;
  for (int64_t c = 0; c < d; ++c) {
    const double diff = double(a[c]) - double(a[d + c]);
    d2 += diff * diff;
  }
  const double t = 2.0;
  double lse = 0;
  std::vector<float> g(2 * d);
  EXPECT(hl_uniform_lse_cpu(HL_FLOAT32, hl_matrix{a.data(), 2, d, d, 1}, hl_matrix{nullptr, 0, d, 0, 0}, t, 1, 0,
                            &lse, g.data(), nullptr) == HL_OK,
         "long rows: status");
  const double want = -t * d2;
  if (!(std::fabs(lse - want) <= 1e-6 * std::fabs(want))) {
    std::printf("FAIL N=2 D=4e6 float32: lse %.12g want %.12g (relative error %.3g)\n", lse, want,
                std::fabs(lse - want) / std::fabs(want));
    ++failures;
  }
  // The gradient: d lse / d a_0 = -2t (a_0 - a_1), the negative for a_1.
  double err = 0, scale = 0;
  for (int64_t c = 0; c < d; ++c) {
    const double want_g = -2 * t * (double(a[c]) - double(a[d + c]));
    err = std::fmax(err, std::fabs(g[c] - want_g) + std::fabs(g[d + c] + want_g));
    scale = std::fmax(scale, std::fabs(want_g));
  }
  EXPECT(err <= 1e-5 * scale, "N=2 D=4e6 float32: gradient");
}

// The CUDA entry points check every argument before touching a device: with CUDA built, bad arguments give
// HL_ERR_INVALID_ARGUMENT whether or not a GPU is present (no pointer here is ever dereferenced); without CUDA,
// every call gives HL_ERR_UNSUPPORTED and every workspace query 0.
static void check_cuda_arguments() {
  const bool cuda = hl_has_cuda() != 0;
  const int64_t big = int64_t(1) << 62;
  const hl_dtype bad_dtype = static_cast<hl_dtype>(7);
  // Workspace queries: 0 for invalid arguments.
  EXPECT(hl_uniform_workspace_bytes_cuda(HL_FLOAT32, -1, 0, 8, 1, 1) == 0, "uniform workspace: rows_a < 0");
  EXPECT(hl_uniform_workspace_bytes_cuda(HL_FLOAT32, 0, 5, 8, 1, 1) == 0, "uniform workspace: rows_a = 0");
  EXPECT(hl_uniform_workspace_bytes_cuda(HL_FLOAT32, 10, -1, 8, 1, 1) == 0, "uniform workspace: rows_b < 0");
  EXPECT(hl_uniform_workspace_bytes_cuda(HL_FLOAT32, 10, 5, 0, 1, 1) == 0, "uniform workspace: cols = 0");
  EXPECT(hl_uniform_workspace_bytes_cuda(HL_FLOAT32, 10, 5, -8, 1, 1) == 0, "uniform workspace: cols < 0");
  EXPECT(hl_uniform_workspace_bytes_cuda(HL_FLOAT32, big, 0, 1 << 10, 1, 0) == 0,
         "uniform workspace: rows_a * cols overflows");
  EXPECT(hl_uniform_workspace_bytes_cuda(HL_FLOAT64, 10, big, 1 << 10, 0, 1) == 0,
         "uniform workspace: rows_b * cols overflows");
  EXPECT(hl_uniform_workspace_bytes_cuda(HL_FLOAT32, big / 1024, big / 1024, 16, 0, 0) == 0,
         "uniform workspace: (rows_a + rows_b) * cols overflows");
  EXPECT(hl_uniform_workspace_bytes_cuda(bad_dtype, 10, 5, 8, 1, 1) == 0, "uniform workspace: unknown dtype");
  EXPECT(hl_align_workspace_bytes_cuda(HL_FLOAT32, -5) == 0, "align workspace: rows < 0");
  EXPECT(hl_align_workspace_bytes_cuda(HL_FLOAT32, 0) == 0, "align workspace: rows = 0");
  EXPECT(hl_align_workspace_bytes_cuda(HL_FLOAT64, std::numeric_limits<int64_t>::max()) == 0,
         "align workspace: rows * 8 overflows");
  EXPECT(hl_align_workspace_bytes_cuda(bad_dtype, 10) == 0, "align workspace: unknown dtype");
  const size_t uniform_bytes = hl_uniform_workspace_bytes_cuda(HL_FLOAT32, 10, 5, 8, 1, 1);
  const size_t align_bytes = hl_align_workspace_bytes_cuda(HL_FLOAT16, 10);
  EXPECT(cuda ? uniform_bytes > 0 && align_bytes > 0 : uniform_bytes == 0 && align_bytes == 0,
         "workspace queries: > 0 for valid arguments with CUDA, 0 without");
  for (hl_dtype dtype : {HL_FLOAT32, HL_FLOAT64, HL_FLOAT16, HL_BFLOAT16})
    EXPECT(!cuda || hl_uniform_workspace_bytes_cuda(dtype, 10, 0, 8, 0, 0) > 0, "uniform workspace: every dtype");

  // Calls with one bad argument each. The pointers are host memory: a call that got past its checks would fail
  // (HL_ERR_CUDA), not return HL_ERR_INVALID_ARGUMENT.
  alignas(256) static unsigned char workspace[1 << 16];
  static float a[10 * 8], b[5 * 8], out[4];
  const hl_matrix am{a, 10, 8, 8, 1}, bm{b, 5, 8, 8, 1}, none{nullptr, 0, 8, 0, 0};
  const hl_status invalid = cuda ? HL_ERR_INVALID_ARGUMENT : HL_ERR_UNSUPPORTED;
  const size_t ws = sizeof workspace;
  struct Case {
    const char* what;
    hl_status got;
  } cases[] = {
      {"uniform cuda: unknown dtype",
       hl_uniform_lse_cuda(bad_dtype, HL_PRECISION_IEEE, am, bm, 2.0, 1, out, nullptr, nullptr, workspace, ws, nullptr)},
      {"uniform cuda: workspace of 16 bytes",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, bm, 2.0, 1, out, a, b, workspace, 16, nullptr)},
      {"uniform cuda: workspace one byte short",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, bm, 2.0, 1, out, a, b, workspace,
                           uniform_bytes ? uniform_bytes - 1 : 0, nullptr)},
      {"uniform cuda: misaligned workspace",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, bm, 2.0, 1, out, a, b, workspace + 8, ws - 8, nullptr)},
      {"uniform cuda: no workspace",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, bm, 2.0, 1, out, a, b, nullptr, ws, nullptr)},
      {"uniform cuda: unknown precision",
       hl_uniform_lse_cuda(HL_FLOAT32, static_cast<hl_precision>(9), am, bm, 2.0, 1, out, nullptr, nullptr, workspace,
                           ws, nullptr)},
      {"uniform cuda: t < 0",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, bm, -2.0, 1, out, nullptr, nullptr, workspace, ws,
                           nullptr)},
      {"uniform cuda: t = NaN",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, bm, NAN, 1, out, nullptr, nullptr, workspace, ws,
                           nullptr)},
      {"uniform cuda: no pairs",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, none, 2.0, 0, out, nullptr, nullptr, workspace, ws,
                           nullptr)},
      {"uniform cuda: one row, no queue",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, hl_matrix{a, 1, 8, 8, 1}, none, 2.0, 1, out, nullptr,
                           nullptr, workspace, ws, nullptr)},
      {"uniform cuda: queue width",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, hl_matrix{b, 5, 7, 7, 1}, 2.0, 1, out, nullptr, nullptr,
                           workspace, ws, nullptr)},
      {"uniform cuda: no lse_out",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, am, bm, 2.0, 1, nullptr, nullptr, nullptr, workspace, ws,
                           nullptr)},
      {"uniform cuda: overflowing shape",
       hl_uniform_lse_cuda(HL_FLOAT32, HL_PRECISION_IEEE, hl_matrix{a, big, 1 << 10, 1 << 10, 1}, none, 2.0, 1, out,
                           nullptr, nullptr, workspace, ws, nullptr)},
      {"align cuda: unknown dtype",
       hl_align_cuda(bad_dtype, am, am, 2.0, out, nullptr, nullptr, workspace, ws, nullptr)},
      {"align cuda: workspace of 0 bytes", hl_align_cuda(HL_FLOAT32, am, am, 2.0, out, a, a, workspace, 0, nullptr)},
      {"align cuda: no workspace", hl_align_cuda(HL_FLOAT32, am, am, 2.0, out, a, a, nullptr, ws, nullptr)},
      {"align cuda: alpha = 0", hl_align_cuda(HL_FLOAT32, am, am, 0.0, out, a, a, workspace, ws, nullptr)},
      {"align cuda: shapes differ",
       hl_align_cuda(HL_FLOAT32, am, hl_matrix{a, 9, 8, 8, 1}, 2.0, out, a, a, workspace, ws, nullptr)},
      {"align cuda: no loss_out", hl_align_cuda(HL_FLOAT32, am, am, 2.0, nullptr, a, a, workspace, ws, nullptr)},
  };
  for (const Case& c : cases)
    if (c.got != invalid) {
      std::printf("FAIL %s: %s, want %s\n", c.what, hl_status_string(c.got), hl_status_string(invalid));
      ++failures;
    }
}

// The center rule (../center.h): the sampled rows are distinct, ascending, within range, floor(k total / size)
// plus the jitter; the bitonic network (the CUDA kernel's sort) sorts as std::sort does, and the CPU kernel's
// selection gives the midhinge of the sorted values.
static void check_center_rule() {
  for (int64_t total : {int64_t{1}, int64_t{2}, int64_t{1022}, int64_t{1023}, int64_t{1024}, int64_t{3069},
                        int64_t{5000}, int64_t{1} << 40, std::numeric_limits<int64_t>::max() / 64}) {
    const int64_t size = hyperloss::center_sample_size(total);
    EXPECT(size == std::min<int64_t>(total, hyperloss::kCenterSampleRows), "center sample size");
    int64_t previous = -1;
    for (int64_t k = 0; k < size; ++k) {
      const int64_t row = hyperloss::center_sample_row(k, size, total);
      EXPECT(row > previous && row < total, "center sample rows ascending, within range");
      const __int128 base = static_cast<__int128>(k) * total / size;
      EXPECT(row == static_cast<int64_t>(base + static_cast<__int128>(k) * hyperloss::kCenterJitter % (total / size)),
             "center sample row value");
      previous = row;
    }
  }
  std::mt19937 rng(7);
  for (int64_t size : {1, 2, 3, 4, 10, 1023}) {
    double values[hyperloss::kCenterSortSize];
    for (int k = 0; k < hyperloss::kCenterSortSize; ++k) values[k] = k < size ? double(rng() % 5) : INFINITY;
    std::vector<double> want(values, values + hyperloss::kCenterSortSize);
    std::sort(want.begin(), want.end());
    for (int len = 2; len <= hyperloss::kCenterSortSize; len <<= 1)
      for (int stride = len >> 1; stride > 0; stride >>= 1)
        for (int i = 0; i < hyperloss::kCenterSortSize; ++i) hyperloss::bitonic_step(values, len, stride, i);
    EXPECT(std::equal(want.begin(), want.end(), values), "bitonic network sorts");
    EXPECT(hyperloss::center_low_rank(size) <= hyperloss::center_high_rank(size) &&
               hyperloss::center_high_rank(size) < size,
           "quartile ranks");
    // The CPU kernel's selection gives the midhinge of the sorted values (distinct values: no tie hides a swap).
    std::vector<double> distinct(size);
    for (int64_t k = 0; k < size; ++k) distinct[k] = static_cast<double>(k) * 7.0 - static_cast<double>(size);
    std::shuffle(distinct.begin(), distinct.end(), rng);
    std::vector<double> sorted = distinct;
    std::sort(sorted.begin(), sorted.end());
    const double want_center = 0.5 * sorted[hyperloss::center_low_rank(size)] +
                               0.5 * sorted[hyperloss::center_high_rank(size)];
    EXPECT(hyperloss::midhinge_by_selection(distinct.data(), size) == want_center, "midhinge by selection");
  }
}

// One row of norm 1e6 among unit rows: the outlier must not move the center away from the others (a mean center
// gave lse -1.1 for -3.5 in float32, and gradients 33% off). As a batch and split into a batch and a queue.
template <typename T>
static void check_outlier() {
  const hl_dtype dtype = sizeof(T) == 4 ? HL_FLOAT32 : HL_FLOAT64;
  constexpr int64_t n = 256, d = 16;
  std::mt19937 rng(11);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<T> rows(n * d);
  for (int64_t r = 0; r < n; ++r) {
    double v[d], norm = 0;
    for (double& e : v) norm += (e = normal(rng)) * e;
    for (int64_t c = 0; c < d; ++c) rows[r * d + c] = static_cast<T>(v[c] / std::sqrt(norm) * (r == 0 ? 1e6 : 1.0));
  }
  const std::vector<double> wide(rows.begin(), rows.end());
  for (int64_t na : {n, int64_t{64}}) {  // na < n: the first na rows against the others as a queue
    const int64_t nb = n - na;
    const std::vector<double> a(wide.begin(), wide.begin() + na * d), b(wide.begin() + na * d, wide.end());
    std::vector<double> ga_ref, gb_ref;
    const double want = reference_lse(a, na, b, nb, d, 2.0, true, ga_ref, gb_ref);
    std::vector<T> ga(na * d), gb(nb * d);
    const hl_matrix am{rows.data(), na, d, d, 1}, bm{nb ? rows.data() + na * d : nullptr, nb, d, d, 1};
    double lse = 0;
    EXPECT(hl_uniform_lse_cpu(dtype, am, bm, 2.0, 1, 0, &lse, ga.data(), nb ? gb.data() : nullptr) == HL_OK,
           "outlier: status");
    char what[96];
    std::snprintf(what, sizeof what, "outlier, %s, queue of %lld: lse", sizeof(T) == 4 ? "float32" : "float64",
                  (long long)nb);
    CHECK_CLOSE(lse, want, 1e-5, what);
    double gmax = 0;
    for (double g : ga_ref) gmax = std::fmax(gmax, std::fabs(g));
    for (double g : gb_ref) gmax = std::fmax(gmax, std::fabs(g));
    for (size_t k = 0; k < ga.size(); ++k) CHECK_CLOSE(ga[k] / gmax, ga_ref[k] / gmax, 1e-4, what);
    for (size_t k = 0; k < gb.size(); ++k) CHECK_CLOSE(gb[k] / gmax, gb_ref[k] / gmax, 1e-4, what);
  }
}

int main() {
  for (bool intra : {true, false})
    for (int64_t nb : {0, 37}) {
      if (!intra && nb == 0) continue;
      check_uniform<double>(2, nb, 1, 2.0, intra, 1.0, 1e-11);
      check_uniform<double>(130, nb, 33, 2.0, intra, 0.2, 1e-11);
      check_uniform<float>(130, nb, 33, 2.0, intra, 0.2, 2e-5);
      check_uniform<double>(77, nb, 5, 200.0, intra, 1.0, 1e-10);  // every exp(s) underflows in double
      check_uniform<float>(77, nb, 5, 50.0, intra, 1.0, 1e-5);  // ... and in float
    }
  for (double alpha : {2.0, 0.7, 3.5}) {
    check_align<double>(50, 7, alpha, 1e-12);
    check_align<float>(50, 7, alpha, 1e-5);
    check_align<double>(3000, 40, alpha, 1e-12);  // many chunks of rows: the threaded path
    check_align<float>(3000, 40, alpha, 1e-5);
  }
  check_align_streaming<float>();
  check_align_streaming<double>();
  for (const char* pattern : {"random", "zeros", "one pair", "huge", "null"})
    for (bool intra : {true, false}) {
      const int64_t nb = intra ? 0 : 37;
      check_weighted<double>(150, nb, 9, 2.0, intra, pattern, 1e-10);
      check_weighted<float>(150, nb, 9, 2.0, intra, pattern, 5e-5);
      check_weighted<double>(150, 29, 9, 50.0, intra, pattern, 1e-9);  // t = 50: underflow next to the closest pair
      check_weighted<float>(150, 29, 9, 50.0, intra, pattern, 2e-4);
    }
  check_weighted_errors();
  check_errors();
  check_thread_counts();
  check_common_offset<float>();
  check_common_offset<double>();
  check_center_rule();
  check_outlier<float>();
  check_outlier<double>();
  check_thread_reproducible<float>();
  check_thread_reproducible<double>();
  check_long_rows();
  check_cuda_arguments();
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
