"""Float64-capable torch reference of ``group_advantages`` (docs/advantages.md#formula-and-options),
written to read like the math.

    A_i = (r_i - b_i) / (s_i + eps), then optionally whitened over the batch.

Every mean is taken *shifted by a member of its set* (the largest valid value of the group or
batch): mean = pivot + mean(r - pivot). When all values are equal, r - pivot is exactly 0, so
identical rewards give exactly A = 0 in any precision (docs/advantages.md#things-to-know:
peers leave a ~1e-2 residue).

Also home of the preset table (pure Python, shared by the ops and the tests).
"""
from __future__ import annotations

import math
import types
from typing import Callable

import torch

from icrm_kernels.reference.special import betaln

# the accepted values of each option (defined once, in icrm_kernels/vocab.py)
from icrm_kernels.vocab import (  # noqa: F401  (re-exported: ref.BASELINES, ...)
    AGGREGATIONS,
    BASELINES,
    NAN_POLICIES,
    SCALES,
    SINGLETONS,
    WHITEN_STDS,
    WHITENS,
)

# Library defaults (the GRPO of the DeepSeekMath paper with verl's eps): used where neither a
# keyword nor a preset sets an option.
DEFAULTS = dict(
    baseline="group_mean",
    scale="group_std",
    whiten="none",
    eps=1e-6,
    std_unbiased=True,
    singleton="zero",
    nan_policy="propagate",
    aggregation="sum_then_normalize",
    bnpo_bounds=(0.0, 1.0),
    whiten_eps=None,  # None: eps for whiten="sample", 1e-8 for whiten="token" (verl masked_whiten)
    whiten_std=None,  # None: "std_eps" for "sample", "rsqrt_eps" for "token"
)

