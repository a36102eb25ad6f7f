// C++ tests of the attention family's CPU kernels, through the dispatcher (as Python calls them).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <tuple>

#include "check.h"

using Opt = c10::optional<at::Tensor>;
using CoreSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const Opt&, const Opt&);
using BwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Opt&,
                                                  const Opt&, const at::Tensor&, const at::Tensor&, bool);
using RewardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                     const Opt&, const Opt&);

static auto core() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("icrm_cpu::s2t_attention_core", "").typed<CoreSig>();
}
static auto core_bwd() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("icrm_cpu::s2t_attention_core_bwd", "").typed<BwdSig>();
}
static auto reward() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("icrm_cpu::r2m_reward_core", "").typed<RewardSig>();
}

static bool close(const at::Tensor& a, const at::Tensor& b, double tol) {
  return a.sizes() == b.sizes() && (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() <= tol;
}

// Hand-computed: one head, D = 2, one sequence of two tokens x0 = (1, 0), x1 = (0, 1), q̃ = (ln 3, 0):
// scores (ln 3, 0) -> p = (3/4, 1/4), c = (3/4, 1/4), lse = ln 4. The second sequence is empty.
static void test_hand_computed() {
  auto q = at::zeros({2, 1, 2}, at::kDouble);
  q[0][0][0] = std::log(3.0);
  auto x = at::eye(2, at::kDouble);
  auto cu = at::tensor({0, 2, 2}, at::kLong);
  auto [c, lse] = core().call(q, x, cu, c10::nullopt);
  auto want = at::zeros({2, 1, 2}, at::kDouble);
  want[0][0][0] = 0.75;
  want[0][0][1] = 0.25;
  EXPECT(close(c, want, 1e-14));
  EXPECT(std::abs(lse[0][0].item<double>() - std::log(4.0)) < 1e-14);
  EXPECT(std::isinf(lse[1][0].item<double>()) && lse[1][0].item<double>() < 0);
  // r2m: u = (1, -1) -> y = 3/4 - 1/4 = 1/2; empty row -> 0, flagged
  auto u = at::tensor({1.0, -1.0}, at::kDouble).view({1, 2});
  auto [y, nonempty] = reward().call(q, u, x, cu, c10::nullopt);
  EXPECT(std::abs(y[0][0].item<double>() - 0.5) < 1e-14);
  EXPECT(y[1][0].item<double>() == 0.0);
  EXPECT(nonempty[0].item<bool>() && !nonempty[1].item<bool>());
}

// Packed and padded layouts agree; masked positions are ignored; matches the softmax formula.
static void test_layouts_and_formula() {
  at::manual_seed(0);
  const int64_t B = 3, L = 5, H = 2, D = 7;
  auto xp = at::randn({B, L, D}, at::kDouble);
  auto mask = at::zeros({B, L}, at::kBool);
  mask[0][3] = true;
  mask[0][4] = true;
  mask[2].fill_(true);  // fully masked
  auto q = at::randn({B, H, D}, at::kDouble);
  auto [c_pad, lse_pad] = core().call(q, xp, c10::nullopt, mask);
  // packed: the unmasked rows of sequences 0 and 1, empty third sequence
  auto packed = at::cat({xp[0].slice(0, 0, 3), xp[1]}, 0);
  auto cu = at::tensor({0, 3, 8, 8}, at::kLong);
  auto [c_pk, lse_pk] = core().call(q, packed, cu, c10::nullopt);
  EXPECT(close(c_pad, c_pk, 1e-12));
  EXPECT(close(lse_pad.slice(0, 0, 2), lse_pk.slice(0, 0, 2), 1e-12));
  EXPECT(close(c_pad[2], at::zeros({H, D}, at::kDouble), 0.0));
  // formula for sequence 1
  auto s = at::matmul(q[1], xp[1].t());  // [H, L]
  auto p = at::softmax(s, 1);
  EXPECT(close(c_pad[1], at::matmul(p, xp[1]), 1e-12));
  EXPECT(close(lse_pad[1], at::logsumexp(s, {1}), 1e-12));
}

// Backward against a central finite difference of L = Σ dc·c (q̃ and states).
static void test_backward_finite_difference() {
  at::manual_seed(1);
  const int64_t H = 2, D = 4;
  auto x = at::randn({6, D}, at::kDouble);
  auto cu = at::tensor({0, 4, 4, 6}, at::kLong);
  auto q = at::randn({3, H, D}, at::kDouble);
  auto dc = at::randn({3, H, D}, at::kDouble);
  auto [c, lse] = core().call(q, x, cu, c10::nullopt);
  auto [dq, dx] = core_bwd().call(dc, q, x, cu, c10::nullopt, c, lse, true);
  auto loss = [&](const at::Tensor& qq, const at::Tensor& xx) {
    return (std::get<0>(core().call(qq, xx, cu, c10::nullopt)) * dc).sum().item<double>();
  };
  const double h = 1e-6;
  double err = 0.0;
  for (int64_t i = 0; i < q.numel(); ++i) {
    auto qp = q.clone(), qm = q.clone();
    qp.view({-1})[i] += h;
    qm.view({-1})[i] -= h;
    err = std::max(err, std::abs((loss(qp, x) - loss(qm, x)) / (2 * h) - dq.view({-1})[i].item<double>()));
  }
  for (int64_t i = 0; i < x.numel(); ++i) {
    auto xp = x.clone(), xm = x.clone();
    xp.view({-1})[i] += h;
    xm.view({-1})[i] -= h;
    err = std::max(err, std::abs((loss(q, xp) - loss(q, xm)) / (2 * h) - dx.view({-1})[i].item<double>()));
  }
  EXPECT(err < 1e-7);
  // without states grad: same dq, empty dx
  auto [dq2, dx2] = core_bwd().call(dc, q, x, cu, c10::nullopt, c, lse, false);
  EXPECT(close(dq, dq2, 0.0));
  EXPECT(dx2.numel() == 0);
}

// bf16 states are read as bf16 and accumulated in fp32.
static void test_bf16_states() {
  at::manual_seed(2);
  auto x = at::randn({9, 16}).to(at::kBFloat16);
  auto cu = at::tensor({0, 1, 9}, at::kLong);
  auto q = at::randn({2, 1, 16}) * 0.3;
  auto [c, lse] = core().call(q, x, cu, c10::nullopt);
  auto [c32, lse32] = core().call(q, x.to(at::kFloat), cu, c10::nullopt);
  EXPECT(c.scalar_type() == at::kFloat);
  EXPECT(close(c, c32, 1e-6));
  auto [dq, dx] = core_bwd().call(at::ones_like(c), q, x, cu, c10::nullopt, c, lse, true);
  EXPECT(dx.scalar_type() == at::kBFloat16);
}

int main() {
  test_hand_computed();
  test_layouts_and_formula();
  test_backward_finite_difference();
  test_bf16_states();
  return icrm_test::finish();
}
