"""Benchmarks of the Beta family (docs/beta.md#speed-targets): ours against the same math in
eager torch.

- ``beta_elbo_loss fwd+bwd`` and ``beta_elbo_loss_from_logits fwd+bwd``: the fused kernel (loss
  and gradient in one pass) against eager torch (torch.digamma / torch.lgamma, autograd through
  them, i.e. torch.polygamma in the backward) and against torch.distributions (Beta KL).
- ``beta_posterior``: the segmented kernel against the same conjugate update in eager torch
  (scatter-add of discounted weights).
- ``beta_stats``: the fused statistics kernel against eager torch.

Shapes: GPU N = 1M, 4M, 16M (quick: 1M), posterior M = 16M (quick: 1M); CPU N = M = 1M (quick:
64K). Inputs random (log-uniform concentrations, uniform labels), fp32. Ours runs inside
``unchecked()`` (a hot loop: no value checks, no host sync). Bytes: inputs read once + outputs
written once.
"""
from __future__ import annotations

import math

import torch

from icrm_kernels import _checks
from icrm_kernels.benchmarks.harness import Case, compiled, compiled_peers, hot_loop
from icrm_kernels.ops.beta import beta_elbo_loss, beta_elbo_loss_from_logits, beta_posterior, beta_stats

FAMILY = "beta"


def _eager_elbo(a, b, y, a0=1.0, b0=1.0, kl_weight=1.0):
    """ICRM's loss written in eager torch, the way a user would without this package."""
    s = a + b
    psi_a, psi_b, psi_s = torch.digamma(a), torch.digamma(b), torch.digamma(s)
    lnb0 = math.lgamma(a0) + math.lgamma(b0) - math.lgamma(a0 + b0)
    kl = (lnb0 - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(s)) + (a - a0) * psi_a + (b - b0) * psi_b
          + (a0 - a + b0 - b) * psi_s)
    return (-(y * (psi_a - psi_s) + (1 - y) * (psi_b - psi_s)) + kl_weight * kl).mean()


def _eager_logits_elbo(m, c, y, tau_min=1e-2):
    tau = torch.nn.functional.softplus(c) + tau_min
    return _eager_elbo(torch.sigmoid(m) * tau, torch.sigmoid(-m) * tau, y)


def _distributions_elbo(a, b, y):
    q = torch.distributions.Beta(a, b)
    prior = torch.distributions.Beta(torch.ones_like(a), torch.ones_like(b))
    psi_s = torch.digamma(a + b)
    data = y * (torch.digamma(a) - psi_s) + (1 - y) * (torch.digamma(b) - psi_s)
    return (-data + torch.distributions.kl_divergence(q, prior)).mean()


def _eager_posterior(y, cu, k, discount):
    m = y.numel()
    sizes = cu[1:] - cu[:-1]
    seg = torch.repeat_interleave(torch.arange(k, device=y.device), sizes, output_size=m)
    pos = torch.arange(m, device=y.device) - cu[:-1][seg]
    f = torch.pow(torch.tensor(discount, device=y.device), (sizes[seg] - 1 - pos).to(y.dtype))
    alpha = torch.zeros(k, device=y.device).index_add_(0, seg, f * y) + 1.0
    beta = torch.zeros(k, device=y.device).index_add_(0, seg, f * (1 - y)) + 1.0
    return alpha, beta


def _eager_stats(a, b):
    s = a + b
    psi_a, psi_b, psi_s = torch.digamma(a), torch.digamma(b), torch.digamma(s)
    lnb = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(s)
    return (a / s, a * b / (s * s * (s + 1)), psi_a - psi_s, psi_b - psi_s, psi_a - psi_b,
            lnb - (a - 1) * psi_a - (b - 1) * psi_b + (s - 2) * psi_s)


def _fwd_bwd(loss_fn, leaves):
    def run():
        loss = loss_fn()
        return torch.autograd.grad(loss, leaves)

    return run


def _with_posterior_tile(tile, fn):
    def run():
        from icrm_kernels.triton import beta as tri

        with tri.posterior_tile(tile):
            return fn()

    return run


def _unchecked(fn):
    def run():
        with _checks.unchecked():
            return fn()

    return run


