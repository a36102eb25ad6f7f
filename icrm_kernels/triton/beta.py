"""Triton kernels for ICRM's Beta posterior math (docs/beta.md#math): ELBO (+ fused gradient),
Beta statistics, conjugate posterior over segments.

All arithmetic in fp32; bf16/fp16 loads are upcast. The special functions and the stable
KL / entropy decomposition are in ``special.py`` (see its docstring).
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import torch
import triton
import triton.language as tl

from icrm_kernels._checks import reset_context
from icrm_kernels.triton import cdiv, next_power_of_2
from icrm_kernels.triton._aot import AotSpec
from icrm_kernels.triton.special import digamma_diff, gamma_terms, log1p_small, log_ratios, neg_entropy_core

BLOCK = 256  # 2 elements per thread at 4 warps: the special functions need many live registers


@triton.jit
def _elbo_kernel(
    x1_ptr, x2_ptr, y_ptr, w_ptr, loss_ptr, g1_ptr, g2_ptr, n,
    prior_a, prior_b, lnb0, kl_weight, tau_min,
    FROM_LOGITS: tl.constexpr, HAS_Y: tl.constexpr, HAS_W: tl.constexpr,
    REDUCE: tl.constexpr, GRAD: tl.constexpr, BLOCK: tl.constexpr, scale=1.0, loss_scale=1.0,
):
    """Per element: L = -[y(psi(a)-psi(s)) + (1-y)(psi(b)-psi(s))] + kl_weight KL(Beta(a,b) || Beta(a0,b0)),
    times the weight; writes L (or one partial sum per program) and dL/dx1, dL/dx2 (fp32).
    ``scale`` multiplies the gradients, ``loss_scale`` the partial sums (the mean's 1/N done
    here: one torch op fewer on the host); the per-element loss (REDUCE=False) is never scaled."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x1 = tl.load(x1_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    x2 = tl.load(x2_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    if FROM_LOGITS:
        mu = 1.0 / (1.0 + tl.exp(-x1))
        mu_c = 1.0 / (1.0 + tl.exp(x1))  # 1 - mu without cancellation
        tau = tl.maximum(x2, 0.0) + log1p_small(tl.exp(-tl.abs(x2))) + tau_min
        a = mu * tau
        b = mu_c * tau
    else:
        a = x1
        b = x2
    s = a + b
    psa, ea, ga = gamma_terms(a)
    psb, eb, gb = gamma_terms(b)
    pss, es, gs = gamma_terms(s)
    da = psa - pss
    db = psb - pss
    ra, rb = log_ratios(a, b)
    kl = lnb0 + neg_entropy_core(a, b, ga, gb, gs, rb) - prior_a * da - prior_b * db
    loss = kl_weight * kl
    if HAS_Y:
        y = tl.load(y_ptr + offs, mask=mask, other=0.5).to(tl.float32)
        loss = loss - (y * da + (1.0 - y) * db)
    if HAS_W:
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
    if REDUCE:
        tl.store(loss_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0) * loss_scale)
    else:
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=mask)
    if GRAD:
        # dKL/da = (a-a0) psi'(a) + (a0+b0-s) psi'(s), written with E(z) = psi'(z) - 1/z so the
        # O(1) parts cancel exactly at large concentrations.
        p0 = prior_a + prior_b
        gra = kl_weight * (-prior_a / a + p0 / s + (a - prior_a) * ea + (p0 - s) * es)
        grb = kl_weight * (-prior_b / b + p0 / s + (b - prior_b) * eb + (p0 - s) * es)
        if HAS_Y:
            trs = es + 1.0 / s
            gra = gra + trs - y * (ea + 1.0 / a)
            grb = grb + trs - (1.0 - y) * (eb + 1.0 / b)
        if HAS_W:
            gra = gra * w
            grb = grb * w
        if FROM_LOGITS:
            sig_c = 1.0 / (1.0 + tl.exp(-x2))
            g1 = (gra - grb) * tau * mu * mu_c
            g2 = (gra * mu + grb * mu_c) * sig_c
        else:
            g1 = gra
            g2 = grb
        tl.store(g1_ptr + offs, g1 * scale, mask=mask)
        tl.store(g2_ptr + offs, g2 * scale, mask=mask)