# preset -> options. Each reproduces one peer function (see docs/advantages.md for versions).
# Read-only (wrapped below): the checked op caches validated options per preset, the direct
# launcher does not, so a mutated table would make the two paths disagree.
PRESETS = {
    # verl core_algos.compute_grpo_outcome_advantage (per-sample loop): eps 1e-6, torch.std
    # (unbiased); a singleton group gets mean 0 and std 1, so A = r / (1 + 1e-6).
    "verl_grpo": dict(baseline="group_mean", scale="group_std", eps=1e-6, std_unbiased=True, singleton="raw",
                      nan_policy="propagate", whiten="none"),
    # the same with norm_adv_by_std_in_grpo=False (Dr. GRPO): A = r - mean, singleton A = r.
    "verl_dr_grpo": dict(baseline="group_mean", scale="none", eps=1e-6, std_unbiased=True, singleton="raw",
                         nan_policy="propagate", whiten="none"),
    # verl compute_rloo_outcome_advantage: r*n/(n-1) - mean*n/(n-1); singleton keeps its raw score.
    "verl_rloo": dict(baseline="leave_one_out", scale="none", eps=1e-6, std_unbiased=True, singleton="raw",
                      nan_policy="propagate", whiten="none"),
    # verl compute_reinforce_plus_plus_baseline_outcome_advantage: group mean (singleton mean 0),
    # then masked_whiten over tokens: (A - mean) * rsqrt(var_unbiased + 1e-8).
    "verl_reinforce_pp_baseline": dict(baseline="group_mean", scale="none", eps=1e-6, std_unbiased=True,
                                       singleton="raw", nan_policy="propagate", whiten="token",
                                       whiten_eps=1e-8, whiten_std="rsqrt_eps"),
    # TRL GRPOTrainer: mean always per group, scale_rewards group / batch / none, eps 1e-4,
    # rewards nansum'd over reward functions (NaN rows omitted, A = 0), a group of one gets A = 0.
    "trl_group": dict(baseline="group_mean", scale="group_std", eps=1e-4, std_unbiased=True, singleton="zero",
                      nan_policy="omit", whiten="none"),
    "trl_batch": dict(baseline="group_mean", scale="batch_std", eps=1e-4, std_unbiased=True, singleton="zero",
                      nan_policy="omit", whiten="none"),
    "trl_none": dict(baseline="group_mean", scale="none", eps=1e-4, std_unbiased=True, singleton="zero",
                     nan_policy="omit", whiten="none"),
    # OpenRLHF experience maker, advantage_estimator="group_norm": (r - mean) / (std + 1e-9),
    # torch.std of one sample is NaN -> singleton NaN.
    "openrlhf_group_norm": dict(baseline="group_mean", scale="group_std", eps=1e-9, std_unbiased=True,
                                singleton="nan", nan_policy="propagate", whiten="none"),
    # OpenRLHF "rloo": r - (sum - r)/(n - 1); n = 1 divides 0 by 0 -> NaN.
    "openrlhf_rloo": dict(baseline="leave_one_out", scale="none", eps=1e-9, std_unbiased=True, singleton="nan",
                          nan_policy="propagate", whiten="none"),
    # OpenRLHF "reinforce_baseline": r - group mean (singleton 0), then global whitening with the
    # biased variance clamped at 1e-8: (A - mean) * rsqrt(clamp(var, 1e-8)).
    "openrlhf_reinforce_baseline": dict(baseline="group_mean", scale="none", eps=1e-9, std_unbiased=False,
                                        singleton="zero", nan_policy="propagate", whiten="sample",
                                        whiten_eps=1e-8, whiten_std="rsqrt_clamp"),
    # DLER: group mean, then batch whitening (A - mean) / (std_unbiased + 1e-6).
    "dler": dict(baseline="group_mean", scale="none", eps=1e-6, std_unbiased=True, singleton="zero",
                 nan_policy="propagate", whiten="sample", whiten_eps=1e-6, whiten_std="std_eps"),
    # BNPO original rules: singleton p = 0 (singleton="raw"), bounds (0, 1).
    "bnpo": dict(baseline="group_mean", scale="bnpo", eps=0.0, std_unbiased=True, singleton="raw",
                 nan_policy="propagate", whiten="none", bnpo_bounds=(0.0, 1.0)),
}
PRESETS = types.MappingProxyType({k: types.MappingProxyType(v) for k, v in PRESETS.items()})
DEFAULTS = types.MappingProxyType(DEFAULTS)
OPTION_NAMES = frozenset(DEFAULTS)


def resolve_options(preset=None, **given):
    """Options after applying ``preset``; explicit (non-None) keywords override preset values."""
    unknown = sorted(set(given) - OPTION_NAMES)
    if unknown:  # a misspelled option would otherwise be silently ignored
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))}; valid options: {sorted(OPTION_NAMES)}")
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    opts = dict(DEFAULTS)
    if preset is not None:
        opts.update(PRESETS[preset])
    for k, v in given.items():
        if v is not None:
            opts[k] = v
    if opts["whiten_std"] is None:
        opts["whiten_std"] = "rsqrt_eps" if opts["whiten"] == "token" else "std_eps"
    if opts["whiten_eps"] is None:
        opts["whiten_eps"] = 1e-8 if opts["whiten"] == "token" else opts["eps"]
    if opts["scale"] == "none":
        opts["eps"] = 0.0  # docs/advantages.md#formula-and-options: scale none means s = 1, eps = 0
    return opts


