// CPU kernels of group_advantages (docs/advantages.md#formula-and-options): one component of
// rewards, already aggregated.
//
//   A_i = (r_i - b_i) / (s_i + eps), then optionally whitened over the batch.
//
// Layouts: fixed (group_size > 0), ragged (cu[B+1]) or index (cu over the sorted rows plus
// order[N], sorted position -> original row). Three phases, each parallel over a fixed
// partition (so results do not depend on the thread count: deterministic):
//   1. batch moments of the raw rewards (only for baseline=batch_mean / scale=batch_std),
//   2. per group: n, mean, M2 (two passes over the group's rows, shifted by the group's first
//      valid value so identical rewards give exactly 0), then A for every row; fixed layouts
//      with G = 4, 8 or 16 vectorize it across groups (FixedGroupLanes), with the same bits,
//   3. whitening (optional): weighted batch moments of A, then (A - mean) * spread.
// All statistics accumulate in double. Option codes match icrm_kernels/ops/advantages.py.
#include "common.h"
#include "lanes.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace icrm {
namespace {

enum Baseline : int64_t { kBaseNone = 0, kGroupMean = 1, kLeaveOneOut = 2, kBatchMean = 3 };
enum Scale : int64_t { kScaleNone = 0, kGroupStd = 1, kBatchStd = 2, kBnpo = 3 };
enum Whiten : int64_t { kWhitenNone = 0, kSample = 1, kToken = 2 };
enum Singleton : int64_t { kZero = 0, kRaw = 1, kNan = 2 };
enum WhitenStd : int64_t { kStdEps = 0, kRsqrtEps = 1, kRsqrtClamp = 2 };

// Baselines that centre A per group (its batch mean is rounding noise): the whitening moments
// of float32 A can be summed without a pivot, in tile form (TileMoments).
constexpr bool centred_baseline(int64_t b) { return b == kGroupMean || b == kLeaveOneOut; }

constexpr int64_t kChunk = 1 << 16;  // fixed partition of the batch reductions

struct Moments {
  double W = 0.0, mean = 0.0, M2 = 0.0;
};

// Chan et al.'s exact merge; an empty side leaves the other unchanged (bitwise).
inline Moments merge(const Moments& a, const Moments& b) {
  if (b.W == 0.0) return a;
  if (a.W == 0.0) return b;
  Moments m;
  m.W = a.W + b.W;
  const double delta = b.mean - a.mean;
  const double frac = b.W / m.W;
  m.mean = a.mean + delta * frac;
  m.M2 = a.M2 + b.M2 + delta * delta * a.W * frac;
  return m;
}

// One term of chunk_moments_t for one accumulator (Tv = double) or four (Tv = Lanes4): weight,
// shifted value d, then W += w, A += w d, B += w d d. Shared by both, so a lane rounds as the
// scalar accumulator does.
template <bool OMIT, bool HAS_W, typename Tv>
ICRM_LANE void moment_step(const Tv& v, const Tv& weight, const Tv& pivot, Tv& Wk, Tv& Ak, Tv& Bk) {
  const Tv zero{};
  Tv wi = weight, d = v - pivot;
  if constexpr (OMIT) {
    const auto ok = v == v;
    wi = ok ? wi : zero;
    d = ok ? d : zero;
  }
  if constexpr (HAS_W) d = wi == zero ? zero : d;
  Wk += wi;
  Ak += wi * d;
  Bk += wi * d * d;
}

#if ICRM_AVX2_DISPATCH
typedef double Lanes4 __attribute__((vector_size(32)));  // the four accumulators: one ymm register
typedef float Floats4 __attribute__((vector_size(16)));

// The four accumulators of chunk_moments_t over x[lo:hi) ((hi - lo) % 4 == 0) as the lanes of
// one vector: element lo + 4m + k goes to lane k, in order of m, as in the scalar loop. For the
// AVX2 copy only (the baseline ISA has no blend: the scalar loop is faster there); no FMA
// (kFma = false), so each lane is bitwise the scalar accumulator.
template <typename T, bool OMIT, bool HAS_W>
struct MomentLanes {
  static constexpr bool kFma = false;
  struct Args {
    const T* x;
    const double* w;
    int64_t lo, hi;
    double pivot;
    double *W, *A, *B;  // [4] each, in and out
  };
  static ICRM_LANE void run(const Args& p) {
    Lanes4 W, A, B;
    std::memcpy(&W, p.W, sizeof W);
    std::memcpy(&A, p.A, sizeof A);
    std::memcpy(&B, p.B, sizeof B);
    const Lanes4 pivot = Lanes4{} + p.pivot;
    for (int64_t i = p.lo; i < p.hi; i += 4) {
      Lanes4 v, wi = Lanes4{} + 1.0;
      if constexpr (std::is_same_v<T, float>) {
        Floats4 f;
        std::memcpy(&f, p.x + i, sizeof f);
        v = __builtin_convertvector(f, Lanes4);
      } else {
        std::memcpy(&v, p.x + i, sizeof v);
      }
      if constexpr (HAS_W) std::memcpy(&wi, p.w + i, sizeof wi);
      moment_step<OMIT, HAS_W>(v, wi, pivot, W, A, B);
    }
    std::memcpy(p.W, &W, sizeof W);
    std::memcpy(p.A, &A, sizeof A);
    std::memcpy(p.B, &B, sizeof B);
  }
};
#endif

typedef float MomF8 __attribute__((vector_size(32)));
typedef float MomF8u __attribute__((vector_size(32), aligned(4), may_alias));  // unaligned access
typedef int32_t MomI8 __attribute__((vector_size(32)));
typedef int64_t MomI4 __attribute__((vector_size(32)));
typedef double MomD8 __attribute__((vector_size(64)));

constexpr int64_t kFloatSub = 256;  // float32 moments: rows per float sub-block (32 per lane)

// Float32 moments without weights over x[lo:hi) ((hi - lo) % kFloatSub == 0), element
// lo + 8m + k to lane k (of W, A, B: [8] doubles each, in and out). Per sub-block of kFloatSub
// rows the count, S1 and S2 of d = x - pivot accumulate in float (fp32 statistics for fp32
// inputs; two vectors in turn, so that the adds overlap), then are added into the double lanes,
// so the float sums never run long. A sub-block whose float S2 is not finite (|d| above ~1e18,
// a NaN or inf without omit) or underflows (below 1e-30 with any d nonzero: S1 != 0 or
// S2 != 0) is summed again in double, as before. Generic vectors, no FMA: both ISA copies round alike.
// Under OMIT a sub-block is first summed without the NaN masks (half the operations): a NaN
// shows in its S2, and only then is it summed again with the masks. Without NaN rows the masked
// loop adds the same values in the same order, so the bits do not depend on which loop ran.
template <bool OMIT>
struct FloatMomentLanes {
  static constexpr bool kFma = false;
  struct Args {
    const float* x;
    int64_t lo, hi;
    float pivot;
    double *W, *A, *B;
  };
  // S1 and S2 of sub-block [s, s + kFloatSub) per lane, and the count when MASK (else kFloatSub / 8
  // a lane: the sum of sixteen 1s twice, exactly)
  template <bool MASK>
  static ICRM_LANE void sums(const float* x, int64_t s, MomF8 pv, MomF8& wf, MomF8& af, MomF8& bf) {
    const MomF8 zero{}, one = zero + 1.0f;
    MomF8 w0{}, a0{}, b0{}, w1{}, a1{}, b1{};
    for (int64_t i = s; i < s + kFloatSub; i += 16) {
      const MomF8 v0 = *reinterpret_cast<const MomF8u*>(x + i);
      const MomF8 v1 = *reinterpret_cast<const MomF8u*>(x + i + 8);
      MomF8 d0 = v0 - pv, d1 = v1 - pv;
      if constexpr (MASK) {
        const auto ok0 = v0 == v0, ok1 = v1 == v1;
        w0 += ok0 ? one : zero;
        w1 += ok1 ? one : zero;
        d0 = ok0 ? d0 : zero;
        d1 = ok1 ? d1 : zero;
      }
      a0 += d0;
      a1 += d1;
      b0 += d0 * d0;
      b1 += d1 * d1;
    }
    wf = MASK ? w0 + w1 : zero + static_cast<float>(kFloatSub / 8);
    af = a0 + a1;
    bf = b0 + b1;
  }
  // whether some lane's float sums left the range where they are kept (see above)
  static ICRM_LANE bool out_of_range(const MomF8& af, const MomF8& bf) {
    const MomF8 zero{}, big = zero + 3e38f, tiny = zero + 1e-30f;
    const MomI8 bad = ~(bf <= big) | ((bf < tiny) & ((af != zero) | (bf != zero)));
    MomI4 half;  // (an OR over the lanes; a bool per lane compiled to 24 compares and branches)
    std::memcpy(&half, &bad, sizeof half);
    const MomI4 any = half | MomI4{half[2], half[3]};
    return (any[0] | any[1]) != 0;
  }
  static ICRM_LANE void run(const Args& p) {
    MomD8 W, A, B;
    std::memcpy(&W, p.W, sizeof W);
    std::memcpy(&A, p.A, sizeof A);
    std::memcpy(&B, p.B, sizeof B);
    const MomF8 pv = MomF8{} + p.pivot;
    for (int64_t s = p.lo; s < p.hi; s += kFloatSub) {
      MomF8 wf, af, bf;
      sums<false>(p.x, s, pv, wf, af, bf);
      bool bad = out_of_range(af, bf);
      if (OMIT && bad) {
        sums<OMIT>(p.x, s, pv, wf, af, bf);
        bad = out_of_range(af, bf);
      }
      if (!bad) {
        W += __builtin_convertvector(wf, MomD8);
        A += __builtin_convertvector(af, MomD8);
        B += __builtin_convertvector(bf, MomD8);
      } else {
        const double pivot = static_cast<double>(p.pivot);
        for (int64_t i = s; i < s + kFloatSub; ++i) {
          const int k = static_cast<int>((i - s) & 7);
          moment_step<OMIT, false>(static_cast<double>(p.x[i]), 1.0, pivot, W[k], A[k], B[k]);
        }
      }
    }
    std::memcpy(p.W, &W, sizeof W);
    std::memcpy(p.A, &A, sizeof A);
    std::memcpy(p.B, &B, sizeof B);
  }
};

// (W, mean, M2) from the weight, the sum and the sum of squares of the values shifted by pivot.
inline Moments moments_from_sums(double pivot, double Wt, double St, double S2t) {
  Moments m;
  if (Wt == 0.0) return m;
  m.W = Wt;
  m.mean = pivot + St / Wt;
  m.M2 = std::max(S2t - St * St / Wt, 0.0);
  if (std::isnan(S2t)) m.M2 = S2t;  // propagate NaN
  return m;
}

// The end of chunk_moments_t's float32 form without weights: rows [body, hi) one by one into
// lane 0, then the eight lanes summed in a fixed tree.
template <bool OMIT>
Moments float_moments_finish(const float* x, int64_t body, int64_t hi, double pivot, double (&W)[8], double (&A)[8],
                             double (&B)[8]) {
  for (int64_t i = body; i < hi; ++i) moment_step<OMIT, false>(static_cast<double>(x[i]), 1.0, pivot, W[0], A[0], B[0]);
  return moments_from_sums(pivot, ((W[0] + W[1]) + (W[2] + W[3])) + ((W[4] + W[5]) + (W[6] + W[7])),
                           ((A[0] + A[1]) + (A[2] + A[3])) + ((A[4] + A[5]) + (A[6] + A[7])),
                           ((B[0] + B[1]) + (B[2] + B[3])) + ((B[4] + B[5]) + (B[6] + B[7])));
}

// Moments of x[lo:hi) with weight w[i] (or 1), skipping NaN rows when OMIT. One pass of sums
// shifted by the chunk's first valid value (so M2 = S2 - S1^2/W loses little, and is exactly 0
// for identical values), four independent accumulators (fixed order: deterministic).
template <typename T, bool OMIT, bool HAS_W>
Moments chunk_moments_t(const T* x, const double* w, int64_t lo, int64_t hi) {
  Moments m;
  int64_t first = lo;
  while (first < hi && ((OMIT && std::isnan(static_cast<double>(x[first]))) || (HAS_W && w[first] == 0.0))) ++first;
  if (first == hi) return m;
  const double pivot = static_cast<double>(x[first]);
  if constexpr (std::is_same_v<T, float> && !HAS_W) {
    double W[8] = {}, A[8] = {}, B[8] = {};
    const int64_t body = first + (hi - first) / kFloatSub * kFloatSub;
    using K = FloatMomentLanes<OMIT>;
    static const LaneFn<K> lanes = pick_lanes<K>();
    lanes(typename K::Args{x, first, body, x[first], W, A, B});
    return float_moments_finish<OMIT>(x, body, hi, pivot, W, A, B);
  }
  double W[4] = {0, 0, 0, 0}, A[4] = {0, 0, 0, 0}, B[4] = {0, 0, 0, 0};
  auto term = [&](int64_t i, int k) {
    moment_step<OMIT, HAS_W>(static_cast<double>(x[i]), HAS_W ? w[i] : 1.0, pivot, W[k], A[k], B[k]);
  };
  const int64_t body = first + (hi - first) / 4 * 4;
#if ICRM_AVX2_DISPATCH
  if (use_avx2()) {  // (the lanes only where the ISA has blends: the baseline copy is slower than the loop)
    using K = MomentLanes<T, OMIT, HAS_W>;
    static const LaneFn<K> lanes = pick_lanes<K>();
    lanes(typename K::Args{x, w, first, body, pivot, W, A, B});
  } else
#endif
  {
    for (int64_t i = first; i < body; i += 4)
      for (int k = 0; k < 4; ++k) term(i + k, k);
  }
  for (int64_t i = body; i < hi; ++i) term(i, 0);
  return moments_from_sums(pivot, (W[0] + W[1]) + (W[2] + W[3]), (A[0] + A[1]) + (A[2] + A[3]),
                           (B[0] + B[1]) + (B[2] + B[3]));
}

template <typename T>
Moments chunk_moments(const T* x, const double* w, int64_t lo, int64_t hi, bool omit) {
  if (omit) return w ? chunk_moments_t<T, true, true>(x, w, lo, hi) : chunk_moments_t<T, true, false>(x, w, lo, hi);
  return w ? chunk_moments_t<T, false, true>(x, w, lo, hi) : chunk_moments_t<T, false, false>(x, w, lo, hi);
}

// Moments of rows [0, n) as a fixed partition into kChunk-row chunks, chunk(lo, hi) each (in
// parallel), merged in chunk order: the bits do not depend on the thread count.
template <class F>
Moments chunked_moments(int64_t n, F chunk) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<Moments> parts(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) parts[c] = chunk(c * kChunk, std::min(n, (c + 1) * kChunk));
  });
  Moments total;
  for (const auto& p : parts) total = merge(total, p);
  return total;
}

