// CPU kernels for R2M's sequence-to-token cross-attention, absorbed form (docs/attention.md#math).
//
// The query is already folded into the key projection (q̃_h = scale · W_k,h q_h, width D_p), so
// these kernels only read the raw states x[rows, D_p], one fused pass per sequence
// (at::parallel_for over sequences):
//   s2t_attention_core:      online softmax over q̃_h·x_l, c_h = Σ_l p_l x_l, lse_h   (one read)
//   s2t_attention_core_bwd:  p_l = e^{s_l − lse}, ds_l = p_l (x_l·dc_h − c_h·dc_h),
//                            dq̃_h = Σ_l ds_l x_l, dx_l = Σ_h p_l dc_h + ds_l q̃_h    (one read)
//   r2m_reward_core:         y_h = Σ_l p_l (u_h·x_l), never materialising c          (one read)
// Layouts: packed x[T, D_p] with cu_seqlens[B+1], or padded x[B, L, D_p] with an optional bool
// key_padding_mask[B, L] (True = ignore). A sequence with no attended token gives c = 0,
// lse = -inf, y = 0; only such a sequence does: a NaN or inf score (NaN/inf in the states or q̃)
// makes c, lse and y NaN, as softmax does. Emptiness is decided by counting attended rows, never
// from l > 0 or a finite lse (a NaN l would otherwise pass for an empty sequence).
// Malformed cu_seqlens (unchecked paths: negative, decreasing, past the end) are sanitized to
// cu'[i] = max(cu'[i-1], clamp(cu[i], 0, T)), the same rule as the Triton launcher and the
// reference: every row index stays inside states whatever the offsets hold. fp32/fp64 states compute in their own precision; bf16/fp16 states are
// converted per element to fp32.
#include "common.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

template <typename acc_t>
inline acc_t dot(const acc_t* a, const acc_t* b, int64_t n) {
  // 8 independent partial sums: vectorises without -ffast-math
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  acc_t s = 0;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

template <typename acc_t>
inline void axpy(acc_t* y, acc_t a, const acc_t* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// The rows of each sequence and which of them are attended.
struct Layout {
  int64_t B = 0, D = 0, L = 0;
  bool padded = false;
  const int64_t* cu = nullptr;  // packed, sanitized (see the file comment)
  const bool* mask = nullptr;   // padded, optional
  at::Tensor mask_holder, x;
  std::vector<int64_t> cu_safe;

  Layout(const at::Tensor& states, const c10::optional<at::Tensor>& cu_seqlens,
         const c10::optional<at::Tensor>& key_padding_mask) {
    icrm::check_cpu(states, "states");
    TORCH_CHECK(states.dim() == 2 || states.dim() == 3, "states must be [T, D_p] or [B, L, D_p]");
    D = states.size(-1);
    if (states.dim() == 3) {
      padded = true;
      B = states.size(0);
      L = states.size(1);
      x = states.reshape({B * L, D}).contiguous();
      if (key_padding_mask.has_value()) {
        mask_holder = key_padding_mask->to(at::kBool).contiguous();
        TORCH_CHECK(mask_holder.numel() == B * L, "key_padding_mask must be [B, L]");
        mask = mask_holder.data_ptr<bool>();
      }
    } else {
      TORCH_CHECK(cu_seqlens.has_value(), "packed states need cu_seqlens");
      const at::Tensor cu_holder = cu_seqlens->to(at::kLong).contiguous();
      const int64_t n = cu_holder.numel(), T = states.size(0);
      B = std::max<int64_t>(n - 1, 0);
      const int64_t* raw = cu_holder.data_ptr<int64_t>();
      cu_safe.resize(std::max<int64_t>(n, 1), 0);
      int64_t prev = 0;
      for (int64_t i = 0; i < n; ++i) {
        prev = std::max(prev, std::min(std::max(raw[i], int64_t(0)), T));
        cu_safe[i] = prev;
      }
      cu = cu_safe.data();
      x = states.contiguous();
    }
  }
  // Sequences per thread chunk: at least ~2M state elements (about 1 ms of work) per chunk, so
  // small batches stay on one thread (thread wake-up on a busy 2-core box costs more).
  int64_t grain() const {
    const int64_t per_seq = std::max<int64_t>(1, x.numel() / std::max<int64_t>(B, 1));
    return std::max<int64_t>(1, (int64_t(1) << 21) / per_seq);
  }
  int64_t begin(int64_t b) const { return padded ? b * L : cu[b]; }
  int64_t end(int64_t b) const { return padded ? (b + 1) * L : cu[b + 1]; }
  bool attended(int64_t row) const { return mask == nullptr || !mask[row]; }
};

template <typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* src, acc_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
}

// The row in the accumulation type: the states themselves when they already are, else a converted copy.
template <typename scalar_t, typename acc_t>
inline const acc_t* row_ptr(const scalar_t* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    return src;
  } else {
    load_row(src, buf, n);
    return buf;
  }
}

