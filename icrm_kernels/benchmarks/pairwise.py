"""Benchmarks of the pairwise group ops against the same math in eager torch.

Baselines, on the same inputs in the same run:
- ``torch-loop``: a Python loop over the groups, as R2M's GREBT code and Pref-GRPO's per-group
  pairwise comparison are written (only where it finishes in reasonable time: the win rate at
  N <= 64K on CPU; GREBT, whose loop runs autograd per group, at N = 8K on CPU; N = 4K on GPU);
- ``torch-vectorized``: the fixed-G version an engineer would write with ``view(B, G)``
  (``[B, G, G]`` pairwise tensors for the win rate);
- ``torch-compiled``: the same vectorized code through ``torch.compile`` (harness.compiled).

GPU: bf16 inputs, N = 4K, 64K, 1M with G = 8 (and G = 64 for the win rate). CPU: fp32, N = 64K,
G = 8 (quick: N = 4K).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from icrm_kernels.benchmarks.harness import Case, compiled, compiled_peers, hot_loop
from icrm_kernels.ops.pairwise import grebt_loss, group_win_rate

FAMILY = "pairwise"
TEMPERATURE = 0.5
ALPHA, EPS = 0.3, 1e-6


# ------------------------------------------------------------------------------ baselines
def win_rate_loop(scores, group_size, temperature=TEMPERATURE):
    out = torch.empty_like(scores)
    for start in range(0, scores.numel(), group_size):
        s = scores[start:start + group_size].float()
        p = torch.sigmoid((s[:, None] - s[None, :]) / temperature)
        out[start:start + group_size] = ((p.sum(1) - 0.5) / (group_size - 1)).to(scores.dtype)  # minus the diagonal
    return out


def win_rate_vectorized(scores, group_size, temperature=TEMPERATURE):
    s = scores.float().view(-1, group_size)
    p = torch.sigmoid((s[:, :, None] - s[:, None, :]) / temperature)
    return ((p.sum(-1) - 0.5) / (group_size - 1)).reshape(-1).to(scores.dtype)


def grebt_loop(rewards, group_size, alpha=ALPHA, eps=EPS):
    """R2M's form: one group at a time."""
    losses = []
    for start in range(0, rewards.numel(), group_size):
        r = rewards[start:start + group_size].float()
        w, l = r.detach().argmax(), r.detach().argmin()
        loss_bt = -F.logsigmoid(r[w] - r[l])
        z = (r - r.mean()) / (r.std(unbiased=False) + eps)
        p = torch.softmax(z, 0)
        loss_gre = -(p * torch.log(p)).sum()
        losses.append((1 - alpha) * loss_bt + alpha * loss_gre)
    return torch.stack(losses).mean()


def grebt_vectorized(rewards, group_size, alpha=ALPHA, eps=EPS):
    r = rewards.float().view(-1, group_size)
    w = r.detach().argmax(1, keepdim=True)
    l = r.detach().argmin(1, keepdim=True)
    loss_bt = -F.logsigmoid(r.gather(1, w) - r.gather(1, l)).squeeze(1)
    z = (r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + eps)
    log_p = torch.log_softmax(z, 1)
    loss_gre = -(log_p.exp() * log_p).sum(1)
    return ((1 - alpha) * loss_bt + alpha * loss_gre).mean()


def _fwd_bwd(loss_fn, x):
    def run():
        return torch.autograd.grad(loss_fn(x), x)
    return run


def _win_fwd_bwd(fn, x, cot):
    def run():
        return torch.autograd.grad(fn(x), x, cot)
    return run


