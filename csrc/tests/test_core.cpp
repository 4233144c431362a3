// C++ unit tests of the C API against direct double-precision sums over every pair.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "hyperloss/hyperloss.h"

static int failures = 0;
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

static void check_align(int64_t n, int64_t d, double alpha) {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal;
  std::vector<double> x(n * d), y(n * d), g(n * d);
  for (auto& v : x) v = normal(rng);
  for (auto& v : y) v = normal(rng);
  double want = 0;
  for (int64_t r = 0; r < n; ++r) {
    double d2 = 0;
    for (int64_t c = 0; c < d; ++c) d2 += (x[r * d + c] - y[r * d + c]) * (x[r * d + c] - y[r * d + c]);
    want += std::pow(std::sqrt(d2), alpha) / n;
  }
  double loss = 0;
  hl_align_cpu(HL_FLOAT64, hl_matrix{x.data(), n, d, d, 1}, hl_matrix{y.data(), n, d, d, 1}, alpha, 0, &loss,
               g.data());
  CHECK_CLOSE(loss, want, 1e-12, "align loss");
  // Central difference on one coordinate.
  const double h = 1e-6;
  auto loss_at = [&](double delta) {
    std::vector<double> xp = x;
    xp[0] += delta;
    double l = 0;
    hl_align_cpu(HL_FLOAT64, hl_matrix{xp.data(), n, d, d, 1}, hl_matrix{y.data(), n, d, d, 1}, alpha, 0, &l, nullptr);
    return l;
  };
  CHECK_CLOSE(g[0], (loss_at(h) - loss_at(-h)) / (2 * h), 1e-6, "align grad");
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
  check_align(50, 7, 2.0);
  check_align(50, 7, 0.7);
  check_align(50, 7, 3.5);
  check_errors();
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
