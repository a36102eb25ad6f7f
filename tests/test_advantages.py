"""group_advantages (docs/advantages.md): every option, layout and preset against the float64
reference on every backend, each preset against its peer's formula written out, edge cases and bad inputs.

Inputs are fresh random tensors each run; failures print the seed (assert_matches_reference)
or the inputs.
"""
from collections import defaultdict

import pytest
import torch

import icrm_kernels as ik
from icrm_kernels import group_advantages
from icrm_kernels.reference.advantages import PRESETS, group_advantages_reference
from icrm_kernels.testing import assert_close, assert_matches_reference, fresh_seed

SEED = fresh_seed()
torch.manual_seed(SEED)
print(f"test_advantages: torch.manual_seed({SEED})")


def _rand(*shape, device="cpu", dtype=torch.float32):
    return torch.randn(*shape, device=device).to(dtype)


def _layout(kind, n, device, g=4):
    """Layout kwargs with a singleton group in the ragged and index layouts."""
    if kind == "fixed":
        return dict(group_size=g)
    if kind == "ragged":
        cuts = sorted(torch.randperm(n - 2)[:3].add(1).tolist())
        cu = [0, 1] + [c + 1 for c in cuts] + [n]  # group 0 is a singleton
        return dict(cu_groups=torch.tensor(sorted(set(cu)), device=device))
    ids = torch.randint(0, 5, (n,), device=device) * 7 - 3  # unsorted, negative ids, gaps
    ids[0] = 1000  # a singleton
    return dict(group_index=ids)


OPTION_SETS = [
    dict(baseline="group_mean", scale="group_std"),
    dict(baseline="leave_one_out", scale="none", singleton="raw"),
    dict(baseline="batch_mean", scale="batch_std", std_unbiased=False),
    dict(baseline="none", scale="group_std", singleton="nan", eps=1e-3),
    dict(baseline="group_mean", scale="batch_std", whiten="sample"),
    dict(baseline="group_mean", scale="group_std", singleton="raw", whiten="sample", whiten_std="rsqrt_clamp",
         whiten_eps=1e-8, std_unbiased=False),
    dict(baseline="group_mean", scale="bnpo", singleton="zero", bnpo_bounds=(-3.0, 3.0)),
    dict(baseline="group_mean", scale="bnpo", singleton="raw", bnpo_bounds=(-2.0, 2.0), whiten="sample"),
    dict(baseline="group_mean", scale="bnpo", singleton="nan", bnpo_bounds=(-1.0, 1.0)),
]


@pytest.mark.parametrize("layout", ["fixed", "ragged", "index"])
@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_options_match_reference(backend, device, layout, opts):
    n = 24
    r = _rand(n, device=device)
    assert_matches_reference(group_advantages, group_advantages_reference,
                             dict(rewards=r, **_layout(layout, n, device), **opts))


@pytest.mark.parametrize("nan_policy", ["propagate", "omit"])
@pytest.mark.parametrize("layout", ["fixed", "index"])
def test_nan_policies(backend, device, layout, nan_policy):
    n = 24
    r = _rand(n, device=device)
    r[[2, 13]] = float("nan")
    for opts in (dict(baseline="group_mean", scale="group_std"), dict(baseline="group_mean", scale="batch_std"),
                 dict(baseline="leave_one_out", scale="none", whiten="sample")):
        out = assert_matches_reference(group_advantages, group_advantages_reference,
                                       dict(rewards=r, nan_policy=nan_policy, **_layout(layout, n, device),
                                            **opts))["out"]
        if nan_policy == "omit":
            assert torch.isfinite(out).all() and out[2] == 0 and out[13] == 0
        else:
            assert torch.isnan(out).any()


def _inf_groups(device, layout):
    """Rewards in groups of 4 where groups 0-4 hold +-inf at different rows (first, later, -inf
    first, -inf last, both signs) and groups 5-7 are finite, group 5 with a NaN row; ragged and
    index layouts add a singleton +inf group. Returns (rewards, layout kwargs, group of each row)."""
    r = torch.randn(8, 4, dtype=torch.float64)
    inf = float("inf")
    r[0, 0], r[1, 2], r[2, 0], r[3, 3] = inf, inf, -inf, -inf
    r[4, 1], r[4, 3] = inf, -inf
    r[5, 1] = float("nan")
    r, gid = r.flatten(), torch.arange(8).repeat_interleave(4)
    if layout == "fixed":
        return r.to(device), dict(group_size=4), gid
    r, gid = torch.cat([r, torch.tensor([inf], dtype=torch.float64)]), torch.cat([gid, torch.tensor([8])])
    if layout == "ragged":
        return r.to(device), dict(cu_groups=torch.arange(0, 33, 4).tolist() + [33]), gid
    perm = torch.randperm(r.numel())
    ids = gid[perm] * 5 - 7  # unsorted, negative ids
    return r[perm].to(device), dict(group_index=ids.to(device)), gid[perm]


@pytest.mark.parametrize("nan_policy", ["propagate", "omit"])
@pytest.mark.parametrize("layout", ["fixed", "ragged", "index"])
def test_inf_reward_makes_its_group_nan(backend, device, layout, nan_policy):
    """docs/advantages.md: a group holding +-inf has no finite mean, so every A of it is NaN,
    wherever the inf sits and whatever its sign (the C++ kernels used to give -inf to the rows
    after an inf and NaN when the inf was the group's first row). A singleton keeps its rule (raw:
    inf / (1 + eps)); the finite groups are untouched. Batch statistics have no finite mean either:
    every row is NaN. Same values as the float64 reference."""
    r, lay, gid = _inf_groups(device, layout)
    if "cu_groups" in lay:
        lay = dict(cu_groups=torch.tensor(lay["cu_groups"], device=device))
    for opts in (dict(baseline="group_mean", scale="none"), dict(baseline="leave_one_out", scale="none"),
                 dict(baseline="group_mean", scale="group_std"), dict(baseline="none", scale="group_std"),
                 dict(baseline="group_mean", scale="none", singleton="raw"),
                 dict(baseline="group_mean", scale="none", whiten="sample"),
                 dict(baseline="batch_mean", scale="none"), dict(baseline="group_mean", scale="batch_std")):
        for dtype in (torch.float32, torch.float64):
            x = r.to(dtype)
            out = assert_matches_reference(group_advantages, group_advantages_reference,
                                           dict(rewards=x, nan_policy=nan_policy, **lay, **opts))["out"].cpu()
            g = gid.cpu()
            if opts.get("whiten") or "batch" in opts["baseline"] + opts["scale"]:
                # the batch's moments see the inf: every row is NaN (omitted rows keep 0)
                kept = ~x.cpu().isnan() if nan_policy == "omit" else torch.ones_like(out, dtype=torch.bool)
                grouped = gid.cpu() < 8  # (the singleton follows its rule: 0 with a group-level baseline)
                assert out[kept & grouped].isnan().all() and (out[~kept] == 0).all(), (opts, dtype)
                continue
            assert out[g < 5].isnan().all(), (opts, dtype, out)
            finite = out[(g >= 5) & (g < 8)]
            if nan_policy == "omit":
                assert finite.isfinite().all(), (opts, dtype, out)
            else:
                assert out[g == 5].isnan().all() and out[(g >= 6) & (g < 8)].isfinite().all(), (opts, dtype)
            if layout != "fixed":  # the singleton +inf group
                want = float("inf") if opts.get("singleton") == "raw" and opts["baseline"] != "none" else None
                if want is not None:
                    assert out[g == 8].item() == want, (opts, dtype)


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
@pytest.mark.parametrize("nan_policy", ["propagate", "omit"])
def test_multi_component(backend, device, aggregation, nan_policy):
    n, k = 16, 3
    r = _rand(n, k, device=device)
    r[3, 1] = float("nan")  # one component: nansum'd under omit
    if nan_policy == "omit":
        r[9, :] = float("nan")  # every component: the row is omitted
    w = torch.rand(k, device=device) + 0.5
    out = assert_matches_reference(group_advantages, group_advantages_reference,
                                   dict(rewards=r, group_size=4, reward_weights=w, aggregation=aggregation,
                                        nan_policy=nan_policy, scale="group_std"))["out"]
    assert_matches_reference(group_advantages, group_advantages_reference,
                             dict(rewards=r, group_size=4, reward_weights=w, aggregation=aggregation,
                                  nan_policy=nan_policy, whiten="sample", baseline="leave_one_out", scale="none"))
    if nan_policy == "omit":
        assert out[9] == 0 and torch.isfinite(out).all()


