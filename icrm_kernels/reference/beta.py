"""Float64-capable references for ICRM's Beta posterior math (docs/beta.md#math),
written like the formulas."""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from icrm_kernels._layout import sanitize_offsets
from icrm_kernels.reference.special import betaln, entropy_remainder, log_ratios, trigamma, trigamma_m_recip

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _neg_entropy_core(alpha, beta):
    """-ln B(a,b) + a(psi(a) - psi(s)) + b(psi(b) - psi(s)) from the entropy remainders G: the
    ~1e7-sized lgamma/psi terms at a, b ~ 1e6 cancel analytically, not in float64 (which left
    ~1e-8 relative error in the KL before)."""
    s = alpha + beta
    _, rb = log_ratios(alpha, beta)
    return (0.5 * (torch.log(alpha) + rb) - (_HALF_LOG_2PI + 0.5)
            - entropy_remainder(alpha) - entropy_remainder(beta) + entropy_remainder(s))


class BetaStats(NamedTuple):
    """Statistics of Beta(alpha, beta) over theta; each field has alpha's shape."""

    mean: torch.Tensor  # alpha / (alpha + beta)
    var: torch.Tensor  # alpha beta / (s^2 (s + 1))
    log_mean: torch.Tensor  # E[log theta] = psi(alpha) - psi(s)
    log1m_mean: torch.Tensor  # E[log(1 - theta)] = psi(beta) - psi(s)
    logit_mean: torch.Tensor  # E[logit theta] = psi(alpha) - psi(beta)
    entropy: torch.Tensor  # differential entropy


def beta_from_logits(mean_logit, conc_logit, tau_min=1e-2):
    """mu = sigmoid(mean_logit), tau = softplus(conc_logit) + tau_min, alpha = mu tau, beta = (1 - mu) tau."""
    mu = torch.sigmoid(mean_logit)
    tau = F.softplus(conc_logit) + tau_min
    return mu * tau, torch.sigmoid(-mean_logit) * tau


def beta_kl(alpha, beta, prior_alpha=1.0, prior_beta=1.0):
    """KL(Beta(a, b) || Beta(a0, b0))."""
    a0 = torch.as_tensor(prior_alpha, dtype=alpha.dtype, device=alpha.device)
    b0 = torch.as_tensor(prior_beta, dtype=alpha.dtype, device=alpha.device)
    s = alpha + beta
    # = ln B(a0,b0) - ln B(a,b) + (a-a0) psi(a) + (b-b0) psi(b) + (a0-a+b0-b) psi(s), rearranged
    psi_s = torch.digamma(s)
    da, db = torch.digamma(alpha) - psi_s, torch.digamma(beta) - psi_s
    return betaln(a0, b0) + _neg_entropy_core(alpha, beta) - a0 * da - b0 * db


def _reduce(loss, weights, reduction):
    if weights is not None:
        loss = loss * weights
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def beta_elbo_loss(alpha, beta, labels, *, prior_alpha=1.0, prior_beta=1.0, kl_weight=1.0, weights=None,
                   reduction="mean"):
    """L = -[y (psi(a) - psi(a+b)) + (1-y)(psi(b) - psi(a+b))] + kl_weight KL(Beta(a,b) || Beta(a0,b0))."""
    s = alpha + beta
    expected_loglik = labels * (torch.digamma(alpha) - torch.digamma(s)) + (1 - labels) * (torch.digamma(beta) - torch.digamma(s))
    loss = -expected_loglik + kl_weight * beta_kl(alpha, beta, prior_alpha, prior_beta)
    return _reduce(loss, weights, reduction)


def beta_elbo_loss_from_logits(mean_logit, conc_logit, labels, *, tau_min=1e-2, **kwargs):
    alpha, beta = beta_from_logits(mean_logit, conc_logit, tau_min)
    return beta_elbo_loss(alpha, beta, labels, **kwargs)


def beta_stats(alpha, beta) -> BetaStats:
    s = alpha + beta
    psi_s = torch.digamma(s)
    # = ln B - (a-1) psi(a) - (b-1) psi(b) + (s-2) psi(s), without its cancelling large terms
    entropy = -_neg_entropy_core(alpha, beta) + (torch.digamma(alpha) - psi_s) + (torch.digamma(beta) - psi_s)
    stats = BetaStats(
        mean=alpha / s,
        var=alpha * beta / (s * s * (s + 1)),
        log_mean=torch.digamma(alpha) - psi_s,
        log1m_mean=torch.digamma(beta) - psi_s,
        logit_mean=torch.digamma(alpha) - torch.digamma(beta),
        entropy=entropy,
    )
    # alpha or beta not > 0: NaN everywhere, as the kernels (torch's reflection values for
    # negative arguments are not a Beta distribution's statistics)
    valid = (alpha > 0) & (beta > 0)
    return BetaStats(*(torch.where(valid, t, torch.full_like(t, float("nan"))) for t in stats))


