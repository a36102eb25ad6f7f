"""Special functions as Triton device functions in plain ``tl`` (no libdevice), fp32.

libdevice has no digamma, and its lgamma does not run under the interpreter, so these are
written out: shift the argument up to y >= 4 with the recurrences

    lgamma(x) = lgamma(x + n) - log(x (x+1) ... (x+n-1))
    digamma(x) = digamma(x + n) - sum_k 1/(x+k)
    trigamma(x) = trigamma(x + n) + sum_k 1/(x+k)^2

then use the asymptotic (Stirling / Bernoulli) series at y, truncated where the next term is
below 4e-9 for y >= 4. Shifting only to 4 keeps lgamma's cancellation near 1 and 2 small
(lgamma(5) - log(24): absolute error < 1e-6). Accuracy over [1e-4, 1e6] against float64,
|err| / max(1, |ref|): digamma, trigamma <= 2e-6, lgamma <= 5e-6 (tests/test_special.py).

Beside the four public functions, two helpers make the Beta math stable at huge
concentrations (alpha, beta ~ 1e6, where lgamma ~ 1e7 and naive differences lose everything):

    C(z) = lgamma(z) - [(z - 1/2) log z - z + log(2 pi)/2]      (Stirling remainder)
    G(z) = C(z) + z (log z - 1/(2z) - digamma(z))                (entropy remainder)

betaln(a, b) = (a-1/2) log(a/s) + (b-1/2) log(b/s) - log(s)/2 + log(2 pi)/2 + C(a) + C(b) - C(s)
and the Beta negative entropy  -ln B + a(psi(a) - psi(s)) + b(psi(b) - psi(s))
= log(a b / s)/2 - log(2 pi)/2 - 1/2 - G(a) - G(b) + G(s)  are then free of large cancelling terms.
"""
from __future__ import annotations

import triton
import triton.language as tl

import icrm_kernels.vocab as V
from icrm_kernels.triton import cdiv
from icrm_kernels.triton._aot import AotSpec


# ------------------------------------------------------------------ device functions
@triton.jit
def log1p_small(t):
    """log(1 + t) for t in [-1/2, 1] to fp32 rounding: 2 atanh(t / (2 + t)), odd series."""
    u = t / (2.0 + t)
    u2 = u * u
    p = 1.0 / 15.0
    p = p * u2 + 1.0 / 13.0
    p = p * u2 + 1.0 / 11.0
    p = p * u2 + 1.0 / 9.0
    p = p * u2 + 1.0 / 7.0
    p = p * u2 + 1.0 / 5.0
    p = p * u2 + 1.0 / 3.0
    p = p * u2 + 1.0
    return 2.0 * u * p


@triton.jit
def _shift4(x):
    """y = x + n >= 4 (n <= 4 for x > 0); prod = x (x+1)...(x+n-1); r = sum 1/(x+k); q = sum 1/(x+k)^2.

    r and q are accumulated as fractions over prod (one division instead of four; every term is
    positive, so no cancellation, and prod < 24^2 cannot overflow)."""
    y = x
    prod = tl.full(x.shape, 1.0, tl.float32)
    rn = tl.zeros(x.shape, tl.float32)  # r = rn / prod
    qn = tl.zeros(x.shape, tl.float32)  # q = qn / prod^2
    for _ in tl.static_range(4):
        small = y < 4.0
        rn = tl.where(small, rn * y + prod, rn)
        qn = tl.where(small, qn * (y * y) + prod * prod, qn)
        prod = tl.where(small, prod * y, prod)
        y = tl.where(small, y + 1.0, y)
    inv = 1.0 / prod
    return y, prod, rn * inv, qn * inv * inv


@triton.jit
def _digamma_asym(y):
    t = 1.0 / y
    t2 = t * t
    p = -691.0 / 32760.0
    p = p * t2 + 1.0 / 132.0
    p = p * t2 - 1.0 / 240.0
    p = p * t2 + 1.0 / 252.0
    p = p * t2 - 1.0 / 120.0
    p = p * t2 + 1.0 / 12.0
    return tl.log(y) - 0.5 * t - t2 * p