def test_single_component_with_weight(backend, device):
    r = _rand(16, 1, device=device)
    for preset in ("verl_grpo", "trl_batch", "bnpo"):
        rr = (r > 0).float() if preset == "bnpo" else r
        assert_matches_reference(group_advantages, group_advantages_reference,
                                 dict(rewards=rr, group_size=4, reward_weights=torch.tensor([2.5], device=device),
                                      preset=preset, scale="none" if preset == "trl_batch" else None))


def test_multi_component_bnpo(backend, device):
    r = (torch.rand(16, 2, device=device) > 0.5).float()
    assert_matches_reference(group_advantages, group_advantages_reference,
                             dict(rewards=r, group_size=4, preset="bnpo"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_match_reference(backend, device, preset):
    n, t = 24, 6
    r = (torch.rand(n, device=device) > 0.5).float() if preset == "bnpo" else _rand(n, device=device)
    kw = dict(rewards=r, preset=preset, **_layout("ragged", n, device))
    if preset == "verl_reinforce_pp_baseline":
        kw["response_mask"] = torch.rand(n, t, device=device) > 0.4
    assert_matches_reference(group_advantages, group_advantages_reference, kw)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
@pytest.mark.parametrize("whiten", ["none", "sample", "token"])
def test_token_broadcast(backend, device, mask_dtype, whiten):
    n, t = 16, 7
    r = _rand(n, device=device)
    mask = (torch.rand(n, t, device=device) > 0.3).to(mask_dtype)
    out = assert_matches_reference(group_advantages, group_advantages_reference,
                                   dict(rewards=r, group_size=4, response_mask=mask, whiten=whiten))["out"]
    assert out.shape == (n, t)
    assert (out[mask == 0] == 0).all()
    if whiten == "none":
        flat = group_advantages(r, group_size=4)
        assert_close(out, flat[:, None] * mask.float(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("preset", ["verl_grpo", "verl_reinforce_pp_baseline", "bnpo"])
def test_long_responses(backend, device, preset):
    # T long enough that the kernels split the tokens of a row over several programs
    n, t = 8, 300
    r = (torch.rand(n, device=device) > 0.5).float() if preset == "bnpo" else _rand(n, device=device)
    mask = torch.rand(n, t, device=device) > 0.2
    assert_matches_reference(group_advantages, group_advantages_reference,
                             dict(rewards=r, group_size=4, response_mask=mask, preset=preset))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(backend, device, dtype):
    r = _rand(32, device=device, dtype=dtype)
    out = assert_matches_reference(group_advantages, group_advantages_reference,
                                   dict(rewards=r, group_size=8, preset="verl_grpo"), dtype=dtype)["out"]
    assert out.dtype == dtype


def test_float64(backend, device):
    r = _rand(24, device=device, dtype=torch.float64)
    assert_matches_reference(group_advantages, group_advantages_reference,
                             dict(rewards=r, group_size=4, baseline="group_mean", scale="batch_std", whiten="sample"))


def test_float32_batch_mean_and_whitening_near_a_large_mean(backend, device):
    """Rewards 1000 +- 1e-3 in float32: every path centres on a batch mean kept in float64 and
    split in two floats, (v - hi) - lo, and stays within a few ulps of the float64 reference
    (rounding the mean to float32, as the float32 torch formula does, costs ulp(1000) / std =
    3e-2 here). C++: a spread whose reciprocal leaves float32's normal range (whiten_eps = 0 over
    subnormal rewards, or |r| ~ 1e38) is whitened in double."""
    r = (1000 + 1e-3 * torch.randn(4096, device=device, dtype=torch.float64)).float()
    for kw in (dict(baseline="none", scale="none", whiten="sample"), dict(baseline="batch_mean", scale="batch_std"),
               dict(preset="trl_batch")):
        out = group_advantages(r, group_size=4, **kw)
        ref = group_advantages_reference(r.double(), group_size=4, **kw)
        assert_close(out, ref, atol=1e-6, rtol=4 * 2.0 ** -24, what=f"{kw}")
    if backend != "cpp":
        return
    kw = dict(group_size=4, baseline="none", scale="none", whiten="sample", whiten_eps=0.0)
    for r in (torch.randint(1, 9, (64,), device=device).float() * 1e-45,
              torch.randn(64, device=device).clamp(-3, 3) * 1e38):
        out = group_advantages(r, **kw)
        assert bool(out.isfinite().all())
        assert_close(out, group_advantages_reference(r.double(), **kw), atol=1e-6, rtol=4 * 2.0 ** -24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identical_rewards_exactly_zero(backend, device, dtype):
    n = 24
    base = torch.tensor([0.1, 0.7, 1.3, 1e3 / 3, -2.2, 0.3], device=device)
    r = base.repeat_interleave(4).to(dtype)  # each group of 4 identical, groups differ
    for preset in sorted(PRESETS):
        rr = (r > 0.5).to(dtype) if preset == "bnpo" else r
        kw = dict(group_size=4, preset=preset)
        if preset == "verl_reinforce_pp_baseline":
            kw["response_mask"] = torch.ones(n, 3, dtype=torch.bool, device=device)
        out = group_advantages(rr, **kw)
        if PRESETS[preset]["whiten"] == "none":
            assert (out == 0).all(), (preset, out)
        # whitening presets: the whole batch identical gives 0 too
        same = torch.full((n,), 0.1, device=device, dtype=dtype)
        assert (group_advantages(same, **kw) == 0).all(), preset
    for opts in (dict(baseline="leave_one_out", scale="group_std"), dict(baseline="batch_mean", scale="batch_std")):
        same = torch.full((n,), 1 / 3, device=device, dtype=dtype)
        assert (group_advantages(same, group_size=4, **opts) == 0).all(), opts


def test_gradients(device):
    r = _rand(24, device=device)
    for kw in (dict(group_size=4, preset="verl_grpo"), dict(group_size=4, preset="dler"),
               dict(group_size=4, baseline="batch_mean", scale="batch_std")):
        assert_matches_reference(group_advantages, group_advantages_reference, dict(rewards=r, **kw), grad=["rewards"])


def test_empty(backend, device):
    r = torch.empty(0, device=device)
    assert group_advantages(r, group_size=4).shape == (0,)
    assert group_advantages(r, cu_groups=torch.zeros(1, dtype=torch.int64, device=device)).shape == (0,)
    assert group_advantages(r, group_index=torch.empty(0, dtype=torch.int64, device=device)).shape == (0,)


def test_singletons(backend, device):
    r = _rand(6, device=device)
    cu = torch.tensor([0, 1, 4, 5, 6], device=device)
    out = group_advantages(r, cu_groups=cu, singleton="zero")
    assert out[0] == 0 and out[4] == 0 and out[5] == 0
    out = group_advantages(r, cu_groups=cu, singleton="nan")
    assert torch.isnan(out[[0, 4, 5]]).all() and torch.isfinite(out[1:4]).all()
    out = group_advantages(r, cu_groups=cu, preset="verl_rloo")
    assert out[0] == r[0]
    out = group_advantages(r, cu_groups=cu, preset="verl_grpo")
    torch.testing.assert_close(out[0], r[0] / (1 + 1e-6))


def test_unsorted_ids_and_noncontiguous(backend, device):
    n = 24
    r = _rand(n, 2, device=device)[:, 0]  # non-contiguous
    assert not r.is_contiguous()
    ids = torch.arange(n, device=device) // 4
    perm = torch.randperm(n, device=device)
    a = group_advantages(r, group_size=4, preset="trl_group")
    b = group_advantages(r[perm], group_index=ids[perm] * 13 + 5, preset="trl_group")
    assert_close(b, a[perm], atol=1e-6, rtol=1e-5)
    wide = ids[perm] * 10**12 - 7  # ids spanning a wide range (the C++ path sorts instead of counting)
    assert_close(group_advantages(r[perm], group_index=wide, preset="trl_group"), a[perm], atol=1e-6, rtol=1e-5)
    assert_close(group_advantages(r[perm], group_index=ids[perm].int(), preset="trl_group"), a[perm], atol=1e-6,
                 rtol=1e-5)


def test_int32_offsets_and_int64_index_math(backend, device):
    r = _rand(12, device=device)
    cu32 = torch.tensor([0, 3, 7, 12], dtype=torch.int32, device=device)
    a = group_advantages(r, cu_groups=cu32)
    b = group_advantages(r, cu_groups=cu32.long())
    assert torch.equal(a, b)


def test_kernel_offsets_are_int64():
    pytest.importorskip("triton")
    from icrm_kernels.triton.advantages import AOT_SPECS

    for spec in AOT_SPECS:
        for name in ("num_groups", "n", "T", "stride_mask", "G"):
            if name in spec.signature:
                assert spec.signature[name] == "i64", (spec.name, name)
        if "cu_ptr" in spec.signature:
            assert spec.signature["cu_ptr"] == "*i64"


def test_deterministic(backend, device):
    r = _rand(64, device=device)
    kw = dict(group_index=torch.randint(0, 9, (64,), device=device), baseline="group_mean", scale="batch_std",
              whiten="sample")
    assert torch.equal(group_advantages(r, **kw), group_advantages(r, **kw))


def test_explicit_keyword_overrides_preset(device):
    r = _rand(16, device=device)
    a = group_advantages(r, group_size=4, preset="verl_grpo", eps=0.5)
    b = group_advantages(r, group_size=4, baseline="group_mean", scale="group_std", eps=0.5, singleton="raw")
    assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_bnpo_rules(device):
    # v = 0 (every group has the same p): alpha = beta = 1, w = 1, A = s - p
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0], device=device)
    out = group_advantages(r, group_size=4, preset="bnpo")
    assert_close(out, r - 0.5, atol=1e-6, rtol=0)
    # one group: m = 0, v = 1 -> c = -1, alpha = 1, beta = max(1 - 1/3, 1) = 1
    out = group_advantages(r[:4], group_size=4, preset="bnpo")
    assert_close(out, r[:4] - 0.5, atol=1e-6, rtol=0)
    # bounds: rewards in [0, 10] scaled to [0, 1]
    r10 = torch.rand(16, device=device) * 10
    assert_close(group_advantages(r10, group_size=4, preset="bnpo", bnpo_bounds=(0.0, 10.0)),
                 group_advantages(r10 / 10, group_size=4, preset="bnpo"), atol=1e-5, rtol=1e-5)
    # the original code's singleton p = 0: A = w * s
    r1 = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0], device=device)
    out = group_advantages(r1, cu_groups=torch.tensor([0, 1, 3, 5], device=device), preset="bnpo")
    assert out[0] > 0
    assert group_advantages(r1, cu_groups=torch.tensor([0, 1, 3, 5], device=device), preset="bnpo",
                            singleton="zero")[0] == 0


# ------------------------------------------------------------------------ presets vs peers
def verl_grpo_loop(scores, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True):
    scores = scores.clone()
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    for i in range(len(scores)):
        id2score[index[i]].append(scores[i])
    for idx in id2score:
        if len(id2score[idx]) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            t = torch.stack(id2score[idx])
            id2mean[idx], id2std[idx] = torch.mean(t), torch.std(t)
    for i in range(len(scores)):
        if norm_adv_by_std_in_grpo:
            scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
        else:
            scores[i] = scores[i] - id2mean[index[i]]
    return scores


def verl_rloo_loop(scores, index):
    scores = scores.clone()
    id2score, id2mean = defaultdict(list), {}
    for i in range(len(scores)):
        id2score[index[i]].append(scores[i])
    for idx in id2score:
        id2mean[idx] = torch.tensor(0.0) if len(id2score[idx]) == 1 else torch.mean(torch.stack(id2score[idx]))
    for i in range(len(scores)):
        n = len(id2score[index[i]])
        if n > 1:
            scores[i] = scores[i] * n / (n - 1) - id2mean[index[i]] * n / (n - 1)
    return scores


def verl_reinforce_pp_baseline(scores, index, mask):
    scores = verl_grpo_loop(scores, index, norm_adv_by_std_in_grpo=False)
    values = scores.unsqueeze(-1).tile([1, mask.shape[1]]) * mask
    m = mask.to(values.dtype)
    mean = (values * m).sum() / m.sum()
    var = (((values - mean) ** 2) * m).sum() / m.sum() * (m.sum() / (m.sum() - 1))
    return (values - mean) * torch.rsqrt(var + 1e-8) * m


def trl(rewards_per_func, weights, G, scale_rewards):
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    mean = rewards.view(-1, G).mean(dim=1).repeat_interleave(G, dim=0)
    if scale_rewards in ("group", "none"):
        std = rewards.view(-1, G).std(dim=1).repeat_interleave(G, dim=0)
    else:
        std = rewards.std().expand_as(rewards)
    adv = rewards - mean
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return adv


def openrlhf(r, G, estimator):
    r = r.reshape(-1, G)
    if estimator == "group_norm":
        out = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-9)
    elif estimator == "rloo":
        out = r - (r.sum(-1, keepdim=True) - r) / (G - 1)
    else:  # reinforce_baseline, then global whitening with the biased var clamped at 1e-8
        a = (r - r.mean(-1, keepdim=True)).flatten()
        mean = a.mean()
        var = ((a - mean) ** 2).mean()
        return (a - mean) * var.clamp(min=1e-8).rsqrt()
    return out.flatten()


