// CPU kernels of ICRM's Beta posterior math (docs/beta.md#math): special functions, the ELBO with
// its gradient in the same pass, Beta statistics, and the conjugate posterior over segments.
// float32 and float64 kernels; bf16/fp16 inputs are upcast to float32 in the op wrapper.
// Input validation with readable messages is done in Python (icrm_kernels/ops/beta.py).
#include "common.h"
#include "lanes.h"
#include "special.h"

#include <vector>

namespace icrm {
namespace {

namespace sp = special;

at::Tensor upcast(const at::Tensor& t) {
  if (t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat) return t.contiguous();
  return t.to(at::kFloat).contiguous();
}

// ---------------------------------------------------------------- special functions
at::Tensor special_unary(const at::Tensor& x_in, int64_t which) {
  check_cpu(x_in, "x");
  TORCH_CHECK(which >= 0 && which <= 2, "special_unary: which must be 0 (digamma), 1 (trigamma) or 2 (lgamma)");
  const at::Tensor x = upcast(x_in);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "special_unary", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const scalar_t v = xp[i];
        op[i] = which == 0 ? sp::digamma(v) : which == 1 ? sp::trigamma(v) : sp::lgamma(v);
      }
    });
  });
  return out.to(x_in.scalar_type());
}

at::Tensor betaln(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_cpu(a_in, "a");
  check_cpu(b_in, "b");
  TORCH_CHECK(a_in.numel() == b_in.numel(), "betaln: a and b must have the same number of elements");
  const at::Tensor a = upcast(a_in), b = upcast(b_in).to(a.scalar_type());
  at::Tensor out = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "betaln", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, a.numel(), kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) op[i] = sp::betaln(ap[i], bp[i]);
    });
  });
  return out.to(a_in.scalar_type());
}

// ---------------------------------------------------------------- float32 lane kernels
// The float32 ELBO and statistics run the lane helpers of special.h over blocks of kLaneBlock
// elements: one branch-free loop per block that the compiler vectorizes. On x86 with GCC/Clang
// each loop is built twice, for AVX2+FMA and for the baseline ISA, and the CPU picks one at run
// time (lanes.h), so the package needs no -march flag (ICRM_NO_AVX2=1 forces the baseline copy,
// which the tests use to cover it). float64 keeps the scalar path with the library log/exp.
constexpr int64_t kLaneBlock = 512;  // a block's loss buffer stays in L1

// ---------------------------------------------------------------- ELBO
// Per element L = -[y(psi(a)-psi(s)) + (1-y)(psi(b)-psi(s))] + kl_weight KL, times the weight.
// from_logits: x1, x2 are (mean_logit, conc_logit) and the gradients are w.r.t. them.
template <typename T>
struct ElboProblem {
  const T *x1, *x2, *y, *w;  // y, w: nullptr when absent
  T *loss, *g1, *g2;         // loss: nullptr when reduced; g1, g2: nullptr without compute_grad
  T pa, pb, p0, lb0, kw, tmin;
  bool from_logits;
};

// Scalar path (float64): the losses of [lo, hi) summed in order, or stored.
template <typename T>
double elbo_range(const ElboProblem<T>& pr, int64_t lo, int64_t hi) {
  const T pa = pr.pa, pb = pr.pb, p0 = pr.p0, kw = pr.kw;
  double acc = 0.0;
  for (int64_t i = lo; i < hi; ++i) {
    T a, b, mu = 0, mu_c = 0, tau = 0;
    if (pr.from_logits) {
      const T m = pr.x1[i], cl = pr.x2[i];
      mu = T(1) / (T(1) + std::exp(-m));
      mu_c = T(1) / (T(1) + std::exp(m));
      tau = std::max(cl, T(0)) + sp::log1p_small(std::exp(-std::abs(cl))) + pr.tmin;
      a = mu * tau;
      b = mu_c * tau;
    } else {
      a = pr.x1[i];
      b = pr.x2[i];
    }
    const T s = a + b;
    const auto ta = sp::gamma_terms(a), tb = sp::gamma_terms(b), ts = sp::gamma_terms(s);
    const T da = ta.psi - ts.psi, db = tb.psi - ts.psi;
    const T rb = sp::log_ratio_b(a, b);
    const T kl = pr.lb0 + sp::neg_entropy_core(a, ta.g, tb.g, ts.g, rb) - pa * da - pb * db;
    T l = kw * kl;
    const T yv = pr.y ? pr.y[i] : T(0);
    if (pr.y) l -= yv * da + (T(1) - yv) * db;
    const T wv = pr.w ? pr.w[i] : T(1);
    l *= wv;
    if (pr.loss) pr.loss[i] = l; else acc += double(l);
    if (pr.g1) {
      T gra = kw * (-pa / a + p0 / s + (a - pa) * ta.e + (p0 - s) * ts.e);
      T grb = kw * (-pb / b + p0 / s + (b - pb) * tb.e + (p0 - s) * ts.e);
      if (pr.y) {
        const T trs = ts.e + T(1) / s;
        gra += trs - yv * (ta.e + T(1) / a);
        grb += trs - (T(1) - yv) * (tb.e + T(1) / b);
      }
      gra *= wv;
      grb *= wv;
      if (pr.from_logits) {
        const T sig_c = T(1) / (T(1) + std::exp(-pr.x2[i]));
        pr.g1[i] = (gra - grb) * tau * mu * mu_c;
        pr.g2[i] = (gra * mu + grb * mu_c) * sig_c;
      } else {
        pr.g1[i] = gra;
        pr.g2[i] = grb;
      }
    }
  }
  return acc;
}