@triton.jit
def _trigamma_asym_m_recip(y):
    """trigamma(y) - 1/y for y >= 4."""
    t = 1.0 / y
    t2 = t * t
    p = -691.0 / 2730.0
    p = p * t2 + 5.0 / 66.0
    p = p * t2 - 1.0 / 30.0
    p = p * t2 + 1.0 / 42.0
    p = p * t2 - 1.0 / 30.0
    p = p * t2 + 1.0 / 6.0
    return t2 * (0.5 + t * p)


@triton.jit
def _stirling_corr(y):
    """C(y) for y >= 4."""
    t = 1.0 / y
    t2 = t * t
    p = -691.0 / 360360.0
    p = p * t2 + 1.0 / 1188.0
    p = p * t2 - 1.0 / 1680.0
    p = p * t2 + 1.0 / 1260.0
    p = p * t2 - 1.0 / 360.0
    p = p * t2 + 1.0 / 12.0
    return t * p


@triton.jit
def _entropy_corr_asym(y):
    """G(y) for y >= 4: sum_k B_2k / ((2k-1) y^(2k-1))."""
    t = 1.0 / y
    t2 = t * t
    p = -691.0 / 30030.0
    p = p * t2 + 5.0 / 594.0
    p = p * t2 - 1.0 / 210.0
    p = p * t2 + 1.0 / 210.0
    p = p * t2 - 1.0 / 90.0
    p = p * t2 + 1.0 / 6.0
    return t * p


@triton.jit
def _domain(x, value, pole):
    """value for x > 0, pole at x = 0 (torch.special/scipy's value there), NaN for x < 0, -inf
    and NaN: the four fixed shift steps never hang, but outside x > 0 they give finite garbage."""
    return tl.where(x > 0.0, value, tl.where(x == 0.0, pole, float("nan")))


@triton.jit
def digamma(x):
    """psi(x) for x > 0 (fp32 tensor); -inf at 0, NaN for x < 0 or NaN."""
    y, prod, r, q = _shift4(x)
    return _domain(x, _digamma_asym(y) - r, float("-inf"))


@triton.jit
def digamma_diff(a, b, psi_a, psi_b):
    """psi(a) - psi(b) (E[logit t] of Beta(a, b)) given psi_a, psi_b. For min(a, b) < 1 as
    psi(a+1) - psi(b+1) + (a - b)/(a b): the 1/a, 1/b poles cancel in a - b (exact for nearby
    a, b) instead of in the difference of two ~1/x values, which loses every digit of a small
    E[logit t] when a, b -> 0."""
    small = tl.minimum(a, b) < 1.0
    a1 = tl.where(small, a, 1.0)  # the unused lanes stay finite
    b1 = tl.where(small, b, 1.0)
    d = (digamma(a1 + 1.0) - digamma(b1 + 1.0)) + (a1 - b1) / a1 / b1
    return tl.where(small, d, psi_a - psi_b)


@triton.jit
def trigamma(x):
    """psi'(x) for x > 0 (fp32 tensor); +inf at 0, NaN for x < 0 or NaN."""
    y, prod, r, q = _shift4(x)
    return _domain(x, q + 1.0 / y + _trigamma_asym_m_recip(y), float("inf"))


@triton.jit
def lgamma(x):
    """log Gamma(x) for x > 0 (fp32 tensor); +inf at 0, NaN for x < 0 or NaN."""
    y, prod, r, q = _shift4(x)
    v = (y - 0.5) * (tl.log(y) - 1.0) + (0.91893853320467274 - 0.5) + _stirling_corr(y) - tl.log(prod)
    return _domain(x, v, float("inf"))


@triton.jit
def stirling_remainder(x):
    """C(x) = lgamma(x) - [(x - 1/2) log x - x + log(2 pi)/2], for x > 0."""
    y, prod, r, q = _shift4(x)
    direct = (y - 0.5) * (tl.log(y) - 1.0) + _stirling_corr(y) - tl.log(prod) - (x - 0.5) * (tl.log(x) - 1.0)
    return tl.where(x > 0.0, tl.where(x >= 4.0, _stirling_corr(tl.maximum(x, 4.0)), direct), float("nan"))


