// Branch-free exp for float and double that compilers vectorize inside `#pragma omp simd` loops.
//
// exp(x) = 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 (Cody-Waite split, |r| <= ln2 / 2), and e^r from a
// Taylor polynomial (degree 7 for float: error < 5e-9; degree 13 for double: < 2e-16). Results below the smallest
// normal number flush to 0: in our sums each term is relative to a shift at most a few dozen e-folds above it, so
// such terms are far below one ulp of the total. NaN stays NaN.
//
// Included inside each instruction set's namespace by uniform_tile.inc (see tile_matmul.h).

template <typename T>
struct ExpTraits;

template <>
struct ExpTraits<float> {
  using Int = int32_t;
  static constexpr float kMin = -87.0f;  // e^-87 is just above FLT_MIN
  static constexpr float kMax = 88.0f;
  static constexpr int kMantissaBits = 23;
  static constexpr int kBias = 127;
  static constexpr float kLn2Hi = 0.693145751953125f;
  static constexpr float kLn2Lo = 1.428606765330187e-06f;
  static constexpr int kDegree = 7;
};

template <>
struct ExpTraits<double> {
  using Int = int64_t;
  static constexpr double kMin = -708.0;
  static constexpr double kMax = 709.0;
  static constexpr int kMantissaBits = 52;
  static constexpr int kBias = 1023;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr int kDegree = 13;
};

// 1 + r/k (1 + r/(k+1) (1 + ... r/degree)): the Taylor series of e^r in Horner form, unrolled at compile time.
template <typename T, int k, int degree>
__attribute__((always_inline)) inline T taylor_exp(T r) {
  if constexpr (k > degree) {
    return T(1);
  } else {
    return T(1) + r * (T(1) / T(k)) * taylor_exp<T, k + 1, degree>(r);
  }
}

__attribute__((always_inline)) inline float floor_of(float x) { return __builtin_floorf(x); }
__attribute__((always_inline)) inline double floor_of(double x) { return __builtin_floor(x); }

template <typename T>
__attribute__((always_inline)) inline T vec_exp(T x) {
  using Tr = ExpTraits<T>;
  using Int = typename Tr::Int;
  // Local copies: a conditional over the static members themselves would select between their addresses.
  const T lo = Tr::kMin, hi = Tr::kMax;
  const T clamped = x < lo ? lo : (x > hi ? hi : x);
  const T n = floor_of(clamped * T(1.4426950408889634) + T(0.5));
  const T r = (clamped - n * Tr::kLn2Hi) - n * Tr::kLn2Lo;
  // Horner form of sum_{k <= degree} r^k / k!
  const T p = taylor_exp<T, 1, Tr::kDegree>(r);
  const Int bits = (static_cast<Int>(n) + Tr::kBias) << Tr::kMantissaBits;
  const T scale = __builtin_bit_cast(T, bits);
  T result = p * scale;
  result = x < lo ? T(0) : result;
  result = x > hi ? T(__builtin_inf()) : result;
  return x != x ? x : result;
}