// One block of the float32 ELBO: the same math as elbo_range, branch-free.
struct ElboLaneArgs {
  int64_t n;                     // <= kLaneBlock
  const float *x1, *x2, *y, *w;  // y: zeros and w: ones when the op has none
  float *loss, *g1, *g2;         // loss: always written (a scratch block when reduced)
  float pa, pb, p0, lb0, kw, tmin;
  float data;  // 1 with labels, 0 without (drops the data term)
};

template <bool kLogits, bool kGrad>
struct ElboLanes {
  using Args = ElboLaneArgs;
  static constexpr bool kFma = true;
  static ICRM_LANE void run(const Args& p) {
    const float* __restrict x1 = p.x1;
    const float* __restrict x2 = p.x2;
    const float* __restrict yp = p.y;
    const float* __restrict wp = p.w;
    float* __restrict lp = p.loss;
    float* __restrict g1p = p.g1;
    float* __restrict g2p = p.g2;
    const float pa = p.pa, pb = p.pb, p0 = p.p0, kw = p.kw, data = p.data, tmin = p.tmin;
    const float lb0 = p.lb0 - float(sp::kHalfLog2Pi + 0.5);  // neg_entropy_core's constant
    const float nan = std::numeric_limits<float>::quiet_NaN();
#pragma omp simd
    for (int64_t i = 0; i < p.n; ++i) {
      float a, b, mu = 0.0f, mu_c = 0.0f, tau = 0.0f, sig_c = 0.0f;
      if (kLogits) {
        // sigmoid(+-m), sigmoid(c) and softplus(c) from exp(-|m|), exp(-|c|): no overflow
        const float m = x1[i], c = x2[i];
        const float em = sp::exp_neg_lanes(-std::abs(m)), ec = sp::exp_neg_lanes(-std::abs(c));
        const float im = 1.0f / (1.0f + em), ic = 1.0f / (1.0f + ec);
        mu = m >= 0.0f ? im : em * im;
        mu_c = m >= 0.0f ? em * im : im;
        sig_c = c >= 0.0f ? ic : ec * ic;
        tau = std::max(c, 0.0f) + sp::log1p_small(ec) + tmin;
        a = mu * tau;
        b = mu_c * tau;
      } else {
        a = x1[i];
        b = x2[i];
      }
      const float s = a + b;
      const auto ta = sp::gamma_terms_lanes(a), tb = sp::gamma_terms_lanes(b), ts = sp::gamma_terms_lanes(s);
      const float da = ta.psi - ts.psi, db = tb.psi - ts.psi, is = ts.inv_x;
      const float nec = 0.5f * sp::log_a_fb_lanes(a, b, is) - ta.g - tb.g + ts.g;
      const float yv = yp[i], wv = wp[i];
      const float l = kw * (lb0 + nec - pa * da - pb * db) - data * (yv * da + (1.0f - yv) * db);
      const bool valid = a > 0.0f && b > 0.0f;  // the unchecked path returns NaN for a, b <= 0
      lp[i] = valid ? l * wv : nan;
      if (kGrad) {
        const float ia = ta.inv_x, ib = tb.inv_x;
        const float ks = p0 * is + (p0 - s) * ts.e, trs = ts.e + is;
        float gra = kw * (ks - pa * ia + (a - pa) * ta.e) + data * (trs - yv * (ta.e + ia));
        float grb = kw * (ks - pb * ib + (b - pb) * tb.e) + data * (trs - (1.0f - yv) * (tb.e + ib));
        gra = valid ? gra * wv : nan;
        grb = valid ? grb * wv : nan;
        if (kLogits) {
          g1p[i] = (gra - grb) * tau * mu * mu_c;
          g2p[i] = (gra * mu + grb * mu_c) * sig_c;
        } else {
          g1p[i] = gra;
          g2p[i] = grb;
        }
      }
    }
  }
};

