"""Hostile and careless inputs to the group/segment ops (issue 9): group_advantages (and
group_advantages_direct), group_win_rate, grebt_loss, beta_posterior.

Each case ends in a clear error naming the argument, or in a documented result; never a crash,
a hang or an access outside a buffer. Cases that crashed the process before the fix (huge ids,
malformed offsets on the unchecked paths) run in a subprocess per backend, so a regression
fails one test instead of killing the suite.
"""
import math
import os
import subprocess
import sys
import types

import pytest
import torch

import icrm_kernels as ik
from icrm_kernels import _backend, beta_posterior, grebt_loss, group_advantages, group_win_rate
from icrm_kernels.ops.advantages import group_advantages_direct
from icrm_kernels.reference.advantages import PRESETS, group_advantages_reference

CPU_BACKENDS = _backend.available_backends("cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



# These cases build CPU tensors, so they run on the backends that take CPU tensors: the
# reference, the C++ kernels and, under Triton's interpreter (CI), the Triton kernels. On a GPU
# machine they skip the Triton kernels, which the CUDA suite and compute-sanitizer cover there.
@pytest.fixture(params=_backend.available_backends("cpu"))
def backend(request):
    with _backend.use_backend(request.param):
        yield request.param


def _nan_eq(a, b, atol=1e-5):
    """Same NaN pattern and close elsewhere."""
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), f"NaN pattern differs:\n{a}\n{b}"
    torch.testing.assert_close(a.nan_to_num(), b.nan_to_num(), atol=atol, rtol=1e-5)


