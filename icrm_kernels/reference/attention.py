"""Float64-capable references for R2M's sequence-to-token cross-attention (docs/attention.md#math).

Two forms that compute the same function:

- :func:`seq_to_token_attention` / :func:`r2m_reward`: the paper's form. Keys and values are
  projected explicitly (k = h W_k + b_k, v = h W_v + b_v), then softmax(q_h k_hᵀ · scale) v_h per
  head, concat, W_o. This is docs/attention.md#math in code; the tests compare every path against it.
- :func:`s2t_attention_core`: the absorbed core the fast paths compute, in plain torch:
  given q̃[B, H, D_p] (the query already multiplied into W_k and the scale),
  c_h = Σ_l softmax_l(q̃_h · h_l) h_l and lse_h = log Σ_l exp(q̃_h · h_l).
  It is also the CPU implementation of the core op (see ``ops/attention.py``).

Layouts: ``states[T, D_p]`` packed with ``cu_seqlens[B+1]``, or ``states[B, L, D_p]`` with an
optional ``key_padding_mask[B, L]`` (True = ignore). A sequence with no attended token gives
Ĥ = 0 (no output bias), c = 0 and lse = -inf. Only such a sequence does: NaN or inf in the
states, the query or the weights propagate as NaN, as in nn.MultiheadAttention.

Malformed ``cu_seqlens`` (only reachable with value checks off) are sanitized by
:func:`icrm_kernels._layout.sanitize_offsets`, the rule every implementation applies, so no row
outside the states is ever read.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from icrm_kernels._layout import sanitize_offsets


def nonempty_rows(states: torch.Tensor, cu_seqlens: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor],
                  batch: int) -> torch.Tensor:
    """bool[B]: whether sequence b has an attended token, from the layout alone (never from the
    scores, which a NaN would fool). No host synchronisation."""
    if states.dim() == 3:
        if key_padding_mask is not None:
            return (~key_padding_mask.to(torch.bool)).any(dim=1)
        return torch.full((batch,), states.shape[1] > 0, dtype=torch.bool, device=states.device)
    cu = sanitize_offsets(cu_seqlens, states.shape[0])
    return cu[1:] > cu[:-1]


def to_padded(states: torch.Tensor, cu_seqlens: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor]):
    """Return ``(states[B, L, D_p], valid[B, L] bool)`` for either layout (host sync for packed)."""
    if states.dim() == 3:
        b, l, _ = states.shape
        if key_padding_mask is None:
            valid = torch.ones(b, l, dtype=torch.bool, device=states.device)
        else:
            valid = ~key_padding_mask.to(torch.bool)
        return states, valid
    cu_seqlens = sanitize_offsets(cu_seqlens, states.shape[0])
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    b = len(lengths)
    lmax = max(lengths) if lengths else 0
    padded = states.new_zeros(b, lmax, states.shape[-1])
    valid = torch.zeros(b, lmax, dtype=torch.bool, device=states.device)
    starts = cu_seqlens[:-1].tolist()
    for i, (s, n) in enumerate(zip(starts, lengths)):
        padded[i, :n] = states[s : s + n]
        valid[i, :n] = True
    return padded, valid


def seq_to_token_attention(
    query, states, w_q, w_k, w_v, w_o, *, cu_seqlens=None, key_padding_mask=None, num_heads=1,
    b_q=None, b_k=None, b_v=None, b_o=None, scale=None,
):
    """Ĥ = concat_h(softmax(q_h k_hᵀ · scale) v_h) W_o + b_o with K and V projected explicitly."""
    x, valid = to_padded(states, cu_seqlens, key_padding_mask)
    bsz, d = query.shape[0], w_q.shape[1]
    dh = d // num_heads
    scale = 1.0 / math.sqrt(dh) if scale is None else scale
    q = query @ w_q + (b_q if b_q is not None else 0)  # [B, d]
    k = x @ w_k + (b_k if b_k is not None else 0)  # [B, L, d]
    v = x @ w_v + (b_v if b_v is not None else 0)  # [B, L, d]
    q = q.view(bsz, num_heads, 1, dh)
    k = k.view(bsz, -1, num_heads, dh).transpose(1, 2)  # [B, H, L, dh]
    v = v.view(bsz, -1, num_heads, dh).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)).squeeze(2) * scale  # [B, H, L]
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    nonempty = valid.any(dim=1)  # [B]
    p = torch.softmax(scores.masked_fill(~nonempty[:, None, None], 0.0), dim=-1)
    o = (p.unsqueeze(2) @ v).reshape(bsz, d)  # [B, d]
    out = o @ w_o + (b_o if b_o is not None else 0)
    return torch.where(nonempty[:, None], out, torch.zeros_like(out))


def r2m_omega(step, total_steps, floor=0.6):
    """ω(t) = max(½cos(πt/T) + ½, Ω)."""
    if isinstance(step, torch.Tensor) or isinstance(total_steps, torch.Tensor):
        t = torch.as_tensor(step, dtype=torch.float64)
        return torch.clamp(0.5 * torch.cos(math.pi * t / total_steps) + 0.5, min=floor)
    return max(0.5 * math.cos(math.pi * step / total_steps) + 0.5, floor)


def r2m_reward(
    query, states, w_q, w_k, w_v, w_o, *, score_weight, score_bias=None, omega, cu_seqlens=None,
    key_padding_mask=None, num_heads=1, b_q=None, b_k=None, b_v=None, b_o=None, scale=None,
):
    """r = φ(ω·H + (1 − ω)·Ĥ), φ(x) = x·w_s + b_s, Ĥ from the explicit-projection attention."""
    h_hat = seq_to_token_attention(
        query, states, w_q, w_k, w_v, w_o, cu_seqlens=cu_seqlens, key_padding_mask=key_padding_mask,
        num_heads=num_heads, b_q=b_q, b_k=b_k, b_v=b_v, b_o=b_o, scale=scale,
    )
    h_fin = omega * query + (1 - omega) * h_hat
    r = h_fin @ score_weight
    return r + score_bias if score_bias is not None else r


def s2t_attention_core(q_tilde, states, cu_seqlens=None, key_padding_mask=None):
    """(c[B, H, D_p], lse[B, H]) with c_h = Σ_l softmax_l(q̃_h·h_l) h_l, in q̃'s dtype (fp32 min)."""
    x, valid = to_padded(states, cu_seqlens, key_padding_mask)
    dt = torch.promote_types(q_tilde.dtype, torch.float32)
    x = x.to(dt)
    s = torch.einsum("bhp,blp->bhl", q_tilde.to(dt), x).masked_fill(~valid[:, None, :], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # -inf for empty rows; NaN/+inf scores give NaN/+inf
    # only -inf is "no mass": a +inf or NaN lse must reach p (and make c NaN), not be zeroed
    p = torch.exp(s - lse.unsqueeze(-1).masked_fill((lse == float("-inf")).unsqueeze(-1), 0.0))
    c = torch.einsum("bhl,blp->bhp", p, x)
    return c, lse


def s2t_attention_core_backward(dc, q_tilde, states, c, lse, cu_seqlens=None, key_padding_mask=None, need_dstates=True):
    """Gradients of :func:`s2t_attention_core` given dc: (dq̃[B, H, D_p], d states or None).

    p_l = exp(s_l − lse), ds_l = p_l (h_l·dc − c·dc), dq̃ = Σ_l ds_l h_l,
    dh_l = Σ_h p_hl dc_h + ds_hl q̃_h.
    """
    x, valid = to_padded(states, cu_seqlens, key_padding_mask)
    dt = torch.promote_types(q_tilde.dtype, torch.float32)
    x = x.to(dt)
    qt, dc, c, lse = q_tilde.to(dt), dc.to(dt), c.to(dt), lse.to(dt)
    s = torch.einsum("bhp,blp->bhl", qt, x).masked_fill(~valid[:, None, :], float("-inf"))
    p = torch.exp(s - lse.unsqueeze(-1).masked_fill((lse == float("-inf")).unsqueeze(-1), 0.0))
    g = torch.einsum("bhp,blp->bhl", dc, x)
    delta = (c * dc).sum(-1, keepdim=True)
    ds = p * (g - delta)
    dq = torch.einsum("bhl,blp->bhp", ds, x)
    if not need_dstates:
        return dq, None
    dx = torch.einsum("bhl,bhp->blp", p, dc) + torch.einsum("bhl,bhp->blp", ds, qt)
    if states.dim() == 2:
        # packed rows are the valid padded rows in order; rows no (sanitized) sequence covers get 0
        cu = sanitize_offsets(cu_seqlens, states.shape[0])
        out = dx.new_zeros(states.shape[0], dx.shape[-1])
        out[int(cu[0]):int(cu[-1])] = dx[valid]
        dx = out
    return dq, dx


def r2m_reward_core(q_tilde, u, states, cu_seqlens, key_padding_mask):
    """The fused score core in plain torch: (y[B, H] = Σ_l softmax_l(q̃_h·h_l)(u_h·h_l), nonempty[B]),
    y in q̃'s accumulation dtype (fp32, fp64 for fp64 q̃)."""
    c, lse = s2t_attention_core(q_tilde, states, cu_seqlens, key_padding_mask)
    y = (c * u.to(c.dtype).unsqueeze(0)).sum(-1)
    nonempty = nonempty_rows(states, cu_seqlens, key_padding_mask, q_tilde.shape[0])
    # attended tokens but lse = -inf (every score -inf): softmax's NaN, as the kernels give
    y = torch.where(nonempty[:, None] & (lse == float("-inf")), float("nan"), y)
    return y.contiguous(), nonempty