using ElboLaneFn = void (*)(const ElboLaneArgs&);

template <bool kLogits>
ElboLaneFn pick_elbo_lanes(bool compute_grad) {
  return compute_grad ? pick_lanes<ElboLanes<kLogits, true>>() : pick_lanes<ElboLanes<kLogits, false>>();
}

// Lane path (float32): blocks of kLaneBlock; a reduced block's losses are summed in double with
// four interleaved partials in a fixed order, so the total does not depend on the ISA's width.
double elbo_range(const ElboProblem<float>& pr, int64_t lo, int64_t hi) {
  static const std::vector<float> zeros(kLaneBlock, 0.0f), ones(kLaneBlock, 1.0f);
  const ElboLaneFn lanes = pr.from_logits ? pick_elbo_lanes<true>(pr.g1 != nullptr) : pick_elbo_lanes<false>(pr.g1 != nullptr);
  float lbuf[kLaneBlock];
  ElboLaneArgs p;
  p.pa = pr.pa, p.pb = pr.pb, p.p0 = pr.p0, p.lb0 = pr.lb0, p.kw = pr.kw, p.tmin = pr.tmin;
  p.data = pr.y ? 1.0f : 0.0f;
  double acc = 0.0;
  for (int64_t i = lo; i < hi; i += kLaneBlock) {
    p.n = std::min(kLaneBlock, hi - i);
    p.x1 = pr.x1 + i;
    p.x2 = pr.x2 + i;
    p.y = pr.y ? pr.y + i : zeros.data();
    p.w = pr.w ? pr.w + i : ones.data();
    p.loss = pr.loss ? pr.loss + i : lbuf;
    p.g1 = pr.g1 ? pr.g1 + i : nullptr;
    p.g2 = pr.g2 ? pr.g2 + i : nullptr;
    lanes(p);
    if (pr.loss) continue;
    double part[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t j = 0;
    for (; j + 4 <= p.n; j += 4)
      for (int k = 0; k < 4; ++k) part[k] += double(lbuf[j + k]);
    for (; j < p.n; ++j) part[0] += double(lbuf[j]);
    acc += (part[0] + part[1]) + (part[2] + part[3]);
  }
  return acc;
}

// reduction: 0 none (loss[n]), 1 sum (loss[]), 2 mean (loss[] = sum / n).
// Returns (loss, g1, g2): the unscaled per-element gradients (empty unless compute_grad).
std::tuple<at::Tensor, at::Tensor, at::Tensor> beta_elbo(
    const at::Tensor& x1_in, const at::Tensor& x2_in, const c10::optional<at::Tensor>& labels_in,
    const c10::optional<at::Tensor>& weights_in, double prior_a, double prior_b, double lnb0, double kl_weight,
    double tau_min, bool from_logits, int64_t reduction, bool compute_grad) {
  check_cpu(x1_in, "x1");
  check_cpu(x2_in, "x2");
  const at::Tensor x1 = upcast(x1_in);
  const auto st = x1.scalar_type();
  const at::Tensor x2 = upcast(x2_in).to(st);
  const int64_t n = x1.numel();
  TORCH_CHECK(x2.numel() == n, "beta_elbo: x1 and x2 must have the same number of elements");
  at::Tensor y, w;
  if (labels_in.has_value()) {
    y = upcast(*labels_in).to(st);
    TORCH_CHECK(y.numel() == n, "beta_elbo: labels must have one entry per element");
  }
  if (weights_in.has_value()) {
    w = upcast(*weights_in).to(st);
    TORCH_CHECK(w.numel() == n, "beta_elbo: weights must have one entry per element");
  }
  at::Tensor loss = at::empty({reduction == 0 ? n : 0}, x1.options());
  at::Tensor g1 = at::empty({compute_grad ? n : 0}, x1.options());
  at::Tensor g2 = at::empty({compute_grad ? n : 0}, x1.options());
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(st, "beta_elbo", [&] {
    using T = scalar_t;
    ElboProblem<T> pr;
    pr.x1 = x1.data_ptr<T>();
    pr.x2 = x2.data_ptr<T>();
    pr.y = y.defined() ? y.data_ptr<T>() : nullptr;
    pr.w = w.defined() ? w.data_ptr<T>() : nullptr;
    pr.loss = reduction == 0 ? loss.data_ptr<T>() : nullptr;
    pr.g1 = compute_grad ? g1.data_ptr<T>() : nullptr;
    pr.g2 = compute_grad ? g2.data_ptr<T>() : nullptr;
    pr.pa = T(prior_a), pr.pb = T(prior_b), pr.p0 = T(prior_a + prior_b), pr.lb0 = T(lnb0), pr.kw = T(kl_weight);
    pr.tmin = T(tau_min);
    pr.from_logits = from_logits;
    const int64_t chunks = std::max<int64_t>(1, (n + kGrain - 1) / kGrain);
    std::vector<double> partial(chunks, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t c_lo, int64_t c_hi) {
      for (int64_t c = c_lo; c < c_hi; ++c) partial[c] = elbo_range(pr, c * kGrain, std::min(n, (c + 1) * kGrain));
    });
    for (double v : partial) total += v;  // fixed order: deterministic
  });
  if (reduction != 0) {
    if (reduction == 2) total = n ? total / double(n) : 0.0;
    loss = at::scalar_tensor(total, x1.options());
  }
  return {loss, g1, g2};
}

