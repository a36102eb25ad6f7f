// C++ tests of icrm_cpu::group_advantages (the CPU kernel of docs/advantages.md), called through
// the dispatcher.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <optional>

#include "check.h"

using Opt = std::optional<at::Tensor>;
using Sig = at::Tensor(const at::Tensor&, const Opt&, const Opt&, int64_t, const Opt&, int64_t, int64_t, int64_t,
                       double, bool, int64_t, bool, double, int64_t, double, double);

static at::Tensor call(const at::Tensor& r, Opt cu, Opt order, int64_t G, Opt w, int64_t baseline, int64_t scale,
                       int64_t whiten, double eps, bool unbiased, int64_t singleton, bool omit, double weps,
                       int64_t wstd, double lo = 0.0, double hi = 1.0) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("icrm_cpu::group_advantages", "").typed<Sig>();
  return op.call(r, cu, order, G, w, baseline, scale, whiten, eps, unbiased, singleton, omit, weps, wstd, lo, hi);
}

static bool close(const at::Tensor& a, const at::Tensor& b, double tol = 1e-5) {
  return at::allclose(a.to(at::kDouble), b.to(at::kDouble), tol, tol, /*equal_nan=*/true);
}

int main() {
  at::manual_seed(0);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const auto i64 = at::TensorOptions().dtype(at::kLong);

  // GRPO, fixed G = 4: (r - mean_g) / (std_g + eps), unbiased std
  at::Tensor r = at::randn({16}, f32);
  at::Tensor v = r.view({4, 4});
  at::Tensor expect = ((v - v.mean(1, true)) / (v.std({1}, true, true) + 1e-6)).flatten();
  EXPECT(close(call(r, {}, {}, 4, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0), expect));

  // the same groups through cu offsets and through a permuted index layout (order)
  at::Tensor cu = at::arange(0, 17, 4, i64);
  EXPECT(close(call(r, cu, {}, 0, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0), expect));
  at::Tensor perm = at::randperm(16, i64);
  at::Tensor rp = r.index_select(0, perm);
  at::Tensor order = at::argsort(perm);  // sorted position j holds original row order[j]... of rp
  // rows of group g in rp: positions p with perm[p] / 4 == g; order lists them group by group
  at::Tensor ord = at::argsort(at::floor_divide(perm, 4), /*stable=*/true);
  at::Tensor out = call(rp, cu, ord, 0, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0);
  EXPECT(close(out, expect.index_select(0, perm)));
  (void)order;

  // identical rewards give exactly 0 (group_mean / leave_one_out / batch statistics)
  at::Tensor same = at::full({12}, 1.0 / 3.0, f32);
  for (int64_t b : {1, 2, 3}) {
    for (int64_t s : {0, 1, 2}) EXPECT(at::equal(call(same, {}, {}, 4, {}, b, s, 0, 1e-6, true, 0, false, 0.0, 0),
                                               at::zeros({12}, f32)));
  }

  // leave-one-out: r_i - (sum - r_i) / (n - 1)
  at::Tensor loo = (v - (v.sum(1, true) - v) / 3.0).flatten();
  EXPECT(close(call(r, {}, {}, 4, {}, 2, 0, 0, 0.0, true, 0, false, 0.0, 0), loo));

  // singletons (ragged [1, 3]): zero -> 0, raw -> r (no scale), nan -> NaN
  at::Tensor r4 = at::randn({4}, f32);
  at::Tensor cu2 = at::tensor({0, 1, 4}, i64);
  EXPECT(call(r4, cu2, {}, 0, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0)[0].item<float>() == 0.0f);
  EXPECT(call(r4, cu2, {}, 0, {}, 2, 0, 0, 0.0, true, 1, false, 0.0, 0)[0].item<float>() == r4[0].item<float>());
  EXPECT(std::isnan(call(r4, cu2, {}, 0, {}, 1, 1, 0, 1e-6, true, 2, false, 0.0, 0)[0].item<float>()));

  // omit: a NaN row gets 0 and leaves the statistics
  at::Tensor rn = r.clone();
  rn[1] = NAN;
  at::Tensor on = call(rn, {}, {}, 4, {}, 1, 1, 0, 1e-6, true, 0, true, 0.0, 0);
  EXPECT(on[1].item<float>() == 0.0f);
  at::Tensor g0 = at::stack({r[0], r[2], r[3]});
  EXPECT(std::abs(on[0].item<double>() - ((r[0] - g0.mean()) / (g0.std() + 1e-6)).item<double>()) < 1e-5);
  // propagate: the NaN poisons its group only
  at::Tensor pn = call(rn, {}, {}, 4, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0);
  EXPECT(std::isnan(pn[0].item<float>()) && !std::isnan(pn[4].item<float>()));

  // sample whitening: (A - mean) / (std + eps) over the batch
  at::Tensor centered = (v - v.mean(1, true)).flatten();
  at::Tensor white = (centered - centered.mean()) / (centered.std() + 1e-6);
  EXPECT(close(call(r, {}, {}, 4, {}, 1, 0, 1, 0.0, true, 0, false, 1e-6, 0), white));

  // float64 input stays float64 and matches to 1e-12
  at::Tensor rd = r.to(at::kDouble);
  at::Tensor vd = rd.view({4, 4});
  at::Tensor ed = ((vd - vd.mean(1, true)) / (vd.std({1}, true, true) + 1e-6)).flatten();
  at::Tensor od = call(rd, {}, {}, 4, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0);
  EXPECT(od.scalar_type() == at::kDouble && at::allclose(od, ed, 1e-12, 1e-12));

  // BNPO: every group has p = 0.5 -> v = 0 -> alpha = beta = 1 -> A = s - p
  at::Tensor bin = at::tensor({1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 1.0f, 1.0f, 0.0f});
  EXPECT(close(call(bin, {}, {}, 4, {}, 1, 3, 0, 0.0, true, 1, false, 0.0, 0), bin - 0.5));
  // bounds (0, 10): the same as rewards / 10
  at::Tensor r10 = at::rand({16}, f32) * 10;
  EXPECT(close(call(r10, {}, {}, 4, {}, 1, 3, 0, 0.0, true, 1, false, 0.0, 0, 0.0, 10.0),
              call(r10 / 10, {}, {}, 4, {}, 1, 3, 0, 0.0, true, 1, false, 0.0, 0)));

  // group_order: counting sort (small id range) and comparison sort (wide range) agree
  using OrderSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&);
  static auto order_op =
      c10::Dispatcher::singleton().findSchemaOrThrow("icrm_cpu::group_order", "").typed<OrderSig>();
  at::Tensor ids = at::floor_divide(at::randperm(16, i64), 4);
  auto [cu_a, ord_a] = order_op.call(ids);
  auto [cu_b, ord_b] = order_op.call(ids * 1000000007LL);
  EXPECT(at::equal(ord_a, ord_b) && at::equal(cu_a, at::arange(0, 17, 4, i64)) && at::equal(cu_b, cu_a));
  EXPECT(close(call(r.index_select(0, perm), cu_a, ord_a, 0, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0),
              call(r.index_select(0, perm), cu_b, ord_b, 0, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0)));

  // empty input
  EXPECT(call(at::empty({0}, f32), {}, {}, 4, {}, 1, 1, 0, 1e-6, true, 0, false, 0.0, 0).numel() == 0);
  return icrm_test::finish();
}
