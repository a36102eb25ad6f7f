// C++ tests of the Beta family's CPU kernels, called through the dispatcher as Python does.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>

#include "check.h"
#include "special.h"

namespace {

at::Tensor unary(const at::Tensor& x, int64_t which) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("icrm_cpu::special_unary", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(x, which);
}

at::Tensor betaln(const at::Tensor& a, const at::Tensor& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("icrm_cpu::betaln", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(a, b);
}

using ElboSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, double,
    double, double, double, double, bool, int64_t, bool);

using PosteriorSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const c10::optional<at::Tensor>&,
                                                        const c10::optional<at::Tensor>&,
                                                        const c10::optional<at::Tensor>&, int64_t, double, double,
                                                        double);

bool near(double a, double b, double tol) { return std::abs(a - b) <= tol * std::max(1.0, std::abs(b)); }

}  // namespace

int main() {
  const double kEuler = 0.57721566490153286;
  const double kPi = 3.14159265358979324;
  // known values, float and double
  for (auto dt : {at::kFloat, at::kDouble}) {
    const double tol = dt == at::kFloat ? 2e-6 : 1e-14;
    auto x = at::tensor({1.0, 0.5, 2.0, 1e6}, at::TensorOptions().dtype(dt));
    auto psi = unary(x, 0).to(at::kDouble);
    auto tri = unary(x, 1).to(at::kDouble);
    auto lg = unary(x, 2).to(at::kDouble);
    EXPECT(near(psi[0].item<double>(), -kEuler, tol));
    EXPECT(near(psi[1].item<double>(), -kEuler - 2 * std::log(2.0), tol));
    EXPECT(near(tri[0].item<double>(), kPi * kPi / 6, tol));
    EXPECT(near(tri[1].item<double>(), kPi * kPi / 2, tol));
    EXPECT(near(lg[1].item<double>(), 0.5 * std::log(kPi), tol));
    EXPECT(std::abs(lg[0].item<double>()) < tol && std::abs(lg[2].item<double>()) < tol);
    EXPECT(near(lg[3].item<double>(), std::lgamma(1e6), tol));
    // betaln(1e6, 1) = -log(1e6): no cancellation of the 1.3e7-sized lgammas
    auto bl = betaln(at::tensor({1e6, 2.0}, at::TensorOptions().dtype(dt)), at::tensor({1.0, 3.0}, at::TensorOptions().dtype(dt)));
    EXPECT(near(bl[0].item<double>(), -std::log(1e6), tol * 10));
    EXPECT(near(bl[1].item<double>(), std::log(1.0 / 12.0), tol));
  }

  auto elbo = c10::Dispatcher::singleton().findSchemaOrThrow("icrm_cpu::beta_elbo", "").typed<ElboSig>();
  // KL(Beta(a,b) || Beta(a,b)) = 0 and its gradient is 0, at small and huge parameters
  for (double p : {0.3, 2.0, 50.0}) {
    auto a = at::full({3}, p, at::kFloat);
    const double lnb0 = std::lgamma(p) * 2 - std::lgamma(2 * p);
    auto out = elbo.call(a, a, c10::nullopt, c10::nullopt, p, p, lnb0, 1.0, 0.0, false, 0, true);
    EXPECT(std::get<0>(out).abs().max().item<float>() < 1e-4f);
    EXPECT(std::get<1>(out).abs().max().item<float>() < 1e-4f);
  }
  // huge concentrations, prior Beta(1,1): fp32 KL against the double kernel (the naive formula
  // would lose every digit to ~1e7-sized cancelling terms)
  {
    auto a = at::tensor({1e6, 3e5, 1e-4}, at::kDouble), b = at::tensor({2e6, 7e5, 5e5}, at::kDouble);
    auto want = std::get<0>(elbo.call(a, b, c10::nullopt, c10::nullopt, 1.0, 1.0, 0.0, 1.0, 0.0, false, 0, false));
    auto got = std::get<0>(elbo.call(a.to(at::kFloat), b.to(at::kFloat), c10::nullopt, c10::nullopt, 1.0, 1.0, 0.0, 1.0,
                                     0.0, false, 0, false));
    EXPECT(((got.to(at::kDouble) - want).abs() / want.abs().clamp_min(1)).max().item<double>() < 1e-5);
  }
  // data term only (kl_weight 0), label 1: L = -(psi(a) - psi(a+b)); Beta(1,1): psi(1) - psi(2) = -1
  {
    auto one = at::ones({2}, at::kDouble);
    auto out = elbo.call(one, one, one, c10::nullopt, 1.0, 1.0, 0.0, 0.0, 0.0, false, 2, false);
    EXPECT(near(std::get<0>(out).item<double>(), 1.0, 1e-14));
  }

  auto posterior =
      c10::Dispatcher::singleton().findSchemaOrThrow("icrm_cpu::beta_posterior", "").typed<PosteriorSig>();
  {
    auto y = at::tensor({1.0, 0.0, 1.0, 1.0, 0.0}, at::kFloat);
    auto idx = at::tensor({0, 1, 0, 0, 1}, at::kLong);
    auto out = posterior.call(y, c10::nullopt, c10::nullopt, idx, 3, 1.0, 1.0, 1.0);
    EXPECT(std::get<0>(out)[0].item<float>() == 4.0f && std::get<1>(out)[0].item<float>() == 1.0f);
    EXPECT(std::get<0>(out)[1].item<float>() == 1.0f && std::get<1>(out)[1].item<float>() == 3.0f);
    EXPECT(std::get<0>(out)[2].item<float>() == 1.0f && std::get<1>(out)[2].item<float>() == 1.0f);
    // discount: the newest has weight 1, older ones 0.5, 0.25
    auto cu = at::tensor({0, 3, 5}, at::kLong);
    auto d = posterior.call(y, c10::nullopt, cu, c10::nullopt, 2, 0.0, 0.0, 0.5);
    EXPECT(near(std::get<0>(d)[0].item<float>(), 0.25 + 1.0, 1e-7));
    EXPECT(near(std::get<1>(d)[0].item<float>(), 0.5, 1e-7));
    EXPECT(near(std::get<0>(d)[1].item<float>(), 0.5, 1e-7));  // y = (1, 0): the 1 is the older one
    EXPECT(near(std::get<1>(d)[1].item<float>(), 1.0, 1e-7));
  }
  // parametrisation: swapping the responses (m -> -m) swaps alpha and beta; alpha + beta = tau
  {
    using Sig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double);
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow("icrm_cpu::beta_from_logits", "").typed<Sig>();
    auto m = at::tensor({-3.0, 0.0, 2.5}, at::kDouble), c = at::tensor({0.0, -1.0, 4.0}, at::kDouble);
    auto ab = op.call(m, c, 0.01);
    auto ba = op.call(-m, c, 0.01);
    EXPECT(at::allclose(std::get<0>(ab), std::get<1>(ba)) && at::allclose(std::get<1>(ab), std::get<0>(ba)));
    EXPECT(near((std::get<0>(ab)[0] + std::get<1>(ab)[0]).item<double>(), std::log(2.0) + 0.01, 1e-14));
  }
  // header-only functions are usable directly from other kernels
  EXPECT(near(icrm::special::digamma(1.0), -kEuler, 1e-14));
  return icrm_test::finish();
}