// ---------------------------------------------------------------- parametrisation
// alpha = sigmoid(m) tau, beta = sigmoid(-m) tau, tau = softplus(c) + tau_min.
std::tuple<at::Tensor, at::Tensor> beta_from_logits(const at::Tensor& m_in, const at::Tensor& c_in, double tau_min) {
  check_cpu(m_in, "mean_logit");
  check_cpu(c_in, "conc_logit");
  const at::Tensor m = upcast(m_in), c = upcast(c_in).to(m.scalar_type());
  const int64_t n = m.numel();
  TORCH_CHECK(c.numel() == n, "beta_from_logits: mean_logit and conc_logit must have the same number of elements");
  at::Tensor a = at::empty_like(m), b = at::empty_like(m);
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "beta_from_logits", [&] {
    using T = scalar_t;
    const T* mp = m.data_ptr<T>();
    const T* cp = c.data_ptr<T>();
    T* ap = a.data_ptr<T>();
    T* bp = b.data_ptr<T>();
    const T tmin = T(tau_min);
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T tau = std::max(cp[i], T(0)) + sp::log1p_small(std::exp(-std::abs(cp[i]))) + tmin;
        ap[i] = tau / (T(1) + std::exp(-mp[i]));
        bp[i] = tau / (T(1) + std::exp(mp[i]));
      }
    });
  });
  return {a.to(m_in.scalar_type()), b.to(m_in.scalar_type())};
}

// ---------------------------------------------------------------- statistics
// One block of beta_stats in float32 (lane helpers, see the ELBO); NaN rows for a, b <= 0.
struct StatsLaneArgs {
  int64_t n;
  const float *a, *b;
  float* out[6];
};

struct StatsLanes {
  using Args = StatsLaneArgs;
  static constexpr bool kFma = true;
  static ICRM_LANE void run(const Args& p) {
    const float* __restrict ap = p.a;
    const float* __restrict bp = p.b;
    float* __restrict mean_p = p.out[0];
    float* __restrict var_p = p.out[1];
    float* __restrict elog_p = p.out[2];
    float* __restrict elog1m_p = p.out[3];
    float* __restrict elogit_p = p.out[4];
    float* __restrict ent_p = p.out[5];
    const float nan = std::numeric_limits<float>::quiet_NaN();
#pragma omp simd
    for (int64_t i = 0; i < p.n; ++i) {
      const float a = ap[i], b = bp[i], s = a + b;
      const auto ta = sp::gamma_terms_lanes(a), tb = sp::gamma_terms_lanes(b), ts = sp::gamma_terms_lanes(s);
      const float da = ta.psi - ts.psi, db = tb.psi - ts.psi, is = ts.inv_x, mean = a * is;
      const float nec = 0.5f * sp::log_a_fb_lanes(a, b, is) - float(sp::kHalfLog2Pi + 0.5) - ta.g - tb.g + ts.g;
      const bool valid = a > 0.0f && b > 0.0f;
      mean_p[i] = valid ? mean : nan;
      var_p[i] = valid ? mean * (b * is) / (s + 1.0f) : nan;
      elog_p[i] = valid ? da : nan;
      elog1m_p[i] = valid ? db : nan;
      elogit_p[i] = valid ? sp::digamma_diff_lanes(a, b, ta.psi, tb.psi) : nan;
      ent_p[i] = valid ? da + db - nec : nan;
    }
  }
};

