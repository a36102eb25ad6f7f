// CPU kernels of the pairwise group ops (docs/pairwise.md#math): Pref-GRPO's group win rate and
// R2M's GREBT loss. Same math as icrm_kernels/triton/pairwise.py; one task per group, groups
// spread over threads with at::parallel_for.
//
// Layouts (as the Python ops pass them): `cu` undefined -> fixed groups of `group_size` rows;
// `cu[B+1]` int64 -> ragged groups; `cu` + `order[N]` int64 -> the unsorted group_index layout
// (row = order[cu[g] + position]). fp32 and fp64 inputs (the Python op upcasts fp16/bf16).
#include "common.h"

#include <algorithm>
#include <tuple>
#include <vector>

namespace icrm {
namespace {

struct Groups {
  int64_t count = 0;
  int64_t group_size = 0;
  const int64_t* cu = nullptr;
  const int64_t* order = nullptr;

  int64_t rows = 0;

  inline void bounds(int64_t g, int64_t& start, int64_t& n) const {
    if (cu) {  // clamped: malformed offsets (value checks off) stay in bounds
      start = std::min(std::max<int64_t>(cu[g], 0), rows);
      n = std::min(std::max(cu[g + 1], start), rows) - start;
    } else {
      start = g * group_size;
      n = group_size;
    }
  }
  // order is clamped too: an out-of-range entry (unchecked callers) reads and writes a real row
  inline int64_t row(int64_t start, int64_t pos) const {
    return order ? std::min(std::max<int64_t>(order[start + pos], 0), rows - 1) : start + pos;
  }
};

Groups make_groups(const at::Tensor& x, const c10::optional<at::Tensor>& cu, const c10::optional<at::Tensor>& order,
                   int64_t group_size, at::Tensor& cu_keep, at::Tensor& order_keep) {
  Groups gr;
  const int64_t n = x.numel();
  gr.rows = n;
  if (cu.has_value() && cu->defined()) {
    check_cpu(*cu, "cu");
    TORCH_CHECK(cu->dim() == 1 && cu->numel() >= 1, "cu must be 1-D with at least one offset");
    cu_keep = cu->to(at::kLong).contiguous();
    gr.cu = cu_keep.data_ptr<int64_t>();
    gr.count = cu_keep.numel() - 1;
    // no check of the values: bounds() clamps every group into the rows, so malformed offsets
    // (value checks off) give garbage values, never an out-of-bounds access
    if (order.has_value() && order->defined()) {
      check_cpu(*order, "order");
      TORCH_CHECK(order->numel() == n, "order must have one entry per row");
      order_keep = order->to(at::kLong).contiguous();
      gr.order = order_keep.data_ptr<int64_t>();
    }
  } else {
    TORCH_CHECK(group_size > 0 && n % group_size == 0, "group_size must be positive and divide the number of rows");
    gr.group_size = group_size;
    gr.count = n / group_size;
  }
  return gr;
}

// Groups per parallel_for grain: about 4 kGrain units of work (a unit is one pair or one row
// pass, a few ns), a group costing `work` units. Chunks of ~100 us keep small batches on one
// thread, where waking a second one costs more than it saves (and much more on a loaded machine).
inline int64_t grain_groups(int64_t work) { return std::max<int64_t>(1, 4 * kGrain / std::max<int64_t>(1, work)); }

inline int64_t avg_size(int64_t n, int64_t groups) { return groups > 0 ? std::max<int64_t>(1, n / groups) : 1; }

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// ------------------------------------------------------------------------ group win rate
template <typename scalar_t>
void win_rate_kernel(const scalar_t* s, scalar_t* w, const Groups& gr, double temperature, int64_t n_rows) {
  using acc_t = scalar_t;  // fp32 for fp32 (as the GPU), fp64 for fp64
  const bool hard = temperature <= 0;
  const acc_t inv_t = hard ? acc_t(0) : acc_t(1.0 / temperature);
  at::parallel_for(0, gr.count, grain_groups(avg_size(n_rows, gr.count) * avg_size(n_rows, gr.count)), [&](int64_t g0, int64_t g1) {
    std::vector<acc_t> val, acc;
    for (int64_t g = g0; g < g1; ++g) {
      int64_t start, n;
      gr.bounds(g, start, n);
      if (n <= 0) continue;
      if (n == 1) {
        w[gr.row(start, 0)] = scalar_t(0.5);
        continue;
      }
      val.resize(n);
      acc.assign(n, acc_t(0));
      bool has_nan = false;
      for (int64_t i = 0; i < n; ++i) {
        val[i] = static_cast<acc_t>(s[gr.row(start, i)]);
        has_nan |= std::isnan(val[i]);
      }
      const acc_t inv_pairs = acc_t(1) / acc_t(n - 1);
      if (hard) {
        if (has_nan) {  // every row of the group is compared with the NaN one
          for (int64_t i = 0; i < n; ++i) w[gr.row(start, i)] = std::numeric_limits<scalar_t>::quiet_NaN();
          continue;
        }
        // integer win / tie counts: branch-free, and the compiler vectorizes the inner loop
        for (int64_t i = 0; i < n; ++i) {
          const acc_t a = val[i];
          int64_t wins = 0, ties = 0;
          for (int64_t j = 0; j < n; ++j) {
            wins += a > val[j];
            ties += a == val[j];
          }
          w[gr.row(start, i)] = static_cast<scalar_t>((acc_t(wins) + acc_t(0.5) * acc_t(ties - 1)) * inv_pairs);
        }
        continue;
      }
      // P(j > i) = 1 - P(i > j): each unordered pair once
      for (int64_t i = 0; i < n; ++i) {
        const acc_t a = val[i];
        acc_t sum_i = 0;
        for (int64_t j = i + 1; j < n; ++j) {
          const acc_t p = sigmoid((a - val[j]) * inv_t);
          sum_i += p;
          acc[j] += acc_t(1) - p;
        }
        acc[i] += sum_i;
      }
      for (int64_t i = 0; i < n; ++i) w[gr.row(start, i)] = static_cast<scalar_t>(acc[i] * inv_pairs);
    }
  });
}

template <typename scalar_t>
void win_rate_backward_kernel(const scalar_t* dw, const scalar_t* s, scalar_t* ds, const Groups& gr, double temperature,
                              int64_t n_rows) {
  using acc_t = scalar_t;
  const acc_t inv_t = acc_t(1.0 / temperature);
  at::parallel_for(0, gr.count, grain_groups(avg_size(n_rows, gr.count) * avg_size(n_rows, gr.count)), [&](int64_t g0, int64_t g1) {
    std::vector<acc_t> val, gv, acc;
    for (int64_t g = g0; g < g1; ++g) {
      int64_t start, n;
      gr.bounds(g, start, n);
      if (n <= 0) continue;
      if (n == 1) {
        ds[gr.row(start, 0)] = scalar_t(0);
        continue;
      }
      val.resize(n);
      gv.resize(n);
      acc.assign(n, acc_t(0));
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = gr.row(start, i);
        val[i] = static_cast<acc_t>(s[r]);
        gv[i] = static_cast<acc_t>(dw[r]);
      }
      // ds_k = 1/(T (n-1)) sum_{j != k} sigma'(x_kj) (g_k - g_j); sigma' is symmetric
      for (int64_t i = 0; i < n; ++i) {
        acc_t sum_i = 0;
        for (int64_t j = i + 1; j < n; ++j) {
          const acc_t p = sigmoid((val[i] - val[j]) * inv_t);
          const acc_t t = p * (acc_t(1) - p) * (gv[i] - gv[j]);
          sum_i += t;
          acc[j] -= t;
        }
        acc[i] += sum_i;
      }
      const acc_t scale = inv_t / acc_t(n - 1);
      for (int64_t i = 0; i < n; ++i) ds[gr.row(start, i)] = static_cast<scalar_t>(acc[i] * scale);
    }
  });
}

// ----------------------------------------------------------------------------- GREBT loss
template <typename scalar_t>
void grebt_kernel(const scalar_t* r_in, const scalar_t* sel_in, scalar_t* loss_out, scalar_t* drow, const Groups& gr,
                  double alpha, double eps, int64_t n_rows) {
  using acc_t = double;  // a handful of values per group: double costs nothing here
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  at::parallel_for(0, gr.count, grain_groups(4 * avg_size(n_rows, gr.count)), [&](int64_t g0, int64_t g1) {
    std::vector<acc_t> r, ex;
    for (int64_t g = g0; g < g1; ++g) {
      int64_t start, n;
      gr.bounds(g, start, n);
      if (n < 2) {
        loss_out[g] = static_cast<scalar_t>(nan);
        for (int64_t i = 0; i < n; ++i) drow[gr.row(start, i)] = scalar_t(0);
        continue;
      }
      r.resize(n);
      ex.resize(n);
      // first argmax / argmin of select; a NaN in select poisons the group
      int64_t w = 0, l = 0;
      acc_t hi = -std::numeric_limits<acc_t>::infinity(), lo = std::numeric_limits<acc_t>::infinity();
      bool sel_nan = false;
      acc_t sum = 0;
      // shift by the group's first reward: the loss is shift-invariant, and r - mean keeps its
      // digits when the group's spread is tiny next to |r|
      const acc_t r0 = static_cast<acc_t>(r_in[gr.row(start, 0)]);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t row = gr.row(start, i);
        const acc_t raw = static_cast<acc_t>(r_in[row]);
        r[i] = raw - r0;
        const acc_t sv = sel_in ? static_cast<acc_t>(sel_in[row]) : raw;
        sel_nan |= std::isnan(sv);
        if (sv > hi) { hi = sv; w = i; }
        if (sv < lo) { lo = sv; l = i; }
        sum += r[i];
      }
      const acc_t poison = sel_nan ? nan : acc_t(0);
      const acc_t nf = acc_t(n);
      const acc_t mu = sum / nf + poison;
      acc_t var = 0, r_max = -std::numeric_limits<acc_t>::infinity();
      for (int64_t i = 0; i < n; ++i) {
        r[i] += poison;
        const acc_t c = r[i] - mu;
        var += c * c;
        r_max = std::max(r_max, r[i]);
      }
      if (sel_nan) r_max = nan;
      const acc_t sigma = std::sqrt(var / nf);
      const acc_t s = sigma + eps;
      const acc_t inv_s = s > 0 ? acc_t(1) / s : acc_t(0);
      const acc_t z_max = (r_max - mu) * inv_s;
      acc_t e_sum = 0, ez = 0, ezz = 0;
      for (int64_t i = 0; i < n; ++i) {
        const acc_t z = (r[i] - mu) * inv_s;
        const acc_t e = std::exp(z - z_max);
        ex[i] = e;
        e_sum += e;
        ez += e * z;
        ezz += e * z * z;
      }
      const acc_t z_bar = ez / e_sum;
      const acc_t var_p = std::max(ezz / e_sum - z_bar * z_bar, acc_t(0));
      const acc_t loss_gre = z_max + std::log(e_sum) - z_bar;
      const acc_t x = r[l] - r[w];  // L_BT = softplus(x)
      const acc_t loss_bt = std::max(x, acc_t(0)) + std::log1p(std::exp(-std::abs(x)));
      loss_out[g] = static_cast<scalar_t>((1 - alpha) * loss_bt + alpha * loss_gre);

      const acc_t d_bt = (1 - alpha) * sigmoid(x);
      const acc_t coef = sigma > 0 ? var_p * inv_s / (nf * sigma) : acc_t(0);
      const acc_t inv_e_sum = acc_t(1) / e_sum;
      for (int64_t i = 0; i < n; ++i) {
        const acc_t c = r[i] - mu;
        const acc_t z = c * inv_s;
        const acc_t p = ex[i] * inv_e_sum;
        acc_t d = alpha * (inv_s * (-p * (z - z_bar)) + coef * c);
        if (i == w) d -= d_bt;
        if (i == l) d += d_bt;
        drow[gr.row(start, i)] = static_cast<scalar_t>(d);
      }
    }
  });
}

