// Uniformity log-sum-exp and gradient on the CPU: one pass over the pair tiles, no N x N buffer, deterministic.
//
// Math. The rows are first centered and scaled by a power of two, x' = (x - c) 2^-E: translating every row leaves
// every distance unchanged, so the Gram form below cancels only on the spread of the rows around c (quartiles that
// outliers do not move: ../center.h), not on their common offset, and no norm overflows or underflows. With
// t' = t 4^E, for a pair (i, j):
//   d_ij = max(n_i + n_j - 2 x'_i . x'_j, 0),   s_ij = -t' d_ij,   lse = log sum_pairs exp(s_ij)
//   d lse / d x_i = -2t 2^E / Z * (w_i x'_i - sum_j e_ij x'_j),   e_ij = exp(s_ij),  w_i = sum_j e_ij,  Z = sum e
// Inside a 64 x 64 tile of pairs the exponentials are taken relative to the tile's largest score M = -t' min d:
// e = exp(-t' (d - min d)). No score is ever formed in the input precision (t' d may lie far outside it) and the
// largest term is exactly 1. Each 64-row block keeps its sums (w, sum_j e x'_j, the pair total) relative to a shift
// of its own, raised to a tile's M only when M passes it by kRescaleMargin e-folds: an exact log-sum-exp even where
// every exp(s) underflows, and every pair's exponential is computed once and feeds both of its rows.
//
// Per-row weights (hl_uniform_lse_weighted_cpu): lse = log sum_pairs w_i w_j exp(s_ij). The weights are scaled by a
// power of two c (exact; the largest in [0.5, 1)) and enter as log-weights b = log2(c w) <= 0, so a pair's score is
// s_ij + (b_i + b_j) ln 2, never above its unweighted one. A tile's shift is then its largest weighted score, not
// -t' min d (whose pair may weigh 0: with t = 50 every weighted term could underflow next to it), with the
// exponents formed in double. The sums of the x gradient take the weighted e (a row of weight 0 gets 0), and
// d lse / dw_i = r_i / S with r_i = sum over i's partners of w_j exp(s_ij): the row's own weight left out, so it is
// summed per row relative to a shift of its own (a row of weight 0 may lie far nearer its partners than any pair
// of positive weight does), merged across tiles as a log-sum-exp.
//
// Tiles are scheduled in rounds in which no two tiles touch the same block (a round-robin tournament over the
// blocks), and a tile starts only once the earlier tiles of its blocks are done. So the threads add into shared
// per-block sums without atomics or private copies (memory stays O(N D): the sums of sum_j e x'_j live in the
// caller's gradient buffers), and each block receives its terms in the same order whatever the number of threads:
// results are bitwise reproducible.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#include "../args.h"
#include "../center.h"
#include "hyperloss/hyperloss.h"
#include "page_buffer.h"
#include "threads.h"
#include "tile_kernels.h"