// out[6, n]: mean, var, E[log t], E[log(1-t)], E[logit t], entropy.
at::Tensor beta_stats(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_cpu(a_in, "alpha");
  check_cpu(b_in, "beta");
  const at::Tensor a = upcast(a_in), b = upcast(b_in).to(a.scalar_type());
  const int64_t n = a.numel();
  TORCH_CHECK(b.numel() == n, "beta_stats: alpha and beta must have the same number of elements");
  at::Tensor out = at::empty({6, n}, a.options());
  if (a.scalar_type() == at::kFloat) {
    const LaneFn<StatsLanes> lanes = pick_lanes<StatsLanes>();
    const float* ap = a.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i += kLaneBlock) {
        StatsLaneArgs p;
        p.n = std::min(kLaneBlock, hi - i);
        p.a = ap + i;
        p.b = bp + i;
        for (int k = 0; k < 6; ++k) p.out[k] = op + k * n + i;
        lanes(p);
      }
    });
    return out.to(a_in.scalar_type());
  }
  using T = double;  // upcast() leaves float32 or float64
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const T av = ap[i], bv = bp[i], s = av + bv;
      const auto ta = sp::gamma_terms(av), tb = sp::gamma_terms(bv), ts = sp::gamma_terms(s);
      const T da = ta.psi - ts.psi, db = tb.psi - ts.psi;
      const T rb = sp::log_ratio_b(av, bv);
      const T mean = av / s;
      // alpha or beta not > 0 (unchecked paths): every statistic NaN, as the float32 lanes and
      // the other backends give (mean and var alone would otherwise stay finite)
      const bool valid = av > T(0) && bv > T(0);
      const T nan = std::numeric_limits<T>::quiet_NaN();
      op[i] = valid ? mean : nan;
      op[n + i] = valid ? mean * (bv / s) / (s + T(1)) : nan;
      op[2 * n + i] = valid ? da : nan;
      op[3 * n + i] = valid ? db : nan;
      op[4 * n + i] = valid ? sp::digamma_diff(av, bv, ta.psi, tb.psi) : nan;
      op[5 * n + i] = valid ? da + db - sp::neg_entropy_core(av, ta.g, tb.g, ts.g, rb) : nan;
    }
  });
  return out.to(a_in.scalar_type());
}

