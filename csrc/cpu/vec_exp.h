// Branch-free 2^y for float and double that compilers vectorize inside `#pragma omp simd` loops.
//
// 2^y = 2^n * 2^f with n = round(y), f = y - n (exact, |f| <= 1/2), and 2^f = e^(f ln 2) from its Taylor series
// in f (coefficients ln2^k / k!, |f ln 2| <= 0.347; degree 7 for float: error < 6e-9; degree 13 for double:
// < 5e-18), in Horner form: one FMA per degree. The callers fold ln 2 into their scale (e^s = 2^(s log2 e)), so
// there is no Cody-Waite reduction. Results below the smallest normal number flush to 0: in our sums each term is
// relative to a shift at most a few dozen e-folds above it, so such terms are far below one ulp of the total.
// NaN stays NaN.
//
// Included inside each instruction set's namespace by uniform_tile.inc (see tile_matmul.h).

template <typename T>
struct Exp2Traits;

template <>
struct Exp2Traits<float> {
  using Int = int32_t;
  static constexpr float kMin = -126.0f;  // 2^-126 is FLT_MIN
  static constexpr float kMax = 127.0f;
  static constexpr int kMantissaBits = 23;
  static constexpr int kBias = 127;
  static constexpr int kDegree = 7;
};

template <>
struct Exp2Traits<double> {
  using Int = int64_t;
  static constexpr double kMin = -1022.0;
  static constexpr double kMax = 1023.0;
  static constexpr int kMantissaBits = 52;
  static constexpr int kBias = 1023;
  static constexpr int kDegree = 13;
};

constexpr double kLog2E = 1.4426950408889634;  // log2(e): e^s = 2^(s log2 e)

// ln2^k / k!, in double, rounded once to T.
template <typename T, int k>
constexpr T exp2_coefficient() {
  double c = 1;
  for (int i = 1; i <= k; ++i) c = c * 0.6931471805599453 / i;
  return static_cast<T>(c);
}

// sum_{k <= degree} ln2^k / k! f^k, Horner from the highest degree down.
template <typename T, int k, int degree>
__attribute__((always_inline)) inline T exp2_series(T f) {
  if constexpr (k == degree) {
    return exp2_coefficient<T, k>();
  } else {
    return exp2_series<T, k + 1, degree>(f) * f + exp2_coefficient<T, k>();
  }
}

// round(x) to the nearest integer (ties to even) for |x| < 2^(mantissa bits - 1): adding and subtracting
// 1.5 * 2^(mantissa bits) drops the fraction in the rounding of the sum. Two adds on every instruction set (SSE2
// has no vector floor).
template <typename T>
__attribute__((always_inline)) inline T round_of(T x) {
  const T magic = T(1.5) * T(typename Exp2Traits<T>::Int(1) << Exp2Traits<T>::kMantissaBits);
  return (x + magic) - magic;
}

// 2^y for a scalar T.
template <typename T>
__attribute__((always_inline)) inline T vec_exp2(T y) {
  using Tr = Exp2Traits<T>;
  using Int = typename Tr::Int;
  // Local copies: a conditional over the static members themselves would select between their addresses.
  const T lo = Tr::kMin, hi = Tr::kMax;
  const T clamped = y < lo ? lo : (y > hi ? hi : y);
  const T n = round_of(clamped);
  const T p = exp2_series<T, 0, Tr::kDegree>(clamped - n);
  const Int bits = (static_cast<Int>(n) + Tr::kBias) << Tr::kMantissaBits;
  T result = p * __builtin_bit_cast(T, bits);
  result = y < lo ? T(0) : result;
  result = y > hi ? T(__builtin_inf()) : result;
  return y != y ? y : result;
}