# ------------------------------------------------------------------------ moments
# A set of values is summarised by (W, mean, M2): total weight, mean and sum of weighted squared
# deviations. Summaries merge exactly (Chan et al.), which is how ranks combine.
def moments(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[3] = (W, mean, M2) of values x with weights w (w = 0 leaves a value out)."""
    used = w > 0
    W = w.sum()
    pivot = torch.where(used, x, torch.full_like(x, -math.inf)).amax() if x.numel() else x.new_zeros(())
    pivot = torch.where(torch.isfinite(pivot) | torch.isnan(pivot), pivot, torch.zeros_like(pivot))
    d = torch.where(used, x - pivot, torch.zeros_like(x))
    mean = pivot + (w * d).sum() / W
    # values holding +-inf have no finite mean: NaN, as the kernels' batch statistics give (every
    # row that uses it is NaN, whichever row held the inf)
    mean = torch.where(torch.isinf(mean), torch.full_like(mean, math.nan), mean)
    M2 = (w * torch.where(used, x - mean, torch.zeros_like(x)) ** 2).sum()
    return torch.stack([W, mean, M2])


def merge_moments(parts) -> torch.Tensor:
    """Merge (W, mean, M2) summaries in the given (fixed) order."""
    total = parts[0]
    for p in parts[1:]:
        W = total[0] + p[0]
        delta = p[1] - total[1]
        frac = torch.where(W > 0, p[0] / W, torch.zeros_like(W))
        mean = torch.where(total[0] > 0, total[1] + delta * frac, p[1])
        mean = torch.where(p[0] > 0, mean, total[1])
        both = (total[0] > 0) & (p[0] > 0)
        M2 = total[2] + p[2] + torch.where(both, delta * delta * total[0] * frac, torch.zeros_like(W))
        total = torch.stack([W, mean, M2])
    return total


def all_reduce_moments(m: torch.Tensor, process_group) -> torch.Tensor:
    """The batch summary over every rank (all-gather, then merge in rank order: deterministic)."""
    if process_group is None:
        return m
    import torch.distributed as dist

    parts = [torch.empty_like(m) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(parts, m.contiguous(), group=process_group)
    return merge_moments(parts)


def _var(m: torch.Tensor, unbiased: bool) -> torch.Tensor:
    return m[2] / (m[0] - 1) if unbiased else m[2] / m[0]


def whiten_values(a, w, *, eps, unbiased, form, reduce=lambda m: m):
    """(a - mean) scaled by the batch spread; weights w (0 = left out, stays 0)."""
    m = reduce(moments(a, w))
    var = _var(m, unbiased)
    if form == "std_eps":
        out = (a - m[1]) / (torch.sqrt(var) + eps)
    elif form == "rsqrt_eps":
        out = (a - m[1]) * torch.rsqrt(var + eps)
    else:  # rsqrt_clamp
        out = (a - m[1]) * torch.rsqrt(torch.clamp(var, min=eps))
    return torch.where(w > 0, out, torch.where(torch.isnan(a), a, torch.zeros_like(a)))


# ------------------------------------------------------------------------ one component
def group_stats(r, valid, gid, B):
    """Per group: n_g (valid rows), pivot_g, mean_g, M2_g; mean shifted by the group's max."""
    z = torch.zeros(B, dtype=r.dtype, device=r.device)
    n = z.index_add(0, gid, valid.to(r.dtype))
    pivot = z.scatter_reduce(0, gid, torch.where(valid, r, torch.full_like(r, -math.inf)), "amax", include_self=False)
    pivot = torch.where(n > 0, pivot, z)
    d = torch.where(valid, r - pivot[gid], torch.zeros_like(r))
    S1 = z.index_add(0, gid, d)
    mean = pivot + S1 / n
    M2 = z.index_add(0, gid, torch.where(valid, r - mean[gid], torch.zeros_like(r)) ** 2)
    return n, pivot, S1, mean, M2


def normalize_one(r, gid, B, o, *, reduce=lambda m: m):
    """Group-normalize one reward component r[N] (no whitening): A = (r - b) / (s + eps)."""
    omit = o["nan_policy"] == "omit"
    valid = ~torch.isnan(r) if omit else torch.ones_like(r, dtype=torch.bool)
    n, pivot, S1, mean, M2 = group_stats(r, valid, gid, B)
    n_i = n[gid]
    single = n_i == 1
    group_level = o["baseline"] in ("group_mean", "leave_one_out") or o["scale"] == "group_std"
    raw = o["singleton"] == "raw"

    if o["scale"] == "bnpo":
        return bnpo_one(r, valid, gid, B, o, reduce=reduce)

    # baseline b_i
    if o["baseline"] == "none":
        b = torch.zeros_like(r)
    elif o["baseline"] == "group_mean":
        b = mean[gid]
    elif o["baseline"] == "leave_one_out":  # (sum_g r - r_i) / (n_g - 1), shifted by the pivot
        d_i = r - pivot[gid]
        b = pivot[gid] + (S1[gid] - d_i) / torch.where(single, torch.ones_like(n_i), n_i - 1)
    else:  # batch_mean over every valid row
        b = reduce(moments(r, valid.to(r.dtype)))[1].expand_as(r)
    if raw and o["baseline"] in ("group_mean", "leave_one_out"):
        b = torch.where(single, torch.zeros_like(b), b)  # verl: a singleton's mean is 0

    # scale s_i
    if o["scale"] == "none":
        s = torch.ones_like(r)
    elif o["scale"] == "group_std":
        one = torch.ones_like(n)
        var = M2 / torch.where(n > 1, n - 1, one) if o["std_unbiased"] else M2 / torch.where(n > 0, n, one)
        s = torch.sqrt(torch.where(n > 1, var, one))[gid]  # singletons: the rule below decides their A
        if raw:
            s = torch.where(single, torch.ones_like(s), s)  # verl: a singleton's std is 1
    else:  # batch_std of the raw rewards
        s = torch.sqrt(_var(reduce(moments(r, valid.to(r.dtype))), o["std_unbiased"])).expand_as(r)

    A = (r - b) / (s + o["eps"])
    if group_level:
        # a group holding +-inf has no finite mean: every A of it is NaN, whichever row holds the
        # inf (decided on the group's mean, as the kernels do); singletons keep their own rule below
        A = torch.where(~torch.isfinite(mean[gid]) & ~single, torch.full_like(A, math.nan), A)
    if group_level and o["singleton"] == "zero":
        A = torch.where(single, torch.zeros_like(A), A)
    elif group_level and o["singleton"] == "nan":
        A = torch.where(single, torch.full_like(A, math.nan), A)
    return torch.where(valid, A, torch.zeros_like(A))


def bnpo_one(r, valid, gid, B, o, *, reduce=lambda m: m):
    """BNPO: A_i = w_g (s_i - p_g), w_g = clamp(1 / BetaPDF(p_g; alpha, beta), 0, 1e6)."""
    lo, hi = o["bnpo_bounds"]
    s = torch.clamp((r - lo) / (hi - lo), 0.0, 1.0)
    s = torch.where(torch.isnan(r), r, s)  # clamp would keep NaN anyway; explicit
    n, pivot, S1, p, M2 = group_stats(s, valid, gid, B)
    single_g = n == 1
    raw = o["singleton"] == "raw"
    if raw:
        p = torch.where(single_g, torch.zeros_like(p), p)  # original code: p = 0 for a singleton
    in_stats = (n > 0) & (raw | ~single_g)
    m = reduce(moments(torch.where(in_stats, p, torch.zeros_like(p)), in_stats.to(p.dtype)))
    one_group = m[0] <= 1
    mean = torch.where(one_group, torch.zeros_like(m[1]), m[1])
    v = torch.where(one_group, torch.ones_like(m[2]), m[2] / (m[0] - 1))
    c = mean * (1 - mean) / v - 1
    alpha = torch.clamp(1 + c * mean / 3, min=1.0)
    beta = torch.clamp(1 + c * (1 - mean) / 3, min=1.0)
    # guard "v = 0", decided as csrc/advantages.cpp (bnpo_degenerate) and the Triton kernel do:
    # p_g carry rounding noise (equal success rates k/G can differ by an ulp), so v is taken as 0
    # when c = mean (1 - mean) / v - 1 would exceed ~1e12; a NaN v compares false and propagates
    degenerate = v <= 1e-12 * (mean * (1 - mean))
    alpha = torch.where(degenerate, torch.ones_like(alpha), alpha)  # uniform weights
    beta = torch.where(degenerate, torch.ones_like(beta), beta)
    log_pdf = torch.xlogy(alpha - 1, p) + torch.xlogy(beta - 1, 1 - p) - betaln(alpha, beta)
    w = torch.clamp(torch.exp(-log_pdf), 0.0, 1e6)
    A = w[gid] * (s - p[gid])
    single = single_g[gid]
    if o["singleton"] == "zero":
        A = torch.where(single, torch.zeros_like(A), A)
    elif o["singleton"] == "nan":
        A = torch.where(single, torch.full_like(A, math.nan), A)
    return torch.where(valid, A, torch.zeros_like(A))


# ------------------------------------------------------------------------ full op
def group_ids(n, device, *, group_size=None, cu_groups=None, group_index=None):
    """(gid[N] dense group number of each row, number of group slots)."""
    from icrm_kernels._layout import resolve_groups

    with_checks = resolve_groups(n, device, group_size=group_size, cu_groups=cu_groups, group_index=group_index)
    return with_checks.group_of_row(), max(with_checks.max_groups, 1)


def group_advantages_reference(
    rewards,
    *,
    group_size=None,
    cu_groups=None,
    group_index=None,
    baseline=None,
    scale=None,
    whiten=None,
    eps=None,
    std_unbiased=None,
    singleton=None,
    nan_policy=None,
    reward_weights=None,
    aggregation=None,
    response_mask=None,
    process_group=None,
    preset=None,
    bnpo_bounds=None,
    whiten_eps=None,
    whiten_std=None,
):
    """The math of docs/advantages.md in plain torch (any float dtype; computes in rewards' dtype)."""
    o = resolve_options(preset, baseline=baseline, scale=scale, whiten=whiten, eps=eps, std_unbiased=std_unbiased,
                        singleton=singleton, nan_policy=nan_policy, aggregation=aggregation,
                        bnpo_bounds=bnpo_bounds, whiten_eps=whiten_eps, whiten_std=whiten_std)
    reduce: Callable = lambda m: all_reduce_moments(m, process_group)  # noqa: E731
    R = rewards if rewards.dim() == 2 else rewards.unsqueeze(1)
    N, K = R.shape
    gid, B = group_ids(N, R.device, group_size=group_size, cu_groups=cu_groups, group_index=group_index)
    w = torch.ones(K, dtype=R.dtype, device=R.device) if reward_weights is None else reward_weights.to(R.dtype)
    omit = o["nan_policy"] == "omit"
    row_nan = torch.isnan(R).all(1) if omit else torch.isnan(R).any(1)

    if o["scale"] == "bnpo":  # each component separately, then the weighted mean of the K advantages
        A = sum(w[k] * normalize_one(R[:, k], gid, B, o, reduce=reduce) for k in range(K)) / w.sum()
    elif K == 1 or o["aggregation"] == "sum_then_normalize":
        r = (R * w).nansum(1) if omit else (R * w).sum(1)
        r = torch.where(row_nan, torch.full_like(r, math.nan), r)
        A = normalize_one(r, gid, B, o, reduce=reduce)
    else:  # normalize_then_sum (TRL GDPO): per component, weighted sum, then batch normalization
        A = sum(w[k] * normalize_one(R[:, k], gid, B, o, reduce=reduce) for k in range(K))
        keep = (~row_nan).to(A.dtype) if omit else torch.ones_like(A)  # propagate: a NaN poisons the batch
        A = whiten_values(A, keep, eps=o["eps"], unbiased=o["std_unbiased"], form="std_eps", reduce=reduce)

    if o["whiten"] != "none":
        keep = (~row_nan).to(A.dtype) if omit else torch.ones_like(A)
        if o["whiten"] == "token":
            keep = keep * response_mask.to(A.dtype).sum(1)
        A = whiten_values(A, keep, eps=o["whiten_eps"], unbiased=o["std_unbiased"], form=o["whiten_std"], reduce=reduce)
    if response_mask is not None:
        return A.unsqueeze(1) * response_mask.to(A.dtype)
    return A