template <typename T>
Moments batch_moments(const T* x, const double* w, int64_t n, bool omit) {
  return chunked_moments(n, [&](int64_t lo, int64_t hi) { return chunk_moments(x, w, lo, hi, omit); });
}

// The whitening moments of float32 A computed by the group pass itself (whitening without
// weights: no omitted rows, no token counts), chunk by chunk: each tile's A is summed right after
// it is stored, while it is in L1, instead of in a later pass over A. The chunks and the order of
// the sums are batch_moments': the same bits. done: whether the group pass took this route.
struct FusedMoments {
  bool done = false;
  bool rescaled = false;  // the rows are whitened too (moments_then_whiten)
  Moments m;
};

struct Options {
  int64_t baseline, scale, whiten, singleton, whiten_std;
  double eps, whiten_eps;
  bool unbiased, omit;
  bool no_nan = false;  // omit, and the batch moments counted no NaN row: no tile scans for one
  // set: the fixed float32 lanes may also compute the moments of A for the whitening (below)
  FusedMoments* whiten_moments = nullptr;
};

// One chunk's float32 moment lanes, filled tile by tile: rows [lo, body) (body - lo a multiple
// of kFloatSub) go through FloatMomentLanes with the chunk's first row as the pivot.
struct ChunkMomentAcc {
  int64_t lo, body;
  double W[8] = {}, A[8] = {}, B[8] = {};
};

// What pass 2 needs of one group: A = ((v - pivot) - shift) [* loo] * inv, or const_value.
// Acc: the arithmetic of the group statistics (float for float32 groups of up to
// kFloatGroupMax rows, else double).
template <typename Acc>
struct GroupParams {
  Acc pivot, shift, loo, inv;
  bool to_const;
  bool exact;  // FAST: the unscaled sum of squares decides (else the caller redoes the group)
};

// The options group_params reads, taken out of Options once (values, not loads in the loop).
template <typename Acc>
struct GroupRule {
  Acc eps, ddof, batch_inv;  // batch_inv = 1 / (batch_std + eps), computed in double
  bool raw_singleton;
  bool eps_large;   // eps >= 2^-40 (unscaled_ok)
  bool nan_if_inf;  // scale none: a group without a finite mean is NaN (not needed when whitened)
  explicit GroupRule(const Options& o, double batch_std)
      : eps(static_cast<Acc>(o.eps)),
        ddof(o.unbiased ? Acc(1) : Acc(0)),
        batch_inv(static_cast<Acc>(1.0 / (batch_std + o.eps))),
        raw_singleton(o.singleton == kRaw),
        eps_large(static_cast<Acc>(o.eps) >= Acc(0x1p-40)),
        nan_if_inf(o.whiten == kWhitenNone) {}
};

// float32 group std: whether the unscaled sum of squared deviations M2 gives the std. It does
// when M2 is in [2^-60, 2^100] (no square or partial sum overflows, and the squares lost to
// underflow weigh < 2^-86 of M2), or when M2 == 0 and eps >= 2^-40 (every |d| < 2^-75: the
// std is below half an ulp of eps, std + eps == eps). Otherwise (deviations of 1e-30 or 1e30,
// NaN, inf) the sum of the squares of the deviations scaled by a power of two gives it (fp32
// rewards of 1e30 or 1e-30 would square to inf or 0). Checking M2 afterwards instead of always
// scaling saves three of the ~13 operations a row (bench/NOTES.md §10.2).
template <typename Acc>
ICRM_LANE bool unscaled_ok(Acc M2, bool eps_large) {
  return (M2 >= Acc(0x1p-60) && M2 <= Acc(0x1p100)) || (M2 == Acc(0) && eps_large);
}

// One group's statistics, its row j being val(j) (j < len), for the scalar loop and the lanes
// alike (so both round the same): pivot = first valid value, n and S1 = sum (v - pivot) in row
// order, shift = S1 / n, M2 in row order, s = sqrt(M2 / (n - ddof)). Branch-free (NaN rows are
// masked, the pivot is found by selects), so that a loop over groups vectorizes; a raw singleton
// takes pivot = shift = 0, loo = 1 and s = sqrt(1), which give A = v / (1 + eps) exactly.
// DIV: var = M2 / (n - ddof) even without omitted rows (the OMIT rule), so that a block without
// NaN rows under nan_policy omit can take the loops without masks and keep the same bits.
// float32 group std (unscaled_ok): both sums are computed and the rule picks; FAST computes the
// unscaled one only and says in .exact whether it decides, so FAST where .exact holds and the
// full form give the same bits.
template <typename Acc, bool OMIT, int64_t BASE, int64_t SCALE, bool DIV = OMIT, bool FAST = false, int INF = -1,
          class Val>
ICRM_LANE GroupParams<Acc> group_params(Val val, int64_t len, const GroupRule<Acc>& o) {
  constexpr bool group_level = BASE == kGroupMean || BASE == kLeaveOneOut || SCALE == kGroupStd;
  if constexpr (!group_level)
    return {Acc(0), Acc(0), Acc(1), SCALE == kBatchStd ? o.batch_inv : Acc(1) / (Acc(1) + o.eps), false, true};
  Acc pivot = 0, n = 0, S1 = 0;  // all NaN (OMIT): pivot 0
  // OMIT: the pivot is taken inside the summing loop (every row while n is still 0: the first
  // valid row is the last taken); rows before it are NaN and add 0, so S1 is the same as with
  // the pivot found first. An all-NaN group keeps a NaN pivot: its rows are all omitted (A = 0).
  if constexpr (!OMIT) pivot = val(0);
  // float: the largest |v - pivot| too, whose power of two scales the deviations of the scaled
  // sum of squares (unscaled_ok)
  constexpr bool kFloatStd = std::is_same_v<Acc, float> && SCALE == kGroupStd;
  constexpr bool kScaled = kFloatStd && !FAST;
  Acc mx = 0;
  for (int64_t j = 0; j < len; ++j) {
    const Acc v = val(j);
    Acc dv;
    if constexpr (OMIT) {
      const bool ok = v == v;
      pivot = n == Acc(0) ? v : pivot;  // a NaN row before the first valid is replaced later
      n += ok ? Acc(1) : Acc(0);
      dv = ok ? v - pivot : Acc(0);
    } else {
      n += Acc(1);
      dv = v - pivot;
    }
    S1 += dv;
    if constexpr (kScaled) {
      const Acc a = std::abs(dv);
      mx = a > mx ? a : mx;
    }
  }
  Acc shift = S1 / n;  // mean = pivot + shift
  // A group holding +-inf (or whose float sum left float's range) has no finite mean, and every A
  // of it is NaN, whichever row holds the inf (docs/advantages.md). With a group std or a batch
  // std that follows by itself (the std is NaN). Without a scale, rows after an inf would get
  // -inf, and an inf in the first row (the pivot) NaN: an order-dependent answer, hence the test.
  // Whitening makes every row NaN anyway, so a whitened batch leaves it out (o.nan_if_inf; INF:
  // the caller's loop knows it at compile time, 1 or 0, rather than reading it, -1).
  if constexpr (SCALE == kScaleNone && INF != 0) {
    if (INF == 1 || o.nan_if_inf)
      shift = std::abs(shift) <= std::numeric_limits<Acc>::max() ? shift : std::numeric_limits<Acc>::quiet_NaN();
  }
  Acc var = 1, var_s = 1, sc = 1, isc = 1;
  bool exact = true;
  if constexpr (kScaled) {  // sc = 2^-e, isc = 2^e for mx in [2^e, 2^(e+1)), e clamped to [-126, 126]
    uint32_t e = __builtin_bit_cast(uint32_t, mx) & 0x7f800000u;
    e = e < (1u << 23) ? (1u << 23) : e;
    e = e > (253u << 23) ? (253u << 23) : e;
    isc = __builtin_bit_cast(float, e);
    sc = __builtin_bit_cast(float, (254u << 23) - e);
  }
  if constexpr (SCALE == kGroupStd) {
    Acc M2 = 0, M2s = 0;
    for (int64_t j = 0; j < len; ++j) {
      const Acc v = val(j);
      Acc d = (v - pivot) - shift;
      if constexpr (OMIT) d = v == v ? d : Acc(0);
      M2 += d * d;
      if constexpr (kScaled) {
        const Acc ds = d * sc;
        M2s += ds * ds;
      }
    }
    // float without omitted rows: n is the group length, 1 / (n - ddof) a loop invariant (one
    // division per call instead of one per group; within an ulp of the quotient)
    if constexpr (kFloatStd && !OMIT && !DIV) {
      var = M2 * (Acc(1) / (n - o.ddof));
      if constexpr (kScaled) var_s = M2s * (Acc(1) / (n - o.ddof));
    } else {
      var = M2 / (n - o.ddof);
      if constexpr (kScaled) var_s = M2s / (n - o.ddof);
    }
    if constexpr (kFloatStd) exact = unscaled_ok(M2, o.eps_large);
  }
  Acc loo = n / (n - Acc(1));
  const bool single = n == Acc(1);
  const bool raw_single = single && o.raw_singleton;
  pivot = raw_single ? Acc(0) : pivot;
  shift = raw_single ? Acc(0) : shift;
  loo = raw_single ? Acc(1) : loo;
  var = raw_single ? Acc(1) : var;
  // std::sqrt vectorizes in a loop over groups because the build has -fno-math-errno
  Acc inv;
  if constexpr (SCALE == kGroupStd) inv = Acc(1) / (std::sqrt(var) + o.eps);
  else if constexpr (SCALE == kBatchStd) inv = o.batch_inv;
  else inv = Acc(1) / (Acc(1) + o.eps);
  if constexpr (kScaled) {
    const Acc inv_s = Acc(1) / ((raw_single ? Acc(1) : std::sqrt(var_s) * isc) + o.eps);
    inv = exact ? inv : inv_s;
  }
  return {pivot, shift, loo, inv, single && !o.raw_singleton, exact};
}

// A batch mean (double) in arithmetic Acc as hi + lo: v - mean is (v - hi) - lo, so that a value
// next to a large mean keeps float32 accuracy instead of inheriting the mean's rounding
// (ulp(mean) / std: 1e5 ulps for rewards 1000 +- 1e-3). For double, lo = 0: v - mean itself.
// hi is finite: the mean of finite float32 values is at most FLT_MAX.
template <typename Acc>
struct SplitMean {
  Acc hi, lo;
  explicit SplitMean(double m) : hi(static_cast<Acc>(m)), lo(static_cast<Acc>(m - static_cast<double>(hi))) {}
  ICRM_LANE Acc centered(Acc v) const { return (v - hi) - lo; }
};