def cases(device, quick: bool = False):
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        sizes = [1 << 20] if quick else [1 << 20, 1 << 22, 1 << 24]
        post_sizes = [1 << 20] if quick else [1 << 24]
    else:
        sizes = [1 << 16] if quick else [1 << 20]
        post_sizes = sizes
    out = []
    dev = str(device)
    # the eager peers through torch.compile (dynamic shapes: one compile serves every N)
    comp = compiled_peers(device)
    c_elbo = compiled(_eager_elbo, dynamic=True) if comp else None
    c_logits = compiled(_eager_logits_elbo, dynamic=True) if comp else None
    c_stats = compiled(_eager_stats, dynamic=True) if comp else None
    c_post = compiled(_eager_posterior, dynamic=True) if comp else None
    for n in sizes:
        shape = f"N={n}"
        a = torch.exp(torch.empty(n, device=device).uniform_(-2, 6)).requires_grad_()
        b = torch.exp(torch.empty(n, device=device).uniform_(-2, 6)).requires_grad_()
        y = torch.rand(n, device=device)
        nbytes = 5 * 4 * n  # read alpha, beta, labels; write two gradients
        op = "beta_elbo_loss fwd+bwd"
        out.append(Case(FAMILY, op, "icrm", shape, n, nbytes,
                        _unchecked(_fwd_bwd(lambda a=a, b=b, y=y: beta_elbo_loss(a, b, y), (a, b))), dev,
                        note="unchecked(); loss and gradient in one kernel, backward is one scaling"))
        out.append(Case(FAMILY, op, "torch-eager", shape, n, nbytes,
                        _fwd_bwd(lambda a=a, b=b, y=y: _eager_elbo(a, b, y), (a, b)), dev,
                        note="torch.digamma/lgamma + autograd (polygamma)"))
        if c_elbo is not None:
            out.append(Case(FAMILY, op, "torch-compiled", shape, n, nbytes,
                            _fwd_bwd(lambda a=a, b=b, y=y: c_elbo(a, b, y), (a, b)), dev,
                            note="the eager math through torch.compile(dynamic=True)"))
        out.append(Case(FAMILY, op, "torch-distributions", shape, n, nbytes,
                        _fwd_bwd(lambda a=a, b=b, y=y: _distributions_elbo(a, b, y), (a, b)), dev,
                        note="torch.distributions.kl_divergence(Beta, Beta) + digamma data term"))
        m = torch.randn(n, device=device).mul_(2).requires_grad_()
        c = torch.randn(n, device=device).mul_(2).requires_grad_()
        op = "beta_elbo_loss_from_logits fwd+bwd"
        out.append(Case(FAMILY, op, "icrm", shape, n, nbytes,
                        _unchecked(_fwd_bwd(lambda m=m, c=c, y=y: beta_elbo_loss_from_logits(m, c, y), (m, c))), dev))

        out.append(Case(FAMILY, op, "torch-eager", shape, n, nbytes,
                        _fwd_bwd(lambda m=m, c=c, y=y: _eager_logits_elbo(m, c, y), (m, c)), dev))
        if c_logits is not None:
            out.append(Case(FAMILY, op, "torch-compiled", shape, n, nbytes,
                            _fwd_bwd(lambda m=m, c=c, y=y: c_logits(m, c, y), (m, c)), dev))
        ad, bd = a.detach(), b.detach()
        op = "beta_stats"
        out.append(Case(FAMILY, op, "icrm", shape, n, 8 * 4 * n,
                        _unchecked(lambda ad=ad, bd=bd: beta_stats(ad, bd)), dev))
        out.append(Case(FAMILY, op, "torch-eager", shape, n, 8 * 4 * n,
                        lambda ad=ad, bd=bd: _eager_stats(ad, bd), dev))
        if c_stats is not None:
            out.append(Case(FAMILY, op, "torch-compiled", shape, n, 8 * 4 * n,
                            lambda ad=ad, bd=bd: c_stats(ad, bd), dev))
    for msize in post_sizes:
        k = msize // 64
        shape = f"M={msize} K={k} discount=0.9"
        y = torch.rand(msize, device=device)
        cu = torch.arange(0, msize + 1, 64, device=device, dtype=torch.int64)
        nbytes = 4 * msize + 8 * (k + 1) + 2 * 4 * k
        op = "beta_posterior"
        out.append(Case(FAMILY, op, "icrm", shape, msize, nbytes,
                        _unchecked(lambda y=y, cu=cu: beta_posterior(y, cu_segments=cu, discount=0.9)), dev,
                        note="segments of 64 demonstrations"))
        if on_gpu:  # the same kernel with 2x larger tiles (candidate default, see bench/NOTES.md §4)
            out.append(Case(FAMILY, op, "icrm-tile2048", shape, msize, nbytes,
                            _unchecked(_with_posterior_tile(2048, lambda y=y, cu=cu: beta_posterior(
                                y, cu_segments=cu, discount=0.9))), dev))
        out.append(Case(FAMILY, op, "torch-eager", shape, msize, nbytes,
                        lambda y=y, cu=cu, k=k: _eager_posterior(y, cu, k, 0.9), dev))
        if c_post is not None:
            out.append(Case(FAMILY, op, "torch-compiled", shape, msize, nbytes,
                            lambda y=y, cu=cu, k=k: c_post(y, cu, k, 0.9), dev))
    # device time (CUDA-graph replays) of every forward-only case; the eager posterior copies a
    # host scalar to the GPU (torch.tensor(discount)), which graph capture refuses
    out = hot_loop(out)
    for c in out:
        if c.op == "beta_posterior" and not c.is_icrm:
            c.graph = False
    return out