namespace hyperloss::cpu {
namespace {

constexpr double kRescaleMargin = 16.0;  // e-folds a tile's maximum may exceed a block's shift before rescaling
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLog2E = 1.4426950408889634;  // log2(e)
constexpr double kLn2 = 0.6931471805599453;    // ln(2)

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// x * 2^-e, exact: a multiplication where 2^-e is a normal double (the usual case), else ldexp.
struct PowerOfTwoScale {
  int exponent;
  double factor;
  bool multiply;
  explicit PowerOfTwoScale(int e) : exponent(e), factor(std::ldexp(1.0, -e)), multiply(e > -1000 && e < 1000) {}
  double operator()(double v) const { return multiply ? v * factor : std::ldexp(v, -exponent); }
};

int exponent_of(double magnitude) {  // e with magnitude * 2^-e in [0.5, 1); 0 for 0
  int e = 0;
  if (magnitude > 0) std::frexp(magnitude, &e);
  return e;
}

// Rows of A then rows of B, read through their strides.
template <typename T>
struct Rows {
  hl_matrix a, b;
  int64_t count() const { return a.rows + (b.data ? b.rows : 0); }
  const hl_matrix& side(int64_t r) const { return r < a.rows ? a : b; }
  const T* row(int64_t r) const {
    const hl_matrix& m = side(r);
    return static_cast<const T*>(m.data) + (r < a.rows ? r : r - a.rows) * m.row_stride;
  }
};

// f(c, x[r][c]) for c in [c0, c0 + width), as a double; a unit-stride loop where the columns are contiguous.
template <typename T, typename F>
inline void for_each_in_row(const Rows<T>& in, int64_t r, int64_t c0, int64_t width, F&& f) {
  const T* p = in.row(r);
  const int64_t stride = in.side(r).col_stride;
  if (stride == 1) {
    for (int64_t c = c0; c < c0 + width; ++c) f(c, static_cast<double>(p[c]));
  } else {
    for (int64_t c = c0; c < c0 + width; ++c) f(c, static_cast<double>(p[c * stride]));
  }
}

// Below this many elements the passes over the input run on one thread: forking costs more than they do.
constexpr int64_t kParallelElements = 1 << 15;
// From this many blocks on, the blocks are transposed once for the call (one more copy of the prepared rows) rather
// than in every tile: with fewer, each block is the j side of at most one or two tiles, and the copy's padding to
// whole blocks would cost more memory than the rows (N = 2 rows of 4e6 columns).
constexpr size_t kPanelBlocks = 3;

// Both sides of the pair set, centered, scaled and packed: x' = (x - c) 2^-exponent, padded_cols wide (zeros).
template <typename T>
struct Prepared {
  int64_t rows = 0, cols = 0, padded_cols = 0;
  PageBuffer<T> data;       // rows x padded_cols
  PageBuffer<T> sq_norms;   // rows, then kTile zeros (whole tiles may be read)
  int exponent = 0;
  bool finite = true;
  const T* row(int64_t r) const { return data.data() + r * padded_cols; }
};

// T: the prepared rows' type; Tin: the input's (float inputs are prepared as double for uniform_lse_wide).
template <typename T, typename Tin = T>
Prepared<T> prepare(const Rows<Tin>& in, int64_t cols, int threads) {
  Prepared<T> out;
  const int64_t n = in.count();
  out.rows = n;
  out.cols = cols;
  out.padded_cols = round_up(cols, 64 / static_cast<int64_t>(sizeof(T)));  // whole 64-byte column blocks

  // 1. Finite check and the largest magnitude, for a first scale that keeps the centering below from overflowing.
  double max_abs = 0;
  bool finite = true;
  const bool parallel = n * cols >= kParallelElements;
#pragma omp parallel for num_threads(threads) if (parallel) reduction(max : max_abs) reduction(&& : finite)
  for (int64_t r = 0; r < n; ++r) {
    double row_max = 0;  // NaN compares false: caught by the finite test
    bool row_finite = true;
    for_each_in_row(in, r, 0, cols, [&](int64_t, double v) {
      row_finite = row_finite && std::isfinite(v);
      row_max = std::max(row_max, std::abs(v));
    });
    finite = finite && row_finite;
    max_abs = std::max(max_abs, row_max);
  }
  out.finite = finite;
  if (!finite) return out;
  const PowerOfTwoScale first(exponent_of(max_abs));

  // 2. Center (../center.h): per block of columns, the midhinge of the sampled rows' scaled values, then the
  //    centered values written straight into the packed rows. |x 2^-e1 - c| <= 2: no overflow in T.
  out.data = PageBuffer<T>(static_cast<size_t>(n * out.padded_cols));
  out.sq_norms = PageBuffer<T>(static_cast<size_t>(n + kTile));
  constexpr int64_t kCenterCols = 16;
  const int64_t sample = center_sample_size(n);
  double max_dev = 0;
#pragma omp parallel for num_threads(threads) if (parallel) schedule(static) reduction(max : max_dev)
  for (int64_t c0 = 0; c0 < cols; c0 += kCenterCols) {
    const int64_t width = std::min(kCenterCols, cols - c0);
    double center[kCenterCols] = {};
    std::vector<double> values(static_cast<size_t>(sample * width));  // column c's sample at (c - c0) * sample
    for (int64_t k = 0; k < sample; ++k)
      for_each_in_row(in, center_sample_row(k, sample, n), c0, width,
                      [&](int64_t c, double v) { values[(c - c0) * sample + k] = first(v); });
    for (int64_t c = 0; c < width; ++c) center[c] = midhinge_by_selection(values.data() + c * sample, sample);
    double block_max = 0;
    for (int64_t r = 0; r < n; ++r) {
      T* dst = out.data.data() + r * out.padded_cols;
      for_each_in_row(in, r, c0, width, [&](int64_t c, double v) {
        const T centered = static_cast<T>(first(v) - center[c - c0]);
        dst[c] = centered;
        block_max = std::max(block_max, std::abs(static_cast<double>(centered)));
      });
    }
    max_dev = std::max(max_dev, block_max);
  }

  // 3. Scale by a power of two so that the largest magnitude is ~1 (exact), and take squared norms in double.
  const int second_exponent = exponent_of(max_dev);
  out.exponent = first.exponent + second_exponent;
  const PowerOfTwoScale second(second_exponent);
#pragma omp parallel for num_threads(threads) if (parallel) schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    T* row = out.data.data() + r * out.padded_cols;
    double norm = 0;
    if (second.multiply) {
      for (int64_t c = 0; c < cols; ++c) {
        row[c] = static_cast<T>(row[c] * second.factor);
        norm += static_cast<double>(row[c]) * row[c];
      }
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        row[c] = static_cast<T>(second(row[c]));
        norm += static_cast<double>(row[c]) * row[c];
      }
    }
    out.sq_norms[r] = static_cast<T>(norm);
  }
  return out;
}

// A 64-row block of one side: rows [start, start + rows) of the prepared rows.
struct Block {
  int64_t start, rows;
  bool side_b;
};

// Per-block running sums, relative to `shift`: the pair total (blocks on the i side of their tiles) and, in the
// gradient buffers and `weights`, sum_j e_ij x'_j and w_i for each row.
struct BlockSums {
  double shift = -kInf;      // the block's reference score
  double max_score = -kInf;  // the largest score of a pair whose i side is this block
  double total = 0;          // sum of exp(s - shift) over those pairs
};

struct Tile {
  int32_t i, j;  // block indices; i == j: the pairs j > i within one block
};

// Consecutive blocks of one side, scheduled together: a thread runs all the tiles between two groups in a row, so
// that each block is read from memory once for up to 4 tiles (group_blocks) and then comes from the core's cache
// (tiles spread over N = 8192 rows one by one spend ~30% of their time waiting for memory).
struct Group {
  int32_t first, count;  // blocks [first, first + count)
};

