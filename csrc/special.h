// Special functions for the CPU kernels (float and double), the same algorithms as the Triton
// device functions in icrm_kernels/triton/special.py: shift the argument up with the recurrences,
// then the asymptotic series. float shifts to y >= 4, double to y >= 10 (series truncation
// below 1e-9 resp. 1e-15 relative). Header-only, shared by every CPU kernel.
//
//   C(z) = lgamma(z) - [(z - 1/2) log z - z + log(2 pi)/2]      (Stirling remainder)
//   G(z) = C(z) + z (log z - 1/(2z) - digamma(z))                (entropy remainder)
// let betaln and the Beta entropy be computed without cancelling 1e7-sized terms.
#pragma once

#include <cmath>

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
  T rn = T(0), qn = T(0);
  while (s.y < shift_to<T>()) {  // x > 0: at most shift_to iterations; NaN stops at once
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

// Asymptotic pieces, valid for y >= shift_to<T>().
template <typename T>
inline T digamma_asym_poly(T y) {  // sum_k B_2k / (2k y^2k)
  const T t = T(1) / y, t2 = t * t;
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
  return std::log(y) - T(0.5) / y - digamma_asym_poly(y);
}

template <typename T>
inline T trigamma_asym_m_recip(T y) {  // trigamma(y) - 1/y
  const T t = T(1) / y, t2 = t * t;
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
inline T stirling_corr(T y) {  // C(y)
  const T t = T(1) / y, t2 = t * t;
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
inline T entropy_corr_asym(T y) {  // G(y) = sum_k B_2k / ((2k-1) y^(2k-1))
  const T t = T(1) / y, t2 = t * t;
  T p = T(7.0 / 78.0);
  p = p * t2 - T(691.0 / 30030.0);
  p = p * t2 + T(5.0 / 594.0);
  p = p * t2 - T(1.0 / 210.0);
  p = p * t2 + T(1.0 / 210.0);
  p = p * t2 - T(1.0 / 90.0);
  p = p * t2 + T(1.0 / 6.0);
  return t * p;
}

template <typename T>
inline T digamma(T x) {
  const auto s = shift(x);
  return digamma_asym(s.y) - s.r;
}

template <typename T>
inline T trigamma(T x) {
  const auto s = shift(x);
  return s.q + T(1) / s.y + trigamma_asym_m_recip(s.y);
}

template <typename T>
inline T lgamma(T x) {
  const auto s = shift(x);
  return (s.y - T(0.5)) * (std::log(s.y) - T(1)) + T(kHalfLog2Pi - 0.5) + stirling_corr(s.y) - std::log(s.prod);
}

template <typename T>
inline T stirling_remainder(T x) {  // C(x)
  if (x >= shift_to<T>()) return stirling_corr(x);
  const auto s = shift(x);
  return (s.y - T(0.5)) * (std::log(s.y) - T(1)) + stirling_corr(s.y) - std::log(s.prod) - (x - T(0.5)) * (std::log(x) - T(1));
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
  out.psi = log_y - T(0.5) * t - digamma_asym_poly(s.y) - s.r;
  out.e = s.q + t + trigamma_asym_m_recip(s.y) - T(1) / x;
  if (x >= shift_to<T>()) {
    out.g = entropy_corr_asym(x);
  } else {
    const T lg = (s.y - T(0.5)) * (log_y - T(1)) - T(0.5) + stirling_corr(s.y) - std::log(s.prod);
    out.g = lg + T(0.5) * std::log(x) + x - T(0.5) - x * out.psi;
  }
  return out;
}

// -ln B(a,b) + a (psi(a) - psi(s)) + b (psi(b) - psi(s)), from the G remainders; rb = log(b/s).
template <typename T>
inline T neg_entropy_core(T a, T ga, T gb, T gs, T rb) {
  return T(0.5) * (std::log(a) + rb) - T(kHalfLog2Pi + 0.5) - ga - gb + gs;
}

}  // namespace special
}  // namespace icrm