# --------------------------------------------------------------------------------- cases
def cases(device, quick: bool = False) -> List[Case]:
    device = torch.device(device)
    dev = str(device)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    if on_gpu:
        shapes = [(4096, 8), (65536, 8), (1 << 20, 8), (4096, 64), (65536, 64), (1 << 20, 64)]
        if quick:
            shapes = [(4096, 8), (65536, 64)]
        loop_max = 4096
    else:
        shapes = [(4096, 8)] if quick else [(8192, 8), (65536, 8), (65536, 64)]
        loop_max = 65536
    e = torch.finfo(dtype).bits // 8
    out: List[Case] = []
    comp = compiled_peers(device)
    c_win, c_hard, c_grebt = ((compiled(win_rate_vectorized), compiled(_hard_vectorized), compiled(grebt_vectorized))
                              if comp else (None, None, None))
    for n, g in shapes:
        shape = f"N={n} G={g} {str(dtype).replace('torch.', '')}"
        scores = torch.randn(n, device=device).to(dtype)
        cot = torch.randn(n, device=device).to(dtype)
        x = scores.clone().requires_grad_(True)

        # group win rate, soft, forward
        op = "group_win_rate[soft] fwd"
        out.append(Case(FAMILY, op, "icrm", shape, n, 2 * n * e,
                        lambda s=scores, g=g: group_win_rate(s, group_size=g, temperature=TEMPERATURE), dev))
        out.append(Case(FAMILY, op, "torch-vectorized", shape, n, 2 * n * e,
                        lambda s=scores, g=g: win_rate_vectorized(s, g), dev))
        if comp:
            out.append(Case(FAMILY, op, "torch-compiled", shape, n, 2 * n * e,
                            lambda s=scores, g=g: c_win(s, g), dev))
        if n <= loop_max:
            out.append(Case(FAMILY, op, "torch-loop", shape, n, 2 * n * e, lambda s=scores, g=g: win_rate_loop(s, g), dev))
        # hard wins, forward
        op = "group_win_rate[hard] fwd"
        out.append(Case(FAMILY, op, "icrm", shape, n, 2 * n * e, lambda s=scores, g=g: group_win_rate(s, group_size=g), dev))
        out.append(Case(FAMILY, op, "torch-vectorized", shape, n, 2 * n * e,
                        lambda s=scores, g=g: _hard_vectorized(s, g), dev))
        if comp:
            out.append(Case(FAMILY, op, "torch-compiled", shape, n, 2 * n * e,
                            lambda s=scores, g=g: c_hard(s, g), dev))
        # soft, forward + backward
        op = "group_win_rate[soft] fwd+bwd"
        out.append(Case(FAMILY, op, "icrm", shape, n, 5 * n * e,
                        _win_fwd_bwd(lambda t, g=g: group_win_rate(t, group_size=g, temperature=TEMPERATURE), x, cot), dev))
        out.append(Case(FAMILY, op, "torch-vectorized", shape, n, 5 * n * e,
                        _win_fwd_bwd(lambda t, g=g: win_rate_vectorized(t, g), x, cot), dev))
        if comp:
            out.append(Case(FAMILY, op, "torch-compiled", shape, n, 5 * n * e,
                            _win_fwd_bwd(lambda t, g=g: c_win(t, g), x, cot), dev))

        if g != 8:  # GREBT at G = 8 only (R2M's group sizes are 4 to 8)
            continue
        op = "grebt_loss fwd+bwd"
        nbytes = n * (2 * e + 8)  # read r, write dL/dr (fp32), read it back, write the gradient
        out.append(Case(FAMILY, op, "icrm", shape, n, nbytes, _fwd_bwd(lambda t, g=g: grebt_loss(t, group_size=g), x), dev))
        out.append(Case(FAMILY, op, "torch-vectorized", shape, n, nbytes, _fwd_bwd(lambda t, g=g: grebt_vectorized(t, g), x), dev))
        if comp:
            out.append(Case(FAMILY, op, "torch-compiled", shape, n, nbytes, _fwd_bwd(lambda t, g=g: c_grebt(t, g), x), dev))
        if n <= min(loop_max, 8192):
            out.append(Case(FAMILY, op, "torch-loop", shape, n, nbytes, _fwd_bwd(lambda t, g=g: grebt_loop(t, g), x), dev))
    return hot_loop(out)


def _hard_vectorized(scores, group_size):
    s = scores.float().view(-1, group_size)
    d = s[:, :, None] - s[:, None, :]
    p = (d > 0).float() + 0.5 * (d == 0).float()
    return ((p.sum(-1) - 0.5) / (group_size - 1)).reshape(-1).to(scores.dtype)
