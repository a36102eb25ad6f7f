// Special functions for the CPU kernels (float and double), the same algorithms as the Triton
// device functions in icrm_kernels/triton/special.py: shift the argument up with the recurrences,
// then the asymptotic series. float shifts to y >= 4, double to y >= 10 (series truncation
// below 1e-9 resp. 1e-15 relative). Header-only, shared by every CPU kernel.
//
//   C(z) = lgamma(z) - [(z - 1/2) log z - z + log(2 pi)/2]      (Stirling remainder)
//   G(z) = C(z) + z (log z - 1/(2z) - digamma(z))                (entropy remainder)
// let betaln and the Beta entropy be computed without cancelling 1e7-sized terms.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Forces inlining of the lane helpers below: a loop over them vectorizes only when every call in
// its body is inlined, and the compiled copy must take the ISA of the function it is inlined into
// (the AVX2 clone of a kernel, see beta.cpp), not the default one of an out-of-line copy.
#if defined(__GNUC__) || defined(__clang__)
#define ICRM_LANE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define ICRM_LANE __forceinline
#else
#define ICRM_LANE inline
#endif

namespace icrm {
namespace special {

constexpr double kHalfLog2Pi = 0.91893853320467274178;

template <typename T> constexpr T shift_to() { return T(4); }
template <> constexpr double shift_to<double>() { return 10.0; }

template <typename T>
struct Shifted {
  T y;     // x + n >= shift_to<T>()
  T prod;  // x (x+1) ... (x+n-1)
  T r;     // sum 1/(x+k)
  T q;     // sum 1/(x+k)^2
};

template <typename T>
inline Shifted<T> shift(T x) {
  // r and q are accumulated as fractions over prod: one division instead of one per step
  // (all terms positive: no cancellation; prod < 10! keeps prod^2 far from overflow).
  Shifted<T> s{x, T(1), T(0), T(0)};
  if (!(x > T(0))) {
    // Outside the domain (x <= 0, -inf, NaN): NaN everywhere. Without this the loop below never
    // ends for x = -inf or x <= -2^53 (y + 1 == y), and walks through the poles for other x < 0.
    const T nan = std::numeric_limits<T>::quiet_NaN();
    return {nan, nan, nan, nan};
  }
  T rn = T(0), qn = T(0);
  // x > 0 reaches shift_to<T>() in at most shift_to<T>() steps; the count bounds the loop anyway
  for (int k = 0; k < int(shift_to<T>()) && s.y < shift_to<T>(); ++k) {
    rn = rn * s.y + s.prod;
    qn = qn * (s.y * s.y) + s.prod * s.prod;
    s.prod *= s.y;
    s.y += T(1);
  }
  if (s.prod != T(1)) {
    const T inv = T(1) / s.prod;
    s.r = rn * inv;
    s.q = qn * inv * inv;
  }
  return s;
}

// Asymptotic pieces, valid for y >= shift_to<T>(); they take t = 1/y so that callers share
// one reciprocal.
template <typename T>
ICRM_LANE T digamma_asym_poly(T t) {  // sum_k B_2k / (2k y^2k)
  const T t2 = t * t;
  T p = T(-691.0 / 32760.0);
  p = p * t2 + T(1.0 / 132.0);
  p = p * t2 - T(1.0 / 240.0);
  p = p * t2 + T(1.0 / 252.0);
  p = p * t2 - T(1.0 / 120.0);
  p = p * t2 + T(1.0 / 12.0);
  return t2 * p;
}

template <typename T>
inline T digamma_asym(T y) {
  const T t = T(1) / y;
  return std::log(y) - T(0.5) * t - digamma_asym_poly(t);
}

template <typename T>
ICRM_LANE T trigamma_asym_m_recip(T t) {  // trigamma(y) - 1/y
  const T t2 = t * t;
  T p = T(7.0 / 6.0);
  p = p * t2 - T(691.0 / 2730.0);
  p = p * t2 + T(5.0 / 66.0);
  p = p * t2 - T(1.0 / 30.0);
  p = p * t2 + T(1.0 / 42.0);
  p = p * t2 - T(1.0 / 30.0);
  p = p * t2 + T(1.0 / 6.0);
  return t2 * (T(0.5) + t * p);
}

template <typename T>
ICRM_LANE T stirling_corr(T t) {  // C(y)
  const T t2 = t * t;
  T p = T(1.0 / 156.0);
  p = p * t2 - T(691.0 / 360360.0);
  p = p * t2 + T(1.0 / 1188.0);
  p = p * t2 - T(1.0 / 1680.0);
  p = p * t2 + T(1.0 / 1260.0);
  p = p * t2 - T(1.0 / 360.0);
  p = p * t2 + T(1.0 / 12.0);
  return t * p;
}

template <typename T>
ICRM_LANE T entropy_corr_asym(T t) {  // G(y) = sum_k B_2k / ((2k-1) y^(2k-1))
  const T t2 = t * t;
  T p = T(7.0 / 78.0);
  p = p * t2 - T(691.0 / 30030.0);
  p = p * t2 + T(5.0 / 594.0);
  p = p * t2 - T(1.0 / 210.0);
  p = p * t2 + T(1.0 / 210.0);
  p = p * t2 - T(1.0 / 90.0);
  p = p * t2 + T(1.0 / 6.0);
  return t * p;
}

// The public special functions take x > 0. At x = 0 they return the pole's value as torch.special
// and scipy do (digamma -inf, trigamma +inf, lgamma +inf); x < 0 (no reflection formula here),
// -inf and NaN give NaN. +inf gives digamma +inf, trigamma 0, lgamma +inf.
template <typename T>
inline T digamma(T x) {
  if (x == T(0)) return -std::numeric_limits<T>::infinity();
  const auto s = shift(x);
  return digamma_asym(s.y) - s.r;
}

template <typename T>
inline T trigamma(T x) {
  if (x == T(0)) return std::numeric_limits<T>::infinity();
  const auto s = shift(x);
  const T t = T(1) / s.y;
  return s.q + t + trigamma_asym_m_recip(t);
}

template <typename T>
inline T lgamma(T x) {
  if (x == T(0)) return std::numeric_limits<T>::infinity();
  const auto s = shift(x);
  return (s.y - T(0.5)) * (std::log(s.y) - T(1)) + T(kHalfLog2Pi - 0.5) + stirling_corr(T(1) / s.y) -
         std::log(s.prod);
}

template <typename T>
inline T stirling_remainder(T x) {  // C(x)
  if (x >= shift_to<T>()) return stirling_corr(T(1) / x);
  const auto s = shift(x);
  return (s.y - T(0.5)) * (std::log(s.y) - T(1)) + stirling_corr(T(1) / s.y) - std::log(s.prod) -
         (x - T(0.5)) * (std::log(x) - T(1));
}

template <typename T>
inline T log1p_small(T t) {  // log(1 + t) for t in [-1/2, 1]
  if (sizeof(T) == sizeof(double)) return std::log1p(t);
  const T u = t / (T(2) + t), u2 = u * u;
  T p = T(1.0 / 15.0);
  p = p * u2 + T(1.0 / 13.0);
  p = p * u2 + T(1.0 / 11.0);
  p = p * u2 + T(1.0 / 9.0);
  p = p * u2 + T(1.0 / 7.0);
  p = p * u2 + T(1.0 / 5.0);
  p = p * u2 + T(1.0 / 3.0);
  p = p * u2 + T(1);
  return T(2) * u * p;
}

// (log(a/s), log(b/s)), s = a + b, accurate when either ratio is close to 1.
template <typename T>
inline void log_ratios(T a, T b, T* ra, T* rb) {
  const T s = a + b, fa = a / s, fb = b / s;
  *ra = fa >= T(0.5) ? log1p_small(-fb) : std::log(fa);
  *rb = fb >= T(0.5) ? log1p_small(-fa) : std::log(fb);
}

// log(b/s) alone (what the entropy core needs).
template <typename T>
inline T log_ratio_b(T a, T b) {
  const T s = a + b, fa = a / s, fb = b / s;
  return fb >= T(0.5) ? log1p_small(-fa) : std::log(fb);
}

template <typename T>
inline T betaln(T a, T b) {
  T ra, rb;
  log_ratios(a, b, &ra, &rb);
  const T s = a + b;
  return (a - T(0.5)) * ra + (b - T(0.5)) * rb - T(0.5) * std::log(s) + T(kHalfLog2Pi) + stirling_remainder(a) +
         stirling_remainder(b) - stirling_remainder(s);
}

// digamma(x), trigamma(x) - 1/x and G(x) from one shift.
template <typename T>
struct GammaTerms {
  T psi, e, g;
};

template <typename T>
inline GammaTerms<T> gamma_terms(T x) {
  const auto s = shift(x);
  const T t = T(1) / s.y, log_y = std::log(s.y);
  GammaTerms<T> out;
  out.psi = log_y - T(0.5) * t - digamma_asym_poly(t) - s.r;
  // unshifted (t = 1/x exactly): the series itself. Adding it to t and subtracting 1/x again
  // rounds it to an ulp of 1/x, ~3e-10 relative at x ~ 1e6 (seen in float64 ELBO gradients).
  out.e = x >= shift_to<T>() ? trigamma_asym_m_recip(t) : s.q + t + trigamma_asym_m_recip(t) - T(1) / x;
  if (x >= shift_to<T>()) {
    out.g = entropy_corr_asym(t);
  } else {
    const T lg = (s.y - T(0.5)) * (log_y - T(1)) - T(0.5) + stirling_corr(t) - std::log(s.prod);
    out.g = lg + T(0.5) * std::log(x) + x - T(0.5) - x * out.psi;
  }
  return out;
}

// psi(a) - psi(b) (E[logit t] of Beta(a, b)). For min(a, b) < 1 as
// psi(a+1) - psi(b+1) + (a - b)/(a b): the 1/a and 1/b poles then cancel in a - b (exact for
// nearby a, b) instead of in the difference of two ~1/x values, which loses every digit of a
// small E[logit t] when a, b -> 0. psi_a, psi_b: the plain values, used for min(a, b) >= 1.
template <typename T>
inline T digamma_diff(T a, T b, T psi_a, T psi_b) {
  if (!(std::min(a, b) < T(1))) return psi_a - psi_b;
  return (digamma(a + T(1)) - digamma(b + T(1))) + (a - b) / a / b;
}

// -ln B(a,b) + a (psi(a) - psi(s)) + b (psi(b) - psi(s)), from the G remainders; rb = log(b/s).
template <typename T>
inline T neg_entropy_core(T a, T ga, T gb, T gs, T rb) {
  return T(0.5) * (std::log(a) + rb) - T(kHalfLog2Pi + 0.5) - ga - gb + gs;
}

// ---------------------------------------------------------------- lane (SIMD-friendly) float32
// The float kernels run these in loops the compiler vectorizes: no branches (selects only), no
// library calls, a fixed trip count. Same algorithms and series as above; std::log/std::exp are
// replaced by Cephes' logf/expf polynomials (|err| <= 1 ulp over the normal range) written with
// bit operations, the data-dependent shift loop by four masked steps (x > 0 reaches y >= 4 in
// at most four), and the reciprocals 1/prod, 1/y, 1/x by one division.

ICRM_LANE float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

ICRM_LANE int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// log(x) for every float: -inf at 0, NaN below 0 or at NaN, +inf at +inf; subnormals are
// scaled by 2^23 first. x = 2^e m, m in [sqrt(1/2), sqrt(2)), log(m) = f - f^2/2 + f^3 P(f), f = m - 1.
ICRM_LANE float log_lanes(float x) {
  const bool sub = x < std::numeric_limits<float>::min();
  const float xn = sub ? x * 8388608.0f : x;
  const int32_t bits = float_to_bits(xn);
  const float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // [1/2, 1)
  float e = float(((bits >> 23) & 0xff) - 126) - (sub ? 23.0f : 0.0f);
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  const float f = low ? m + m - 1.0f : m - 1.0f, z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  // ln 2 split in a part exact in float (0.693359375) and a small remainder: e ln2 stays exact.
  float r = f * z * p + e * -2.12194440e-4f - 0.5f * z;
  r = (f + r) + e * 0.693359375f;
  const float inf = std::numeric_limits<float>::infinity();
  r = x == inf ? inf : r;
  return x > 0.0f ? r : (x == 0.0f ? -inf : std::numeric_limits<float>::quiet_NaN());
}

// exp(x) for x <= 0 (the logit paths only need exp(-|v|)); below -87.3 it returns ~1e-38
// instead of a subnormal. exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln2 / 2.
ICRM_LANE float exp_neg_lanes(float x) {
  x = x < -87.3f ? -87.3f : x;
  // round to nearest by the 1.5 * 2^23 trick (exact: no fast-math, so not folded away)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * (r * r) + r + 1.0f;
  return er * bits_to_float((int32_t(n) + 127) << 23);
}

// gamma_terms for one float lane, plus 1/x (the ELBO gradient needs it).
struct GammaTermsLanes {
  float psi, e, g, inv_x;
};

ICRM_LANE GammaTermsLanes gamma_terms_lanes(float x) {
  // shift(): y = x + n, prod = x (x+1)...(x+n-1) = x pp, r and q as fractions over prod
  float y = x, prod = 1.0f, pp = 1.0f, rn = 0.0f, qn = 0.0f;
  for (int k = 0; k < 4; ++k) {
    const bool step = y < 4.0f;
    rn = step ? rn * y + prod : rn;
    qn = step ? qn * (y * y) + prod * prod : qn;
    pp = step && k > 0 ? pp * y : pp;
    prod = step ? prod * y : prod;
    y = step ? y + 1.0f : y;
  }
  const float inv = 1.0f / (prod * y);  // prod < 840 and y < 8 when shifted, prod = 1 if not
  const float ip = inv * y, t = inv * prod;
  const bool small = x < 4.0f;
  GammaTermsLanes out;
  out.inv_x = small ? pp * ip : t;  // prod = x pp; unshifted y = x
  const float r = rn * ip, q = qn * ip * ip, log_y = log_lanes(y);
  out.psi = log_y - 0.5f * t - digamma_asym_poly(t) - r;
  out.e = small ? q + t + trigamma_asym_m_recip(t) - out.inv_x : trigamma_asym_m_recip(t);  // see gamma_terms
  // small x: lgamma(x) + log(x)/2 + x - 1/2 - x psi(x); -log(prod) + log(x)/2 = -log(x pp^2)/2
  const float g_small = (y - 0.5f) * (log_y - 1.0f) - 1.0f + stirling_corr(t) - 0.5f * log_lanes(x * pp * pp) + x -
                        x * out.psi;
  out.g = small ? g_small : entropy_corr_asym(t);
  // x <= 0, -inf, NaN: outside the domain, NaN (the four fixed steps never hang, but would give
  // finite garbage); a select, so the loop still vectorizes
  const bool bad = !(x > 0.0f);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  out.psi = bad ? nan : out.psi;
  out.e = bad ? nan : out.e;
  out.g = bad ? nan : out.g;
  out.inv_x = bad ? nan : out.inv_x;
  return out;
}

// psi(x) for one float lane: gamma_terms_lanes inlines, so the terms it does not return are
// never computed.
ICRM_LANE float digamma_lanes(float x) { return gamma_terms_lanes(x).psi; }

// digamma_diff for float lanes (branch-free: both forms computed, one selected).
ICRM_LANE float digamma_diff_lanes(float a, float b, float psi_a, float psi_b) {
  const bool small = (a < b ? a : b) < 1.0f;
  const float a1 = small ? a : 1.0f, b1 = small ? b : 1.0f;  // unused lanes stay finite
  const float d = (digamma_lanes(a1 + 1.0f) - digamma_lanes(b1 + 1.0f)) + (a1 - b1) / a1 / b1;
  return small ? d : psi_a - psi_b;
}

// log(a) + log(b / s) (neg_entropy_core's pair) as one log of min(a,b) * (max(a,b) / s):
// max/s >= 1/2, so the product underflows only where min(a,b) itself does. inv_s = 1/(a+b).
ICRM_LANE float log_a_fb_lanes(float a, float b, float inv_s) {
  const float lo = a < b ? a : b, hi = a < b ? b : a;
  return log_lanes(lo * (hi * inv_s));
}

}  // namespace special
}  // namespace icrm