// A of one row (0 for a NaN row when OMIT), written so identical rewards give exactly 0.
// UNIT: the caller knows g.inv == 1 exactly, and leaves the multiply out (x * 1 == x, NaN too).
template <typename Acc, bool OMIT, int64_t BASE, bool UNIT = false>
ICRM_LANE Acc row_advantage(Acc v, const GroupParams<Acc>& g, Acc const_value, const SplitMean<Acc>& batch_mean) {
  Acc centered;
  if constexpr (BASE == kGroupMean) centered = (v - g.pivot) - g.shift;
  else if constexpr (BASE == kLeaveOneOut) centered = ((v - g.pivot) - g.shift) * g.loo;
  else if constexpr (BASE == kBatchMean) centered = batch_mean.centered(v);
  else centered = v;
  Acc a = g.to_const ? const_value : UNIT ? centered : centered * g.inv;
  if constexpr (OMIT) a = v == v ? a : Acc(0);
  return a;
}

inline double singleton_value(const Options& o) {
  return o.singleton == kZero ? 0.0 : std::numeric_limits<double>::quiet_NaN();
}

// Groups of float32 rewards with at most this many rows compute their statistics in float (the
// fixed lanes take G <= 16 and must round as this loop does); longer groups and float64 in double.
constexpr int64_t kFloatGroupMax = 64;

template <typename T>
using GroupAcc = std::conditional_t<std::is_same_v<T, float>, float, double>;

// Whether 1 / (batch_std + eps) is finite in double but not in float (eps = 0 with a subnormal
// batch std): then float32 groups compute in double, as float64 ones do (their A would be
// d * inf otherwise).
inline bool float_batch_inv_overflows(const Options& o, double batch_std) {
  const double inv = 1.0 / (batch_std + o.eps);
  return std::isinf(static_cast<float>(inv)) && !std::isinf(inv);
}

// What the per-group loop needs of the options, in both arithmetics.
struct GroupRules {
  GroupRule<float> f;
  GroupRule<double> d;
  double const_value, batch_mean;
  bool float_ok;  // float32 groups may use float arithmetic (float_batch_inv_overflows)
  GroupRules(const Options& o, double batch_mean, double batch_std)
      : f(o, batch_std),
        d(o, batch_std),
        const_value(singleton_value(o)),
        batch_mean(batch_mean),
        float_ok(!float_batch_inv_overflows(o, batch_std)) {}
};

// float32 group std: whether a group's float statistics left float's range, so that it is
// computed again in double. The std of a group of subnormal rewards is itself subnormal, and with
// eps = 0 its reciprocal overflows (A = d * inf); a group whose spread times its size passes
// FLT_MAX gets an inf sum of deviations (A = NaN). Double holds both. Decided on the float
// statistics before anything is written, alike by the scalar loop and the tile lanes (the same
// bits), so fixed and ragged layouts agree. (A NaN reward under nan_policy propagate also sends
// its group to double: the same NaN.)
template <typename Acc>
ICRM_LANE bool float_std_needs_double(const GroupParams<Acc>& g) {
  return !g.to_const && !(std::isfinite(g.inv) && std::isfinite(g.shift));
}

// One group's A in arithmetic Acc, its row j (< len) being val(j): put(j, A) for every row, in
// order (the scalar loop puts rows of out, the fixed lanes' rare double path the transposed
// tile). CHECK (float32 group std): nothing is put, and false returned, when the group needs
// double (float_std_needs_double).
template <typename Acc, bool OMIT, int64_t BASE, int64_t SCALE, bool CHECK = false, class Val, class Put>
inline bool group_advantages_of(Val val, int64_t len, const GroupRule<Acc>& rule, Acc const_value,
                                const SplitMean<Acc>& batch_mean, Put put) {
  const GroupParams<Acc> g = group_params<Acc, OMIT, BASE, SCALE>(val, len, rule);
  if constexpr (CHECK) {
    if (float_std_needs_double(g)) return false;
  }
  for (int64_t j = 0; j < len; ++j) put(j, row_advantage<Acc, OMIT, BASE>(val(j), g, const_value, batch_mean));
  return true;
}

// One group in arithmetic Acc: rows lo..hi of the (sorted) layout (see group_advantages_of).
template <typename Acc, typename T, bool OMIT, bool ORDER, int64_t BASE, int64_t SCALE, bool CHECK = false>
inline bool normalize_one_group_acc(const T* r, T* out, const int64_t* order, int64_t n, int64_t lo, int64_t hi,
                                    const GroupRule<Acc>& rule, Acc const_value, const SplitMean<Acc>& batch_mean) {
  // order comes from the caller: clamped, so a malformed one (unchecked paths) stays in bounds
  auto row = [&](int64_t j) -> int64_t {
    if constexpr (ORDER) return std::min(std::max<int64_t>(order[j], 0), n - 1);
    else return j;
  };
  return group_advantages_of<Acc, OMIT, BASE, SCALE, CHECK>(
      [&](int64_t j) { return static_cast<Acc>(r[row(lo + j)]); }, hi - lo, rule, const_value, batch_mean,
      [&](int64_t j, Acc a) { out[row(lo + j)] = static_cast<T>(a); });
}

template <typename T, bool OMIT, bool ORDER, int64_t BASE, int64_t SCALE>
inline void normalize_one_group(const T* r, T* out, const int64_t* order, int64_t n, int64_t lo, int64_t hi,
                                const GroupRules& q) {
  if (std::is_same_v<T, float> && hi - lo <= kFloatGroupMax && q.float_ok &&
      normalize_one_group_acc<float, T, OMIT, ORDER, BASE, SCALE, SCALE == kGroupStd>(
          r, out, order, n, lo, hi, q.f, static_cast<float>(q.const_value), SplitMean<float>(q.batch_mean)))
    return;
  normalize_one_group_acc<double, T, OMIT, ORDER, BASE, SCALE>(r, out, order, n, lo, hi, q.d, q.const_value,
                                                               SplitMean<double>(q.batch_mean));
}

// Rows lo..hi of group g, clamped into [0, n): offsets reach the kernel unchecked inside
// unchecked(), torch.compile and group_advantages_direct, and garbage offsets must give garbage
// values, never an access outside the buffers.
inline void group_bounds(const int64_t* cu, int64_t group_size, int64_t n, int64_t g, int64_t& lo, int64_t& hi) {
  if (group_size > 0) {
    lo = g * group_size;
    hi = lo + group_size;
  } else {
    lo = std::min(std::max<int64_t>(cu[g], 0), n);
    hi = std::min(std::max(cu[g + 1], lo), n);
  }
}

template <typename T, bool OMIT, bool ORDER, int64_t BASE, int64_t SCALE>
void normalize_groups_t(const T* r, T* out, const int64_t* cu, const int64_t* order, int64_t n, int64_t group_size,
                        int64_t num_groups, const Options& o, double batch_mean, double batch_std) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, group_size > 0 ? group_size : 8));
  const GroupRules q(o, batch_mean, batch_std);
  at::parallel_for(0, num_groups, grain, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      int64_t lo, hi;
      group_bounds(cu, group_size, n, g, lo, hi);
      if (hi > lo) normalize_one_group<T, OMIT, ORDER, BASE, SCALE>(r, out, order, n, lo, hi, q);
    }
  });
}

typedef float Floats8 __attribute__((vector_size(32)));
typedef float Floats8u __attribute__((vector_size(32), aligned(4), may_alias));  // unaligned access
typedef int Ints8 __attribute__((vector_size(32)));

// In-register 8x8 transpose of floats: rows src[i * ld_src + 0..7] (i < 8) are written as
// columns dst[j * ld_dst + 0..7]: unpack, 2-lane shuffles, 128-bit halves (as with
// _mm256_unpack*/shuffle_ps/permute2f128), in generic shuffles so that both ISA copies build it
// (AVX2: 24 shuffles; the baseline ISA: SSE shuffles of the halves). Written out, not looped,
// so that the 8 vectors stay in registers.
ICRM_LANE void transpose8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
#define ICRM_LD(i) (*reinterpret_cast<const Floats8u*>(src + (i) * ld_src))
  const Floats8 r0 = ICRM_LD(0), r1 = ICRM_LD(1), r2 = ICRM_LD(2), r3 = ICRM_LD(3);
  const Floats8 r4 = ICRM_LD(4), r5 = ICRM_LD(5), r6 = ICRM_LD(6), r7 = ICRM_LD(7);
#undef ICRM_LD
  constexpr Ints8 lo{0, 8, 1, 9, 4, 12, 5, 13}, hi{2, 10, 3, 11, 6, 14, 7, 15};
  const Floats8 t0 = __builtin_shuffle(r0, r1, lo), t1 = __builtin_shuffle(r0, r1, hi);
  const Floats8 t2 = __builtin_shuffle(r2, r3, lo), t3 = __builtin_shuffle(r2, r3, hi);
  const Floats8 t4 = __builtin_shuffle(r4, r5, lo), t5 = __builtin_shuffle(r4, r5, hi);
  const Floats8 t6 = __builtin_shuffle(r6, r7, lo), t7 = __builtin_shuffle(r6, r7, hi);
  constexpr Ints8 plo{0, 1, 8, 9, 4, 5, 12, 13}, phi{2, 3, 10, 11, 6, 7, 14, 15};
  const Floats8 u0 = __builtin_shuffle(t0, t2, plo), u1 = __builtin_shuffle(t0, t2, phi);
  const Floats8 u2 = __builtin_shuffle(t1, t3, plo), u3 = __builtin_shuffle(t1, t3, phi);
  const Floats8 u4 = __builtin_shuffle(t4, t6, plo), u5 = __builtin_shuffle(t4, t6, phi);
  const Floats8 u6 = __builtin_shuffle(t5, t7, plo), u7 = __builtin_shuffle(t5, t7, phi);
  constexpr Ints8 qlo{0, 1, 2, 3, 8, 9, 10, 11}, qhi{4, 5, 6, 7, 12, 13, 14, 15};
#define ICRM_ST(j, v) (*reinterpret_cast<Floats8u*>(dst + (j) * ld_dst) = (v))
  ICRM_ST(0, __builtin_shuffle(u0, u4, qlo));
  ICRM_ST(1, __builtin_shuffle(u1, u5, qlo));
  ICRM_ST(2, __builtin_shuffle(u2, u6, qlo));
  ICRM_ST(3, __builtin_shuffle(u3, u7, qlo));
  ICRM_ST(4, __builtin_shuffle(u0, u4, qhi));
  ICRM_ST(5, __builtin_shuffle(u1, u5, qhi));
  ICRM_ST(6, __builtin_shuffle(u2, u6, qhi));
  ICRM_ST(7, __builtin_shuffle(u3, u7, qhi));
#undef ICRM_ST
}

constexpr int64_t kGroupBlock = 128;  // groups per tile: x[16][128] doubles = 16 KB, in L1 (64: 5-6% slower, §9.5)

// The whitening moments of float32 A in tile form, for layouts of groups of G = 4, 8 or 16 rows
// whose A is centred per group (baseline group_mean or leave_one_out, no weights, no omitted
// rows): the fixed lanes sum each tile while it is still transposed in registers, instead of
// reading the stored rows again (bench/NOTES.md §13.3). A tile is x[j][k], row j of its group k;
// lane l of 16 sums the groups k = l (mod 16) of every tile of a chunk, rows in order j, one
// float accumulator per 16-group column, the columns added in a fixed tree, then into double.
// A tile whose float sums leave the range where they are kept (FloatMomentLanes::out_of_range)
// is summed again in double the same way. No pivot: A centred per group has a batch mean of
// rounding size, so S2 - S1^2 / W loses nothing. The chunks are batch_moments' kChunk rows
// (multiples of every tile), merged in order: the bits do not depend on the thread count, and
// a ragged layout whose groups all have G rows sums its A the same way (tile_moments_of).
struct TileMoments {
  double A[16] = {}, B[16] = {}, W = 0.0;
  Moments finish() const {
    auto tree = [](const double (&v)[16]) {
      return (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))) +
             (((v[8] + v[9]) + (v[10] + v[11])) + ((v[12] + v[13]) + (v[14] + v[15])));
    };
    return moments_from_sums(0.0, W, tree(A), tree(B));
  }
};