# ------------------------------------------------------------------ risky cases in a subprocess
_RISKY = r"""
import torch, icrm_kernels as ik
from icrm_kernels import unchecked, use_backend
from icrm_kernels.ops.advantages import group_advantages_direct
BACKEND = {backend!r}
r = torch.randn(4)
bad_cus = [[0, 4, 10**9], [0, 3, 1, 4], [0, -5, 4], [0, 2], [0, 4, 2**62], [-3, 9], [5, 4, 4, 4]]
with use_backend(BACKEND):
    # class 1: any integer ids are valid, on the checked path too
    for ids in ([-2**63, 2**63 - 1], [2**62, -2**62], [0, 2**63 - 1], [-2**63, -2**63 + 1]):
        gi = torch.tensor(ids)
        a = ik.group_advantages(torch.randn(2), group_index=gi)
        assert a.shape == (2,) and bool((a == 0).all()), a
        ik.group_advantages(torch.randn(2), group_index=gi, preset="bnpo")
        ik.group_win_rate(torch.randn(2), group_index=gi)
        ik.grebt_loss(torch.randn(2), group_index=gi, reduction="none")
    g4 = torch.tensor([-2**63, 2**63 - 1, -2**63, 2**63 - 1])
    assert ik.group_advantages(torch.tensor([1., 2., 3., 5.]), group_index=g4).shape == (4,)
    # class 2: malformed offsets with value checks off, and through the direct launcher
    for cu in bad_cus:
        cu = torch.tensor(cu)
        for kw in ({{}}, {{"preset": "bnpo"}}, {{"scale": "batch_std", "whiten": "sample"}},
                   {{"preset": "trl_group"}}, {{"baseline": "leave_one_out", "scale": "none"}}):
            with unchecked():
                assert ik.group_advantages(r, cu_groups=cu, **kw).shape == (4,)
                assert ik.group_advantages(r, cu_groups=cu, response_mask=torch.ones(4, 3), **kw).shape == (4, 3)
            assert group_advantages_direct(r, cu_groups=cu, **kw).shape == (4,)
        assert group_advantages_direct(torch.randn(4, 2), cu_groups=cu, aggregation="normalize_then_sum").shape == (4,)
        with unchecked():
            assert ik.group_win_rate(r, cu_groups=cu).shape == (4,)
            assert ik.group_win_rate(r, cu_groups=cu, temperature=0.5).shape == (4,)
            assert ik.grebt_loss(r, cu_groups=cu, reduction="none").shape == (cu.numel() - 1,)
            rr = r.clone().requires_grad_(True)
            ik.grebt_loss(rr, cu_groups=cu).backward()
            ss = r.clone().requires_grad_(True)
            ik.group_win_rate(ss, cu_groups=cu, temperature=1.0).sum().backward()
            a, b = ik.beta_posterior(torch.rand(4), cu_segments=cu)
            assert a.shape == (cu.numel() - 1,)
            a, b = ik.beta_posterior(torch.rand(4), cu_segments=cu, weights=torch.rand(4), discount=0.5)
    with unchecked():  # segment ids outside [0, K) are ignored, whatever their size
        for ids in ([0, 1, 2**62, -2**63], [5, 6, 7, 8], [-1, -1, -1, -1]):
            a, b = ik.beta_posterior(torch.rand(4), segment_index=torch.tensor(ids), num_segments=2)
            assert a.shape == (2,)
# the direct launchers below the ops take cu and order from the caller: garbage in both
cu_bad = torch.tensor([0, 3, -7, 10**9, 4])
order_bad = torch.tensor([10**12, -5, 2, 2**62])
if BACKEND == "cpp":
    ops = torch.ops.icrm_cpu
    ops.group_advantages(r, cu_bad, order_bad, 0, None, 1, 1, 0, 1e-6, True, 0, False, 0.0, 0, 0.0, 1.0)
    ops.group_advantages(r, cu_bad, order_bad, 0, torch.ones(4), 1, 3, 1, 1e-6, True, 1, True, 0.0, 0, 0.0, 1.0)
    ops.pairwise_win_rate(r, cu_bad, order_bad, 0, 1.0)
    ops.pairwise_win_rate_backward(r, r, cu_bad, order_bad, 0, 1.0)
    ops.pairwise_grebt(r, None, cu_bad, order_bad, 0, 0.3, 1e-6)
    ops.beta_posterior(torch.rand(4), None, cu_bad, None, 4, 1.0, 1.0, 0.9)
    ops.beta_posterior(torch.rand(4), torch.rand(4), None, order_bad, 4, 1.0, 1.0, 0.9)
if BACKEND == "triton":
    from icrm_kernels.triton import advantages as TA, beta as TB, pairwise as TP
    for scale, base in (("group_std", "group_mean"), ("bnpo", "group_mean"), ("batch_std", "batch_mean")):
        TA.group_advantages_core(r, group_size=None, cu=cu_bad, order=order_bad, num_slots=4, baseline=base,
                                 scale=scale, whiten="sample", eps=1e-6, std_unbiased=True, singleton="zero",
                                 omit=False, whiten_eps=1e-6, whiten_std="std_eps")
    TP.win_rate_forward(r, cu_bad, order_bad, 0, 1.0)
    TP.win_rate_forward(r, cu_bad, order_bad, 0, None)
    TP.win_rate_backward(r, r, cu_bad, order_bad, 0, 1.0)
    TP.grebt_forward(r, None, cu_bad, order_bad, 0, 0.3, 1e-6)
    TB.posterior(torch.rand(4), None, order_bad, cu_bad, 4, 1.0, 1.0, 0.9)
if BACKEND != "reference":  # torch.compile runs the op with value checks off
    f = torch.compile(lambda r, cu: ik.group_advantages(r, cu_groups=cu) + ik.group_win_rate(r, cu_groups=cu),
                      backend="eager")
    g = torch.compile(lambda y, cu: ik.beta_posterior(y, cu_segments=cu), backend="eager")
    with use_backend(BACKEND):
        for cu in ([0, 4, 10**9], [0, 3, 1, 4], [0, -5, 4]):
            assert f(torch.randn(4), torch.tensor(cu)).shape == (4,)
            assert g(torch.rand(4), torch.tensor(cu))[0].shape == (len(cu) - 1,)
print("SURVIVED")
"""


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_risky_inputs_neither_crash_nor_hang(backend_name):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = _RISKY.format(backend=backend_name)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "SURVIVED" in proc.stdout