// ---------------------------------------------------------------- conjugate posterior
// Exactly one of cu (int64 [K+1] offsets) and index (int64 [M] segment numbers; ids outside
// [0, K) are ignored). alpha_k = a0 + sum_i w_i g^(n-1-i) y_i, beta_k = b0 + sum_i w_i g^(n-1-i) (1 - y_i),
// i the position within the segment in order of appearance, n the segment's size.
std::tuple<at::Tensor, at::Tensor> beta_posterior(const at::Tensor& y_in, const c10::optional<at::Tensor>& w_in,
                                                  const c10::optional<at::Tensor>& cu_in,
                                                  const c10::optional<at::Tensor>& index_in, int64_t K, double prior_a,
                                                  double prior_b, double discount) {
  check_cpu(y_in, "outcomes");
  TORCH_CHECK(cu_in.has_value() != index_in.has_value(), "beta_posterior: give exactly one of cu and index");
  const at::Tensor y = upcast(y_in).contiguous().view({-1});
  const auto st = y.scalar_type();
  const int64_t m = y.numel();
  at::Tensor w;
  if (w_in.has_value()) {
    check_cpu(*w_in, "weights");
    TORCH_CHECK(w_in->numel() == m, "beta_posterior: weights must have one entry per outcome");
    w = upcast(*w_in).to(st).contiguous().view({m});
  }
  TORCH_CHECK(K >= 0, "beta_posterior: num_segments must be >= 0");
  at::Tensor alpha = at::empty({K}, y.options()), beta = at::empty({K}, y.options());
  AT_DISPATCH_FLOATING_TYPES(st, "beta_posterior", [&] {
    using T = scalar_t;
    const T* yp = y.data_ptr<T>();
    const T* wp = w.defined() ? w.data_ptr<T>() : nullptr;
    T* ap = alpha.data_ptr<T>();
    T* bp = beta.data_ptr<T>();
    if (cu_in.has_value()) {
      const at::Tensor cu = cu_in->to(at::kLong).contiguous();
      TORCH_CHECK(cu.numel() == K + 1, "beta_posterior: cu must have K + 1 entries");
      const int64_t* c = cu.data_ptr<int64_t>();
      at::parallel_for(0, K, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, m / std::max<int64_t>(K, 1))),
                       [&](int64_t lo, int64_t hi) {
        for (int64_t k = lo; k < hi; ++k) {
          const int64_t s = std::max<int64_t>(0, std::min(c[k], m)), e = std::max(s, std::min(c[k + 1], m));
          double sa = 0.0, sb = 0.0, f = 1.0;
          for (int64_t i = e - 1; i >= s; --i) {  // newest first: factor g^(n-1-i) by repeated product
            const double wv = (wp ? double(wp[i]) : 1.0) * f;
            sa += wv * double(yp[i]);
            sb += wv * (1.0 - double(yp[i]));
            f *= discount;
          }
          ap[k] = T(prior_a + sa);
          bp[k] = T(prior_b + sb);
        }
      });
    } else {
      const at::Tensor idx = index_in->to(at::kLong).contiguous();
      TORCH_CHECK(idx.numel() == m, "beta_posterior: index must have one entry per outcome");
      const int64_t* g = idx.data_ptr<int64_t>();
      std::vector<int64_t> size(K, 0), pos(K, 0);
      for (int64_t i = 0; i < m; ++i)
        if (g[i] >= 0 && g[i] < K) ++size[g[i]];
      std::vector<double> sa(K, 0.0), sb(K, 0.0);
      const double log_g = discount < 1.0 ? std::log(discount) : 0.0;
      for (int64_t i = 0; i < m; ++i) {
        const int64_t k = g[i];
        if (k < 0 || k >= K) continue;
        const int64_t age = size[k] - 1 - pos[k]++;
        const double f = (wp ? double(wp[i]) : 1.0) * (discount < 1.0 ? std::exp(double(age) * log_g) : 1.0);
        sa[k] += f * double(yp[i]);
        sb[k] += f * (1.0 - double(yp[i]));
      }
      for (int64_t k = 0; k < K; ++k) {
        ap[k] = T(prior_a + sa[k]);
        bp[k] = T(prior_b + sb[k]);
      }
    }
  });
  return {alpha, beta};
}

}  // namespace
}  // namespace icrm

TORCH_LIBRARY_FRAGMENT(icrm_cpu, m) {
  m.def("special_unary(Tensor x, int which) -> Tensor");
  m.def("betaln(Tensor a, Tensor b) -> Tensor");
  m.def(
      "beta_elbo(Tensor x1, Tensor x2, Tensor? labels, Tensor? weights, float prior_alpha, float prior_beta, "
      "float lnb0, float kl_weight, float tau_min, bool from_logits, int reduction, bool compute_grad) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("beta_stats(Tensor alpha, Tensor beta) -> Tensor");
  m.def("beta_from_logits(Tensor mean_logit, Tensor conc_logit, float tau_min) -> (Tensor, Tensor)");
  m.def(
      "beta_posterior(Tensor outcomes, Tensor? weights, Tensor? cu, Tensor? index, int num_segments, "
      "float prior_alpha, float prior_beta, float discount) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(icrm_cpu, CPU, m) {
  m.impl("special_unary", &icrm::special_unary);
  m.impl("betaln", &icrm::betaln);
  m.impl("beta_elbo", &icrm::beta_elbo);
  m.impl("beta_stats", &icrm::beta_stats);
  m.impl("beta_from_logits", &icrm::beta_from_logits);
  m.impl("beta_posterior", &icrm::beta_posterior);
}