@triton.jit
def _stats_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[6, n]: mean, var, E[log t], E[log(1-t)], E[logit t], entropy."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    s = a + b
    psa, ea, ga = gamma_terms(a)
    psb, eb, gb = gamma_terms(b)
    pss, es, gs = gamma_terms(s)
    da = psa - pss
    db = psb - pss
    ra, rb = log_ratios(a, b)
    mean = a / s
    var = mean * (b / s) / (s + 1.0)
    ent = da + db - neg_entropy_core(a, b, ga, gb, gs, rb)
    # alpha or beta not > 0 (unchecked paths): every statistic NaN, as the C++ kernels give
    valid = (a > 0.0) & (b > 0.0)
    mean = tl.where(valid, mean, float("nan"))
    var = tl.where(valid, var, float("nan"))
    da = tl.where(valid, da, float("nan"))
    db = tl.where(valid, db, float("nan"))
    ent = tl.where(valid, ent, float("nan"))
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + offs, mean.to(ty), mask=mask)
    tl.store(out_ptr + n + offs, var.to(ty), mask=mask)
    tl.store(out_ptr + 2 * n + offs, da.to(ty), mask=mask)
    tl.store(out_ptr + 3 * n + offs, db.to(ty), mask=mask)
    tl.store(out_ptr + 4 * n + offs, tl.where(valid, digamma_diff(a, b, psa, psb), float("nan")).to(ty), mask=mask)
    tl.store(out_ptr + 5 * n + offs, ent.to(ty), mask=mask)