typedef float TileF16 __attribute__((vector_size(64)));
typedef uint32_t TileU16 __attribute__((vector_size(64)));

// Column sums of tile x (groups [0, 16 cols)) in arithmetic V (float or double lanes), then the
// fixed tree over the kGroupBlock / 16 columns (absent columns are +0).
template <typename V, int64_t GS, bool FULL, typename Acc>
ICRM_LANE void tile_column_sums(const Acc (&x)[GS][kGroupBlock], int64_t cols_in, V& sa, V& sb) {
  static_assert(kGroupBlock == 8 * 16, "eight columns");
  // one accumulator per column, named (in an array they were kept on the stack); FULL: the
  // column count is a constant and the tests below fold
  const int64_t cols = FULL ? 8 : cols_in;
  V a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{}, b0{}, b1{}, b2{}, b3{}, b4{}, b5{}, b6{}, b7{};
  for (int64_t j = 0; j < GS; ++j) {
#define ICRM_COL(c)                                 \
  if ((c) < cols) {                                 \
    TileF16 f;                                      \
    std::memcpy(&f, &x[j][(c) * 16], sizeof f);     \
    const V v = __builtin_convertvector(f, V);      \
    a##c += v;                                      \
    b##c += v * v;                                  \
  }
    ICRM_COL(0) ICRM_COL(1) ICRM_COL(2) ICRM_COL(3) ICRM_COL(4) ICRM_COL(5) ICRM_COL(6) ICRM_COL(7)
#undef ICRM_COL
  }
  sa = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
  sb = ((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7));
}

// Whether a lane of the float sums left the range where they are kept (FloatMomentLanes'
// rule: S2 above 3e38, NaN, or below 1e-30 unless both sums are 0), on the bits: S2 is +0, a
// positive float or NaN, so one unsigned range test decides (float compares combined with | and
// & were compiled to one scalar compare per lane).
ICRM_LANE bool tile_sums_out_of_range(const TileF16& sa, const TileF16& sb) {
  const uint32_t lo = __builtin_bit_cast(uint32_t, 1e-30f), hi = __builtin_bit_cast(uint32_t, 3e38f);
  TileU16 ua, ub;
  std::memcpy(&ua, &sa, sizeof ua);
  std::memcpy(&ub, &sb, sizeof ub);
  TileU16 w = ((ua << 1) | ub) == 0u ? TileU16{} + lo : ub;  // both sums 0 (either sign): in range
  w -= lo;
  const TileU16 bad = w > hi - lo;
  uint64_t h[8];
  std::memcpy(h, &bad, sizeof h);
  return (((h[0] | h[1]) | (h[2] | h[3])) | ((h[4] | h[5]) | (h[6] | h[7]))) != 0;
}

// Adds tile x (nb groups) to m; see TileMoments.
template <int64_t GS>
ICRM_LANE void tile_moments(const float (&x)[GS][kGroupBlock], int64_t nb, TileMoments& m) {
  typedef double D16 __attribute__((vector_size(128)));
  const int64_t cols = nb / 16;
  TileF16 sa, sb;
  if (nb == kGroupBlock) tile_column_sums<TileF16, GS, true>(x, cols, sa, sb);
  else tile_column_sums<TileF16, GS, false>(x, cols, sa, sb);
  D16 da, db;
  if (!tile_sums_out_of_range(sa, sb)) {
    da = __builtin_convertvector(sa, D16);
    db = __builtin_convertvector(sb, D16);
  } else {
    tile_column_sums<D16, GS, false>(x, cols, da, db);
  }
  for (int l = 0; l < 16; ++l) {
    m.A[l] += da[l];
    m.B[l] += db[l];
  }
  for (int64_t k = cols * 16; k < nb; ++k)  // the groups of a last, partial column
    for (int64_t j = 0; j < GS; ++j) {
      const double v = static_cast<double>(x[j][k]);
      m.A[k % 16] += v;
      m.B[k % 16] += v * v;
    }
  m.W += static_cast<double>(nb * GS);
}

// Fixed layouts with G = GS (4, 8 or 16): kGroupBlock groups at once with lanes = groups, so
// the compiler vectorizes group_params and row_advantage across groups (one group per double
// lane). The block is transposed into x[GS][kGroupBlock] (row j of every group contiguous).
// GCC 12 vectorizes every combination but leave_one_out with nan_policy omit (its loop stays
// scalar; the order of statements in group_params matters to its vectorizer).
// The same functions as the scalar loop, built without FMA (kFma = false): every lane rounds as
// the scalar code does, results are bitwise equal to it (tested against the ragged layout).
template <typename T, bool OMIT, int64_t BASE, int64_t SCALE, int64_t GS>
struct FixedGroupLanes {
  static constexpr bool kFma = false;
  struct Args {
    const T* r;
    T* out;
    int64_t g0, g1;  // groups g0..g1
    const Options* o;
    double batch_mean, batch_std;
    ChunkMomentAcc* moments;  // (float32 only) the whitening moments of the rows written, or null
    TileMoments* tiles;       // (float32 only) the same in tile form (TileMoments), or null
  };

  using Acc = GroupAcc<T>;
  static constexpr bool kFloat8 = std::is_same_v<T, float> && GS % 8 == 0;

  // float group std (unscaled_ok): most tiles are decided by group_params' FAST form
  static constexpr bool kFastStd = std::is_same_v<Acc, float> && SCALE == kGroupStd;

  // the tile of nb groups from r, transposed: x[j][k] = row j of group k
  static ICRM_LANE void load(const T* r, int64_t nb, Acc (&x)[GS][kGroupBlock]) {
    int64_t k0 = 0;
    if constexpr (kFloat8) {  // 8x8 blocks: 8 groups by 8 rows, transposed in registers
      for (; k0 + 8 <= nb; k0 += 8)
        for (int64_t c = 0; c < GS; c += 8) transpose8(r + k0 * GS + c, GS, &x[c][k0], kGroupBlock);
    }
    for (int64_t k = k0; k < nb; ++k)
      for (int64_t j = 0; j < GS; ++j) x[j][k] = static_cast<Acc>(r[k * GS + j]);
  }

  static ICRM_LANE void store(T* out, int64_t nb, const Acc (&x)[GS][kGroupBlock]) {
    int64_t k0 = 0;
    if constexpr (kFloat8) {
      for (; k0 + 8 <= nb; k0 += 8)
        for (int64_t c = 0; c < GS; c += 8) transpose8(&x[c][k0], kGroupBlock, out + k0 * GS + c, GS);
    }
    for (int64_t k = k0; k < nb; ++k)
      for (int64_t j = 0; j < GS; ++j) out[k * GS + j] = static_cast<T>(x[j][k]);
  }

  // A of every row of the tile, in place (MASK: NaN rows masked, the omit rule). FAST: the
  // unscaled sum of squares only; returns nonzero when some group needs the full form. UNIT:
  // the scale is exactly 1 (row_advantage). INF: group_params' rule for a group without a finite
  // mean, decided here (1, 0) or read per group (-1).
  template <bool MASK, bool FAST, bool UNIT = false, int INF = -1>
  static ICRM_LANE int advantages(Acc (&x)[GS][kGroupBlock], int64_t nb, const GroupRule<Acc>& rule,
                                  Acc const_value, const SplitMean<Acc>& batch_mean) {
    int redo = 0;
    for (int64_t k = 0; k < nb; ++k) {
      auto val = [&](int64_t j) { return x[j][k]; };
      const GroupParams<Acc> gp = group_params<Acc, MASK, BASE, SCALE, OMIT, FAST, INF>(val, GS, rule);
      if constexpr (FAST) redo |= gp.exact ? 0 : 1;
      for (int64_t j = 0; j < GS; ++j)
        x[j][k] = row_advantage<Acc, MASK, BASE, UNIT>(x[j][k], gp, const_value, batch_mean);
    }
    return redo;
  }

  // whether the tile has a NaN row (explicit vectors: a bool reduction compiled to scalar compares)
  static ICRM_LANE bool any_nan(const Acc (&x)[GS][kGroupBlock], int64_t nb) {
    typedef Acc Vec __attribute__((vector_size(32)));
    typedef std::conditional_t<std::is_same_v<Acc, float>, int32_t, int64_t> Int;
    typedef Int IVec __attribute__((vector_size(32)));
    constexpr int64_t L = 32 / sizeof(Acc);
    const int64_t kv = nb / L * L;
    IVec m{};
    for (int64_t j = 0; j < GS; ++j)
      for (int64_t k = 0; k < kv; k += L) {
        Vec v;
        std::memcpy(&v, &x[j][k], sizeof v);
        m |= v != v;
      }
    bool found = false;
    for (int64_t l = 0; l < L; ++l) found |= m[l] != 0;
    for (int64_t j = 0; j < GS; ++j)
      for (int64_t k = kv; k < nb; ++k) found |= x[j][k] != x[j][k];
    return found;
  }

  // (float group std, after the full form: a rare tile) the groups whose float statistics need
  // double (float_std_needs_double: the statistics recomputed one group at a time, the same
  // bits), computed again in double as the scalar loop does, before the store
  static void redo_overflowed_in_double(const Args& p, const T* r, int64_t nb, Acc (&x)[GS][kGroupBlock]) {
    if constexpr (kFastStd) {
      const GroupRule<float> rule_f(*p.o, p.batch_std);
      const GroupRule<double> rule(*p.o, p.batch_std);
      const SplitMean<double> batch_mean(p.batch_mean);
      const double const_value = singleton_value(*p.o);
      for (int64_t k = 0; k < nb; ++k) {
        auto val_f = [&](int64_t j) { return static_cast<float>(r[k * GS + j]); };
        if (!float_std_needs_double(group_params<float, OMIT, BASE, SCALE>(val_f, GS, rule_f))) continue;
        group_advantages_of<double, OMIT, BASE, SCALE>(
            [&](int64_t j) { return static_cast<double>(r[k * GS + j]); }, GS, rule, const_value, batch_mean,
            [&](int64_t j, double a) { x[j][k] = static_cast<T>(a); });
      }
    }
  }

  static ICRM_LANE void block(const Args& p, int64_t g, int64_t nb) {
    const GroupRule<Acc> rule(*p.o, p.batch_std);
    const Acc const_value = static_cast<Acc>(singleton_value(*p.o));
    const SplitMean<Acc> batch_mean(p.batch_mean);
    alignas(64) Acc x[GS][kGroupBlock];
    const T* r = p.r + g * GS;
    load(r, nb, x);
    // A tile without NaN rows takes the loops without masks, under nan_policy omit too (every
    // row counts, and the division rule of OMIT is kept: the same bits as the masked loop).
    if constexpr (kFastStd) {
      // float group std: no NaN scan and no scaled sum first. A NaN row makes its group's sum
      // of squares NaN, which unscaled_ok rejects like an out-of-range one; then the tile is
      // reloaded and redone in the full form (the same bits for the groups FAST decided)
      if (advantages<false, true>(x, nb, rule, const_value, batch_mean)) {
        load(r, nb, x);
        advantages<OMIT, false>(x, nb, rule, const_value, batch_mean);
        redo_overflowed_in_double(p, r, nb, x);
      }
    } else if (OMIT && !p.o->no_nan && any_nan(x, nb)) {
      advantages<OMIT, false>(x, nb, rule, const_value, batch_mean);
    } else if (SCALE == kScaleNone && rule.eps == Acc(0)) {
      // scale none (eps 0, as the Python layer passes it): A times 1 / (1 + 0) = 1 is A itself,
      // so the multiply is left out (8 of the ~40 instructions per 16 groups; bench/NOTES.md §14.3)
      if (rule.nan_if_inf) advantages<false, false, SCALE == kScaleNone, 1>(x, nb, rule, const_value, batch_mean);
      else advantages<false, false, SCALE == kScaleNone, 0>(x, nb, rule, const_value, batch_mean);
    } else {
      advantages<false, false>(x, nb, rule, const_value, batch_mean);
    }
    if constexpr (std::is_same_v<T, float>) {
      if (p.tiles) tile_moments<GS>(x, nb, *p.tiles);
    }
    store(p.out + g * GS, nb, x);
  }

  static ICRM_LANE void run(const Args& p) {
    for (int64_t g = p.g0; g < p.g1; g += kGroupBlock) {
      const int64_t nb = std::min(kGroupBlock, p.g1 - g);
      block(p, g, nb);
      if constexpr (std::is_same_v<T, float>) {
        if (ChunkMomentAcc* c = p.moments) {  // tiles start kGroupBlock * GS rows apart: multiples of kFloatSub
          const int64_t t1 = std::min((g + nb) * GS, c->body);
          if (g * GS < t1)
            FloatMomentLanes<false>::run({p.out, g * GS, t1, p.out[c->lo], c->W, c->A, c->B});
        }
      }
    }
  }
};

