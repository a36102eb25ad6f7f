"""Float64-capable torch references for the pairwise group ops (docs/pairwise.md#math).

Both ops work on a *padded* view of the groups: ``[B, M]`` with ``M`` the largest group, a
validity mask, and the original row of every slot. Every formula below is then written per
group along the last dimension, as in docs/pairwise.md#math:

- ``group_win_rate``: w_i = 1/(n_g − 1) · Σ_{j≠i} P(i ≻ j), P = σ((s_i − s_j)/T), or hard wins
  (1 win, ½ tie, 0 loss) when ``temperature`` is None; a group of one gets w = ½.
- ``grebt_loss``: L = (1 − α)·softplus(r_l − r_w) + α·(−Σ p log p), p = softmax((r − μ)/(σ_pop + eps)).

These functions are that documented math in code: they favour clarity over speed (the padded view
costs a host synchronisation and O(B·M²) memory for the win rate).
"""
from __future__ import annotations

from typing import Optional

import torch

from icrm_kernels._layout import GroupLayout, resolve_groups

__all__ = ["group_win_rate", "grebt_loss", "grebt_group_losses", "win_rate_from_layout", "padded_groups"]


def padded_groups(layout: GroupLayout):
    """(rows [B, M] int64 original row of each slot (0 where empty), mask [B, M] bool, sizes [B]).

    For the ``group_index`` layout, B is the number of distinct ids, groups in ascending id order;
    rows within a group keep their original order.
    """
    n, device = layout.n, layout.device
    if layout.kind == "fixed":
        b, g = layout.max_groups, layout.group_size
        rows = torch.arange(n, device=device).view(b, g)
        return rows, torch.ones(b, g, dtype=torch.bool, device=device), torch.full((b,), g, device=device)
    cu = layout.cu
    sizes = cu[1:] - cu[:-1]
    if layout.kind == "index":  # trailing groups past the real count are empty: drop them
        sizes = sizes[: int((sizes > 0).sum())]
    b = sizes.numel()
    m = int(sizes.max()) if b else 0
    pos = torch.arange(m, device=device)
    mask = pos[None, :] < sizes[:, None]
    q = torch.where(mask, cu[:b, None] + pos[None, :], 0)
    rows = layout.order[q] if layout.kind == "index" else q
    return torch.where(mask, rows, 0), mask, sizes


def _scatter_rows(values: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    out = values.new_zeros(n)
    return out.index_put((rows[mask],), values[mask])


def win_rate_from_layout(scores: torch.Tensor, layout: GroupLayout, temperature: Optional[float]) -> torch.Tensor:
    rows, mask, sizes = padded_groups(layout)
    s = torch.where(mask, scores[rows], 0)  # [B, M]
    diff = s[:, :, None] - s[:, None, :]  # s_i - s_j, [B, M, M]
    if temperature is None:
        si, sj = s[:, :, None], s[:, None, :]
        p = (si > sj).to(s.dtype) + 0.5 * (si == sj).to(s.dtype)  # 1 win, 1/2 tie, 0 loss
        p = torch.where(si.isnan() | sj.isnan(), float("nan"), p)
    else:
        p = torch.sigmoid(diff / temperature)
    m = mask.shape[1]
    pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(m, dtype=torch.bool, device=s.device)
    wins = torch.where(pair, p, 0).sum(-1)
    denom = (sizes - 1).clamp_min(1).to(s.dtype)[:, None]
    w = torch.where(sizes[:, None] > 1, wins / denom, 0.5)
    return _scatter_rows(w, rows, mask, layout.n).to(scores.dtype)


def group_win_rate(scores, *, group_size=None, cu_groups=None, group_index=None, temperature=None):
    """Reference of :func:`icrm_kernels.group_win_rate` (same arguments, any float dtype)."""
    layout = resolve_groups(scores.numel(), scores.device, group_size=group_size, cu_groups=cu_groups, group_index=group_index)
    return win_rate_from_layout(scores, layout, temperature)


def grebt_group_losses(rewards, layout: GroupLayout, *, alpha=0.3, eps=1e-6, select=None) -> torch.Tensor:
    """Per-group GREBT losses ``[B]``; groups with fewer than two rows are NaN (skipped)."""
    rows, mask, sizes = padded_groups(layout)
    if mask.shape[1] == 0:  # no rows at all: every group is skipped
        return rewards.new_full(sizes.shape, float("nan"))
    sel = (rewards if select is None else select).detach()[rows]
    sel_nan = torch.where(mask, sel.isnan(), False).any(-1, keepdim=True)
    # a NaN in `select` poisons its group like a NaN reward
    # where(): padding slots get no gradient (NaN computed there must not leak into real rows)
    r = torch.where(mask, rewards[rows], 0) + torch.where(sel_nan, float("nan"), 0.0).to(rewards.dtype)
    n = sizes.clamp_min(1).to(r.dtype)[:, None]

    # Bradley-Terry term on the chosen pair: first argmax / argmin of `select`
    w = torch.where(mask, sel, float("-inf")).argmax(-1, keepdim=True)
    l = torch.where(mask, sel, float("inf")).argmin(-1, keepdim=True)
    margin = r.gather(1, w) - r.gather(1, l)
    loss_bt = torch.logaddexp(torch.zeros_like(margin), -margin).squeeze(-1)  # -log sigma(r_w - r_l)

    # group reward entropy of the softmax of the standardised rewards
    mu = r.sum(-1, keepdim=True) / n  # padding slots hold 0
    c = torch.where(mask, r - mu, 0)
    var = (c * c).sum(-1, keepdim=True) / n
    sigma = var.clamp_min(torch.finfo(r.dtype).tiny).sqrt()  # safe at var = 0 (gradient 0 there)
    s = sigma + eps
    # only s = 0 is special-cased: a NaN s (an inf reward: inf - inf) must propagate as in the kernels
    z = torch.where(s == 0, 0, c / s)
    z = torch.where(mask, z, float("-inf"))
    log_p = torch.where(mask, torch.log_softmax(z, -1), 0)  # 0, not -inf, in padding slots
    p = torch.where(mask, log_p.exp(), 0)
    loss_gre = -(p * log_p).sum(-1)

    loss = (1 - alpha) * loss_bt + alpha * loss_gre
    return torch.where(sizes >= 2, loss, float("nan"))


def grebt_loss(rewards, *, group_size=None, cu_groups=None, group_index=None, alpha=0.3, eps=1e-6, select=None, reduction="mean"):
    """Reference of :func:`icrm_kernels.grebt_loss` (same arguments, any float dtype)."""
    layout = resolve_groups(rewards.numel(), rewards.device, group_size=group_size, cu_groups=cu_groups, group_index=group_index)
    losses = grebt_group_losses(rewards, layout, alpha=alpha, eps=eps, select=select)
    if reduction == "none":
        return losses
    valid = _sizes(layout, losses.numel()) >= 2  # skipped groups are excluded, NaN losses are not
    total = torch.where(valid, losses, 0).sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1)