// Blocks per group: from the number of A blocks only, never the thread count, so that every block's sums are
// taken in one order whatever the number of threads; small inputs keep single blocks to have enough groups to
// share among the threads.
int32_t group_blocks(int64_t a_blocks) { return a_blocks >= 128 ? 4 : a_blocks >= 32 ? 2 : 1; }

// The tiles between groups of blocks (see Group; below "block" means group) in rounds such that no block appears
// twice in a round, computed on demand (N = 10^6 rows make 1.3e8 tiles: too many to list).
//   Intra pairs among the a_blocks blocks of A: one round of diagonal tiles, then the circle method (block n - 1
//   fixed, the others rotating; n = a_blocks rounded up to even, a bye where n - 1 is not a block): n - 1 rounds
//   in which round r pairs r with n - 1 and (r + k) with (r - k) mod (n - 1), k = 1 .. n/2 - 1.
//   Cross pairs, A blocks x B blocks: a Latin square, max(a, b) rounds of min(a, b) tiles, A block u meeting B
//   block (u + r) mod b in round r (or the reverse when A has more blocks).
class Schedule {
 public:
  Schedule(int64_t a_blocks, int64_t b_blocks, bool intra, bool cross)
      : a_(a_blocks), b_(b_blocks), circle_(a_blocks + a_blocks % 2),
        intra_rounds_(intra ? circle_ : 0), cross_rounds_(cross ? std::max(a_blocks, b_blocks) : 0) {}

  int64_t rounds() const { return intra_rounds_ + cross_rounds_; }

  int64_t tiles_in(int64_t round) const {
    if (round < intra_rounds_) return round == 0 ? a_ : circle_ / 2 - (has_bye() ? 1 : 0);
    return std::min(a_, b_);
  }

  Tile tile(int64_t round, int64_t k) const {
    if (round >= intra_rounds_) {
      const int64_t r = round - intra_rounds_;
      if (a_ <= b_) return {static_cast<int32_t>(k), static_cast<int32_t>(a_ + (k + r) % b_)};
      return {static_cast<int32_t>((k + r) % a_), static_cast<int32_t>(a_ + k)};
    }
    if (round == 0) return {static_cast<int32_t>(k), static_cast<int32_t>(k)};
    const int64_t r = round - 1, m = circle_ - 1;
    if (!has_bye() && k == 0) return {static_cast<int32_t>(r), static_cast<int32_t>(m)};
    const int64_t step = has_bye() ? k + 1 : k;
    const int64_t u = (r + step) % m, v = (r - step + m) % m;
    return {static_cast<int32_t>(std::min(u, v)), static_cast<int32_t>(std::max(u, v))};
  }

 private:
  bool has_bye() const { return circle_ != a_; }  // an odd number of blocks: the fixed one is a bye

  int64_t a_, b_, circle_, intra_rounds_, cross_rounds_;
};

// Hands out the scheduled tiles in schedule order, with no barrier between rounds: a tile waits only for the earlier
// tiles of its own two groups, so each group's tiles still run one at a time and in schedule order (the order in
// which its blocks receive their terms). A barrier per round would have every thread wait for the slowest tile of
// the round, and on shared cores spin there while a descheduled thread finishes it; here the others go on.
// Progress: the earliest unfinished tile depends only on finished ones.
class TileQueue {
 public:
  struct Claim {
    Tile tile;
    int64_t sequence;       // position in the schedule
    int64_t after_i, after_j;  // the sequence of each group's previous tile (-1: none)
  };

  TileQueue(const Schedule& schedule, size_t groups)
      : schedule_(schedule), last_claimed_(groups, -1), done_(new std::atomic<int64_t>[groups]) {
    for (size_t g = 0; g < groups; ++g) done_[g].store(-1, std::memory_order_relaxed);
  }

  // The next tile in schedule order; false when every tile has been handed out.
  bool claim(Claim& out) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (round_ < schedule_.rounds() && index_ >= schedule_.tiles_in(round_)) {
      ++round_;
      index_ = 0;
    }
    if (round_ >= schedule_.rounds()) return false;
    out.tile = schedule_.tile(round_, index_++);
    out.sequence = sequence_++;
    out.after_i = last_claimed_[out.tile.i];
    last_claimed_[out.tile.i] = out.sequence;
    out.after_j = out.tile.j == out.tile.i ? out.after_i : last_claimed_[out.tile.j];
    last_claimed_[out.tile.j] = out.sequence;
    return true;
  }

  // Until the tile's groups have finished their previous tiles (whose writes are then visible).
  void wait(const Claim& claim) const {
    wait_for(claim.tile.i, claim.after_i);
    wait_for(claim.tile.j, claim.after_j);
  }

  void finish(const Claim& claim) {
    done_[claim.tile.i].store(claim.sequence, std::memory_order_release);
    done_[claim.tile.j].store(claim.sequence, std::memory_order_release);
  }

 private:
  void wait_for(int32_t group, int64_t sequence) const {
    // A short spin (the tile ahead is usually about to finish), then give the core away: it may be the one the
    // thread we wait for needs.
    for (int spins = 0; done_[group].load(std::memory_order_acquire) < sequence; ++spins)
      if (spins >= 256) std::this_thread::yield();
  }

  const Schedule& schedule_;
  std::mutex mutex_;
  int64_t round_ = 0, index_ = 0, sequence_ = 0;
  std::vector<int64_t> last_claimed_;              // per group, guarded by mutex_
  std::unique_ptr<std::atomic<int64_t>[]> done_;  // per group: the sequence of its last finished tile
};