// One whitened value: (a - mean) * mul. float32 A is whitened in float32 (as on the GPU; a round
// trip through double costs the pass 3x on AVX-512), with the mean split (SplitMean): ~1.5 ulp.
// double A: the double formula. No FMA (both ISA copies alike). faithful() is false where the
// spread's reciprocal leaves float32's normal range (whiten_eps = 0 with subnormal spreads or
// spreads above ~1e38): that pass runs in double.
template <typename T>
struct WhitenForm {
  SplitMean<T> mean;
  T mul;
  WhitenForm(double mean_d, double mul_d) : mean(mean_d), mul(static_cast<T>(mul_d)) {}
  static bool faithful(double mean_d, double mul_d) {
    return !(std::isfinite(mean_d) && std::isfinite(mul_d)) || mul_d == 0.0 ||
           (std::abs(mul_d) >= static_cast<double>(std::numeric_limits<T>::min()) &&
            std::abs(mul_d) <= static_cast<double>(std::numeric_limits<T>::max()));
  }
  ICRM_LANE T operator()(T a) const { return mean.centered(a) * mul; }
};

// The whitening pass without weights, vectorized.
template <typename T>
struct WhitenLanes {
  static constexpr bool kFma = false;
  struct Args {
    T* a;
    int64_t i0, i1;
    WhitenForm<T> f;
  };
  static ICRM_LANE void run(const Args& p) {
    T* __restrict a = p.a;
    const WhitenForm<T> f = p.f;
    for (int64_t i = p.i0; i < p.i1; ++i) a[i] = f(a[i]);
  }
};

// The whitening's multiplier 1 / spread, from the moments of A, in o.whiten_std's form.
inline double whiten_mul(const Moments& m, const Options& o) {
  const double var = m.M2 / (o.unbiased ? m.W - 1.0 : m.W);
  if (o.whiten_std == kStdEps) return 1.0 / (std::sqrt(var) + o.whiten_eps);
  if (o.whiten_std == kRsqrtEps) return 1.0 / std::sqrt(var + o.whiten_eps);
  return 1.0 / std::sqrt(std::max(var, o.whiten_eps));
}

// chunked_moments (the chunks of the group pass, merged in order), then the whitening of the
// rows (no weights; T's arithmetic faithful, else left to whiten_inplace), in one OpenMP region
// with a barrier between them: one fork and join instead of two (~3 µs a call on the 2-core CI
// machine, bench/NOTES.md §14.7). The same chunks, merge order and row arithmetic: the same bits.
// Returns false where it does not apply (no OpenMP, one thread, inside a parallel region, one
// chunk); the caller then runs chunked_moments and whiten_inplace.
template <typename T, class F>
bool moments_then_whiten(T* a, int64_t n, const Options& o, F chunk, FusedMoments& fused) {
#ifdef _OPENMP
  const int nt = at::get_num_threads();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (nt < 2 || chunks < 2 || at::in_parallel_region()) return false;
  std::vector<Moments> parts(chunks);
  using K = WhitenLanes<T>;
  const LaneFn<K> lanes = pick_lanes<K>();
#pragma omp parallel num_threads(nt)
  {
    const int64_t team = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t per = (chunks + team - 1) / team;
    const int64_t c0 = std::min(chunks, t * per), c1 = std::min(chunks, c0 + per);
    for (int64_t c = c0; c < c1; ++c) parts[c] = chunk(c * kChunk, std::min(n, (c + 1) * kChunk));
#pragma omp barrier
    Moments m;  // every thread merges the same parts in the same order
    for (const auto& part : parts) m = merge(m, part);
    const double mul = whiten_mul(m, o);
    const bool faithful = WhitenForm<T>::faithful(m.mean, mul);
    if (faithful) lanes(typename K::Args{a, c0 * kChunk, std::min(n, c1 * kChunk), WhitenForm<T>(m.mean, mul)});
    if (t == 0) {
      fused.m = m;
      fused.rescaled = faithful;
    }
  }
  fused.done = true;
  return true;
#else
  (void)a, (void)n, (void)o, (void)chunk, (void)fused;
  return false;
#endif
}