template <typename scalar_t, typename acc_t>
void core_fwd(const Layout& lay, const acc_t* qt, int64_t H, acc_t* c, acc_t* lse) {
  const int64_t D = lay.D;
  const scalar_t* x = lay.x.data_ptr<scalar_t>();
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  at::parallel_for(0, lay.B, lay.grain(), [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> row(D), m(H), l(H);
    for (int64_t b = b0; b < b1; ++b) {
      acc_t* cb = c + b * H * D;
      const acc_t* qb = qt + b * H * D;
      std::fill(cb, cb + H * D, acc_t(0));
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), acc_t(0));
      int64_t n_att = 0;
      for (int64_t r = lay.begin(b); r < lay.end(b); ++r) {
        if (!lay.attended(r)) continue;
        ++n_att;
        const acc_t* xr = row_ptr<scalar_t, acc_t>(x + r * D, row.data(), D);
        for (int64_t h = 0; h < H; ++h) {
          const acc_t s = dot(qb + h * D, xr, D);
          acc_t* ch = cb + h * D;
          if (s > m[h]) {  // new running max: rescale what was accumulated
            const acc_t alpha = std::exp(m[h] - s);  // 0 when m was -inf
            if (l[h] > 0)
              for (int64_t i = 0; i < D; ++i) ch[i] *= alpha;
            l[h] *= alpha;
            m[h] = s;
          }
          const acc_t p = std::exp(s - m[h]);
          l[h] += p;
          axpy(ch, p, xr, D);
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        acc_t* ch = cb + h * D;
        if (n_att > 0 && l[h] > 0) {
          const acc_t inv = acc_t(1) / l[h];
          for (int64_t i = 0; i < D; ++i) ch[i] *= inv;
          lse[b * H + h] = m[h] + std::log(l[h]);
        } else if (n_att > 0) {
          // attended rows but no finite mass: a NaN or ±inf score. Poison the head, as softmax
          // would, instead of passing it off as an empty sequence.
          const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
          std::fill(ch, ch + D, nan);
          lse[b * H + h] = nan;
        } else {
          lse[b * H + h] = neg_inf;
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void core_bwd(const Layout& lay, const acc_t* qt, const acc_t* dc, const acc_t* c, const acc_t* lse, int64_t H,
              acc_t* dq, scalar_t* dx) {
  const int64_t D = lay.D;
  const scalar_t* x = lay.x.data_ptr<scalar_t>();
  at::parallel_for(0, lay.B, lay.grain(), [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> row(D), delta(H), p(H), ds(H), dxr(D);
    for (int64_t b = b0; b < b1; ++b) {
      const acc_t* qb = qt + b * H * D;
      const acc_t* dcb = dc + b * H * D;
      acc_t* dqb = dq + b * H * D;
      std::fill(dqb, dqb + H * D, acc_t(0));
      for (int64_t h = 0; h < H; ++h) delta[h] = dot(c + (b * H + h) * D, dcb + h * D, D);
      for (int64_t r = lay.begin(b); r < lay.end(b); ++r) {
        if (!lay.attended(r)) {
          if (dx != nullptr) std::fill(dx + r * D, dx + (r + 1) * D, scalar_t(0));
          continue;
        }
        const acc_t* xr = row_ptr<scalar_t, acc_t>(x + r * D, row.data(), D);
        for (int64_t h = 0; h < H; ++h) {
          const acc_t l = lse[b * H + h];
          const acc_t s = dot(qb + h * D, xr, D);
          const acc_t g = dot(dcb + h * D, xr, D);
          // only an empty sequence has lse = -inf (it has no attended row to reach here anyway);
          // a NaN lse propagates into p and the gradients
          p[h] = l == -std::numeric_limits<acc_t>::infinity() ? acc_t(0) : std::exp(s - l);
          ds[h] = p[h] * (g - delta[h]);
          axpy(dqb + h * D, ds[h], xr, D);
        }
        if (dx != nullptr) {
          std::fill(dxr.begin(), dxr.end(), acc_t(0));
          for (int64_t h = 0; h < H; ++h) {
            axpy(dxr.data(), p[h], dcb + h * D, D);
            axpy(dxr.data(), ds[h], qb + h * D, D);
          }
          for (int64_t i = 0; i < D; ++i) dx[r * D + i] = static_cast<scalar_t>(dxr[i]);
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void reward_fwd(const Layout& lay, const acc_t* qt, const acc_t* u, int64_t H, acc_t* y, bool* nonempty) {
  const int64_t D = lay.D;
  const scalar_t* x = lay.x.data_ptr<scalar_t>();
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  at::parallel_for(0, lay.B, lay.grain(), [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> row(D), m(H), l(H), a(H);
    for (int64_t b = b0; b < b1; ++b) {
      const acc_t* qb = qt + b * H * D;
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), acc_t(0));
      std::fill(a.begin(), a.end(), acc_t(0));
      int64_t n_att = 0;
      for (int64_t r = lay.begin(b); r < lay.end(b); ++r) {
        if (!lay.attended(r)) continue;
        ++n_att;
        const acc_t* xr = row_ptr<scalar_t, acc_t>(x + r * D, row.data(), D);
        for (int64_t h = 0; h < H; ++h) {
          const acc_t s = dot(qb + h * D, xr, D);
          const acc_t v = dot(u + h * D, xr, D);
          if (s > m[h]) {
            const acc_t alpha = std::exp(m[h] - s);
            l[h] *= alpha;
            a[h] *= alpha;
            m[h] = s;
          }
          const acc_t pr = std::exp(s - m[h]);
          l[h] += pr;
          a[h] += pr * v;
        }
      }
      const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
      for (int64_t h = 0; h < H; ++h)  // NaN/inf scores: NaN (see core_fwd), not an empty row's 0
        y[b * H + h] = n_att == 0 ? acc_t(0) : (l[h] > 0 ? a[h] / l[h] : nan);
      nonempty[b] = n_att > 0;
    }
  });
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> s2t_attention_core(const at::Tensor& q_tilde, const at::Tensor& states,
                                                      const c10::optional<at::Tensor>& cu_seqlens,
                                                      const c10::optional<at::Tensor>& key_padding_mask) {
  icrm::check_cpu(q_tilde, "q_tilde");
  TORCH_CHECK(q_tilde.dim() == 3, "q_tilde must be [B, H, D_p]");
  Layout lay(states, cu_seqlens, key_padding_mask);
  const int64_t H = q_tilde.size(1);
  TORCH_CHECK(q_tilde.size(0) == lay.B && q_tilde.size(2) == lay.D, "q_tilde must be [B, H, D_p]");
  const auto acc = acc_type(states.scalar_type());
  auto qt = q_tilde.to(acc).contiguous();
  auto c = at::empty({lay.B, H, lay.D}, q_tilde.options().dtype(acc));
  auto lse = at::empty({lay.B, H}, q_tilde.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, states.scalar_type(), "s2t_attention_core", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    core_fwd<scalar_t, acc_t>(lay, qt.data_ptr<acc_t>(), H, c.data_ptr<acc_t>(), lse.data_ptr<acc_t>());
  });
  return {c, lse};
}

std::tuple<at::Tensor, at::Tensor> s2t_attention_core_bwd(const at::Tensor& dc, const at::Tensor& q_tilde,
                                                          const at::Tensor& states,
                                                          const c10::optional<at::Tensor>& cu_seqlens,
                                                          const c10::optional<at::Tensor>& key_padding_mask,
                                                          const at::Tensor& c, const at::Tensor& lse,
                                                          bool need_dstates) {
  icrm::check_cpu(q_tilde, "q_tilde");
  Layout lay(states, cu_seqlens, key_padding_mask);
  const int64_t H = q_tilde.size(1);
  TORCH_CHECK(q_tilde.dim() == 3 && q_tilde.size(0) == lay.B && q_tilde.size(2) == lay.D, "q_tilde must be [B, H, D_p]");
  const auto acc = acc_type(states.scalar_type());
  auto qt = q_tilde.to(acc).contiguous();
  // the raw op can be called without the Python checks: the loops index these by B, H, D_p
  TORCH_CHECK(dc.numel() == lay.B * H * lay.D && c.numel() == lay.B * H * lay.D, "dc and c must be [B, H, D_p]");
  TORCH_CHECK(lse.numel() == lay.B * H, "lse must be [B, H]");
  auto dcc = dc.to(acc).contiguous();
  auto cc = c.to(acc).contiguous();
  auto lsec = lse.to(acc).contiguous();
  auto dq = at::empty({lay.B, H, lay.D}, q_tilde.options().dtype(acc));
  // zeros: rows outside every (sanitized) sequence get no write and must not return garbage
  at::Tensor dx = need_dstates ? at::zeros(lay.x.sizes(), states.options()) : at::empty({0}, states.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, states.scalar_type(), "s2t_attention_core_bwd", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    core_bwd<scalar_t, acc_t>(lay, qt.data_ptr<acc_t>(), dcc.data_ptr<acc_t>(), cc.data_ptr<acc_t>(),
                              lsec.data_ptr<acc_t>(), H, dq.data_ptr<acc_t>(),
                              need_dstates ? dx.data_ptr<scalar_t>() : nullptr);
  });
  if (need_dstates) dx = dx.view(states.sizes());
  return {dq, dx};
}

std::tuple<at::Tensor, at::Tensor> r2m_reward_core(const at::Tensor& q_tilde, const at::Tensor& u,
                                                   const at::Tensor& states,
                                                   const c10::optional<at::Tensor>& cu_seqlens,
                                                   const c10::optional<at::Tensor>& key_padding_mask) {
  icrm::check_cpu(q_tilde, "q_tilde");
  Layout lay(states, cu_seqlens, key_padding_mask);
  const int64_t H = q_tilde.size(1);
  TORCH_CHECK(q_tilde.dim() == 3 && q_tilde.size(0) == lay.B && q_tilde.size(2) == lay.D, "q_tilde must be [B, H, D_p]");
  TORCH_CHECK(u.dim() == 2 && u.size(0) == H && u.size(1) == lay.D, "u must be [H, D_p]");
  const auto acc = acc_type(states.scalar_type());
  auto qt = q_tilde.to(acc).contiguous();
  auto uc = u.to(acc).contiguous();
  auto y = at::empty({lay.B, H}, q_tilde.options().dtype(acc));
  auto nonempty = at::empty({lay.B}, q_tilde.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, states.scalar_type(), "r2m_reward_core", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    reward_fwd<scalar_t, acc_t>(lay, qt.data_ptr<acc_t>(), uc.data_ptr<acc_t>(), H, y.data_ptr<acc_t>(),
                                nonempty.data_ptr<bool>());
  });
  return {y, nonempty};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(icrm_cpu, m) {
  m.def("s2t_attention_core(Tensor q_tilde, Tensor states, Tensor? cu_seqlens, Tensor? key_padding_mask) -> (Tensor, Tensor)");
  m.def("s2t_attention_core_bwd(Tensor dc, Tensor q_tilde, Tensor states, Tensor? cu_seqlens, "
        "Tensor? key_padding_mask, Tensor c, Tensor lse, bool need_dstates) -> (Tensor, Tensor)");
  m.def("r2m_reward_core(Tensor q_tilde, Tensor u, Tensor states, Tensor? cu_seqlens, Tensor? key_padding_mask) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(icrm_cpu, CPU, m) {
  m.impl("s2t_attention_core", &s2t_attention_core);
  m.impl("s2t_attention_core_bwd", &s2t_attention_core_bwd);
  m.impl("r2m_reward_core", &r2m_reward_core);
}