// Per-row weights as the kernel takes them: log2 of the weights scaled by 2^-exponent (<= 0, -inf for 0), for the
// prepared rows (A's, then B's); which sides want d lse / dw.
struct RowBiases {
  std::vector<double> log2_weights;
  int exponent = 0;  // the weights were scaled by 2^-exponent
  bool grad_a = false, grad_b = false;
};

template <typename T>
class UniformKernel {
 public:
  UniformKernel(const Prepared<T>& x, int64_t rows_a, bool intra, bool cross, double t, T* grad_a, T* grad_b,
                int threads, const RowBiases* biases = nullptr)
      : x_(x), rows_a_(rows_a), grad_a_(grad_a), grad_b_(grad_b), threads_(threads), biases_(biases),
        t_scaled_(std::ldexp(t, 2 * x.exponent)),
        t_log2e_c_(t_scaled_ * kLog2E > std::numeric_limits<T>::max() ? std::numeric_limits<T>::infinity()
                                                                       : static_cast<T>(t_scaled_ * kLog2E)) {
    const auto add_blocks = [&](int64_t start, int64_t count, bool side_b) {
      for (int64_t r = 0; r < count; r += kTile) blocks_.push_back({start + r, std::min(kTile, count - r), side_b});
    };
    add_blocks(0, rows_a, false);
    const int32_t a_blocks = static_cast<int32_t>(blocks_.size());
    add_blocks(rows_a, x.rows - rows_a, true);
    const int32_t b_blocks = static_cast<int32_t>(blocks_.size()) - a_blocks;
    const int32_t per_group = group_blocks(a_blocks);
    const auto add_groups = [&](int32_t first, int32_t count) {
      for (int32_t b = 0; b < count; b += per_group) groups_.push_back({first + b, std::min(per_group, count - b)});
    };
    add_groups(0, a_blocks);
    const int32_t a_groups = static_cast<int32_t>(groups_.size());
    add_groups(a_blocks, b_blocks);
    schedule_ = Schedule(a_groups, static_cast<int32_t>(groups_.size()) - a_groups, intra, cross);
    sums_.resize(blocks_.size());
    if (grad_a_ || grad_b_) weights_.assign(x.rows, 0.0);
    if (biases_ != nullptr && (biases_->grad_a || biases_->grad_b)) {
      partner_shift_.assign(x.rows, -kInf);
      partner_sum_.assign(x.rows, 0.0);
    }
    if (blocks_.size() >= kPanelBlocks) transpose_blocks();
  }

  // Runs every tile; returns lse (clamped to its bound: log mean exp(s) <= max s).
  double run(double log_pairs) {
    if (grad_a_) std::fill(grad_a_, grad_a_ + rows_a_ * x_.cols, T(0));
    if (grad_b_) std::fill(grad_b_, grad_b_ + (x_.rows - rows_a_) * x_.cols, T(0));
    const int64_t scratch_size = kTile * kTile + kDepthChunk * kTile;
    // Each thread's scratch on whole cache lines (scratch_size is a multiple of 64 bytes).
    PageBuffer<T> scratch(static_cast<size_t>(threads_) * scratch_size);
    PageBuffer<double> gram_scratch(needs_double_gram() ? static_cast<size_t>(threads_) * kTile * kTile : 0);
    TileQueue queue(schedule_, groups_.size());
#pragma omp parallel num_threads(threads_)
    {
      const int me = omp_get_thread_num();
      T* e = scratch.data() + me * scratch_size;
      const TileScratch<T> mine{e, e + kTile * kTile,
                                needs_double_gram() ? gram_scratch.data() + me * kTile * kTile : nullptr};
      TileQueue::Claim claim;
      while (queue.claim(claim)) {
        queue.wait(claim);
        process_groups(claim.tile, mine);
        queue.finish(claim);
      }
    }
    double shift = -kInf, max_score = -kInf;
    for (const BlockSums& s : sums_) {
      shift = std::max(shift, s.shift);
      max_score = std::max(max_score, s.max_score);
    }
    if (shift == -kInf) return -kInf;  // every score overflowed to -inf: the loss is below the double range
    double total = 0;
    for (const BlockSums& s : sums_) total += s.total * std::exp(s.shift - shift);
    return std::min(shift + std::log(total), max_score + log_pairs);
  }

  // d lse / dw_r = r_r / S for the rows of A (into grad_a) and of B (grad_b), where wanted; lse is the kernel's
  // (of the scaled weights: d/dw = 2^-exponent d/d(scaled w)).
  void weight_gradients(double lse, double* grad_a, double* grad_b) const {
    for (int64_t r = 0; r < x_.rows; ++r) {
      double* out = r < rows_a_ ? grad_a : grad_b;
      if (out == nullptr) continue;
      // exp(arg) may overflow where 2^-exponent brings the product back into range (weights 1e300 and 1e-300 side
      // by side): a power of two m of it goes to the ldexp.
      const double arg = partner_shift_[r] - lse;
      const int m = arg > 700 ? static_cast<int>(arg / kLn2) : 0;
      const double g = partner_sum_[r] == 0 ? 0.0 : partner_sum_[r] * std::exp(arg - m * kLn2);
      out[r < rows_a_ ? r : r - rows_a_] = std::ldexp(g, m - biases_->exponent);
    }
  }

