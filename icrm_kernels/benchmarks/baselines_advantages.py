"""Peer advantage code, re-expressed in torch for the benchmarks (same math, same data flow).

- ``verl_grpo_loop``: verl ``core_algos.compute_grpo_outcome_advantage`` — the dict-of-lists
  Python loop over samples (``id2score`` / ``id2mean`` / ``id2std``), singleton mean 0 / std 1.
- ``verl_grpo_vectorized``: verl's vectorized GRPO estimator — dense group ids from the uids,
  scatter-add sums and squares, unbiased std, singleton mean 0 / std 1, then
  ``(scores - mean[g]) / (std[g] + eps)``.
- ``dler_eager``: DLER's group-mean baseline plus batch whitening, written as eager torch.
- ``trl_grpo``: TRL ``GRPOTrainer`` advantage code — nansum over reward functions, ``view(-1, G)``
  mean / std, ``repeat_interleave``, divide by ``std + 1e-4``.
"""
from collections import defaultdict

import torch


def verl_grpo_loop(scores, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True):
    """index: a Python list of uids (verl passes a numpy array of strings)."""
    scores = scores.clone()
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    with torch.no_grad():
        bsz = scores.shape[0]
        for i in range(bsz):
            id2score[index[i]].append(scores[i])
        for idx in id2score:
            if len(id2score[idx]) == 1:
                id2mean[idx] = torch.tensor(0.0)
                id2std[idx] = torch.tensor(1.0)
            else:
                t = torch.stack(id2score[idx])
                id2mean[idx] = torch.mean(t)
                id2std[idx] = torch.std(t)
        for i in range(bsz):
            if norm_adv_by_std_in_grpo:
                scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
            else:
                scores[i] = scores[i] - id2mean[index[i]]
    return scores


def verl_grpo_vectorized(scores, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True):
    """index: an integer tensor of uids (any order)."""
    with torch.no_grad():
        _, g = torch.unique(index, return_inverse=True)
        num = int(g.max()) + 1 if g.numel() else 0
        z = torch.zeros(num, dtype=scores.dtype, device=scores.device)
        cnt = z.index_add(0, g, torch.ones_like(scores))
        s1 = z.index_add(0, g, scores)
        s2 = z.index_add(0, g, scores * scores)
        mean = s1 / cnt.clamp(min=1)
        var = (s2 - cnt * mean * mean) / (cnt - 1).clamp(min=1)
        std = var.clamp(min=0).sqrt()
        single = cnt <= 1
        mean = torch.where(single, torch.zeros_like(mean), mean)
        std = torch.where(single, torch.ones_like(std), std)
        if norm_adv_by_std_in_grpo:
            return (scores - mean[g]) / (std[g] + epsilon)
        return scores - mean[g]


def trl_grpo(rewards_per_func, reward_weights, num_generations, scale_rewards="group"):
    rewards = (rewards_per_func * reward_weights.unsqueeze(0)).nansum(dim=1)
    mean_grouped = rewards.view(-1, num_generations).mean(dim=1)
    mean_grouped = mean_grouped.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ("group", "none"):
        std = rewards.view(-1, num_generations).std(dim=1).repeat_interleave(num_generations, dim=0)
    else:
        std = rewards.std().expand_as(rewards)
    advantages = rewards - mean_grouped
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return advantages


def dler_eager(rewards, num_generations, eps=1e-6):
    """DLER in eager torch: group-mean baseline, then batch whitening with the unbiased std."""
    a = rewards.view(-1, num_generations)
    a = (a - a.mean(dim=1, keepdim=True)).flatten()
    return (a - a.mean()) / (a.std() + eps)


def grpo_view(rewards, num_generations, eps=1e-6):
    """The shortest fixed-G GRPO an engineer would write (and hand to ``torch.compile``):
    ``view(B, G)``, mean and unbiased std per group, ``(r - mean) / (std + eps)``."""
    x = rewards.view(-1, num_generations)
    return ((x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + eps)).flatten()


def bnpo_view(rewards, num_generations, lo=0.0, hi=1.0):
    """BNPO (Xiao et al.) for fixed G in eager torch: success rate p_g per group, Beta(alpha,
    beta) fitted to the p_g by moments (alpha = 1 + c m / 3, beta = 1 + c (1 - m) / 3,
    c = m (1 - m) / v - 1, both at least 1), A_i = (s_i - p_g) / BetaPDF(p_g), the weight
    clamped to [0, 1e6]."""
    s = ((rewards - lo) / (hi - lo)).clamp(0, 1).view(-1, num_generations)
    p = s.mean(1)
    m, v = p.mean(), p.var()
    c = m * (1 - m) / v - 1
    a = (1 + c * m / 3).clamp(min=1.0)
    b = (1 + c * (1 - m) / 3).clamp(min=1.0)
    log_pdf = torch.xlogy(a - 1, p) + torch.xlogy(b - 1, 1 - p) - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))
    w = torch.exp(-log_pdf).clamp(0.0, 1e6)
    return (w[:, None] * (s - p[:, None])).flatten()