template <typename T, bool OMIT, int64_t BASE, int64_t SCALE, int64_t GS>
void normalize_fixed_lanes(const T* r, T* out, int64_t num_groups, const Options& o, double batch_mean,
                           double batch_std) {
  using K = FixedGroupLanes<T, OMIT, BASE, SCALE, GS>;
  const LaneFn<K> lanes = pick_lanes<K>();
  const int64_t n = num_groups * GS, chunks = (n + kChunk - 1) / kChunk;
  static_assert(kChunk % (kGroupBlock * 16) == 0 && kGroupBlock * 4 % kFloatSub == 0, "tiles inside chunks");
  if constexpr (std::is_same_v<T, float> && centred_baseline(BASE)) {
    if (o.whiten_moments) {
      // the whitening moments in tile form (TileMoments), chunk by chunk
      auto chunk = [&](int64_t lo, int64_t hi) {
        TileMoments acc;
        lanes(typename K::Args{r, out, lo / GS, hi / GS, &o, batch_mean, batch_std, nullptr, &acc});
        return acc.finish();
      };
      if (!moments_then_whiten(out, n, o, chunk, *o.whiten_moments)) {
        o.whiten_moments->m = chunked_moments(n, chunk);
        o.whiten_moments->done = true;
      }
      return;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    if (o.whiten_moments && chunks >= at::get_num_threads()) {
      // the whitening moments fused (FusedMoments): one chunk of batch_moments at a time
      o.whiten_moments->m = chunked_moments(n, [&](int64_t lo, int64_t hi) {
        ChunkMomentAcc acc{lo, lo + (hi - lo) / kFloatSub * kFloatSub};
        lanes(typename K::Args{r, out, lo / GS, hi / GS, &o, batch_mean, batch_std, &acc, nullptr});
        return float_moments_finish<false>(out, acc.body, hi, static_cast<double>(out[lo]), acc.W, acc.A, acc.B);
      });
      o.whiten_moments->done = true;
      return;
    }
  }
  // the same partition as the scalar path; a group's result does not depend on its block
  at::parallel_for(0, num_groups, std::max<int64_t>(1, kGrain / GS), [&](int64_t g0, int64_t g1) {
    lanes(typename K::Args{r, out, g0, g1, &o, batch_mean, batch_std, nullptr, nullptr});
  });
}

template <typename T, bool OMIT, bool ORDER, int64_t B, int64_t S>
void fixed_size(const T* r, T* out, const int64_t* cu, const int64_t* order, int64_t n, int64_t group_size,
                int64_t num_groups, const Options& o, double bm, double bs) {
  // (float32 with a batch std whose reciprocal overflows float: the scalar loop, in double)
  if (!ORDER && !(std::is_same_v<T, float> && float_batch_inv_overflows(o, bs))) {
    if (group_size == 4) return normalize_fixed_lanes<T, OMIT, B, S, 4>(r, out, num_groups, o, bm, bs);
    if (group_size == 8) return normalize_fixed_lanes<T, OMIT, B, S, 8>(r, out, num_groups, o, bm, bs);
    if (group_size == 16) return normalize_fixed_lanes<T, OMIT, B, S, 16>(r, out, num_groups, o, bm, bs);
  }
  normalize_groups_t<T, OMIT, ORDER, B, S>(r, out, cu, order, n, group_size, num_groups, o, bm, bs);
}

template <typename T, bool OMIT, bool ORDER>
void dispatch_options(const T* r, T* out, const int64_t* cu, const int64_t* order, int64_t n, int64_t group_size,
                      int64_t num_groups, const Options& o, double bm, double bs) {
#define ICRM_CASE(B, S)                                                                                         \
  if (o.baseline == B && o.scale == S)                                                                          \
    return fixed_size<T, OMIT, ORDER, B, S>(r, out, cu, order, n, group_size, num_groups, o, bm, bs);
  ICRM_CASE(kBaseNone, kScaleNone) ICRM_CASE(kBaseNone, kGroupStd) ICRM_CASE(kBaseNone, kBatchStd)
  ICRM_CASE(kGroupMean, kScaleNone) ICRM_CASE(kGroupMean, kGroupStd) ICRM_CASE(kGroupMean, kBatchStd)
  ICRM_CASE(kLeaveOneOut, kScaleNone) ICRM_CASE(kLeaveOneOut, kGroupStd) ICRM_CASE(kLeaveOneOut, kBatchStd)
  ICRM_CASE(kBatchMean, kScaleNone) ICRM_CASE(kBatchMean, kGroupStd) ICRM_CASE(kBatchMean, kBatchStd)
#undef ICRM_CASE
  TORCH_CHECK(false, "group_advantages: unknown baseline/scale code");
}

template <typename T>
void normalize_groups(const T* r, T* out, const int64_t* cu, const int64_t* order, int64_t n, int64_t group_size,
                      int64_t num_groups, const Options& o, double bm, double bs) {
  if (o.omit) {
    if (order) dispatch_options<T, true, true>(r, out, cu, order, n, group_size, num_groups, o, bm, bs);
    else dispatch_options<T, true, false>(r, out, cu, order, n, group_size, num_groups, o, bm, bs);
  } else {
    if (order) dispatch_options<T, false, true>(r, out, cu, order, n, group_size, num_groups, o, bm, bs);
    else dispatch_options<T, false, false>(r, out, cu, order, n, group_size, num_groups, o, bm, bs);
  }
}

// BNPO's "v = 0" guard, decided alike in C++, Triton and the reference: the group means p_g
// carry rounding noise (an ulp or so), so v = 0 exactly misses equal success rates k/G with G not a
// power of two. v <= 1e-12 mean (1 - mean) (the largest variance possible at that mean) is
// c = mean (1 - mean) / v - 1 >= ~1e12, a Beta concentration no finite batch can resolve.
// NaN compares false: a NaN v still propagates.
inline bool bnpo_degenerate(double v, double mean) { return v <= 1e-12 * (mean * (1.0 - mean)); }

// BNPO (scale code 3): s = clamp((r - lo) / (hi - lo), 0, 1); p_g = group mean of s (0 for a
// singleton under the original rules); alpha, beta from the mean and unbiased variance of p over
// the groups; A_i = clamp(1 / BetaPDF(p_g; alpha, beta), 0, 1e6) * (s_i - p_g).
// The per-group statistics (s, pivot, S1, p_g) and A = w_g (s - p_g) are computed in Acc: float
// for float32 groups of at most kFloatGroupMax rows when the bounds fit a float (fp32 statistics
// for fp32 inputs, 8 groups per AVX2 vector), else double; the fixed lanes and the scalar loop
// use the same Acc and the same order, so fixed and ragged layouts give the same bits. The
// moments of p over the groups and the Beta weights stay in double.
// Groups g..g+nb of a fixed layout (r points at group g) as a tile x[row][group] in Acc, and
// back: float G = 8 / 16 through in-register 8x8 transposes, the rest element by element.
template <typename Acc, typename T, int64_t GS>
ICRM_LANE void load_tile(const T* r, int64_t nb, Acc (&x)[GS][kGroupBlock]) {
  int64_t k0 = 0;
  if constexpr (std::is_same_v<T, float> && GS % 8 == 0) {
    if constexpr (std::is_same_v<Acc, float>) {
      for (; k0 + 8 <= nb; k0 += 8)
        for (int64_t c = 0; c < GS; c += 8) transpose8(r + k0 * GS + c, GS, &x[c][k0], kGroupBlock);
    } else {
      alignas(64) float xf[GS][kGroupBlock];
      for (; k0 + 8 <= nb; k0 += 8)
        for (int64_t c = 0; c < GS; c += 8) transpose8(r + k0 * GS + c, GS, &xf[c][k0], kGroupBlock);
      for (int64_t j = 0; j < GS; ++j)
        for (int64_t k = 0; k < k0; ++k) x[j][k] = static_cast<Acc>(xf[j][k]);
    }
  }
  for (int64_t k = k0; k < nb; ++k)
    for (int64_t j = 0; j < GS; ++j) x[j][k] = static_cast<Acc>(r[k * GS + j]);
}

template <typename Acc, typename T, int64_t GS>
ICRM_LANE void store_tile(T* out, int64_t nb, const Acc (&x)[GS][kGroupBlock]) {
  int64_t k0 = 0;
  if constexpr (std::is_same_v<T, float> && GS % 8 == 0) {
    k0 = nb / 8 * 8;
    if constexpr (std::is_same_v<Acc, float>) {
      for (int64_t k = 0; k < k0; k += 8)
        for (int64_t c = 0; c < GS; c += 8) transpose8(&x[c][k], kGroupBlock, out + k * GS + c, GS);
    } else {
      alignas(64) float xf[GS][kGroupBlock];
      for (int64_t j = 0; j < GS; ++j)
        for (int64_t k = 0; k < k0; ++k) xf[j][k] = static_cast<float>(x[j][k]);
      for (int64_t k = 0; k < k0; k += 8)
        for (int64_t c = 0; c < GS; c += 8) transpose8(&xf[c][k], kGroupBlock, out + k * GS + c, GS);
    }
  }
  for (int64_t k = k0; k < nb; ++k)
    for (int64_t j = 0; j < GS; ++j) out[k * GS + j] = static_cast<T>(x[j][k]);
}

// The whitening moments of float32 A[n] (groups of GS rows, A centred per group) in tile form,
// from the stored rows: the sums the fixed lanes fuse into their group pass (TileMoments), for
// a ragged layout whose groups all have GS rows.
template <int64_t GS>
struct TileMomentLanes {
  static constexpr bool kFma = false;
  struct Args {
    const float* a;
    int64_t g0, g1;
    TileMoments* m;
  };
  static ICRM_LANE void run(const Args& p) {
    alignas(64) float x[GS][kGroupBlock];
    for (int64_t g = p.g0; g < p.g1; g += kGroupBlock) {
      const int64_t nb = std::min(kGroupBlock, p.g1 - g);
      load_tile<float, float, GS>(p.a + g * GS, nb, x);
      tile_moments<GS>(x, nb, *p.m);
    }
  }
};

template <int64_t GS>
Moments tile_moments_of(const float* a, int64_t n) {
  using K = TileMomentLanes<GS>;
  const LaneFn<K> lanes = pick_lanes<K>();
  return chunked_moments(n, [&](int64_t lo, int64_t hi) {  // the fixed lanes' chunks and order
    TileMoments acc;
    lanes({a, lo / GS, hi / GS, &acc});
    return acc.finish();
  });
}

// s of one reward in Acc (NaN stays NaN: std::max/min return their first argument on NaN)
template <typename Acc>
ICRM_LANE Acc bnpo_scaled(Acc v, Acc lo, Acc inv_range) {
  return std::min(std::max((v - lo) * inv_range, Acc(0)), Acc(1));
}

// The BNPO weight clamp(1 / BetaPDF(p; alpha, beta), 0, 1e6), lnB = log Beta(alpha, beta).
inline double bnpo_weight(double pg, double alpha, double beta, double lnB) {
  const double xa = alpha == 1.0 ? 0.0 : (alpha - 1.0) * std::log(pg);
  const double xb = beta == 1.0 ? 0.0 : (beta - 1.0) * std::log(1.0 - pg);
  return std::min(std::exp(lnB - xa - xb), 1e6);
}

// w(p_g) is a function of p_g alone, and groups share few distinct p_g (k / G for binary
// rewards): a small direct-mapped cache of (bits of p_g) -> w skips two logs and an exp per
// group (~60 ns) when p_g repeats; same values, whatever hits. One per thread's range. Every
// slot starts valid (key +0.0, value w(+0.0)): no "used" flag to test per lookup.
struct BnpoWeightCache {
  static constexpr int kSlots = 256;
  uint64_t keys[kSlots];
  double vals[kSlots];
  double alpha, beta, lnB;
  BnpoWeightCache(double a, double b, double l) : alpha(a), beta(b), lnB(l) {
    const double w0 = bnpo_weight(0.0, alpha, beta, lnB);
    for (int h = 0; h < kSlots; ++h) keys[h] = 0, vals[h] = w0;
  }
  // p_g = k / GS exactly (binary rewards: every group's success rate): w from the GS + 1 rates
  // that fill_rates<GS>() computed, without the hash (a third of pass 2's time); other p_g: get()
  static constexpr int64_t kMaxRates = 16;
  double rates[kMaxRates + 1];
  float rates_f[kMaxRates + 1];  // the same, rounded once: the float arithmetic's weights
  template <int64_t GS>
  void fill_rates() {
    static_assert(GS <= kMaxRates, "the fixed lanes' group sizes");
    for (int64_t k = 0; k <= GS; ++k) {
      rates[k] = bnpo_weight(static_cast<double>(k) / GS, alpha, beta, lnB);
      rates_f[k] = static_cast<float>(rates[k]);
    }
  }
  // whether pg is a rate k / GS, k in its slot of rates[] (0 otherwise); branch-free, so that
  // a loop over a tile's groups vectorizes (a gather from rates[])
  template <int64_t GS>
  static ICRM_LANE bool rate_slot(double pg, int32_t& k) {
    const double t = pg * GS;  // exact for k / GS (GS a power of two)
    const bool in_range = t >= 0.0 && t <= static_cast<double>(GS);  // false for NaN
    k = static_cast<int32_t>(in_range ? t : 0.0);
    return in_range && static_cast<double>(k) == t;
  }
  template <int64_t GS>
  double get_rate(double pg) {
    int32_t k;
    return rate_slot<GS>(pg, k) ? rates[k] : get(pg);
  }
  double get(double pg) {
    const uint64_t bits = __builtin_bit_cast(uint64_t, pg);
    const int h = static_cast<int>((bits * 0x9E3779B97F4A7C15ull) >> 56);
    if (keys[h] != bits) {
      keys[h] = bits;
      vals[h] = bnpo_weight(pg, alpha, beta, lnB);
    }
    return vals[h];
  }
};

// BNPO pass 2 for fixed layouts: A = w_g (s - p_g), constants for singletons, 0 for omitted
// rows, lanes = groups (w_g, p_g, n_g read as vectors), the same arithmetic as bnpo()'s loop;
// w_g looked up per block in the thread's weight cache (no separate pass over the groups).
template <typename Acc, typename T, bool OMIT, int64_t GS>
struct BnpoOutLanes {
  static constexpr bool kFma = false;
  struct Args {
    const T* r;
    T* out;
    int64_t g0, g1;
    double lo, inv_range, cval;
    bool raw_singleton;
    const double *p, *n;
    double alpha, beta, lnB;
  };
  static ICRM_LANE void block(const Args& q, int64_t g, int64_t nb, BnpoWeightCache& cache) {
    const Acc lo = static_cast<Acc>(q.lo), inv_range = static_cast<Acc>(q.inv_range), cval = static_cast<Acc>(q.cval);
    const bool raw_singleton = q.raw_singleton;
    alignas(64) Acc P[kGroupBlock], N[kGroupBlock], WG[kGroupBlock];
    // w_g: a success rate k / GS (binary rewards) reads the table of GS + 1 weights, branch-free
    // over the tile (a gather; the per-group lookup with its branches took ~0.5 cycles a row),
    // every other rate the hash, in a second loop that binary rewards never enter
    int miss = 0;
    for (int64_t k = 0; k < nb; ++k) P[k] = static_cast<Acc>(q.p[g + k]);
    if constexpr (std::is_same_v<Acc, float>) {
      // rate_slot on the float P: p_g is a float value (pass 1 computed it in float), and GS a
      // power of two, so P * GS is exact in float as in double: the same test. In float the
      // loops vectorize (on the double p, as one loop, they did not: ~10 instructions a group)
      alignas(64) int32_t slot[kGroupBlock];
      int32_t bad = 0;
      for (int64_t k = 0; k < nb; ++k) {
        const float t = P[k] * static_cast<float>(GS);
        const bool in_range = (t >= 0.0f) & (t <= static_cast<float>(GS));  // false for NaN
        const int32_t kk = static_cast<int32_t>(in_range ? t : 0.0f);
        slot[k] = kk;
        bad |= in_range & (static_cast<float>(kk) == t) ? 0 : 1;
      }
      for (int64_t k = 0; k < nb; ++k) WG[k] = cache.rates_f[slot[k]];
      miss = bad;
    } else {
      for (int64_t k = 0; k < nb; ++k) {
        int32_t slot;
        miss |= BnpoWeightCache::rate_slot<GS>(q.p[g + k], slot) ? 0 : 1;
        WG[k] = static_cast<Acc>(cache.rates[slot]);
      }
    }
    if (miss)
      for (int64_t k = 0; k < nb; ++k) WG[k] = static_cast<Acc>(cache.template get_rate<GS>(q.p[g + k]));
    // without omit every group of a fixed layout counts GS >= 4 rows: never a singleton
    if constexpr (OMIT)
      for (int64_t k = 0; k < nb; ++k) N[k] = static_cast<Acc>(q.n[g + k]);
    if constexpr (std::is_same_v<T, float> && std::is_same_v<Acc, float> && GS % 8 == 0) {
      // A = w_g (s - p_g) row by row needs no statistic across the group: the rows stay in
      // place, 8 at a time (GS / 8 vectors a group) with the group's p_g and w_g broadcast, and
      // the two 8x8 transposes of the tile (48 shuffles a 64-row block) go. The same
      // operations per row as the loop below: the same bits.
      const Floats8 zero{}, one = zero + Acc(1);
      for (int64_t k = 0; k < nb; ++k) {
        const Acc pg = P[k], wg = WG[k];
        bool to_const = false;
        if constexpr (OMIT) to_const = (N[k] == Acc(1)) & !raw_singleton;
        for (int64_t c = 0; c < GS; c += 8) {
          const Floats8 v = *reinterpret_cast<const Floats8u*>(q.r + (g + k) * GS + c);
          Floats8 sv = (v - lo) * inv_range;
          sv = sv < zero ? zero : sv;  // std::max(x, 0) and std::min(x, 1): NaN stays NaN
          sv = one < sv ? one : sv;
          Floats8 a = to_const ? zero + cval : wg * (sv - pg);
          if constexpr (OMIT) a = sv == sv ? a : zero;
          *reinterpret_cast<Floats8u*>(q.out + (g + k) * GS + c) = a;
        }
      }
      return;
    }
    alignas(64) Acc x[GS][kGroupBlock];
    load_tile<Acc, T, GS>(q.r + g * GS, nb, x);
    for (int64_t k = 0; k < nb; ++k) {
      const Acc pg = P[k], wg = WG[k];
      bool to_const = false;
      if constexpr (OMIT) to_const = (N[k] == Acc(1)) & !raw_singleton;
      for (int64_t j = 0; j < GS; ++j) {
        const Acc s = bnpo_scaled(x[j][k], lo, inv_range);
        Acc a = to_const ? cval : wg * (s - pg);
        if constexpr (OMIT) a = s == s ? a : Acc(0);
        x[j][k] = a;
      }
    }
    store_tile<Acc, T, GS>(q.out + g * GS, nb, x);
  }
  static ICRM_LANE void run(const Args& q) {
    BnpoWeightCache cache(q.alpha, q.beta, q.lnB);
    cache.template fill_rates<GS>();
    for (int64_t g = q.g0; g < q.g1; g += kGroupBlock) block(q, g, std::min(kGroupBlock, q.g1 - g), cache);
  }
};

template <typename Acc, typename T, int64_t GS>
void bnpo_pass2_fixed(const T* r, T* out, int64_t num_groups, const Options& o, double lo, double inv_range,
                      double cval, const double* p, const double* n, double alpha, double beta, double lnB) {
  auto go = [&](auto omit_tag) {
    using K = BnpoOutLanes<Acc, T, decltype(omit_tag)::value, GS>;
    const LaneFn<K> lanes = pick_lanes<K>();
    at::parallel_for(0, num_groups, std::max<int64_t>(1, kGrain / GS), [&](int64_t g0, int64_t g1) {
      lanes(typename K::Args{r, out, g0, g1, lo, inv_range, cval, o.singleton == kRaw, p, n, alpha, beta, lnB});
    });
  };
  if (o.omit) go(std::true_type{});
  else go(std::false_type{});
}

// BNPO pass 1 for fixed layouts (G = 4, 8, 16, no order): per group the largest valid scaled
// value (pivot), the count and S1 = sum (s - pivot) in row order, in Acc, branch-free with
// lanes = groups, so that it vectorizes across groups; the same arithmetic and order as the
// scalar loop in bnpo() (so the same bits).
template <typename Acc, typename T, bool OMIT, int64_t GS>
struct BnpoLanes {
  static constexpr bool kFma = false;
  struct Args {
    const T* r;
    int64_t g0, g1;
    double lo, inv_range;
    bool raw_singleton;
    double *p, *n, *w;
  };
  static ICRM_LANE void block(const Args& q, int64_t g, int64_t nb) {
    alignas(64) Acc x[GS][kGroupBlock];  // one arithmetic only: the loop below vectorizes
    load_tile<Acc, T, GS>(q.r + g * GS, nb, x);
    const Acc lo = static_cast<Acc>(q.lo), inv_range = static_cast<Acc>(q.inv_range);
    const Acc ninf = -std::numeric_limits<Acc>::infinity();
    const bool raw_singleton = q.raw_singleton;
    alignas(64) Acc P[kGroupBlock], N[kGroupBlock], W[kGroupBlock];  // local: no aliasing with q
    for (int64_t k = 0; k < nb; ++k) {
      for (int64_t j = 0; j < GS; ++j) x[j][k] = bnpo_scaled(x[j][k], lo, inv_range);
      Acc pivot = ninf;
      for (int64_t j = 0; j < GS; ++j) {
        const Acc s = x[j][k];
        pivot = pivot < s ? s : pivot;  // false for a NaN s
      }
      pivot = pivot == ninf ? Acc(0) : pivot;
      Acc cnt = 0, S1 = 0;
      for (int64_t j = 0; j < GS; ++j) {
        const Acc s = x[j][k];
        if constexpr (OMIT) {
          const bool ok = s == s;
          cnt += ok ? Acc(1) : Acc(0);
          S1 += ok ? s - pivot : Acc(0);
        } else {
          cnt += Acc(1);
          S1 += s - pivot;
        }
      }
      const bool any = cnt > 0, single = cnt == Acc(1);
      Acc pg = pivot + S1 / cnt;
      pg = any ? pg : Acc(0);
      const bool in_stats = any & (raw_singleton | !single);
      pg = (single & raw_singleton) ? Acc(0) : pg;
      P[k] = in_stats ? pg : Acc(0);
      N[k] = cnt;
      W[k] = in_stats ? Acc(1) : Acc(0);
    }
    for (int64_t k = 0; k < nb; ++k) q.p[g + k] = static_cast<double>(P[k]);
    // without omit every group counts GS rows and weighs 1: bnpo() reads neither (2 of the 3
    // double arrays of pass 1 neither written nor read)
    if constexpr (OMIT)
      for (int64_t k = 0; k < nb; ++k) {
        q.n[g + k] = static_cast<double>(N[k]);
        q.w[g + k] = static_cast<double>(W[k]);
      }
  }
  static ICRM_LANE void run(const Args& q) {
    for (int64_t g = q.g0; g < q.g1; g += kGroupBlock) block(q, g, std::min(kGroupBlock, q.g1 - g));
  }
};

// parts: when given (one per kChunk groups), each chunk's p moments too, by the thread that
// just wrote its p (batch_moments' chunks and merge order: the same bits, one parallel region
// and one read of p less)
template <typename Acc, typename T, bool OMIT, int64_t GS>
void bnpo_pass1_lanes(const T* r, int64_t num_groups, const Options& o, double lo, double inv_range, double* p,
                      double* n, double* w, std::vector<Moments>* parts) {
  using K = BnpoLanes<Acc, T, OMIT, GS>;
  const LaneFn<K> lanes = pick_lanes<K>();
  if (parts) {
    at::parallel_for(0, static_cast<int64_t>(parts->size()), 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t g0 = c * kChunk, g1 = std::min(num_groups, (c + 1) * kChunk);
        lanes(typename K::Args{r, g0, g1, lo, inv_range, o.singleton == kRaw, p, n, w});
        (*parts)[c] = chunk_moments(p, OMIT ? w : nullptr, g0, g1, false);
      }
    });
    return;
  }
  at::parallel_for(0, num_groups, std::max<int64_t>(1, kGrain / GS), [&](int64_t g0, int64_t g1) {
    lanes(typename K::Args{r, g0, g1, lo, inv_range, o.singleton == kRaw, p, n, w});
  });
}