  // d lse / d x = -2t 2^E exp(shift_b - lse) (w_i x'_i - acc_i), in place in the gradient buffers.
  void finish_gradients(double t, double lse) {
    const double scale = -2.0 * std::ldexp(t, x_.exponent);
    const int64_t cols = x_.cols;
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (size_t b = 0; b < blocks_.size(); ++b) {
      T* acc = accumulator(blocks_[b]);
      if (acc == nullptr) continue;
      // In double: the coefficient may be beyond T's range where the bracket is 0 (identical rows, huge t).
      const double coef = scale * std::exp(sums_[b].shift - lse);
      for (int64_t i = 0; i < blocks_[b].rows; ++i) {
        const int64_t r = blocks_[b].start + i;
        const double w = weights_[r];
        const T* xr = x_.row(r);
        T* g = acc + i * cols;
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) {
          const double bracket = w * static_cast<double>(xr[c]) - static_cast<double>(g[c]);
          g[c] = static_cast<T>(bracket == 0 ? 0.0 : coef * bracket);
        }
      }
    }
  }

 private:
  static constexpr bool needs_double_gram_for_type() { return std::is_same_v<T, float>; }
  bool needs_double_gram() const { return needs_double_gram_for_type() && x_.padded_cols > kDepthChunk; }

  // The first row of `block` in its side's gradient buffer, where that side's gradient is wanted.
  T* accumulator(const Block& block) const {
    if (block.side_b) return grad_b_ ? grad_b_ + (block.start - rows_a_) * x_.cols : nullptr;
    return grad_a_ ? grad_a_ + block.start * x_.cols : nullptr;
  }

  // Brings block b's shift to at least `score` - kRescaleMargin; returns exp(score - shift), the factor for terms
  // computed relative to `score`.
  double raise_shift(int32_t b, double score) {
    BlockSums& s = sums_[b];
    if (score > s.shift + kRescaleMargin) {
      if (s.shift != -kInf) {  // before the first tile every sum is zero
        const double factor = std::exp(s.shift - score);
        s.total *= factor;
        const Block& block = blocks_[b];
        T* acc = accumulator(block);
        if (acc != nullptr) {
          for (int64_t i = 0; i < block.rows; ++i) weights_[block.start + i] *= factor;
          const T f = static_cast<T>(factor);
          for (int64_t q = 0; q < block.rows * x_.cols; ++q) acc[q] *= f;
        }
      }
      s.shift = score;
    }
    return std::exp(score - s.shift);
  }

  // Every tile between two groups (within one group when they are the same: its blocks' pairs i < j), in a fixed
  // order, each group's first block first.
  void process_groups(const Tile& groups, const TileScratch<T>& scratch) {
    const Group gi = groups_[groups.i], gj = groups_[groups.j];
    const bool within = groups.i == groups.j;
    for (int32_t i = gi.first; i < gi.first + gi.count; ++i)
      for (int32_t j = within ? i : gj.first; j < gj.first + gj.count; ++j) process(Tile{i, j}, scratch);
  }

  void process(const Tile& tile, const TileScratch<T>& scratch) {
    const Block& bi = blocks_[tile.i];
    const Block& bj = blocks_[tile.j];
    const bool diagonal = tile.i == tile.j;
    const TileView<T> view{x_.row(bi.start),
                           x_.row(bj.start),
                           panel(tile.j),
                           x_.sq_norms.data() + bi.start,
                           x_.sq_norms.data() + bj.start,
                           bi.rows,
                           bj.rows,
                           x_.padded_cols,
                           diagonal};
    const T d_min = kernels_.distances(view, scratch);
    if (d_min == std::numeric_limits<T>::infinity()) return;  // no pair in this tile (a one-row diagonal block)
    // The tile's largest score, in double: t' d may be far outside T's range.
    double tile_max = d_min == T(0) ? 0.0 : -(t_scaled_ * static_cast<double>(d_min));
    if (tile_max == -kInf) return;  // t' overflows double: these terms vanish next to any finite score
    T row_sums[kTile], col_sums[kTile];
    double tile_total;
    if (biases_ != nullptr) {
      const double* b = biases_->log2_weights.data();
      double top, row_top[kTile], row_part[kTile], col_top[kTile], col_part[kTile];
      const bool row_w = wants_weight_gradient(bi), col_w = wants_weight_gradient(bj);
      tile_total = kernels_.weighted_exponentials(view, scratch.e, d_min, t_scaled_ * kLog2E, b + bi.start,
                                                  b + bj.start, row_sums, col_sums, &top, row_top, row_part,
                                                  col_w ? col_top : nullptr, col_part);
      if (row_w) add_partners(bi, tile_max, row_top, row_part);
      if (col_w) add_partners(bj, tile_max, col_top, col_part);
      if (top == -kInf) return;  // no pair of positive weight here
      tile_max += top * kLn2;
    } else {
      tile_total = kernels_.exponentials(view, scratch.e, d_min, t_log2e_c_, row_sums, col_sums);
    }

    const double factor_i = raise_shift(tile.i, tile_max);
    BlockSums& si = sums_[tile.i];
    si.total += factor_i * tile_total;
    si.max_score = std::max(si.max_score, tile_max);
    const double factor_j = diagonal ? factor_i : raise_shift(tile.j, tile_max);
    const int64_t cols = x_.cols, pc = x_.padded_cols;
    // Row side: w_i += sum_j e_ij, acc_i += sum_j e_ij x'_j.  Column side: w_j += sum_i e_ij, acc_j += sum_i e_ij x'_i.
    if (T* acc = accumulator(bi)) {
      for (int64_t i = 0; i < bi.rows; ++i) weights_[bi.start + i] += factor_i * row_sums[i];
      kernels_.accumulate(bi.rows, cols, bj.rows, scratch.e, kTile, 1, view.xj, pc, acc, cols,
                          static_cast<T>(factor_i));
    }
    if (T* acc = accumulator(bj)) {
      for (int64_t j = 0; j < bj.rows; ++j) weights_[bj.start + j] += factor_j * col_sums[j];
      kernels_.accumulate(bj.rows, cols, bi.rows, scratch.e, 1, kTile, view.xi, pc, acc, cols,
                          static_cast<T>(factor_j));
    }
  }

  bool wants_weight_gradient(const Block& block) const {
    return biases_ != nullptr && (block.side_b ? biases_->grad_b : biases_->grad_a);
  }

  // Merges a tile's partner sums of the block's rows (relative to base + top[i] ln 2) into their running sums.
  void add_partners(const Block& block, double base, const double* top, const double* part) {
    for (int64_t i = 0; i < block.rows; ++i) {
      if (top[i] == -kInf) continue;
      const int64_t r = block.start + i;
      const double shift = base + top[i] * kLn2;
      if (shift > partner_shift_[r]) {
        partner_sum_[r] = partner_sum_[r] * std::exp(partner_shift_[r] - shift) + part[i];
        partner_shift_[r] = shift;
      } else {
        partner_sum_[r] += part[i] * std::exp(shift - partner_shift_[r]);
      }
    }
  }

  // Each block's rows transposed once, for the Gram products of every tile the block is the j side of (a block is
  // in about blocks / 2 of them): panels_[(b * padded_cols + c) * kTile + j] = x'[start_b + j][c], zero past the
  // block's rows.
  void transpose_blocks() {
    const int64_t pc = x_.padded_cols;
    panels_ = PageBuffer<T>(blocks_.size() * static_cast<size_t>(pc * kTile));
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (size_t b = 0; b < blocks_.size(); ++b) {
      T* panel = panels_.data() + b * pc * kTile;
      for (int64_t j = 0; j < blocks_[b].rows; ++j) {
        const T* row = x_.row(blocks_[b].start + j);
        for (int64_t c = 0; c < pc; ++c) panel[c * kTile + j] = row[c];
      }
    }
  }

  const T* panel(int32_t block) const {
    return panels_.data() == nullptr ? nullptr : panels_.data() + block * x_.padded_cols * kTile;
  }

  const Prepared<T>& x_;
  const TileKernels<T>& kernels_ = tile_kernels(T());
  int64_t rows_a_;
  T* grad_a_;
  T* grad_b_;
  int threads_;
  const RowBiases* biases_;  // per-row weights, or null
  double t_scaled_;  // t' = t 4^E
  T t_log2e_c_;      // t' log2(e) in T (inf where it is above T's range), for the tiles' exp2
  std::vector<Block> blocks_;
  std::vector<Group> groups_;
  Schedule schedule_{0, 0, false, false};
  std::vector<BlockSums> sums_;
  std::vector<double> weights_;  // w_i per prepared row
  std::vector<double> partner_shift_, partner_sum_;  // r_i = partner_sum exp(partner_shift), where wanted
  PageBuffer<T> panels_;         // see transpose_blocks (empty with few blocks: each tile transposes its own)
};

