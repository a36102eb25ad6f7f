// C++ tests of the pairwise CPU kernels: hand-computed values, the three layouts, edge cases.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <tuple>

#include "check.h"

using at::Tensor;
using OptT = c10::optional<Tensor>;

static Tensor win_rate(const Tensor& s, OptT cu, OptT order, int64_t g, double t) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("icrm_cpu::pairwise_win_rate", "")
                       .typed<Tensor(const Tensor&, const OptT&, const OptT&, int64_t, double)>();
  return op.call(s, cu, order, g, t);
}

static Tensor win_rate_bwd(const Tensor& gw, const Tensor& s, OptT cu, OptT order, int64_t g, double t) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("icrm_cpu::pairwise_win_rate_backward", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptT&, const OptT&, int64_t, double)>();
  return op.call(gw, s, cu, order, g, t);
}

static std::tuple<Tensor, Tensor> grebt(const Tensor& r, OptT sel, OptT cu, OptT order, int64_t g, double alpha, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("icrm_cpu::pairwise_grebt", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const OptT&, const OptT&, const OptT&, int64_t,
                                                         double, double)>();
  return op.call(r, sel, cu, order, g, alpha, eps);
}

static bool close(double a, double b, double tol = 1e-6) { return std::abs(a - b) <= tol * std::max(1.0, std::abs(b)); }

static double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

int main() {
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto i64 = at::TensorOptions().dtype(at::kLong);

  // hard wins: group {3, 1, 3}: w = {(0.5+1)/2, 0, (1+0.5)/2}; group {2}: singleton 0.5
  {
    Tensor s = at::tensor({3.0, 1.0, 3.0, 2.0}, f64);
    Tensor cu = at::tensor({0L, 3L, 4L}, i64);
    Tensor w = win_rate(s, cu, c10::nullopt, 0, 0.0);
    EXPECT(close(w[0].item<double>(), 0.75));
    EXPECT(close(w[1].item<double>(), 0.0));
    EXPECT(close(w[2].item<double>(), 0.75));
    EXPECT(close(w[3].item<double>(), 0.5));
  }
  // soft wins, fixed groups of 2: w_0 = sigma((s0 - s1)/T), w_1 = 1 - w_0; and its gradient
  {
    Tensor s = at::tensor({0.3, -0.5, 2.0, 2.0}, f64);
    const double t = 0.7;
    Tensor w = win_rate(s, c10::nullopt, c10::nullopt, 2, t);
    EXPECT(close(w[0].item<double>(), sig(0.8 / t)));
    EXPECT(close(w[1].item<double>(), 1 - sig(0.8 / t)));
    EXPECT(close(w[2].item<double>(), 0.5));
    Tensor gw = at::tensor({1.0, 0.0, 0.0, 0.0}, f64);
    Tensor ds = win_rate_bwd(gw, s, c10::nullopt, c10::nullopt, 2, t);
    const double p = sig(0.8 / t);
    EXPECT(close(ds[0].item<double>(), p * (1 - p) / t));
    EXPECT(close(ds[1].item<double>(), -p * (1 - p) / t));
    EXPECT(close(ds[2].item<double>(), 0.0));
  }
  // group_index layout through order: rows {0, 2} and {1, 3}
  {
    Tensor s = at::tensor({1.0, 5.0, 2.0, 4.0}, f64);
    Tensor cu = at::tensor({0L, 2L, 4L, 4L, 4L}, i64);
    Tensor order = at::tensor({0L, 2L, 1L, 3L}, i64);
    Tensor w = win_rate(s, cu, order, 0, 0.0);
    EXPECT(close(w[0].item<double>(), 0.0));
    EXPECT(close(w[2].item<double>(), 1.0));
    EXPECT(close(w[1].item<double>(), 1.0));
    EXPECT(close(w[3].item<double>(), 0.0));
  }
  // GREBT, n = 2: z = +-1/(1 + eps/sigma), L_GRE = entropy of softmax(z), L_BT = softplus(r_l - r_w)
  {
    Tensor r = at::tensor({0.2, 1.4, 7.0}, f64);
    Tensor cu = at::tensor({0L, 2L, 3L}, i64);
    const double alpha = 0.3, eps = 1e-6;
    auto out = grebt(r, c10::nullopt, cu, c10::nullopt, 0, alpha, eps);
    Tensor loss = std::get<0>(out), drow = std::get<1>(out);
    const double sigma = 0.6, z = sigma / (sigma + eps);
    const double p = sig(2 * z);  // softmax(z, -z)
    const double h = -(p * std::log(p) + (1 - p) * std::log(1 - p));
    const double bt = std::log1p(std::exp(-1.2));
    EXPECT(close(loss[0].item<double>(), (1 - alpha) * bt + alpha * h));
    EXPECT(std::isnan(loss[1].item<double>()));  // singleton: skipped
    EXPECT(close(drow[2].item<double>(), 0.0));
    EXPECT(close((drow[0] + drow[1]).item<double>(), 0.0, 1e-9));  // shift invariance
    EXPECT(close(drow[1].item<double>(), -(1 - alpha) * sig(-1.2), 1e-5));  // L_GRE ~ constant for n = 2
  }
  // GREBT with select and ties: first argmax/argmin; identical rewards give finite values
  {
    Tensor r = at::tensor({1.0, 1.0, 1.0, 1.0}, f64);
    Tensor sel = at::tensor({0.0, 0.0, 0.0, 0.0}, f64);
    auto out = grebt(r, sel, c10::nullopt, c10::nullopt, 4, 0.5, 1e-6);
    EXPECT(close(std::get<0>(out)[0].item<double>(), 0.5 * std::log(2.0) + 0.5 * std::log(4.0)));
    EXPECT(close(std::get<1>(out).abs().max().item<double>(), 0.0));
  }
  // NaN in select poisons its group
  {
    Tensor r = at::tensor({1.0, 2.0, 3.0, 4.0}, f64);
    Tensor sel = at::tensor({0.0, NAN, 1.0, 2.0}, f64);
    auto out = grebt(r, sel, c10::nullopt, c10::nullopt, 2, 0.3, 1e-6);
    EXPECT(std::isnan(std::get<0>(out)[0].item<double>()));
    EXPECT(!std::isnan(std::get<0>(out)[1].item<double>()));
  }
  return icrm_test::finish();
}