# ------------------------------------------------------------------ class 4: silent wrong answers
@pytest.mark.parametrize("G", [3, 5, 6, 7])
def test_bnpo_equal_success_rates(backend, G):
    """Every group with the same success rate k/G (G not a power of two): the group means may
    differ by an ulp, and the v = 0 guard must still fire (uniform weights): A = s - k/G."""
    k = 1
    rows = []
    for g in range(6):
        grp = [0.0] * G
        grp[(g * 2) % G] = 1.0  # the success at a different position in each group
        rows += grp
    r = torch.tensor(rows, dtype=torch.float32)
    out = group_advantages(r, group_size=G, preset="bnpo")
    expect = r.double() - k / G
    torch.testing.assert_close(out.double(), expect, atol=1e-5, rtol=0)
    _nan_eq(out, group_advantages_reference(r.double(), group_size=G, preset="bnpo"))


def test_bnpo_nan_propagates(backend):
    r = (torch.arange(24) % 3 == 0).float()
    r[7] = math.nan
    out = group_advantages(r, group_size=4, preset="bnpo", nan_policy="propagate")
    assert bool(torch.isnan(out).all()), out  # poisons the batch (over-group moments are NaN)
    out = group_advantages(r, group_size=4, preset="bnpo", nan_policy="omit")
    assert out[7] == 0 and bool(torch.isfinite(out).all())