def dler(r, G):
    a = (r.reshape(-1, G) - r.reshape(-1, G).mean(-1, keepdim=True)).flatten()
    return (a - a.mean()) / (a.std() + 1e-6)


def bnpo_original(r, G):
    p = r.reshape(-1, G).mean(-1)
    m, v = p.mean(), p.var()
    if v == 0:
        a = b = torch.tensor(1.0, dtype=r.dtype)
    else:
        c = m * (1 - m) / v - 1
        a = torch.clamp(1 + c * m / 3, min=1.0)
        b = torch.clamp(1 + c * (1 - m) / 3, min=1.0)
    pdf = torch.exp(torch.distributions.Beta(a, b).log_prob(p.clamp(1e-12, 1 - 1e-12)))
    w = torch.clamp(1 / pdf, 0, 1e6)
    return (w[:, None] * (r.reshape(-1, G) - p[:, None])).flatten()


def _peer_inputs(n, G, device):
    r = torch.randn(n, dtype=torch.float64)
    ids = torch.arange(n) // G
    return r, ids


@pytest.mark.parametrize("preset", ["verl_grpo", "verl_dr_grpo", "verl_rloo"])
def test_verl_presets_vs_peer(device, preset):
    n = 21
    r = torch.randn(n, dtype=torch.float64)
    ids = torch.randint(0, 6, (n,))
    ids[0] = 99  # a singleton: the loop keeps mean 0 / std 1
    ids_list = ids.tolist()
    if preset == "verl_rloo":
        expect = verl_rloo_loop(r, ids_list)
    else:
        expect = verl_grpo_loop(r, ids_list, norm_adv_by_std_in_grpo=preset == "verl_grpo")
    out = group_advantages(r.float().to(device), group_index=ids.to(device), preset=preset)
    assert_close(out, expect, atol=2e-5, rtol=2e-5, what=preset)