// NaN in every output: a non-finite input, as one rule for every backend.
template <typename T>
void write_nan(const hl_matrix& a, const hl_matrix& b, double* lse_out, T* grad_a, T* grad_b, double* grad_wa = nullptr,
               double* grad_wb = nullptr) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  *lse_out = nan;
  if (grad_a) std::fill(grad_a, grad_a + a.rows * a.cols, static_cast<T>(nan));
  if (grad_b) std::fill(grad_b, grad_b + b.rows * b.cols, static_cast<T>(nan));
  if (grad_wa) std::fill(grad_wa, grad_wa + a.rows, nan);
  if (grad_wb) std::fill(grad_wb, grad_wb + b.rows, nan);
}

// A float32 loss above -kNearZeroLoss (lse - log|P|, or lse - log W with weights) is computed again in double
// (uniform_lse_wide): the tiles' exponentials are float32, so a pair's exp(s) at s ~ -1e-8 is 1, and such a loss
// keeps only ~2^-24 log|P| of absolute accuracy (1.5% relative at a loss of -1.3e-7). Above 2^-4 from 0 that is
// at most ~3e-5 relative.
constexpr double kNearZeroLoss = 0x1p-4;

// A float32 call is also computed in double where the Gram form may cost its scores more than the float32 result
// can afford: d'_ij = n_i + n_j - 2 x'_i . x'_j in float is off by up to ~2^-22 (n_i + n_j) (norms and products
// rounded; x' itself to 2^-24), so a score -t' d' by t' times that, an absolute error that every pair's weight, and
// so the gradients, carry. Bounded over every pair by the two largest n, it must stay below kGramScoreError times
// max(1, |loss|): the paper's float32 differences err by ~2^-24 |score| (relative), so a large loss tolerates a
// larger absolute error. Caught: groups of rows far apart compared with their own spread (two halves of unit-spread
// rows 1e3 apart gave 6% gradient errors in float) and a single far row (whose own pairs would have been fine:
// their errors are relative). Unit-norm rows at t = 2 stay far below it (bound ~1e-6).
constexpr double kGramScoreError = 0x1p-12;