_SWEEP_R = torch.tensor([[1.0, 0.0], [math.nan, 1.0], [0.0, 0.0], [1.0, 1.0],
                         [0.0, math.nan], [math.nan, math.nan], [1.0, 0.0], [0.0, 1.0],
                         [1.0, math.nan], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
_SWEEP_CU = torch.tensor([0, 3, 4, 8, 12])  # group 1 is a singleton


@pytest.mark.parametrize("scale", ["group_std", "bnpo", "none", "batch_std"])
@pytest.mark.parametrize("nan_policy", ["propagate", "omit"])
def test_option_sweep_agrees_across_backends_with_nans(scale, nan_policy):
    """Every (singleton, aggregation, K, whiten) with NaNs present: the kernels give exactly the
    reference's NaN pattern and values (they used to give 0 where it gave NaN)."""
    for singleton in ("zero", "raw", "nan"):
        for aggregation in ("sum_then_normalize", "normalize_then_sum"):
            for K in (1, 2):
                for whiten in ("none", "sample", "token"):
                    r = _SWEEP_R[:, 0] if K == 1 else _SWEEP_R
                    kw = dict(cu_groups=_SWEEP_CU, scale=scale, singleton=singleton, nan_policy=nan_policy,
                              aggregation=aggregation, whiten=whiten, reward_weights=torch.tensor([1.0, 0.5])[:K])
                    if whiten == "token":
                        kw["response_mask"] = (torch.arange(36).view(12, 3) % 4 != 1)
                    expect = group_advantages_reference(r, **kw)
                    for b in CPU_BACKENDS:
                        with ik.use_backend(b):
                            got = group_advantages(r.float(), **kw)
                        try:
                            _nan_eq(got, expect, atol=2e-4)
                        except AssertionError as e:
                            raise AssertionError(f"{b} {singleton} {aggregation} K={K} {whiten}: {e}") from None


# ------------------------------------------------------------------ class 8: validation
def test_direct_rejects_misspelled_and_invalid_options():
    r = torch.randn(8)
    with pytest.raises(TypeError, match="scael"):
        group_advantages_direct(r, group_size=4, scael="none")
    with pytest.raises(TypeError, match="nan_polcy"):
        group_advantages_direct(r, group_size=4, nan_polcy="omit")
    with pytest.raises(ValueError, match="baseline"):
        group_advantages_direct(r, group_size=4, baseline="mean")
    with pytest.raises(ValueError, match="preset"):
        group_advantages_direct(r, group_size=4, preset="grpo")
    with pytest.raises(ValueError, match="rewards"):
        group_advantages_direct(r, group_size=3)
    with pytest.raises(TypeError, match="scael"):
        group_advantages_reference(r, group_size=4, **{"scael": "none"})


def test_presets_are_read_only():
    assert ik.ADVANTAGE_PRESETS is PRESETS
    assert isinstance(PRESETS, types.MappingProxyType)
    with pytest.raises(TypeError):
        ik.ADVANTAGE_PRESETS["bnpo"] = dict(scale="none")
    with pytest.raises(TypeError):
        ik.ADVANTAGE_PRESETS["verl_grpo"]["eps"] = 1.0
    with pytest.raises((TypeError, AttributeError)):
        ik.ADVANTAGE_PRESETS["verl_grpo"].update(eps=1.0)
    assert set(PRESETS) >= {"verl_grpo", "trl_group", "bnpo", "dler"}
    r = torch.randn(8)
    torch.testing.assert_close(group_advantages(r, group_size=4, preset="verl_grpo"),
                               group_advantages_direct(r, group_size=4, preset="verl_grpo"))


@pytest.mark.parametrize("bad, exc, name", [
    (dict(response_mask=-torch.ones(8, 3)), ValueError, "response_mask"),
    (dict(response_mask=torch.full((8, 3), math.nan)), ValueError, "response_mask"),
    (dict(response_mask=torch.ones(8, 3, dtype=torch.complex64)), TypeError, "response_mask"),
    (dict(response_mask=torch.ones(7, 3)), ValueError, "response_mask"),
    (dict(response_mask=torch.ones(8)), ValueError, "response_mask"),
    (dict(reward_weights=torch.tensor([-1.0])), ValueError, "reward_weights"),
    (dict(reward_weights=torch.tensor([math.nan])), ValueError, "reward_weights"),
    (dict(reward_weights=torch.tensor([1.0 + 1j])), TypeError, "reward_weights"),
    (dict(reward_weights=torch.tensor([1.0, 2.0])), ValueError, "reward_weights"),
    (dict(bnpo_bounds=(0.0, 1.0, 2.0), preset="bnpo"), ValueError, "bnpo_bounds"),
    (dict(bnpo_bounds=(0.0,), preset="bnpo"), ValueError, "bnpo_bounds"),
    (dict(bnpo_bounds=5.0, preset="bnpo"), ValueError, "bnpo_bounds"),
    (dict(bnpo_bounds=(1.0, 0.0), preset="bnpo"), ValueError, "bnpo_bounds"),
    (dict(bnpo_bounds=(0.0, math.inf), preset="bnpo"), ValueError, "bnpo_bounds"),
    (dict(process_group="world"), TypeError, "process_group"),
    (dict(process_group=object(), whiten="sample"), TypeError, "process_group"),
    (dict(eps=math.nan), ValueError, "eps"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(whiten="token"), ValueError, "response_mask"),
    (dict(std_unbiased=1), TypeError, "std_unbiased"),
])
def test_group_advantages_bad_arguments(bad, exc, name):
    with pytest.raises(exc, match=name):
        group_advantages(torch.randn(8), group_size=4, **bad)


@pytest.mark.parametrize("rewards, layout, exc, name", [
    (torch.randn(8, 0), dict(group_size=4), ValueError, "rewards"),
    (torch.randn(7, 2), dict(group_size=4), ValueError, "rewards"),  # row count vs group_size
    (torch.randn(7), dict(group_size=4), ValueError, "rewards"),
    (torch.randn(()), dict(group_size=1), ValueError, "rewards"),
    (torch.randn(2, 2, 2), dict(group_size=2), ValueError, "rewards"),
    (torch.randint(0, 2, (8,)), dict(group_size=4), TypeError, "rewards"),
    (torch.randn(8, dtype=torch.complex64), dict(group_size=4), TypeError, "rewards"),
    ([1.0, 2.0], dict(group_size=2), TypeError, "rewards"),
    (torch.randn(8), dict(group_size=0), ValueError, "group_size"),
    (torch.randn(8), dict(group_size=4.0), TypeError, "group_size"),
    (torch.randn(8), dict(group_size=True), TypeError, "group_size"),
    (torch.randn(8), dict(cu_groups=torch.tensor([0, 4, 10**9])), ValueError, "cu_groups"),
    (torch.randn(8), dict(cu_groups=torch.tensor([0, 6, 3, 8])), ValueError, "cu_groups"),
    (torch.randn(8), dict(cu_groups=torch.tensor([-1, 8])), ValueError, "cu_groups"),
    (torch.randn(8), dict(cu_groups=torch.tensor([0.0, 8.0])), TypeError, "cu_groups"),
    (torch.randn(8), dict(cu_groups=torch.tensor([[0, 8]])), ValueError, "cu_groups"),
    (torch.randn(8), dict(cu_groups=torch.tensor([0, 8], device="meta")), ValueError, "cu_groups"),
    (torch.randn(8), dict(group_index=torch.zeros(7, dtype=torch.long)), ValueError, "group_index"),
    (torch.randn(8), dict(group_index=torch.zeros(8)), TypeError, "group_index"),
    (torch.randn(8), dict(group_index=torch.zeros(8, dtype=torch.bool)), TypeError, "group_index"),
    (torch.randn(8), dict(group_size=4, group_index=torch.zeros(8, dtype=torch.long)), ValueError, "group_size"),
    (torch.randn(8), dict(), ValueError, "group_size"),
])
def test_group_advantages_bad_tensors(rewards, layout, exc, name):
    with pytest.raises(exc, match=name):
        group_advantages(rewards, **layout)


def test_group_advantages_empty_and_extreme(backend):
    assert group_advantages(torch.randn(0), group_size=4).shape == (0,)
    assert group_advantages(torch.randn(0), cu_groups=torch.tensor([0])).shape == (0,)
    assert group_advantages(torch.randn(0, 2), group_index=torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert group_advantages(torch.randn(0), group_size=2, response_mask=torch.ones(0, 5)).shape == (0, 5)
    # shift-invariant and scale-covariant: 1e30 offsets / 1e-30 spreads normalize like O(1) ones
    base = torch.tensor([0.0, 1.0, 3.0, 4.0], dtype=torch.float64)
    ref = group_advantages(base, group_size=4, eps=0.0)
    torch.testing.assert_close(group_advantages(base * 1e-30, group_size=4, eps=0.0), ref)
    torch.testing.assert_close(group_advantages(base * 1e30, group_size=4, eps=0.0), ref)
    # fp32 too (the Triton kernel squared deviations of 1e30 in fp32: std inf, A = 0)
    for scale in (1e30, 1e-30, 1e18, 1e-18):
        for kw in (dict(group_size=4), dict(cu_groups=torch.tensor([0, 4])),
                   dict(group_index=torch.zeros(4, dtype=torch.long))):
            torch.testing.assert_close(group_advantages((base * scale).float(), eps=0.0, **kw), ref.float(),
                                       rtol=1e-5, atol=1e-6)
    # identical huge rewards: exactly 0
    assert bool((group_advantages(torch.full((8,), 1e30), group_size=4) == 0).all())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_group_advantages_nonfinite_rewards(backend, value):
    """Documented (docs/advantages.md): a NaN or inf reward makes its group NaN with
    nan_policy="propagate" (inf - inf), and only its group; "omit" drops NaN rows (A = 0)."""
    r = torch.tensor([1.0, 2.0, value, 4.0, 1.0, 2.0, 3.0, 5.0])
    out = group_advantages(r, group_size=4)
    assert bool(torch.isnan(out[:4]).all()) and bool(torch.isfinite(out[4:]).all()), out
    _nan_eq(out, group_advantages_reference(r.double(), group_size=4))
    if value != value:
        out = group_advantages(r, group_size=4, nan_policy="omit")
        assert out[2] == 0 and bool(torch.isfinite(out).all())
        with pytest.raises(ValueError, match="nan_policy"):
            group_advantages(r, group_size=4, nan_policy="raise")


def test_group_advantages_strides(backend):
    """Every tensor argument may be non-contiguous: same result as its contiguous copy."""
    torch.manual_seed(0)
    R = torch.randn(12, 4)[:, ::2]  # [12, 2], strides (4, 2)
    cu = torch.tensor([0, 0, 3, 3, 5, 5, 12, 12])[::2]  # [0, 3, 5, 12]
    gi = torch.tensor([[3, 1, 3, 0, 1, 1, 2, 3, 0, 5, 0, 1], [0] * 12]).t()[:, 0]
    mask = (torch.rand(5, 12) > 0.3).t()  # [12, 5], transposed
    w = torch.tensor([1.0, 9.0, 0.5, 9.0])[::2]
    for layout in (dict(cu_groups=cu), dict(group_index=gi), dict(group_size=4)):
        for kw in (dict(), dict(preset="bnpo"), dict(whiten="token"), dict(aggregation="normalize_then_sum")):
            if kw.get("preset") == "bnpo":
                rr = (R > 0).to(R.dtype)[:, ::1]
                rr = torch.stack([rr[:, 0], rr[:, 1]], 1).t().contiguous().t()  # column-major copy
            else:
                rr = R
            got = group_advantages(rr, reward_weights=w, response_mask=mask, **layout, **kw)
            layout_c = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in layout.items()}
            expect = group_advantages(rr.contiguous(), reward_weights=w.contiguous(), response_mask=mask.contiguous(),
                                      **layout_c, **kw)
            _nan_eq(got, expect, atol=1e-6)
            direct = group_advantages_direct(rr, reward_weights=w, response_mask=mask, **layout, **kw)
            _nan_eq(direct, expect, atol=1e-6)


# ------------------------------------------------------------------ pairwise
@pytest.mark.parametrize("fn", [group_win_rate, grebt_loss])
def test_pairwise_bad_inputs(fn):
    name = "scores" if fn is group_win_rate else "rewards"
    for bad, exc in ((torch.randn(()), ValueError), (torch.randn(4, 2), ValueError),
                     (torch.randint(0, 3, (4,)), TypeError), (torch.randn(4, dtype=torch.complex64), TypeError),
                     ([1.0, 2.0], TypeError)):
        with pytest.raises(exc, match=name):
            fn(bad, group_size=2)
    with pytest.raises(ValueError, match=name):
        fn(torch.randn(7), group_size=2)
    with pytest.raises(ValueError, match="cu_groups"):
        fn(torch.randn(4), cu_groups=torch.tensor([0, 4, 10**9]))
    with pytest.raises(ValueError, match="group_index"):
        fn(torch.randn(4), group_index=torch.zeros(3, dtype=torch.long))


def test_pairwise_nonfinite_strides_extremes(backend):
    s = torch.tensor([1.0, math.nan, 2.0, 3.0, 0.5, 1e30, -1e30, 0.0])
    w = group_win_rate(s, group_size=4)
    assert bool(torch.isnan(w[:4]).all()) and bool(torch.isfinite(w[4:]).all())
    torch.testing.assert_close(w[4:], torch.tensor([2 / 3, 1.0, 0.0, 1 / 3]))
    s_inf = torch.tensor([math.inf, 1.0, -math.inf, 0.0])
    torch.testing.assert_close(group_win_rate(s_inf, group_size=4), torch.tensor([1.0, 2 / 3, 0.0, 1 / 3]))
    loss = grebt_loss(torch.tensor([1.0, math.nan, 2.0, 3.0, 0.5, 1.0, 2.0, 3.0]), group_size=4, reduction="none")
    assert math.isnan(loss[0]) and math.isfinite(loss[1])
    # inf - inf: the group's loss is NaN on every backend (the reference used to mask it to 0)
    loss = grebt_loss(torch.tensor([math.inf, 0.0, 1.0, 2.0, 0.5, 1.0, 2.0, 3.0]), group_size=4, reduction="none")
    assert math.isnan(loss[0]) and math.isfinite(loss[1])
    # strides: a non-contiguous view gives the result of its contiguous copy
    base = torch.randn(16)
    for layout in (dict(group_size=4), dict(cu_groups=torch.tensor([0, 0, 3, 3, 8, 8])[::2]),
                   dict(group_index=torch.tensor([2, 0, 1, 2, 0, 1, 1, 2, 9, 9, 9, 9, 9, 9, 9, 9])[::2])):
        lc = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in layout.items()}
        _nan_eq(group_win_rate(base[::2], temperature=0.7, **layout), group_win_rate(base[::2].contiguous(),
                                                                                    temperature=0.7, **lc))
        _nan_eq(grebt_loss(base[::2], select=base.flip(0)[::2], reduction="none", **layout),
                grebt_loss(base[::2].contiguous(), select=base.flip(0)[::2].contiguous(), reduction="none", **lc))
    assert group_win_rate(torch.randn(0), group_size=2).shape == (0,)
    assert grebt_loss(torch.randn(0), group_size=2, reduction="none").shape == (0,)


# ------------------------------------------------------------------ beta_posterior
def test_posterior_bad_inputs():
    y = torch.rand(4)
    with pytest.raises(ValueError, match="segment_index"):
        beta_posterior(y, segment_index=torch.tensor([0, 1, 2**62, 3]))
    with pytest.raises(ValueError, match="segment_index|num_segments"):
        beta_posterior(y, segment_index=torch.tensor([0, 1, 2, 3]), num_segments=2**40)
    with pytest.raises(ValueError, match="segment_index"):
        beta_posterior(y, segment_index=torch.tensor([0, 1, -2, 3]), num_segments=4)
    with pytest.raises(ValueError, match="weights"):
        beta_posterior(y, segment_index=torch.tensor([0, 1, 1, 0]), weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="weights"):
        beta_posterior(y, segment_index=torch.tensor([0, 1, 1, 0]), weights=torch.tensor([1.0, math.nan, 1.0, 1.0]))
    with pytest.raises(TypeError, match="weights"):
        beta_posterior(y, segment_index=torch.tensor([0, 1, 1, 0]), weights=torch.ones(4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="outcomes"):
        beta_posterior(torch.rand(4, dtype=torch.complex64), cu_segments=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="outcomes"):
        beta_posterior(torch.tensor([0.5, math.nan]), cu_segments=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="outcomes"):
        beta_posterior(torch.tensor([0.5, 1e30]), cu_segments=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="outcomes"):
        beta_posterior(torch.rand(()), cu_segments=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cu_segments"):
        beta_posterior(y, cu_segments=torch.tensor([0, 2, 10**9]))
    with pytest.raises(ValueError, match="cu_segments"):
        beta_posterior(y, cu_segments=torch.tensor([0, 3, 1, 4]))


def test_posterior_strides_and_empty(backend):
    y = torch.rand(16)[::2]
    w = torch.rand(16)[::2]
    si = torch.tensor([[1, 0, 2, 1, 0, 0, 2, 1], [9] * 8]).t()[:, 0]
    cu = torch.tensor([0, 0, 3, 3, 8, 8])[::2]
    for kw in (dict(segment_index=si), dict(cu_segments=cu)):
        kc = {k: v.contiguous() for k, v in kw.items()}
        a, b = beta_posterior(y, weights=w, discount=0.9, **kw)
        a2, b2 = beta_posterior(y.contiguous(), weights=w.contiguous(), discount=0.9, **kc)
        torch.testing.assert_close((a, b), (a2, b2))
    a, b = beta_posterior(torch.rand(0), segment_index=torch.zeros(0, dtype=torch.long), num_segments=3)
    torch.testing.assert_close(a, torch.ones(3))
    a, b = beta_posterior(torch.rand(0), cu_segments=torch.tensor([0]))
    assert a.shape == (0,)


def test_posterior_devices_and_nonfinite_select():
    y = torch.rand(4)
    with pytest.raises(ValueError, match="segment_index"):
        beta_posterior(y, segment_index=torch.zeros(4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="cu_segments"):
        beta_posterior(y, cu_segments=torch.tensor([0, 4], device="meta"))
    with pytest.raises(ValueError, match="weights"):
        beta_posterior(y, cu_segments=torch.tensor([0, 4]), weights=torch.ones(4, device="meta"))
    with pytest.raises(ValueError, match="weights"):
        beta_posterior(y, cu_segments=torch.tensor([0, 4]), weights=torch.tensor([1.0, math.inf, 1.0, 1.0]))
    with pytest.raises(TypeError, match="segment_index"):
        beta_posterior(y, segment_index=torch.zeros(4))
    # select: NaN poisons only its group; inf is an ordinary (largest) value for the pair choice
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0])
    for b in CPU_BACKENDS:
        with ik.use_backend(b):
            sel = torch.tensor([math.nan, 0.0, 1.0, 2.0, math.inf, 0.0, 1.0, 2.0])
            loss = grebt_loss(r, group_size=4, select=sel, reduction="none")
            assert math.isnan(loss[0]) and math.isfinite(loss[1]), (b, loss)
