"""Float64-capable references for the special functions (plain torch).

Domain x > 0, as the kernels: at x = 0 the pole's value (digamma -inf, trigamma +inf, lgamma
+inf, as torch.special and scipy), NaN for x < 0, -inf and NaN (torch's reflection values for
x < 0 are not what the kernels compute, so the reference does not return them either).

``stirling_remainder``, ``entropy_remainder`` and ``trigamma_m_recip`` are the cancellation-free
pieces the Beta references use in float64 (see ``icrm_kernels/triton/special.py``): without them
lgamma(a) + lgamma(b) - lgamma(a + b) and (a - a0) psi'(a) + (a0 + b0 - s) psi'(s) lose up to
log10(a) digits at a ~ 1e6.
"""
from __future__ import annotations

import math

import torch

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _domain(x, value, pole):
    nan = torch.full_like(value, float("nan"))
    return torch.where(x > 0, value, torch.where(x == 0, torch.full_like(value, pole), nan))


def digamma(x: torch.Tensor) -> torch.Tensor:
    """psi(x) = d/dx log Gamma(x)."""
    return _domain(x, torch.digamma(x), float("-inf"))


def _trigamma_pos(x: torch.Tensor) -> torch.Tensor:
    """psi'(x) for x > 0 by the recurrence up to y >= 10, then the asymptotic series.
    torch.polygamma(1, x) is only ~5e-10 relative in float64 for x < 10 (measured against
    mpmath), which is what made float64 ELBO gradients inaccurate; this is ~1e-16."""
    pos = x > 0  # other lanes run on 10 (finite, discarded by the caller): the loop is 10 steps always
    y = torch.where(pos, x, torch.full_like(x, 10.0))
    q = torch.zeros_like(y)
    for _ in range(10):
        step = y < 10
        q = q + torch.where(step, 1.0 / (y * y), torch.zeros_like(y))
        y = torch.where(step, y + 1, y)
    t = 1.0 / y
    series = t * t * (0.5 + t * _poly(t * t, [7 / 6, -691 / 2730, 5 / 66, -1 / 30, 1 / 42, -1 / 30, 1 / 6]))
    return q + t + series


def trigamma(x: torch.Tensor) -> torch.Tensor:
    """psi'(x)."""
    if x.dtype == torch.float64:
        return _domain(x, _trigamma_pos(x), float("inf"))
    return _domain(x, torch.polygamma(1, x), float("inf"))


def lgamma(x: torch.Tensor) -> torch.Tensor:
    """log Gamma(x)."""
    return _domain(x, torch.lgamma(x), float("inf"))


def _big(x):
    """(x >= 10, 1/x with the small lanes replaced by 1/10): where the asymptotic series hold to 1e-16."""
    big = x >= 10
    return big, 1.0 / torch.where(big, x, torch.full_like(x, 10.0))


def _poly(t2, coeffs):
    p = torch.full_like(t2, coeffs[0])
    for c in coeffs[1:]:
        p = p * t2 + c
    return p


def stirling_remainder(x: torch.Tensor) -> torch.Tensor:
    """C(x) = lgamma(x) - [(x - 1/2) log x - x + log(2 pi)/2], x > 0."""
    big, t = _big(x)
    series = t * _poly(t * t, [1 / 156, -691 / 360360, 1 / 1188, -1 / 1680, 1 / 1260, -1 / 360, 1 / 12])
    direct = torch.lgamma(x) - ((x - 0.5) * torch.log(x) - x + _HALF_LOG_2PI)
    return torch.where(big, series, direct)


def entropy_remainder(x: torch.Tensor) -> torch.Tensor:
    """G(x) = C(x) + x (log x - 1/(2x) - psi(x)), x > 0."""
    big, t = _big(x)
    series = t * _poly(t * t, [7 / 78, -691 / 30030, 5 / 594, -1 / 210, 1 / 210, -1 / 90, 1 / 6])
    direct = torch.lgamma(x) + 0.5 * torch.log(x) + x - _HALF_LOG_2PI - 0.5 - x * torch.digamma(x)
    return torch.where(big, series, direct)


def trigamma_m_recip(x: torch.Tensor) -> torch.Tensor:
    """psi'(x) - 1/x, x > 0, without the cancellation of two ~1/x terms at large x."""
    big, t = _big(x)
    series = t * t * (0.5 + t * _poly(t * t, [7 / 6, -691 / 2730, 5 / 66, -1 / 30, 1 / 42, -1 / 30, 1 / 6]))
    return torch.where(big, series, trigamma(x) - 1.0 / x)


def log_ratios(a: torch.Tensor, b: torch.Tensor):
    """(log(a/s), log(b/s)), s = a + b, accurate when either ratio is close to 1."""
    s = a + b
    fa, fb = a / s, b / s
    ra = torch.where(fa >= 0.5, torch.log1p(-fb), torch.log(fa))
    rb = torch.where(fb >= 0.5, torch.log1p(-fa), torch.log(fb))
    return ra, rb


def betaln(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b), through the Stirling remainders (no
    cancellation of lgamma terms ~1e7 at a, b ~ 1e6); NaN outside a, b > 0 except the poles."""
    s = a + b
    ra, rb = log_ratios(a, b)
    v = ((a - 0.5) * ra + (b - 0.5) * rb - 0.5 * torch.log(s) + _HALF_LOG_2PI
         + stirling_remainder(a) + stirling_remainder(b) - stirling_remainder(s))
    naive = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(s)
    ok = (a > 0) & (b > 0) & torch.isfinite(a) & torch.isfinite(b)
    return torch.where(ok, v, torch.where((a >= 0) & (b >= 0), naive, torch.full_like(v, float("nan"))))