// log2 of t' 2^-22 (n_(1) + n_(2)), the two largest squared norms (-inf for none): in logs, since t' = t 4^E may
// lie outside double's range.
double log2_gram_score_error(const Prepared<float>& x, double t) {
  float first = 0, second = 0;
  for (int64_t r = 0; r < x.rows; ++r) {
    const float n = x.sq_norms[r];
    if (n > first) {
      second = first;
      first = n;
    } else if (n > second) {
      second = n;
    }
  }
  return std::log2(t) + 2.0 * x.exponent - 22 + std::log2(static_cast<double>(first) + second);
}

// Whether a float32 result (its loss: lse - log|P|, or lse - log W) is computed again in double (above).
bool needs_double(const Prepared<float>& x, double t, double loss) {
  if (loss > -kNearZeroLoss) return true;
  return log2_gram_score_error(x, t) > std::log2(kGramScoreError * std::max(1.0, std::abs(loss)));
}

// The float32 call in double: the float inputs prepared as double (centered and scaled exactly as in float), the
// kernel in double, the x gradients rounded once to float (weight gradients are double anyway). Only where
// needs_double: one more pass, ~2.3x the float pass's time.
double uniform_lse_wide(const hl_matrix& a, const hl_matrix& b, double t, bool intra, int threads, float* grad_a,
                        float* grad_b, const RowBiases* biases = nullptr, double* grad_wa = nullptr,
                        double* grad_wb = nullptr) {
  const bool cross = b.data != nullptr;
  const Prepared<double> x = prepare<double, float>(Rows<float>{a, b}, a.cols, threads);
  std::vector<double> wide_a(grad_a ? static_cast<size_t>(a.rows * a.cols) : 0);
  std::vector<double> wide_b(cross && grad_b ? static_cast<size_t>(b.rows * b.cols) : 0);
  UniformKernel<double> kernel(x, a.rows, intra, cross, t, grad_a ? wide_a.data() : nullptr,
                               wide_b.empty() ? nullptr : wide_b.data(), threads, biases);
  const double lse = kernel.run(std::log(num_pairs(a.rows, cross ? b.rows : 0, intra)));
  if (grad_a || !wide_b.empty()) kernel.finish_gradients(t, lse);
  if (grad_wa || grad_wb) kernel.weight_gradients(lse, grad_wa, grad_wb);
  std::copy(wide_a.begin(), wide_a.end(), grad_a);  // float(double): rounded once
  if (!wide_b.empty()) std::copy(wide_b.begin(), wide_b.end(), grad_b);
  return lse;
}

template <typename T>
hl_status uniform_lse(const hl_matrix& a, const hl_matrix& b, double t, bool intra, int threads, double* lse_out,
                      T* grad_a, T* grad_b) {
  const bool cross = b.data != nullptr;
  const Prepared<T> x = prepare<T>(Rows<T>{a, b}, a.cols, threads);
  if (!x.finite) {
    write_nan(a, b, lse_out, grad_a, grad_b);
    return HL_OK;
  }
  UniformKernel<T> kernel(x, a.rows, intra, cross, t, grad_a, cross ? grad_b : nullptr, threads);
  const double log_pairs = std::log(num_pairs(a.rows, cross ? b.rows : 0, intra));
  const double lse = kernel.run(log_pairs);
  if constexpr (std::is_same_v<T, float>) {
    if (needs_double(x, t, lse - log_pairs)) {
      *lse_out = uniform_lse_wide(a, b, t, intra, threads, grad_a, grad_b);
      return HL_OK;
    }
  }
  *lse_out = lse;
  if (grad_a || (cross && grad_b)) kernel.finish_gradients(t, lse);
  return HL_OK;
}

// The weights as log2 of 2^-e w (e: the exponent of the largest, so that they are <= 1 and exactly scaled); false
// where one is not finite.
bool row_biases(const hl_matrix& a, const hl_matrix& b, const double* wa, const double* wb, RowBiases& out) {
  const int64_t na = a.rows, nb = b.data ? b.rows : 0;
  const auto weight = [&](int64_t r) { return r < na ? (wa ? wa[r] : 1.0) : (wb ? wb[r - na] : 1.0); };
  double largest = 0;
  for (int64_t r = 0; r < na + nb; ++r) {
    if (!std::isfinite(weight(r))) return false;
    largest = std::max(largest, weight(r));
  }
  out.exponent = exponent_of(largest);
  out.log2_weights.resize(static_cast<size_t>(na + nb));
  for (int64_t r = 0; r < na + nb; ++r) out.log2_weights[r] = std::log2(weight(r)) - out.exponent;
  return true;
}

// log W of the scaled weights (sum over the pairs of w_u w_v), roughly: only to tell a loss near 0 (the loss itself
// is formed by the caller with its one careful W). Cancellation (one weight far above the rest) can make it too
// small or -inf, which errs towards the double pass.
double rough_log_pair_weight_sum(const RowBiases& biases, int64_t rows_a, int64_t rows_b, bool intra) {
  double sum_a = 0, squares_a = 0, sum_b = 0;
  for (int64_t r = 0; r < rows_a + rows_b; ++r) {
    const double w = std::exp2(biases.log2_weights[r]);
    (r < rows_a ? sum_a : sum_b) += w;
    if (r < rows_a) squares_a += w * w;
  }
  const double pairs = (intra ? 0.5 * (sum_a * sum_a - squares_a) : 0.0) + sum_a * sum_b;
  return pairs > 0 ? std::log(pairs) : -kInf;
}