void check_float(const at::Tensor& x, const char* name) {
  check_cpu(x, name);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name, " must be float32 or float64, got ",
              x.scalar_type());
}

at::Tensor pairwise_win_rate(const at::Tensor& scores, const c10::optional<at::Tensor>& cu,
                             const c10::optional<at::Tensor>& order, int64_t group_size, double temperature) {
  check_float(scores, "scores");
  const at::Tensor s = scores.contiguous();
  at::Tensor cu_keep, order_keep;
  const Groups gr = make_groups(s, cu, order, group_size, cu_keep, order_keep);
  at::Tensor out = gr.cu ? at::zeros_like(s) : at::empty_like(s);  // rows no group covers read 0
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "pairwise_win_rate", [&] {
    win_rate_kernel<scalar_t>(s.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), gr, temperature, s.numel());
  });
  return out;
}

at::Tensor pairwise_win_rate_backward(const at::Tensor& grad, const at::Tensor& scores, const c10::optional<at::Tensor>& cu,
                                      const c10::optional<at::Tensor>& order, int64_t group_size, double temperature) {
  check_float(scores, "scores");
  TORCH_CHECK(temperature > 0, "temperature must be > 0 for the backward of the soft win rate");
  const at::Tensor s = scores.contiguous();
  const at::Tensor g = grad.to(s.scalar_type()).contiguous();
  TORCH_CHECK(g.numel() == s.numel(), "grad must have one value per score");
  at::Tensor cu_keep, order_keep;
  const Groups gr = make_groups(s, cu, order, group_size, cu_keep, order_keep);
  at::Tensor out = gr.cu ? at::zeros_like(s) : at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "pairwise_win_rate_backward", [&] {
    win_rate_backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), gr,
                                       temperature, s.numel());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_grebt(const at::Tensor& rewards, const c10::optional<at::Tensor>& select,
                                                  const c10::optional<at::Tensor>& cu,
                                                  const c10::optional<at::Tensor>& order, int64_t group_size,
                                                  double alpha, double eps) {
  check_float(rewards, "rewards");
  const at::Tensor r = rewards.contiguous();
  at::Tensor sel;
  if (select.has_value() && select->defined()) {
    check_cpu(*select, "select");
    TORCH_CHECK(select->numel() == r.numel(), "select must have one value per reward");
    sel = select->to(r.scalar_type()).contiguous();
  }
  at::Tensor cu_keep, order_keep;
  const Groups gr = make_groups(r, cu, order, group_size, cu_keep, order_keep);
  at::Tensor losses = at::empty({gr.count}, r.options());
  at::Tensor drow = gr.cu ? at::zeros_like(r) : at::empty_like(r);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "pairwise_grebt", [&] {
    grebt_kernel<scalar_t>(r.data_ptr<scalar_t>(), sel.defined() ? sel.data_ptr<scalar_t>() : nullptr,
                           losses.data_ptr<scalar_t>(), drow.data_ptr<scalar_t>(), gr, alpha, eps, r.numel());
  });
  return {losses, drow};
}

}  // namespace
}  // namespace icrm

TORCH_LIBRARY_FRAGMENT(icrm_cpu, m) {
  m.def("pairwise_win_rate(Tensor scores, Tensor? cu, Tensor? order, int group_size, float temperature) -> Tensor");
  m.def("pairwise_win_rate_backward(Tensor grad, Tensor scores, Tensor? cu, Tensor? order, int group_size, "
        "float temperature) -> Tensor");
  m.def("pairwise_grebt(Tensor rewards, Tensor? select, Tensor? cu, Tensor? order, int group_size, float alpha, "
        "float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(icrm_cpu, CPU, m) {
  m.impl("pairwise_win_rate", &icrm::pairwise_win_rate);
  m.impl("pairwise_win_rate_backward", &icrm::pairwise_win_rate_backward);
  m.impl("pairwise_grebt", &icrm::pairwise_grebt);
}