def test_verl_reinforce_pp_vs_peer(device):
    n, t = 16, 9
    r = torch.randn(n, dtype=torch.float64)
    ids = torch.randint(0, 5, (n,))
    mask = torch.rand(n, t) > 0.3
    expect = verl_reinforce_pp_baseline(r, ids.tolist(), mask)
    out = group_advantages(r.float().to(device), group_index=ids.to(device), response_mask=mask.to(device),
                           preset="verl_reinforce_pp_baseline")
    assert_close(out, expect, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_trl_presets_vs_peer(device, scale):
    n, k, G = 24, 3, 4
    rpf = torch.randn(n, k, dtype=torch.float64)
    rpf[[1, 7, 18], [0, 2, 1]] = float("nan")  # a reward function returned None for some rows
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    expect = trl(rpf, w, G, scale)
    out = group_advantages(rpf.float().to(device), group_size=G, reward_weights=w.float().to(device),
                           preset=f"trl_{scale}")
    assert_close(out, expect, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("estimator", ["group_norm", "rloo", "reinforce_baseline"])
def test_openrlhf_presets_vs_peer(device, estimator):
    G = 4
    r = torch.randn(24, dtype=torch.float64)
    out = group_advantages(r.float().to(device), group_size=G, preset=f"openrlhf_{estimator}")
    assert_close(out, openrlhf(r, G, estimator), atol=2e-5, rtol=2e-5)


def test_dler_vs_peer(device):
    r = torch.randn(24, dtype=torch.float64)
    out = group_advantages(r.float().to(device), group_size=6, preset="dler")
    assert_close(out, dler(r, 6), atol=2e-5, rtol=2e-5)


def test_bnpo_vs_peer(device):
    r = (torch.rand(32) > 0.4).double()
    r[:8] = torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 1])  # some spread of p over groups
    out = group_advantages(r.float().to(device), group_size=8, preset="bnpo")
    assert_close(out, bnpo_original(r, 8), atol=1e-4, rtol=1e-4)
    same = torch.tensor([1.0, 0, 1, 0] * 4, dtype=torch.float64)  # v = 0 guard
    assert_close(group_advantages(same.float().to(device), group_size=4, preset="bnpo"), bnpo_original(same, 4),
                 atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------ compile
def test_torch_compile_fullgraph():
    r = torch.randn(32)
    ids = torch.randint(0, 5, (32,))

    def f(r, ids):
        return group_advantages(r, group_index=ids, preset="verl_grpo") * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert_close(compiled(r, ids), f(r, ids), atol=1e-6, rtol=1e-6)

    def g(r):
        return group_advantages(r, group_size=4, preset="dler").sum()

    assert_close(torch.compile(g, fullgraph=True)(r), g(r), atol=1e-5, rtol=1e-5)


def test_options_cache_is_not_traced(monkeypatch):
    """Regression (H100 run, torch 2.11): Dynamo before 2.13 cannot trace ``hash`` of a tuple, so
    torch.compile(fullgraph=True) over group_advantages failed in the options cache. Under
    compile the options are validated without the cache."""
    from icrm_kernels.ops import advantages as ops_adv

    monkeypatch.setattr(ops_adv, "compiling", lambda: True)
    before = ops_adv._validated_options_cached.cache_info()
    o = ops_adv._options("verl_grpo", None, None, None, None, None, None, None, None, None, None, None)
    assert o["baseline"] == "group_mean" and o["scale"] == "group_std"
    assert ops_adv._validated_options_cached.cache_info() == before


def test_preset_only_options_are_fresh_copies():
    """The preset-alone lookup (host-time fast path) hands out copies: the public function
    rewrites nan_policy="raise" in its dict, which must not reach the next call."""
    import numpy as np

    from icrm_kernels.ops import advantages as ops_adv

    none11 = (None,) * 11
    a = ops_adv._options("trl_group", *none11)
    a["nan_policy"] = "propagate"
    assert ops_adv._options("trl_group", *none11)["nan_policy"] == "omit"
    assert ops_adv._options("trl_group", *none11) == ops_adv._validated_options("trl_group", *none11)
    with pytest.raises(ValueError, match="preset"):
        ops_adv._options("no_such_preset", *none11)
    # an option whose == raises (an array) takes the checked path and its message
    with pytest.raises((TypeError, ValueError), match="eps"):
        ops_adv._options("verl_grpo", None, None, None, np.array([1e-6, 1e-6]), *(None,) * 7)


# ------------------------------------------------------------------------ bad inputs
BAD = [
    (dict(rewards=torch.randn(2, 3, 4), group_size=2), ValueError, "rewards"),
    (dict(rewards=torch.arange(8), group_size=2), TypeError, "rewards"),
    (dict(rewards=[1.0, 2.0], group_size=2), TypeError, "rewards"),
    (dict(rewards=torch.randn(8)), ValueError, "group_size"),
    (dict(rewards=torch.randn(8), group_size=2, cu_groups=torch.tensor([0, 8])), ValueError, "exactly one"),
    (dict(rewards=torch.randn(8), group_size=0), ValueError, "group_size"),
    (dict(rewards=torch.randn(8), group_size=-2), ValueError, "group_size"),
    (dict(rewards=torch.randn(8), group_size=3), ValueError, "group_size"),
    (dict(rewards=torch.randn(8), group_size=2.0), TypeError, "group_size"),
    (dict(rewards=torch.randn(8), cu_groups=torch.tensor([1, 8])), ValueError, "cu_groups"),
    (dict(rewards=torch.randn(8), cu_groups=torch.tensor([0, 5, 3, 8])), ValueError, "cu_groups"),
    (dict(rewards=torch.randn(8), cu_groups=torch.tensor([0, 4, 7])), ValueError, "cu_groups"),
    (dict(rewards=torch.randn(8), cu_groups=torch.tensor([0.0, 8.0])), TypeError, "cu_groups"),
    (dict(rewards=torch.randn(8), group_index=torch.zeros(8)), TypeError, "group_index"),
    (dict(rewards=torch.randn(8), group_index=torch.zeros(7, dtype=torch.long)), ValueError, "group_index"),
    (dict(rewards=torch.randn(8), group_index=torch.zeros(8, 1, dtype=torch.long)), ValueError, "group_index"),
    (dict(rewards=torch.tensor([1.0, float("nan")]), group_size=2, nan_policy="raise"), ValueError, "NaN"),
    (dict(rewards=torch.randn(8), group_size=2, preset="grpo"), ValueError, "preset"),
    (dict(rewards=torch.randn(8), group_size=2, baseline="median"), ValueError, "baseline"),
    (dict(rewards=torch.randn(8), group_size=2, scale="mad"), ValueError, "scale"),
    (dict(rewards=torch.randn(8), group_size=2, whiten="all"), ValueError, "whiten"),
    (dict(rewards=torch.randn(8), group_size=2, singleton="one"), ValueError, "singleton"),
    (dict(rewards=torch.randn(8), group_size=2, nan_policy="ignore"), ValueError, "nan_policy"),
    (dict(rewards=torch.randn(8), group_size=2, aggregation="mean"), ValueError, "aggregation"),
    (dict(rewards=torch.randn(8), group_size=2, eps=-1.0), ValueError, "eps"),
    (dict(rewards=torch.randn(8), group_size=2, whiten="token"), ValueError, "response_mask"),
    (dict(rewards=torch.randn(8), group_size=2, response_mask=torch.ones(7, 3)), ValueError, "response_mask"),
    (dict(rewards=torch.randn(8), group_size=2, response_mask=torch.ones(8)), ValueError, "response_mask"),
    (dict(rewards=torch.randn(8, 2), group_size=2, reward_weights=torch.ones(3)), ValueError, "reward_weights"),
    (dict(rewards=torch.randn(8), group_size=2, scale="bnpo", baseline="none"), ValueError, "bnpo"),
    (dict(rewards=torch.randn(8), group_size=2, preset="bnpo", bnpo_bounds=(1.0, 0.0)), ValueError, "bnpo_bounds"),
    (dict(rewards=torch.randn(8), group_size=2, std_unbiased="yes"), TypeError, "std_unbiased"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD, ids=[f"{i}-{m}" for i, (_, _, m) in enumerate(BAD)])
def test_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        group_advantages(**kwargs)


def test_tensors_on_different_devices():
    r = torch.randn(8)
    ids = torch.zeros(8, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="group_index"):
        group_advantages(r, group_index=ids)


def test_direct_launcher(backend, device):
    r = _rand(24, device=device)
    mask = torch.rand(24, 5, device=device) > 0.3
    for kw in (dict(group_size=4, preset="verl_grpo"), dict(group_index=torch.randint(0, 4, (24,), device=device),
                                                             preset="verl_reinforce_pp_baseline", response_mask=mask)):
        assert_close(ik.group_advantages_direct(r, **kw), group_advantages(r, **kw), atol=1e-6, rtol=1e-6)


def test_unchecked_skips_value_checks():
    r = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    with ik.unchecked():
        out = group_advantages(r, group_size=2, nan_policy="raise")  # behaves as propagate
    assert torch.isnan(out[:2]).all() and torch.isfinite(out[2:]).all()


def test_eager_calls_without_grad_skip_the_dispatcher_with_the_same_result(backend, device):
    """No-grad eager calls run the op's implementation directly (_op.Op.__call__'s first test);
    calls that need a gradient, compile or trace go through the registered custom op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from icrm_kernels import _backend as be

    def skip_dispatcher(*tensors):  # the condition under which Op.__call__ runs the implementation
        return be._eager_mode(tensors) and not be._needs_grad(tensors)

    r = torch.randn(24, device=device)
    assert skip_dispatcher(r, None)
    rg = r.clone().requires_grad_(True)
    assert not skip_dispatcher(rg)
    with torch.no_grad():
        assert skip_dispatcher(rg)
    with FakeTensorMode():
        assert not skip_dispatcher(torch.empty(3))
    for preset in ("verl_grpo", "trl_batch", "dler", "bnpo"):
        fast = group_advantages(r.clamp(0, 1), group_size=4, preset=preset)
        through_op = group_advantages(rg.detach().clamp(0, 1).requires_grad_(True), group_size=4, preset=preset)
        assert through_op.requires_grad and not fast.requires_grad
        torch.testing.assert_close(fast, through_op.detach(), rtol=0, atol=0)


def _fixed_equals_ragged_bitwise(seed=0):
    """The C++ fixed-size lanes (G = 4, 8, 16: groups vectorized across) against the scalar
    per-group loop that the ragged layout runs, over the same groups: bitwise equal, for every
    baseline / scale / singleton / nan_policy / ddof and both dtypes, with NaNs, all-NaN groups,
    single valid rows and identical rewards, B not a multiple of the 64-group block; and BNPO's
    two passes, binary and [0, 1] rewards."""
    gen = torch.Generator().manual_seed(seed)
    with ik.use_backend("cpp"):
        for g in (4, 8, 16):
            b = 2 * 64 + 37
            base = torch.randn(b * g, generator=gen, dtype=torch.float64) * 3
            base[torch.rand(b * g, generator=gen) < 0.15] = float("nan")
            base.view(b, g)[5] = float("nan")  # all NaN
            base.view(b, g)[6, 1:] = float("nan")  # one valid row
            base.view(b, g)[7] = 0.7  # identical rewards
            base.view(b, g)[8, :-1] = float("nan")  # one valid row, last
            cu = torch.arange(b + 1) * g
            for dtype in (torch.float32, torch.float64):
                r = base.to(dtype)
                for baseline in ("none", "group_mean", "leave_one_out", "batch_mean"):
                    for scale in ("none", "group_std", "batch_std"):
                        for nan_policy in ("propagate", "omit"):
                            for singleton in ("zero", "raw", "nan"):
                                for unbiased in (True, False):
                                    kw = dict(baseline=baseline, scale=scale, nan_policy=nan_policy,
                                              singleton=singleton, std_unbiased=unbiased, eps=1e-4)
                                    fixed = group_advantages(r, group_size=g, **kw)
                                    ragged = group_advantages(r, cu_groups=cu, **kw)
                                    bits = torch.int32 if dtype == torch.float32 else torch.int64
                                    assert torch.equal(fixed.view(bits), ragged.view(bits)), (g, dtype, kw)
            # float32 group std: the unscaled sum of squares where it is in range, else the scaled
            # one (csrc unscaled_ok). A NaN-free tile that the fast form decides alone, and tiles
            # where a few groups are out of range: deviations of 1e-30 and 1e30, sums of squares
            # just inside and outside [2^-60, 2^100], identical rewards, a NaN row; eps large,
            # tiny (below 2^-40) and 0
            b2 = 3 * 128 + 5
            s = torch.randn(b2 * g, generator=gen, dtype=torch.float64)
            sv = s.view(b2, g)
            sv[130] *= 1e-30
            sv[131] *= 1e30
            sv[132] *= 1e-20
            sv[133] = sv[133] / sv[133].std() * 2.0 ** -30 * 0.99  # M2 just below 2^-60 (G >= 4)
            sv[134] = sv[134] / sv[134].std() * 2.0 ** -30 * 1.01
            sv[135] = sv[135] / sv[135].std() * 2.0 ** 49 * 0.99
            sv[136] = sv[136] / sv[136].std() * 2.0 ** 50 * 1.01  # M2 above 2^100
            sv[137] = 0.5
            sv[138] = 1.0 + 2.0 ** -40 * sv[138].sign()  # |d| < 2^-75 after the float32 cast: 0
            sv[139, 2] = float("nan")
            sv[260] = 3.0  # identical rewards in the tile the fast form decides
            cu2 = torch.arange(b2 + 1) * g
            for dtype in (torch.float32, torch.float64):
                r = s.to(dtype)
                for eps in (1e-4, 1e-30, 0.0):
                    for baseline in ("none", "group_mean", "leave_one_out"):
                        for nan_policy in ("propagate", "omit"):
                            for unbiased in (True, False):
                                kw = dict(baseline=baseline, scale="group_std", nan_policy=nan_policy,
                                          singleton="zero", std_unbiased=unbiased, eps=eps)
                                fixed = group_advantages(r, group_size=g, **kw)
                                ragged = group_advantages(r, cu_groups=cu2, **kw)
                                bits = torch.int32 if dtype == torch.float32 else torch.int64
                                assert torch.equal(fixed.view(bits), ragged.view(bits)), (g, dtype, kw)
                                if eps == 1e-4 and baseline == "group_mean" and dtype == torch.float32:
                                    with ik.use_backend("reference"):
                                        want = group_advantages(r.double(), group_size=g, **kw)
                                    # within 16 float32 ulps of each group's largest |A| (G = 16 sums take ~5)
                                    assert torch.equal(fixed.isnan(), want.isnan()), (g, kw)
                                    err = (fixed.double() - want).nan_to_num().abs().view(b2, g)
                                    top = want.nan_to_num().abs().view(b2, g).amax(1, keepdim=True)
                                    assert bool((err <= 2.0 ** -20 * top).all()), (g, kw, (err / top).max())
            # omit without a NaN row anywhere: the batch moments count none and no tile scans
            clean = s.clone()
            clean.view(b2, g)[139, 2] = 0.25
            for dtype in (torch.float32, torch.float64):
                for scale in ("batch_std", "group_std", "none"):
                    kw = dict(baseline="group_mean", scale=scale, nan_policy="omit", eps=1e-4)
                    fixed = group_advantages(clean.to(dtype), group_size=g, **kw)
                    ragged = group_advantages(clean.to(dtype), cu_groups=cu2, **kw)
                    bits = torch.int32 if dtype == torch.float32 else torch.int64
                    assert torch.equal(fixed.view(bits), ragged.view(bits)), (g, dtype, kw)
            # BNPO: binary rewards (the Beta weights from the table of success rates k / G) and
            # rewards in [0, 1] (the weights from the cache), with the same NaN rows
            nan = torch.isnan(base)
            for rewards in ((torch.rand(b * g, generator=gen) < 0.4).double(), torch.rand(b * g, generator=gen).double()):
                rewards = rewards.masked_fill(nan, float("nan"))
                for dtype in (torch.float32, torch.float64):
                    r = rewards.to(dtype)
                    for nan_policy in ("propagate", "omit"):
                        for singleton in ("zero", "raw", "nan"):
                            kw = dict(preset="bnpo", nan_policy=nan_policy, singleton=singleton)
                            fixed = group_advantages(r, group_size=g, **kw)
                            ragged = group_advantages(r, cu_groups=cu, **kw)
                            bits = torch.int32 if dtype == torch.float32 else torch.int64
                            assert torch.equal(fixed.view(bits), ragged.view(bits)), (g, dtype, kw)


def _batch_statistics_outputs(seed=0):
    """Outputs that go through the C++ batch moments (batch_mean / batch_std, whitening with and
    without weights and omitted rows, BNPO's moments over groups), over several 64K chunks and a
    tail that is not a multiple of 4: the AVX2 lanes and the scalar loop must give the same bits."""
    gen = torch.Generator().manual_seed(seed)
    n = 3 * 65536 + 4 * 129  # G = 4 divides it; chunks of 65536 plus a tail
    base = torch.randn(n, generator=gen, dtype=torch.float64) * 2 + 0.5
    nan = base.clone()
    nan[torch.rand(n, generator=gen) < 0.1] = float("nan")
    nan[:3] = float("nan")  # the pivot is not the first row
    out = {}
    with ik.use_backend("cpp"):
        for dtype in (torch.float32, torch.float64):
            for name, r in (("plain", base.to(dtype)), ("nan", nan.to(dtype))):
                for policy in ("propagate", "omit"):
                    for preset in ("trl_batch", "dler", "openrlhf_reinforce_baseline"):
                        out[dtype, name, policy, preset] = group_advantages(r, group_size=4, preset=preset,
                                                                            nan_policy=policy)
                    out[dtype, name, policy, "batch"] = group_advantages(
                        r, group_size=4, baseline="batch_mean", scale="batch_std", nan_policy=policy, eps=1e-4)
                out[dtype, name, "bnpo"] = group_advantages(r.sigmoid(), group_size=4, preset="bnpo")
            rw = base[: n - 1].to(dtype)  # odd length: a tail of 3 after the 4-row steps
            mask = torch.rand(n - 1, 3, generator=gen) < 0.6  # token whitening: weights = tokens per row
            out[dtype, "weighted"] = group_advantages(rw, cu_groups=torch.tensor([0, 5, n - 1]), response_mask=mask,
                                                      preset="verl_reinforce_pp_baseline")
    return out


# the lane kernels' ISA copies below the one this CPU picks, each forced in a fresh process (the
# copy is chosen once per process): the AVX2 copy on an AVX-512 CPU, the baseline-ISA copy
OTHER_ISAS = ["ICRM_NO_AVX512", "ICRM_NO_AVX2"]


def _isa_env(flag):
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(ik.__file__)))
    here = os.path.dirname(os.path.abspath(__file__))
    return dict(os.environ, **{flag: "1"}, PYTHONPATH=os.pathsep.join([root, here, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.skipif(not ik._backend.HAS_CPP, reason="needs the C++ extension")
@pytest.mark.parametrize("flag", OTHER_ISAS)
def test_cpp_batch_moments_same_bits_on_every_isa(tmp_path, flag):
    """The batch moments (AVX2 / AVX-512: the four accumulators as one vector) against the copy
    forced by ``flag`` (ICRM_NO_AVX2=1: the scalar loop), in a fresh process."""
    import subprocess
    import sys

    env = _isa_env(flag)
    path = str(tmp_path / "scalar.pt")
    script = f"import torch, test_advantages as t; torch.save(t._batch_statistics_outputs({SEED}), {path!r})"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scalar = torch.load(path)
    here_out = _batch_statistics_outputs(SEED)
    assert scalar.keys() == here_out.keys()
    for k, a in here_out.items():
        bits = torch.int32 if a.dtype == torch.float32 else torch.int64
        assert torch.equal(a.view(bits), scalar[k].view(bits)), k


@pytest.mark.skipif(not ik._backend.HAS_CPP, reason="needs the C++ extension")
def test_cpp_whitening_moments_in_the_group_pass_same_bits():
    """Whitening without weights on a fixed layout: the group pass sums A for the whitening
    moments as it goes (tile by tile in tile form for group-centred A, G = 4, 8, 16; else each
    stored tile in row order, with at least as many 64K chunks as threads). A ragged layout
    takes a separate pass over A, in tile form when all its groups have G rows: the bits must be
    the same, with tiles that leave float range (|A| ~ 1e30, ~1e-25: summed again in double),
    NaN, a short last chunk and a partial last tile, and the same bits on one or two threads.
    The tile-form moments stay within float32 accuracy of the float64 reference."""
    gen = torch.Generator().manual_seed(SEED)
    n = 3 * 65536 + 16 * 129
    r = torch.randn(n, generator=gen)
    r[1000:1016] *= 1e30
    r[70000:70100] *= 1e-25
    nan = r.clone()
    nan[5] = float("nan")
    threads = torch.get_num_threads()
    seen = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            with ik.use_backend("cpp"):
                for i, x in enumerate((r, nan, r[: 2 * 65536], r[: 16 * 37])):
                    for g in (4, 8, 16):
                        for preset in ("dler", "openrlhf_reinforce_baseline", "whiten_only"):
                            kw = dict(preset=preset) if preset != "whiten_only" else dict(
                                baseline="none", scale="none", whiten="sample")
                            fixed = group_advantages(x, group_size=g, **kw)
                            ragged = group_advantages(x, cu_groups=torch.arange(0, x.numel() + 1, g), **kw)
                            assert torch.equal(fixed.view(torch.int32), ragged.view(torch.int32)), (t, g, preset)
                            key = (i, g, preset)
                            if key in seen:
                                assert torch.equal(fixed.view(torch.int32), seen[key].view(torch.int32)), key
                            seen[key] = fixed
                # groups of 8 but one of 4 and one of 12: not uniform, the moments in row order
                cu = torch.arange(0, n + 1, 8)
                cu[1] = 4
                cu[2] = 16
                a = group_advantages(r, cu_groups=cu, preset="dler")
                with ik.use_backend("reference"):
                    want = group_advantages(r.double(), cu_groups=cu, preset="dler")
                assert (a.double() - want).abs().max() <= 2.0 ** -20 * want.abs().max()
    finally:
        torch.set_num_threads(threads)
    # against float64: the moments summed in tile form, the extreme tiles in double
    for x in (r, r[: 16 * 37]):
        for g in (4, 8, 16):
            with ik.use_backend("cpp"):
                got = group_advantages(x, group_size=g, preset="dler")
            with ik.use_backend("reference"):
                want = group_advantages(x.double(), group_size=g, preset="dler")
            # within 16 float32 ulps of the batch's largest |A|: the batch mean of float32 A is
            # rounding noise of the largest groups' A (the reference's is ~0), and every whitened
            # row carries it
            err = (got.double() - want).abs().max()
            assert err <= 2.0 ** -20 * want.abs().max(), (g, err / want.abs().max())


@pytest.mark.skipif(not ik._backend.HAS_CPP, reason="needs the C++ extension")
def test_cpp_float32_subnormal_spreads_with_eps_zero():
    """float32 rewards of ~1e-39..1e-44 with eps = 0: the group std (or batch std) is subnormal
    and its float reciprocal overflows, where the float64 reference gives finite A; and a group
    of +-1.5e38, whose float sum of deviations overflows. The C++ path computes those groups (or,
    for a batch std, the whole batch) in double: finite, close to the reference, NaN only where
    the reference has NaN (identical rewards: 0 / 0), and the fixed lanes bitwise equal to the
    scalar loop, in tiles that mix such groups with ordinary ones."""
    gen = torch.Generator().manual_seed(SEED)
    for g in (4, 5, 8, 16):
        b = 2 * 128 + 7
        base = torch.randn(b * g, generator=gen, dtype=torch.float64)
        v = base.view(b, g)
        v[::3] *= 1e-39
        v[1::7] *= 1e-44
        v[5] = 3e-41  # identical rewards: std 0, 0 / 0 under eps = 0
        v[6] = torch.linspace(-1.5e38, 1.5e38, g, dtype=torch.float64)  # the float sum of deviations overflows
        v[9] = 1e38  # identical huge rewards: exactly 0 (group std with eps = 0: NaN)
        v[9, 0] = 9e37
        cu = torch.arange(b + 1) * g
        perm = torch.randperm(b * g, generator=gen)
        ids = (torch.arange(b * g) // g)[perm]  # unsorted ids: the same groups, rows shuffled
        small = v.reshape(-1).clone()
        small.view(b, g)[6] *= 1e-77  # (batch std: no huge rows, so that the batch std is subnormal)
        small.view(b, g)[9] *= 1e-77
        for baseline, scale, r in (("group_mean", "group_std", v.reshape(-1)), ("leave_one_out", "group_std", v.reshape(-1)),
                                   ("none", "group_std", v.reshape(-1)), ("group_mean", "batch_std", small * 1e-39)):
            r32 = r.float()
            for nan_policy in ("propagate", "omit"):
                kw = dict(baseline=baseline, scale=scale, eps=0.0, nan_policy=nan_policy)
                with ik.use_backend("reference"):
                    want = group_advantages(r32.double(), group_size=g, **kw)
                with ik.use_backend("cpp"):
                    fixed = group_advantages(r32, group_size=g, **kw)
                    ragged = group_advantages(r32, cu_groups=cu, **kw)
                    index = group_advantages(r32[perm], group_index=ids, **kw)
                assert torch.equal(fixed.view(torch.int32), ragged.view(torch.int32)), (g, kw)
                assert torch.equal(fixed.isnan(), want.isnan()), (g, kw)
                assert bool(fixed.isfinite().eq(want.isfinite()).all()), (g, kw)
                ok = want.isfinite()
                torch.testing.assert_close(fixed.double()[ok], want[ok], rtol=1e-5, atol=1e-6)
                assert torch.equal(index.isnan(), fixed[perm].isnan()), (g, kw)
                torch.testing.assert_close(index.double().nan_to_num(), fixed[perm].double().nan_to_num(),
                                           rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not ik._backend.HAS_CPP, reason="needs the C++ extension")
def test_cpp_fixed_lanes_bitwise_equal_scalar():
    _fixed_equals_ragged_bitwise(SEED)


@pytest.mark.skipif(not ik._backend.HAS_CPP, reason="needs the C++ extension")
@pytest.mark.parametrize("flag", OTHER_ISAS)
def test_cpp_fixed_lanes_bitwise_equal_scalar_other_isa(flag):
    """The same with the AVX2 copy (ICRM_NO_AVX512=1) or the baseline-ISA copy (ICRM_NO_AVX2=1)
    of the lanes, in a fresh process."""
    import subprocess
    import sys

    env = _isa_env(flag)
    script = f"import test_advantages as t; t._fixed_equals_ragged_bitwise({SEED})"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_fixed_cpu_binding_is_the_op():
    """The CPU preset path calls icrm_cpu::group_advantages from C (csrc/module.cpp): the same
    bits as torch.ops for strided rewards too, the op's own errors as RuntimeError, a wrong
    argument as TypeError, and the op still in the profiler's record."""
    from icrm_kernels.ops import advantages as adv

    fixed = adv._FIXED_CPU
    if fixed is None:
        pytest.skip("the C++ extension is not built")
    r = torch.randn(2 * 64 * 8, dtype=torch.float64)[::2]  # strided: the op makes it contiguous
    for preset in ("dler", "verl_grpo", "trl_batch", "bnpo"):
        options = adv._preset_plan(preset)[2]
        for x in (r, r.float()):
            want = torch.ops.icrm_cpu.group_advantages.default(x.contiguous(), None, None, 8, None, *options)
            assert torch.equal(fixed(x, 8, *options), want), preset
    options = adv._preset_plan("dler")[2]
    with pytest.raises(RuntimeError, match="group_size must divide"):
        fixed(r, 7, *options)
    with pytest.raises(TypeError, match="group_advantages_fixed"):
        fixed(r, 8, *options[:-1])
    with pytest.raises(TypeError, match="group_advantages_fixed"):
        fixed(r.tolist(), 8, *options)
    with pytest.raises(TypeError, match="must be an int"):
        fixed(r, 8.0, *options)
    with torch.profiler.profile() as prof:
        group_advantages(r, group_size=8, preset="dler")
    assert any(e.name == "icrm_cpu::group_advantages" for e in prof.events())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_fast_path_equals_general_path(backend, device, preset):
    """``group_advantages(r, group_size=G, preset=P)`` with nothing else given takes the prepared
    preset path (``_preset_call``); any other keyword, here the preset's own eps (the same
    options), takes the general one. Bitwise the same, with NaN rows and identical rewards; the
    calls that the fast path leaves to the general one still get its errors."""
    from icrm_kernels.ops import advantages as adv

    g = 4
    r = torch.randn(16 * g, device=device)
    r[5] = float("nan")
    r[8:12] = 0.25  # identical rewards
    eps = PRESETS[preset]["eps"]
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = r.to(dtype)
        if PRESETS[preset]["whiten"] == "token":  # needs a response_mask: the general path raises
            assert adv._preset_call(x, g, preset) is None
            with pytest.raises(ValueError, match="response_mask"):
                group_advantages(x, group_size=g, preset=preset)
            continue
        fast = group_advantages(x, group_size=g, preset=preset)
        general = group_advantages(x, group_size=g, preset=preset, eps=eps)
        direct = adv.group_advantages_direct(x, group_size=g, preset=preset)  # (takes the preset path too)
        assert torch.equal(direct.nan_to_num(7.0), fast.nan_to_num(7.0)), (preset, dtype)
        assert fast.dtype == general.dtype == dtype
        assert torch.equal(fast.nan_to_num(7.0), general.nan_to_num(7.0)), (preset, dtype)
        assert torch.equal(fast.isnan(), general.isnan())
    # what the fast path leaves to the general one still raises there
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, group_size=5, preset=preset)
    with pytest.raises((TypeError, ValueError), match="group_size"):
        group_advantages(r, group_size=True, preset=preset)
    with pytest.raises(ValueError, match="preset"):
        group_advantages(r, group_size=g, preset=preset + "_typo")
    with pytest.raises(TypeError, match="rewards"):
        group_advantages(r.tolist(), group_size=g, preset=preset)
    if PRESETS[preset]["whiten"] != "token":
        rg = r.clone().requires_grad_(True)  # a gradient: the op path
        assert group_advantages(rg, group_size=g, preset=preset).requires_grad