def beta_posterior(outcomes, *, cu_segments=None, segment_index=None, num_segments=None, weights=None,
                   prior_alpha=1.0, prior_beta=1.0, discount=1.0):
    """A plain Python loop over segments: alpha = a0 + sum_i w_i g^(n-1-i) y_i, beta likewise with 1 - y_i."""
    y = outcomes.to(torch.float64) if not outcomes.is_floating_point() else outcomes
    w = torch.ones_like(y) if weights is None else weights.to(y.dtype)
    if cu_segments is not None:
        cu = cu_segments.tolist()
        members = [list(range(cu[k], cu[k + 1])) for k in range(len(cu) - 1)]
        if num_segments is not None:
            members = members[:num_segments] + [[] for _ in range(num_segments - len(members))]
    else:
        ids = segment_index.tolist()
        k_count = num_segments if num_segments is not None else (max(ids) + 1 if ids else 0)
        members = [[] for _ in range(k_count)]
        for i, g in enumerate(ids):
            if 0 <= g < k_count:
                members[g].append(i)
    alphas, betas = [], []

    def prior(p, k):  # a number, a 0-d tensor or one prior per segment [K]
        if isinstance(p, torch.Tensor):
            return (p[k] if p.dim() else p).to(y.dtype)
        return torch.tensor(p, dtype=y.dtype)

    for k, rows in enumerate(members):
        n = len(rows)
        a = prior(prior_alpha, k)
        b = prior(prior_beta, k)
        for i, r in enumerate(rows):
            f = w[r] * discount ** (n - 1 - i)
            a = a + f * y[r]
            b = b + f * (1 - y[r])
        alphas.append(a)
        betas.append(b)
    if not alphas:
        return torch.zeros(0, dtype=y.dtype), torch.zeros(0, dtype=y.dtype)
    return torch.stack(alphas), torch.stack(betas)


def steer(alpha, beta, weights, statistic="mean"):
    """sum_k w_k stat_k over the last dimension."""
    stat = getattr(beta_stats(alpha, beta), statistic)
    return (stat * weights).sum(-1)


def hypervolume(points, ref):
    """Exact dominated hypervolume (maximisation) by inclusion-exclusion over subsets (small n only)."""
    p = points.to(torch.float64)
    r = torch.as_tensor(ref, dtype=torch.float64)
    keep = [row for row in p if bool((row > r).all())]
    total = 0.0
    for size in range(1, len(keep) + 1):
        for subset in itertools.combinations(keep, size):
            corner = torch.stack(subset).min(0).values
            total += (-1) ** (size + 1) * float(torch.prod(corner - r))
    return torch.tensor(total, dtype=torch.float64)


def beta_elbo_grads(alpha, beta, labels, *, prior_alpha=1.0, prior_beta=1.0, kl_weight=1.0):
    """Per-element (dL/dalpha, dL/dbeta) of the unreduced loss, in closed form (labels=None: KL only):

    dL/da = -y psi'(a) + psi'(s) + kl_weight [(a - a0) psi'(a) + (a0 + b0 - s) psi'(s)]
    dL/db = -(1-y) psi'(b) + psi'(s) + kl_weight [(b - b0) psi'(b) + (a0 + b0 - s) psi'(s)]
    """
    s = alpha + beta
    ta, tb, ts = trigamma(alpha), trigamma(beta), trigamma(s)
    p0 = prior_alpha + prior_beta
    # the KL part written with psi'(z) - 1/z: (a - a0) psi'(a) + (p0 - s) psi'(s) is a difference
    # of two ~1 terms leaving ~1/a, which loses log10(a) digits at large a
    ea, eb, es = trigamma_m_recip(alpha), trigamma_m_recip(beta), trigamma_m_recip(s)
    ga = kl_weight * (-prior_alpha / alpha + p0 / s + (alpha - prior_alpha) * ea + (p0 - s) * es)
    gb = kl_weight * (-prior_beta / beta + p0 / s + (beta - prior_beta) * eb + (p0 - s) * es)
    if labels is not None:
        ga = ga - labels * ta + ts
        gb = gb - (1 - labels) * tb + ts
    return ga, gb