template <typename Acc, typename T, int64_t GS>
bool bnpo_pass1_fixed(const T* r, int64_t num_groups, const Options& o, double lo, double inv_range, double* p,
                      double* n, double* w, std::vector<Moments>* parts) {
  if (o.omit) bnpo_pass1_lanes<Acc, T, true, GS>(r, num_groups, o, lo, inv_range, p, n, w, parts);
  else bnpo_pass1_lanes<Acc, T, false, GS>(r, num_groups, o, lo, inv_range, p, n, w, parts);
  return true;
}

// bnpo() in arithmetic Acc for the groups of at most kFloatGroupMax rows (see above), double
// for longer ones.
template <typename T>
void bnpo(const T* r, T* out, const int64_t* cu, const int64_t* order, int64_t n_rows, int64_t group_size,
          int64_t num_groups, const Options& o, double lo, double hi) {
  const double inv_range = 1.0 / (hi - lo);
  // float statistics: float32 rewards and bounds whose float images keep s meaningful
  const bool fbounds = std::is_same_v<T, float> && std::abs(lo) <= 1e30 && std::abs(hi) <= 1e30 &&
                       inv_range <= 1e30 && inv_range >= 1e-30;
  auto use_float = [&](int64_t len) { return fbounds && len <= kFloatGroupMax; };
  // every entry is written by pass 1 (the lanes or the loop): no zeroing
  std::unique_ptr<double[]> p_buf(new double[num_groups]), n_buf(new double[num_groups]),
      w_buf(new double[num_groups]);
  double *p = p_buf.get(), *n = n_buf.get(), *w = w_buf.get();
  auto bounds = [&](int64_t g, int64_t& a, int64_t& b) { group_bounds(cu, group_size, n_rows, g, a, b); };
  auto row = [&](int64_t j) { return order ? std::min(std::max<int64_t>(order[j], 0), n_rows - 1) : j; };
  bool done = false;
  // the fixed lanes compute the p moments inside pass 1 when there are chunks for every thread
  // (fewer: pass 1 keeps its finer partition, and batch_moments follows)
  const int64_t chunks = (num_groups + kChunk - 1) / kChunk;
  std::vector<Moments> parts(chunks >= at::get_num_threads() ? chunks : 0);
  std::vector<Moments>* fused = parts.empty() ? nullptr : &parts;
  auto pass1 = [&](auto gs_tag) {
    constexpr int64_t GS = decltype(gs_tag)::value;
    if constexpr (std::is_same_v<T, float>) {
      if (use_float(GS)) return bnpo_pass1_fixed<float, T, GS>(r, num_groups, o, lo, inv_range, p, n, w, fused);
    }
    return bnpo_pass1_fixed<double, T, GS>(r, num_groups, o, lo, inv_range, p, n, w, fused);
  };
  if (!order && group_size == 4) done = pass1(std::integral_constant<int64_t, 4>{});
  if (!order && group_size == 8) done = pass1(std::integral_constant<int64_t, 8>{});
  if (!order && group_size == 16) done = pass1(std::integral_constant<int64_t, 16>{});
  // one group of the scalar loop in Acc: the same arithmetic and order as BnpoLanes
  auto stats1 = [&](auto acc_tag, int64_t g, int64_t a, int64_t b) {
    using Acc = decltype(acc_tag);
    const Acc lo_a = static_cast<Acc>(lo), inv_a = static_cast<Acc>(inv_range);
    // pivot: the group's largest valid value, as in the reference and the Triton kernel, so
    // that groups holding the same values get bitwise the same p_g whatever their row order
    // (a first-row pivot made equal success rates differ by an ulp, and the v = 0 guard miss)
    Acc cnt = 0, pivot = -std::numeric_limits<Acc>::infinity(), S1 = 0;
    for (int64_t j = a; j < b; ++j) {
      const Acc s = bnpo_scaled(static_cast<Acc>(r[row(j)]), lo_a, inv_a);
      if (std::isnan(s)) continue;
      pivot = std::max(pivot, s);
    }
    if (pivot == -std::numeric_limits<Acc>::infinity()) pivot = 0;
    for (int64_t j = a; j < b; ++j) {
      const Acc s = bnpo_scaled(static_cast<Acc>(r[row(j)]), lo_a, inv_a);
      if (o.omit && std::isnan(s)) continue;
      cnt += Acc(1);
      S1 += s - pivot;
    }
    Acc pg = cnt > 0 ? pivot + S1 / cnt : Acc(0);
    const bool single = cnt == Acc(1);
    bool in_stats = cnt > 0 && (o.singleton == kRaw || !single);
    if (single && o.singleton == kRaw) pg = 0;  // the original code: p = 0 for a singleton
    p[g] = in_stats ? static_cast<double>(pg) : 0.0;
    n[g] = static_cast<double>(cnt);
    w[g] = in_stats ? 1.0 : 0.0;
  };
  if (!done) at::parallel_for(0, num_groups, 1024, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      int64_t a, b;
      bounds(g, a, b);
      if (use_float(b - a)) stats1(float(0), g, a, b);
      else stats1(double(0), g, a, b);
    }
  });
  // (over fixed chunks, in parallel: deterministic). Fixed lanes without omit wrote no weights:
  // all 1, and unit weights give the same bits as none (1 * d = d)
  Moments m;
  if (done && fused) {
    for (const auto& q : parts) m = merge(m, q);  // batch_moments' order
  } else {
    m = batch_moments(p, done && !o.omit ? nullptr : w, num_groups, false);
  }
  const bool one = m.W <= 1.0;
  const double mean = one ? 0.0 : m.mean;
  const double v = one ? 1.0 : m.M2 / (m.W - 1.0);
  const double c = mean * (1.0 - mean) / v - 1.0;
  double alpha = 1.0 + c * mean / 3.0, beta = 1.0 + c * (1.0 - mean) / 3.0;
  if (!std::isnan(alpha)) alpha = std::max(alpha, 1.0);
  if (!std::isnan(beta)) beta = std::max(beta, 1.0);
  if (bnpo_degenerate(v, mean)) alpha = beta = 1.0;  // guard v = 0: uniform weights instead of NaN
  const double lnB = std::lgamma(alpha) + std::lgamma(beta) - std::lgamma(alpha + beta);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const bool fixed_lanes = !order && (group_size == 4 || group_size == 8 || group_size == 16);
  // A of one row of the scalar loop in Acc (the same arithmetic as BnpoOutLanes), branch-free
  // (binary rewards mispredict every branch on s): a singleton under zero / nan takes that
  // constant, an omitted NaN row 0
  auto out_rows = [&](auto acc_tag, int64_t g, int64_t a, int64_t b, double wg_d) {
    using Acc = decltype(acc_tag);
    const Acc lo_a = static_cast<Acc>(lo), inv_a = static_cast<Acc>(inv_range);
    const Acc pg = static_cast<Acc>(p[g]), wg = static_cast<Acc>(wg_d);
    const bool to_const = n[g] == 1.0 && o.singleton != kRaw;
    const Acc cval = o.singleton == kZero ? Acc(0) : std::numeric_limits<Acc>::quiet_NaN();
    const bool omit = o.omit;
    auto one = [&](Acc v) {
      const Acc s = bnpo_scaled(v, lo_a, inv_a);
      const Acc x = to_const ? cval : wg * (s - pg);
      return omit && s != s ? Acc(0) : x;
    };
    if (!order && group_size > 0) {
      for (int64_t j = a; j < b; ++j) out[j] = static_cast<T>(one(static_cast<Acc>(r[j])));
    } else {
      for (int64_t j = a; j < b; ++j) {
        const int64_t i = row(j);
        out[i] = static_cast<T>(one(static_cast<Acc>(r[i])));
      }
    }
  };
  if (!fixed_lanes) at::parallel_for(0, num_groups, 1024, [&](int64_t g0, int64_t g1) {
    BnpoWeightCache cache(alpha, beta, lnB);
    for (int64_t g = g0; g < g1; ++g) {
      int64_t a, b;
      bounds(g, a, b);
      if (b <= a) continue;
      const double wg = cache.get(p[g]);
      if (use_float(b - a)) out_rows(float(0), g, a, b, wg);
      else out_rows(double(0), g, a, b, wg);
    }
  });
  const double cval = o.singleton == kZero ? 0.0 : nan;
  auto pass2 = [&](auto gs_tag) {
    constexpr int64_t GS = decltype(gs_tag)::value;
    if constexpr (std::is_same_v<T, float>) {
      if (use_float(GS)) return bnpo_pass2_fixed<float, T, GS>(r, out, num_groups, o, lo, inv_range, cval, p, n, alpha, beta, lnB);
    }
    bnpo_pass2_fixed<double, T, GS>(r, out, num_groups, o, lo, inv_range, cval, p, n, alpha, beta, lnB);
  };
  if (fixed_lanes && group_size == 4) pass2(std::integral_constant<int64_t, 4>{});
  if (fixed_lanes && group_size == 8) pass2(std::integral_constant<int64_t, 8>{});
  if (fixed_lanes && group_size == 16) pass2(std::integral_constant<int64_t, 16>{});
}