@triton.jit
def _posterior_kernel(
    y_ptr, w_ptr, order_ptr, cu_ptr, alpha_ptr, beta_ptr, num_segments, m_rows,
    prior_a, prior_b, log2_gamma,
    HAS_W: tl.constexpr, HAS_ORDER: tl.constexpr, DISCOUNT: tl.constexpr,
    SEGS: tl.constexpr, BLOCK: tl.constexpr,
):
    """A tile of SEGS segments per program, BLOCK demonstrations of each per step:
    alpha_k = a0 + sum_i w_i g^(n-1-i) y_i, beta_k = b0 + sum_i w_i g^(n-1-i) (1 - y_i)."""
    seg = tl.program_id(0).to(tl.int64) * SEGS + tl.arange(0, SEGS)
    seg_ok = seg < num_segments
    # offsets clamped into [0, m_rows], non-decreasing: unchecked callers may pass any cu
    lo = tl.minimum(tl.maximum(tl.load(cu_ptr + seg, mask=seg_ok, other=0).to(tl.int64), 0), m_rows)
    hi = tl.minimum(tl.maximum(tl.load(cu_ptr + seg + 1, mask=seg_ok, other=0).to(tl.int64), lo), m_rows)
    longest = tl.max(hi - lo, axis=0)
    acc_a = tl.zeros([SEGS, BLOCK], tl.float32)
    acc_b = tl.zeros([SEGS, BLOCK], tl.float32)
    for start in range(0, longest, BLOCK):
        j = lo[:, None] + start + tl.arange(0, BLOCK)[None, :]
        m = j < hi[:, None]
        if HAS_ORDER:
            src = tl.minimum(tl.maximum(tl.load(order_ptr + j, mask=m, other=0).to(tl.int64), 0), m_rows - 1)
        else:
            src = j
        y = tl.load(y_ptr + src, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            wt = tl.load(w_ptr + src, mask=m, other=0.0).to(tl.float32)
        else:
            wt = tl.full([SEGS, BLOCK], 1.0, tl.float32)
        if DISCOUNT:
            wt = wt * tl.exp2((hi[:, None] - 1 - j).to(tl.float32) * log2_gamma)
        acc_a += tl.where(m, wt * y, 0.0)
        acc_b += tl.where(m, wt * (1.0 - y), 0.0)
    tl.store(alpha_ptr + seg, prior_a + tl.sum(acc_a, axis=1), mask=seg_ok)
    tl.store(beta_ptr + seg, prior_b + tl.sum(acc_b, axis=1), mask=seg_ok)


@triton.jit
def _from_logits_kernel(m_ptr, c_ptr, a_ptr, b_ptr, n, tau_min, BLOCK: tl.constexpr):
    """alpha = sigmoid(m) tau, beta = sigmoid(-m) tau, tau = softplus(c) + tau_min."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tau = tl.maximum(c, 0.0) + log1p_small(tl.exp(-tl.abs(c))) + tau_min
    ty = a_ptr.dtype.element_ty
    tl.store(a_ptr + offs, (tau / (1.0 + tl.exp(-m))).to(ty), mask=mask)
    tl.store(b_ptr + offs, (tau / (1.0 + tl.exp(m))).to(ty), mask=mask)


# ------------------------------------------------------------------ launchers
def elbo(x1, x2, labels, weights, prior_a, prior_b, lnb0, kl_weight, tau_min, from_logits, reduce, grad, scale=1.0,
         loss_scale=1.0):
    """Returns (loss [n] in x1's dtype, or partial sums [programs] fp32; g1, g2 fp32 [n] or empty).
    ``scale`` multiplies the gradients, ``loss_scale`` the partial sums (for the mean: 1/n)."""
    x1, x2 = x1.contiguous(), x2.contiguous()
    n = x1.numel()
    grid = max(1, cdiv(n, BLOCK))
    dev = x1.device
    loss = torch.empty(grid if reduce else n, device=dev, dtype=torch.float32 if reduce else x1.dtype)
    g1 = torch.empty(n if grad else 0, device=dev, dtype=torch.float32)
    g2 = torch.empty(n if grad else 0, device=dev, dtype=torch.float32)
    y = labels.contiguous() if labels is not None else x1
    w = weights.contiguous() if weights is not None else x1
    if n == 0:
        loss.zero_()
        return loss, g1, g2
    _elbo_kernel[(grid,)](
        x1, x2, y, w, loss, g1 if grad else loss, g2 if grad else loss, n,
        float(prior_a), float(prior_b), float(lnb0), float(kl_weight), float(tau_min),
        FROM_LOGITS=bool(from_logits), HAS_Y=labels is not None, HAS_W=weights is not None,
        REDUCE=bool(reduce), GRAD=bool(grad), BLOCK=BLOCK, scale=float(scale),
        loss_scale=float(loss_scale), num_warps=4,
    )
    return loss, g1, g2


def stats(a, b):
    a, b = a.contiguous(), b.contiguous()
    n = a.numel()
    out = torch.empty((6, n), device=a.device, dtype=a.dtype)
    if n:
        _stats_kernel[(cdiv(n, BLOCK),)](a, b, out, n, BLOCK=BLOCK, num_warps=4)
    return out


# Demonstrations per program and step of the posterior kernel (a power of 2). 1024 is what the
# H100 runs measured; the benchmark also times 2048 (more bytes in flight per SM, 2x fewer
# programs) so that the next GPU run can pick the faster one (bench/NOTES.md §4).
POSTERIOR_TILE = 1024
_TILE = contextvars.ContextVar("icrm_posterior_tile", default=POSTERIOR_TILE)


@contextlib.contextmanager
def posterior_tile(tile: int):
    """Inside the block, the posterior launcher uses ``tile`` demonstrations per step and program
    (a power of 2) instead of POSTERIOR_TILE: the benchmark's candidate tiles, and tests."""
    token = _TILE.set(int(tile))
    try:
        yield
    finally:
        reset_context(_TILE, token, POSTERIOR_TILE)  # (a fixture may leave the block in another context)


def posterior(outcomes, weights, order, cu, num_segments, prior_a, prior_b, discount):
    """cu: int64 [K+1] offsets into the (optionally ``order``-permuted) demonstrations."""
    dev = outcomes.device
    alpha = torch.empty(num_segments, device=dev, dtype=torch.float32)
    beta = torch.empty(num_segments, device=dev, dtype=torch.float32)
    if num_segments == 0:
        return alpha, beta
    m = outcomes.numel()
    mean_len = max(1, m // num_segments)
    block = min(1024, max(16, next_power_of_2(mean_len)))
    segs = max(1, _TILE.get() // block)  # ~POSTERIOR_TILE demonstrations per step and program
    log2_gamma = math.log2(discount) if discount < 1.0 else 0.0
    _posterior_kernel[(cdiv(num_segments, segs),)](
        outcomes, weights if weights is not None else outcomes, order if order is not None else cu, cu,
        alpha, beta, num_segments, m, float(prior_a), float(prior_b), float(log2_gamma),
        HAS_W=weights is not None, HAS_ORDER=order is not None, DISCOUNT=discount < 1.0, SEGS=segs, BLOCK=block,
        num_warps=8,
    )
    return alpha, beta


def from_logits(m, c, tau_min):
    m, c = m.contiguous(), c.contiguous()
    a, b = torch.empty_like(m), torch.empty_like(m)
    n = m.numel()
    if n:
        _from_logits_kernel[(cdiv(n, 1024),)](m, c, a, b, n, float(tau_min), BLOCK=1024, num_warps=4)
    return a, b


def _elbo_spec(t, from_logits, has_w, reduce, label):
    sig = {"x1_ptr": f"*{t}", "x2_ptr": f"*{t}", "y_ptr": f"*{t}", "w_ptr": f"*{t}",
           "loss_ptr": "*fp32" if reduce else f"*{t}", "g1_ptr": "*fp32", "g2_ptr": "*fp32", "n": "i64",
           "prior_a": "fp32", "prior_b": "fp32", "lnb0": "fp32", "kl_weight": "fp32", "tau_min": "fp32",
           "scale": "fp32", "loss_scale": "fp32"}
    return AotSpec(_elbo_kernel, sig, {"FROM_LOGITS": from_logits, "HAS_Y": True, "HAS_W": has_w, "REDUCE": reduce,
                                       "GRAD": True, "BLOCK": BLOCK}, num_warps=4, label=label)


def _posterior_sig(dt):
    return {"y_ptr": f"*{dt}", "w_ptr": f"*{dt}", "order_ptr": "*i64", "cu_ptr": "*i64", "alpha_ptr": "*fp32",
            "beta_ptr": "*fp32", "num_segments": "i64", "m_rows": "i64", "prior_a": "fp32", "prior_b": "fp32", "log2_gamma": "fp32"}


AOT_SPECS = [
    _elbo_spec("fp32", False, False, True, "fp32,mean"),
    _elbo_spec("bf16", False, True, False, "bf16,weights,none"),
    _elbo_spec("fp32", True, False, True, "fp32,logits,mean"),
    _elbo_spec("bf16", True, True, True, "bf16,logits,weights,mean"),
    AotSpec(_stats_kernel, {"a_ptr": "*fp32", "b_ptr": "*fp32", "out_ptr": "*fp32", "n": "i64"}, {"BLOCK": BLOCK},
            num_warps=4, label="fp32"),
    AotSpec(_stats_kernel, {"a_ptr": "*bf16", "b_ptr": "*bf16", "out_ptr": "*bf16", "n": "i64"}, {"BLOCK": BLOCK},
            num_warps=4, label="bf16"),
    AotSpec(_posterior_kernel, _posterior_sig("fp32"),
            {"HAS_W": True, "HAS_ORDER": True, "DISCOUNT": True, "SEGS": 16, "BLOCK": 64}, num_warps=8,
            label="fp32,w,order,disc,16x64"),
    AotSpec(_posterior_kernel, _posterior_sig("fp32"),
            {"HAS_W": False, "HAS_ORDER": False, "DISCOUNT": True, "SEGS": 32, "BLOCK": 64}, num_warps=8,
            label="fp32,disc,32x64 (tile 2048)"),
    AotSpec(_posterior_kernel, _posterior_sig("bf16"),
            {"HAS_W": False, "HAS_ORDER": False, "DISCOUNT": False, "SEGS": 1, "BLOCK": 1024}, num_warps=8,
            label="bf16,plain,1x1024"),
    AotSpec(_from_logits_kernel, {"m_ptr": "*bf16", "c_ptr": "*bf16", "a_ptr": "*bf16", "b_ptr": "*bf16", "n": "i64",
                                  "tau_min": "fp32"}, {"BLOCK": 1024}, num_warps=4, label="bf16"),
    AotSpec(_from_logits_kernel, {"m_ptr": "*fp32", "c_ptr": "*fp32", "a_ptr": "*fp32", "b_ptr": "*fp32", "n": "i64",
                                  "tau_min": "fp32"}, {"BLOCK": 1024}, num_warps=4, label="fp32"),
]