def _sizes(layout: GroupLayout, b: int) -> torch.Tensor:
    if layout.kind == "fixed":
        return torch.full((b,), layout.group_size, device=layout.device)
    return (layout.cu[1:] - layout.cu[:-1])[:b]


# ----------------------------------------------------------------- analytic gradients
# The reference backend of the custom ops needs gradients without autograd (custom-op bodies run
# below the autograd dispatch key). These are the closed forms the kernels implement; the tests
# check them against autograd through the functions above.
def win_rate_backward_from_layout(grad, scores, layout: GroupLayout, temperature: float) -> torch.Tensor:
    """ds_k = 1/(T (n_g − 1)) Σ_{j≠k} σ'((s_k − s_j)/T) (g_k − g_j)."""
    rows, mask, sizes = padded_groups(layout)
    s, g = scores[rows], grad[rows]
    p = torch.sigmoid((s[:, :, None] - s[:, None, :]) / temperature)
    m = mask.shape[1]
    pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(m, dtype=torch.bool, device=s.device)
    terms = torch.where(pair, p * (1 - p) * (g[:, :, None] - g[:, None, :]), 0).sum(-1)
    ds = torch.where(sizes[:, None] > 1, terms / (temperature * (sizes - 1).clamp_min(1).to(s.dtype)[:, None]), 0)
    return _scatter_rows(ds, rows, mask, layout.n)


def grebt_row_gradients(rewards, layout: GroupLayout, *, alpha=0.3, eps=1e-6, select=None) -> torch.Tensor:
    """dL_g/dr_i for every row (0 in skipped groups), in closed form:

    alpha · [g_i/s + Var_p(z)/(s·n·σ) · c_i] ∓ (1 − alpha)·σ(r_l − r_w) at w / l,
    with c = r − μ, s = σ + eps, g_i = dL_GRE/dz_i = −p_i (z_i − Σ p z).
    """
    rows, mask, sizes = padded_groups(layout)
    if mask.shape[1] == 0:
        return torch.zeros_like(rewards)
    sel = (rewards if select is None else select)[rows]
    sel_nan = torch.where(mask, sel.isnan(), False).any(-1, keepdim=True)
    # where(): padding slots get no gradient (NaN computed there must not leak into real rows)
    r = torch.where(mask, rewards[rows], 0) + torch.where(sel_nan, float("nan"), 0.0).to(rewards.dtype)
    n = sizes.clamp_min(1).to(r.dtype)[:, None]
    c = torch.where(mask, r - torch.where(mask, r, 0).sum(-1, keepdim=True) / n, 0)
    sigma = ((c * c).sum(-1, keepdim=True) / n).sqrt()
    s = sigma + eps
    inv_s = torch.where(s == 0, 0, 1 / s)
    z = c * inv_s
    p = torch.softmax(torch.where(mask, z, float("-inf")), -1)
    p = torch.where(mask, p, 0)
    z_bar = (p * z).sum(-1, keepdim=True)
    var_p = (p * (z - z_bar) ** 2).sum(-1, keepdim=True)
    coef = torch.where(sigma > 0, var_p * inv_s / (n * sigma.clamp_min(torch.finfo(r.dtype).tiny)), 0)
    d = alpha * (inv_s * (-p * (z - z_bar)) + coef * c)
    w = torch.where(mask, sel, float("-inf")).argmax(-1, keepdim=True)
    l = torch.where(mask, sel, float("inf")).argmin(-1, keepdim=True)
    d_bt = (1 - alpha) * torch.sigmoid(r.gather(1, l) - r.gather(1, w))
    d = d.scatter_add(1, w, -d_bt).scatter_add(1, l, d_bt)
    d = torch.where((sizes >= 2)[:, None], d, 0)
    return _scatter_rows(d, rows, mask, layout.n)