// The whitening pass over A[n] (weights w, or none), in place.
template <typename T>
void whiten_inplace(T* a, const double* w, int64_t n, const Options& o, const FusedMoments& fused) {
  const Moments m = fused.done ? fused.m : batch_moments(a, w, n, o.omit);
  const double mul = whiten_mul(m, o);
  // row by row in the arithmetic of form f (T, or double where T's is not faithful); rows left
  // out (weight 0) keep A = 0 (or their NaN)
  auto by_rows = [&](const auto& f) {
    using U = decltype(f.mul);
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T v = a[i];
        a[i] = w && w[i] == 0.0 ? (v != v ? v : T(0)) : static_cast<T>(f(static_cast<U>(v)));
      }
    });
  };
  if (!WhitenForm<T>::faithful(m.mean, mul)) return by_rows(WhitenForm<double>(m.mean, mul));
  const WhitenForm<T> f(m.mean, mul);
  if (w) return by_rows(f);
  // weight 1 everywhere: the same values as by_rows, vectorized
  using K = WhitenLanes<T>;
  const LaneFn<K> lanes = pick_lanes<K>();
  at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) { lanes(typename K::Args{a, i0, i1, f}); });
}

// Index layout (order given): gather the rows into sorted order (one random read each), normalize
// the contiguous copy, scatter the results back (one random write each), instead of reading
// r[order[j]] on every pass of group_params. Same groups, same row order inside each group:
// the same bits as normalizing through order. When every group has the same size G (the
// usual unsorted GRPO batch: each prompt id G times), cu is the fixed layout and the gathered
// copy takes the fixed lanes.
template <typename T>
void normalize_gathered(const T* r, T* out, const int64_t* cu, const int64_t* order, int64_t n, int64_t num_groups,
                        const Options& o, double bm, double bs) {
  auto row = [&](int64_t j) { return std::min(std::max<int64_t>(order[j], 0), n - 1); };
  std::unique_ptr<T[]> rs(new T[n]), as_ragged;
  at::parallel_for(0, n, kGrain, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) rs[j] = r[row(j)];
  });
  int64_t G = num_groups > 0 && cu[0] == 0 && cu[num_groups] == n && n % num_groups == 0 ? n / num_groups : 0;
  for (int64_t g = 1; G > 0 && g <= num_groups; ++g)
    if (cu[g] != g * G) G = 0;
  // rows at positions outside every group (malformed cu, unchecked paths) read 0, as before
  // fixed: in place (each block reads its tile before writing it); ragged: into a zeroed copy,
  // so that positions outside every group (malformed cu, unchecked paths) read 0, as before
  T* as = rs.get();
  if (G == 0) {
    as_ragged.reset(new T[n]());
    as = as_ragged.get();
  }
  normalize_groups(rs.get(), as, G > 0 ? nullptr : cu, nullptr, n, G, num_groups, o, bm, bs);
  at::parallel_for(0, n, kGrain, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) out[row(j)] = as[j];
  });
}

at::Tensor group_advantages_cpu(const at::Tensor& rewards, const c10::optional<at::Tensor>& cu_opt,
                                const c10::optional<at::Tensor>& order_opt, int64_t group_size,
                                const c10::optional<at::Tensor>& weights_opt, int64_t baseline, int64_t scale,
                                int64_t whiten, double eps, bool unbiased, int64_t singleton, bool omit,
                                double whiten_eps, int64_t whiten_std, double bnpo_low, double bnpo_high) {
  check_cpu(rewards, "rewards");
  TORCH_CHECK(rewards.dim() == 1, "rewards must be 1-D");
  TORCH_CHECK(rewards.scalar_type() == at::kFloat || rewards.scalar_type() == at::kDouble,
              "rewards must be float32 or float64");
  const at::Tensor r = rewards.contiguous();
  const int64_t n = r.numel();
  // offsets (ragged, index) may skip rows when malformed (unchecked paths): those rows read 0,
  // not uninitialised memory
  at::Tensor out = group_size > 0 ? at::empty_like(r) : at::zeros_like(r);
  if (n == 0) return out;
  at::Tensor cu, order;
  int64_t num_groups;
  if (group_size > 0) {
    TORCH_CHECK(n % group_size == 0, "group_size must divide the number of rows");
    num_groups = n / group_size;
  } else {
    TORCH_CHECK(cu_opt.has_value(), "cu is required without group_size");
    check_cpu(*cu_opt, "cu");
    TORCH_CHECK(cu_opt->dim() == 1 && cu_opt->numel() >= 1, "cu must be 1-D with at least one offset");
    cu = cu_opt->to(at::kLong).contiguous();
    num_groups = cu.numel() - 1;
    if (order_opt.has_value()) {
      check_cpu(*order_opt, "order");
      TORCH_CHECK(order_opt->numel() == n, "order must have one entry per row");
      order = order_opt->to(at::kLong).contiguous();
    }
  }
  at::Tensor weights;  // whitening weights (token counts), float64
  if (weights_opt.has_value()) {
    check_cpu(*weights_opt, "whiten_weights");
    TORCH_CHECK(weights_opt->numel() == n, "whiten_weights must have one entry per row");
    weights = weights_opt->to(at::kDouble).contiguous().view({n});
  }
  Options o{baseline, scale, whiten, singleton, whiten_std, eps, whiten_eps, unbiased, omit};
  FusedMoments fused;
  const bool plain_whiten = whiten != kWhitenNone && !weights.defined() && !omit && scale != kBnpo;
  if (plain_whiten && group_size > 0) o.whiten_moments = &fused;
  // a ragged layout whose groups all have 4, 8 or 16 rows: its whitening moments in the fixed
  // layout's tile form (TileMoments), so that both give the same bits
  int64_t tile_g = 0;
  if (plain_whiten && cu.defined() && !order.defined() && rewards.scalar_type() == at::kFloat &&
      centred_baseline(baseline) && num_groups > 0 && n % num_groups == 0) {
    const int64_t G = n / num_groups;
    const int64_t* c = cu.data_ptr<int64_t>();
    bool uniform = G == 4 || G == 8 || G == 16;
    for (int64_t g = 0; uniform && g <= num_groups; ++g) uniform = c[g] == g * G;
    tile_g = uniform ? G : 0;
  }
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "group_advantages_cpu", [&] {
    const scalar_t* rp = r.data_ptr<scalar_t>();
    double bmean = 0.0, bstd = 1.0;
    if (baseline == kBatchMean || scale == kBatchStd) {
      const Moments m = batch_moments(rp, nullptr, n, omit);
      o.no_nan = omit && m.W == static_cast<double>(n);  // (a count: exact)
      bmean = m.mean;
      bstd = std::sqrt(m.M2 / (unbiased ? m.W - 1.0 : m.W));
    }
    const int64_t* cup = cu.defined() ? cu.data_ptr<int64_t>() : nullptr;
    const int64_t* op = order.defined() ? order.data_ptr<int64_t>() : nullptr;
    if (scale == kBnpo) bnpo(rp, out.data_ptr<scalar_t>(), cup, op, n, group_size, num_groups, o, bnpo_low, bnpo_high);
    else if (op) normalize_gathered(rp, out.data_ptr<scalar_t>(), cup, op, n, num_groups, o, bmean, bstd);
    else normalize_groups(rp, out.data_ptr<scalar_t>(), cup, op, n, group_size, num_groups, o, bmean, bstd);
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (tile_g > 0 && !float_batch_inv_overflows(o, bstd)) {  // (as the fixed layout: fixed_size)
        const float* a = out.data_ptr<float>();
        fused.m = tile_g == 4 ? tile_moments_of<4>(a, n) : tile_g == 8 ? tile_moments_of<8>(a, n) : tile_moments_of<16>(a, n);
        fused.done = true;
      }
    }
    if (whiten != kWhitenNone) {
      // weight 0 for omitted rows: the written A of a NaN row is 0, so mark them from r.
      // Without weights or omitted rows, no weight tensor: weight 1 everywhere gives the same
      // bits (1 * d = d) without writing and reading N doubles.
      at::Tensor w;
      if (weights.defined() || omit) {
        w = weights.defined() ? weights.clone() : at::ones({n}, r.options().dtype(at::kDouble));
        if (omit) w.masked_fill_(at::isnan(r), 0.0);
      }
      // whitening reads A, where omitted rows are 0 (not NaN): skip by weight only
      Options ow = o;
      ow.omit = false;
      if (!fused.rescaled)
        whiten_inplace(out.data_ptr<scalar_t>(), w.defined() ? w.data_ptr<double>() : nullptr, n, ow, fused);
    }
  });
  return out;
}


// Index layout on the CPU: ids[N] (any integers, any order) -> (cu, order), a stable grouping:
// order lists the rows group by group (ascending id, original order inside a group) and
// cu[g]..cu[g+1] are group g's positions in it. Ids spanning a range below 4N take a counting
// sort (O(N + range), groups of absent ids are empty); others a stable comparison sort.
std::tuple<at::Tensor, at::Tensor> group_order_cpu(const at::Tensor& ids_in) {
  check_cpu(ids_in, "group_index");
  TORCH_CHECK(ids_in.dim() == 1, "group_index must be 1-D");
  const at::Tensor ids = ids_in.to(at::kLong).contiguous();
  const int64_t n = ids.numel();
  const int64_t* id = ids.data_ptr<int64_t>();
  at::Tensor order = at::empty({n}, ids.options());
  int64_t* ord = order.data_ptr<int64_t>();
  if (n == 0) return {at::zeros({1}, ids.options()), order};
  int64_t lo = id[0], hi = id[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, id[i]);
    hi = std::max(hi, id[i]);
  }
  // hi - lo in unsigned arithmetic: exact for any two int64 (ids spanning the whole int64
  // range give 2^64 - 1, where hi - lo + 1 in int64 overflowed and sized cu from garbage). The
  // span is compared before adding 1, and so are the offsets id - lo (in [0, span]).
  const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
  if (span < static_cast<uint64_t>(4) * static_cast<uint64_t>(n)) {
    const int64_t range = static_cast<int64_t>(span) + 1;
    auto slot = [&](int64_t i) { return static_cast<int64_t>(static_cast<uint64_t>(id[i]) - static_cast<uint64_t>(lo)); };
    at::Tensor cu = at::empty({range + 1}, ids.options());
    int64_t* c = cu.data_ptr<int64_t>();
    // the histogram and the running positions in 32 bits when n fits: half the cache footprint
    // of the two randomly updated arrays (N / G slots for dense ids)
    auto sort = [&](auto zero) {
      using C = decltype(zero);
      std::vector<C> cnt(range + 1, C(0));
      for (int64_t i = 0; i < n; ++i) ++cnt[slot(i) + 1];
      for (int64_t g = 0; g < range; ++g) cnt[g + 1] += cnt[g];
      for (int64_t g = 0; g <= range; ++g) c[g] = static_cast<int64_t>(cnt[g]);
      for (int64_t i = 0; i < n; ++i) ord[cnt[slot(i)]++] = i;
    };
    if (n < (int64_t(1) << 31)) sort(uint32_t(0));
    else sort(int64_t(0));
    return {cu, order};
  }
  for (int64_t i = 0; i < n; ++i) ord[i] = i;
  std::stable_sort(ord, ord + n, [&](int64_t a, int64_t b) { return id[a] < id[b]; });
  std::vector<int64_t> starts;
  starts.reserve(1024);
  for (int64_t j = 0; j < n; ++j)
    if (j == 0 || id[ord[j]] != id[ord[j - 1]]) starts.push_back(j);
  starts.push_back(n);
  at::Tensor cu = at::empty({static_cast<int64_t>(starts.size())}, ids.options());
  std::copy(starts.begin(), starts.end(), cu.data_ptr<int64_t>());
  return {cu, order};
}

}  // namespace
}  // namespace icrm

TORCH_LIBRARY_FRAGMENT(icrm_cpu, m) {
  m.def(
      "group_advantages(Tensor rewards, Tensor? cu, Tensor? order, int group_size, Tensor? whiten_weights, "
      "int baseline, int scale, int whiten, float eps, bool unbiased, int singleton, bool omit, float whiten_eps, "
      "int whiten_std, float bnpo_low=0., float bnpo_high=1.) -> Tensor");
  m.def("group_order(Tensor group_index) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(icrm_cpu, CPU, m) {
  m.impl("group_advantages", &icrm::group_advantages_cpu);
  m.impl("group_order", &icrm::group_order_cpu);
}