def from_logits_grads(mean_logit, conc_logit, ga, gb, tau_min=1e-2):
    """Chain rule through beta_from_logits: (dL/dmean_logit, dL/dconc_logit) from (dL/dalpha, dL/dbeta)."""
    mu, mu_c = torch.sigmoid(mean_logit), torch.sigmoid(-mean_logit)
    tau = F.softplus(conc_logit) + tau_min
    return (ga - gb) * tau * mu * mu_c, (ga * mu + gb * mu_c) * torch.sigmoid(conc_logit)


def elbo_with_grads(x1, x2, labels, weights, pa, pb, kw, tau_min, from_logits, compute_grad):
    """The ELBO op in float64 torch: the unreduced weighted loss [N] and, with ``compute_grad``, its
    closed-form per-element gradients dL/dx1, dL/dx2 [N] (x1, x2 = alpha, beta, or the two logits).
    Flattened; empty gradients without ``compute_grad``."""
    v1, v2 = x1.to(torch.float64), x2.to(torch.float64)
    a, b = beta_from_logits(v1, v2, tau_min) if from_logits else (v1, v2)
    y = None if labels is None else labels.to(torch.float64)
    if y is None:
        loss = kw * beta_kl(a, b, pa, pb)
    else:
        loss = beta_elbo_loss(a, b, y, prior_alpha=pa, prior_beta=pb, kl_weight=kw, reduction="none")
    w = None if weights is None else weights.to(torch.float64)
    if w is not None:
        loss = loss * w
    g1 = g2 = x1.new_empty((0,))
    if compute_grad:
        g1, g2 = beta_elbo_grads(a, b, y, prior_alpha=pa, prior_beta=pb, kl_weight=kw)
        if from_logits:
            g1, g2 = from_logits_grads(v1, v2, g1, g2, tau_min)
        if w is not None:
            g1, g2 = g1 * w, g2 * w
    return loss.reshape(-1), g1.reshape(-1), g2.reshape(-1)


def posterior_of_segments(outcomes, weights, cu, index, k, pa, pb, discount):
    """The posterior op in vectorised torch (float64 for float64 outcomes, else float32): segments
    given by offsets ``cu`` or ids ``index`` (ids outside [0, k) ignored); position i within its
    segment of size n gets the factor f = w discount^(n-1-i)."""
    dt = torch.float64 if outcomes.dtype == torch.float64 else torch.float32
    y = outcomes.to(dt)
    m = y.numel()
    dev = y.device
    if index is None:
        # searchsorted over clamped offsets, not repeat_interleave(output_size=m): malformed cu
        # (value checks off) must not raise nor index out of range; rows outside [cu[0], cu[-1])
        # get segment k, ignored like an out-of-range id
        c = sanitize_offsets(cu, m)
        pos = torch.arange(m, device=dev)
        seg = torch.searchsorted(c[1:].contiguous(), pos, right=True) if k > 0 else torch.zeros_like(pos)
        seg = torch.where((pos >= c[0]) & (pos < c[-1]), seg, torch.full_like(seg, k))
    else:
        seg = index.to(torch.int64)
    valid = (seg >= 0) & (seg < k)
    seg = torch.where(valid, seg, torch.full_like(seg, k))
    sizes = torch.zeros(k + 1, dtype=torch.int64, device=dev).index_add_(0, seg, torch.ones_like(seg))
    start = torch.cumsum(sizes, 0) - sizes
    order = torch.sort(seg, stable=True).indices
    pos = torch.empty_like(seg)
    pos[order] = torch.arange(m, device=dev) - start[seg[order]]
    f = torch.ones_like(y) if weights is None else weights.to(dt)
    if discount < 1.0:
        f = f * torch.pow(torch.tensor(discount, dtype=dt, device=dev), (sizes[seg] - 1 - pos).to(dt))
    f = torch.where(valid, f, torch.zeros_like(f))
    alpha = torch.zeros(k + 1, dtype=dt, device=dev).index_add_(0, seg, f * y)[:k] + pa
    beta = torch.zeros(k + 1, dtype=dt, device=dev).index_add_(0, seg, f * (1 - y))[:k] + pb
    return alpha, beta