@triton.jit
def gamma_terms(x):
    """(digamma(x), trigamma(x) - 1/x, G(x)) from one shift, for x > 0."""
    y, prod, r, q = _shift4(x)
    psi = _digamma_asym(y) - r
    tri = q + 1.0 / y + _trigamma_asym_m_recip(y)
    # unshifted (y = x): the series itself; adding it to 1/y and subtracting 1/x again rounds it
    # to an ulp of 1/x (as in csrc/special.h)
    e = tl.where(x >= 4.0, _trigamma_asym_m_recip(tl.maximum(x, 4.0)), tri - 1.0 / x)
    # G(x) = lgamma(x) - log(2 pi)/2 + log(x)/2 + x - 1/2 - x psi(x) for x < 4
    lg = (y - 0.5) * (tl.log(y) - 1.0) - 0.5 + _stirling_corr(y) - tl.log(prod)
    g_direct = lg + 0.5 * tl.log(x) + x - 0.5 - x * psi
    g = tl.where(x >= 4.0, _entropy_corr_asym(tl.maximum(x, 4.0)), g_direct)
    ok = x > 0.0  # outside the domain (x <= 0, -inf, NaN): NaN, not finite garbage
    return tl.where(ok, psi, float("nan")), tl.where(ok, e, float("nan")), tl.where(ok, g, float("nan"))


@triton.jit
def log_ratios(a, b):
    """(log(a/s), log(b/s)) with s = a + b, accurate also when one of them is close to 0."""
    s = a + b
    fa = a / s
    fb = b / s
    ra = tl.where(fa >= 0.5, log1p_small(-tl.minimum(fb, 0.5)), tl.log(fa))
    rb = tl.where(fb >= 0.5, log1p_small(-tl.minimum(fa, 0.5)), tl.log(fb))
    return ra, rb


@triton.jit
def betaln(a, b):
    """log B(a, b) for a, b > 0, without cancellation at large a, b (fp32 tensors)."""
    s = a + b
    ra, rb = log_ratios(a, b)
    return ((a - 0.5) * ra + (b - 0.5) * rb - 0.5 * tl.log(s) + 0.91893853320467274
            + stirling_remainder(a) + stirling_remainder(b) - stirling_remainder(s))


@triton.jit
def neg_entropy_core(a, b, ga, gb, gs, rb):
    """-ln B(a,b) + a(psi(a)-psi(s)) + b(psi(b)-psi(s)) from the G remainders; rb = log(b/s)."""
    return 0.5 * (tl.log(a) + rb) - (0.91893853320467274 + 0.5) - ga - gb + gs


# ------------------------------------------------------------------ elementwise kernels
@triton.jit
def _unary_kernel(x_ptr, out_ptr, n, WHICH: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    if WHICH == V.UNARY_DIGAMMA:
        y = digamma(x)
    elif WHICH == V.UNARY_TRIGAMMA:
        y = trigamma(x)
    else:  # V.UNARY_LGAMMA
        y = lgamma(x)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _betaln_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    tl.store(out_ptr + offs, betaln(a, b).to(out_ptr.dtype.element_ty), mask=mask)


UNARY = V.codes(V.SPECIAL_UNARY)  # name -> WHICH (icrm_kernels/vocab.py)
BLOCK = 1024


def unary(name: str, x):
    """Launch the elementwise kernel for ``name`` on a contiguous tensor; same dtype out."""
    import torch

    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    if n:
        _unary_kernel[(cdiv(n, BLOCK),)](x, out, n, WHICH=UNARY[name], BLOCK=BLOCK, num_warps=4)
    return out


def betaln_launch(a, b):
    import torch

    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a)
    n = a.numel()
    if n:
        _betaln_kernel[(cdiv(n, BLOCK),)](a, b, out, n, BLOCK=BLOCK, num_warps=4)
    return out


AOT_SPECS = [
    AotSpec(_unary_kernel, {"x_ptr": f"*{t}", "out_ptr": f"*{t}", "n": "i64"}, {"WHICH": w, "BLOCK": BLOCK},
            num_warps=4, label=f"{name},{t}")
    for name, w in UNARY.items() for t in ("fp32", "bf16")
] + [
    AotSpec(_betaln_kernel, {"a_ptr": f"*{t}", "b_ptr": f"*{t}", "out_ptr": f"*{t}", "n": "i64"}, {"BLOCK": BLOCK},
            num_warps=4, label=t)
    for t in ("fp32", "bf16")
]