template <typename T>
hl_status uniform_lse_weighted(const hl_matrix& a, const hl_matrix& b, const double* weights_a,
                               const double* weights_b, double t, bool intra, int threads, double* lse_out, T* grad_a,
                               T* grad_b, double* grad_wa, double* grad_wb) {
  const bool cross = b.data != nullptr;
  if (!cross) grad_b = nullptr, grad_wb = nullptr;
  RowBiases biases;
  const Prepared<T> x = prepare<T>(Rows<T>{a, b}, a.cols, threads);
  if (!x.finite || !row_biases(a, b, weights_a, weights_b, biases)) {
    write_nan(a, b, lse_out, grad_a, grad_b, grad_wa, grad_wb);
    return HL_OK;
  }
  biases.grad_a = grad_wa != nullptr;
  biases.grad_b = grad_wb != nullptr;
  UniformKernel<T> kernel(x, a.rows, intra, cross, t, grad_a, grad_b, threads, &biases);
  double lse = kernel.run(std::log(num_pairs(a.rows, cross ? b.rows : 0, intra)));
  bool wide = false;
  if constexpr (std::is_same_v<T, float>) {
    wide = needs_double(x, t, lse - rough_log_pair_weight_sum(biases, a.rows, cross ? b.rows : 0, intra));
    if (wide) lse = uniform_lse_wide(a, b, t, intra, threads, grad_a, grad_b, &biases, grad_wa, grad_wb);
  }
  // lse of the scaled weights; the caller's pair weights are 4^exponent times theirs.
  *lse_out = lse + 2 * biases.exponent * kLn2;
  if (wide) return HL_OK;
  if (grad_a || grad_b) kernel.finish_gradients(t, lse);
  if (grad_wa || grad_wb) kernel.weight_gradients(lse, grad_wa, grad_wb);
  return HL_OK;
}

}  // namespace
}  // namespace hyperloss::cpu

extern "C" hl_status hl_uniform_lse_cpu(hl_dtype dtype, hl_matrix a, hl_matrix b, double t, int intra_batch,
                                        int num_threads, double* lse_out, void* grad_a, void* grad_b) {
  using namespace hyperloss;
  if (const hl_status status = check_uniform_args(dtype, a, b, t, intra_batch); status != HL_OK) return status;
  if (lse_out == nullptr || num_threads < 0) return HL_ERR_INVALID_ARGUMENT;
  if (dtype != HL_FLOAT32 && dtype != HL_FLOAT64) return HL_ERR_UNSUPPORTED;
  const int threads = cpu::cpu_threads(num_threads);
  try {
    if (dtype == HL_FLOAT32)
      return cpu::uniform_lse<float>(a, b, t, intra_batch != 0, threads, lse_out, static_cast<float*>(grad_a),
                                     static_cast<float*>(grad_b));
    return cpu::uniform_lse<double>(a, b, t, intra_batch != 0, threads, lse_out, static_cast<double*>(grad_a),
                                    static_cast<double*>(grad_b));
  } catch (const std::bad_alloc&) {
    return HL_ERR_OUT_OF_MEMORY;
  } catch (const std::length_error&) {
    return HL_ERR_OUT_OF_MEMORY;
  }
}

extern "C" hl_status hl_uniform_lse_weighted_cpu(hl_dtype dtype, hl_matrix a, hl_matrix b, const double* weights_a,
                                                 const double* weights_b, double t, int intra_batch, int num_threads,
                                                 double* lse_out, void* grad_a, void* grad_b, double* grad_weights_a,
                                                 double* grad_weights_b) {
  using namespace hyperloss;
  if (const hl_status status = check_uniform_args(dtype, a, b, t, intra_batch); status != HL_OK) return status;
  if (lse_out == nullptr || num_threads < 0) return HL_ERR_INVALID_ARGUMENT;
  if (dtype != HL_FLOAT32 && dtype != HL_FLOAT64) return HL_ERR_UNSUPPORTED;
  // A negative weight is an invalid argument (NaN is not: the NaN rule makes the result NaN).
  for (int64_t r = 0; weights_a && r < a.rows; ++r)
    if (weights_a[r] < 0) return HL_ERR_INVALID_ARGUMENT;
  for (int64_t r = 0; b.data && weights_b && r < b.rows; ++r)
    if (weights_b[r] < 0) return HL_ERR_INVALID_ARGUMENT;
  const int threads = cpu::cpu_threads(num_threads);
  try {
    if (dtype == HL_FLOAT32)
      return cpu::uniform_lse_weighted<float>(a, b, weights_a, weights_b, t, intra_batch != 0, threads, lse_out,
                                              static_cast<float*>(grad_a), static_cast<float*>(grad_b),
                                              grad_weights_a, grad_weights_b);
    return cpu::uniform_lse_weighted<double>(a, b, weights_a, weights_b, t, intra_batch != 0, threads, lse_out,
                                             static_cast<double*>(grad_a), static_cast<double*>(grad_b),
                                             grad_weights_a, grad_weights_b);
  } catch (const std::bad_alloc&) {
    return HL_ERR_OUT_OF_MEMORY;
  } catch (const std::length_error&) {
    return HL_ERR_OUT_OF_MEMORY;
  }
}
