"""group_win_rate and grebt_loss against the float64 reference, on every backend and layout.

Inputs are fresh random draws every run: each test seeds torch and `random` from os.urandom and
prints the seed (shown by pytest when the test fails; reproduce with PAIRWISE_SEED=<seed>).
Shapes are tiny: the Triton kernels run through the interpreter on machines without a GPU.
"""
import math
import os
import random

import pytest
import torch

import icrm_kernels
from icrm_kernels import _backend, grebt_loss, group_win_rate, use_backend
from icrm_kernels.reference import pairwise as ref
from icrm_kernels.testing import assert_close, assert_matches_reference, fresh_seed

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _fresh_seed():
    seed = int(os.environ.get("PAIRWISE_SEED", 0)) or fresh_seed()
    print(f"seed {seed}")
    torch.manual_seed(seed)
    random.seed(seed)
LAYOUTS = ["fixed", "ragged", "index"]


def make_layout(kind, device, rng=random):
    """(N, layout kwargs) with groups of varied sizes (singletons and, for ragged, empty groups)."""
    if kind == "fixed":
        g = rng.choice([2, 3, 5, 8])
        b = rng.randint(2, 4)
        return b * g, {"group_size": g}
    if kind == "ragged":
        sizes = [rng.randint(0, 7) for _ in range(5)] + [1, 0, 2]
        rng.shuffle(sizes)
        cu = [0]
        for s in sizes:
            cu.append(cu[-1] + s)
        dtype = rng.choice([torch.int32, torch.int64])
        return cu[-1], {"cu_groups": torch.tensor(cu, dtype=dtype, device=device)}
    n = rng.randint(12, 24)
    ids = torch.randint(0, 6, (n,), device=device) * 7 - 10  # unsorted, negative ids allowed
    ids[0] = 99  # a singleton group
    return n, {"group_index": ids}


def rand(n, dtype, device, scale=1.0):
    return (torch.randn(n, device=device) * scale).to(dtype)


# ------------------------------------------------------------------------- group_win_rate
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("temperature", [None, 0.5, 2.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_win_rate_matches_reference(backend, device, layout, temperature, dtype):
    n, kw = make_layout(layout, device)
    scores = rand(n, dtype, device)
    if temperature is None:  # plant ties
        scores[1] = scores[0]
    grad = [] if temperature is None else ["scores"]
    res = assert_matches_reference(
        lambda scores: group_win_rate(scores, temperature=temperature, **kw),
        lambda scores: ref.group_win_rate(scores, temperature=temperature, **{k: v.cpu() if torch.is_tensor(v) else v
                                                                               for k, v in kw.items()}),
        {"scores": scores},
        grad=grad,
    )
    assert res["out"].dtype == dtype


def test_win_rate_properties(backend, device):
    scores = torch.tensor([3.0, 1.0, 3.0, 2.0, 7.0], device=device)
    w = group_win_rate(scores, cu_groups=torch.tensor([0, 3, 3, 4, 5], device=device))
    assert w.tolist() == [0.75, 0.0, 0.75, 0.5, 0.5]  # ties 0.5, singletons 0.5
    x = torch.randn(24, device=device)
    ws = group_win_rate(x, group_size=6, temperature=0.3)
    torch.testing.assert_close(ws.view(4, 6).sum(1), torch.full((4,), 3.0, device=device))  # sums to n/2
    wh = group_win_rate(x, group_size=6)
    ranks = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], device=device).expand(4, 6)
    torch.testing.assert_close(wh.view(4, 6).sort(1).values, ranks)  # distinct scores: ranks / (n - 1)


def test_win_rate_hard_has_zero_grad(backend, device):
    x = torch.randn(12, device=device, requires_grad=True)
    group_win_rate(x, group_size=4).sum().backward()
    assert x.grad is not None and bool((x.grad == 0).all())


def test_win_rate_nan_propagates(backend, device):
    for temperature in (None, 1.0):
        x = torch.randn(8, device=device)
        x[1] = float("nan")
        w = group_win_rate(x, group_size=4, temperature=temperature)
        assert bool(w[:4].isnan().all()) and not bool(w[4:].isnan().any())


def test_win_rate_empty_and_noncontiguous(backend, device):
    assert group_win_rate(torch.empty(0, device=device), group_size=4).shape == (0,)
    assert group_win_rate(torch.empty(0, device=device), cu_groups=torch.zeros(1, dtype=torch.long, device=device)).shape == (0,)
    base = torch.randn(16, device=device)
    x = base[::2]
    torch.testing.assert_close(group_win_rate(x, group_size=4, temperature=1.0),
                               group_win_rate(x.contiguous(), group_size=4, temperature=1.0))


def test_win_rate_gradcheck(backend, device):
    if backend == "triton":
        pytest.skip("float64 runs the reference on the Triton path")
    n, kw = make_layout("ragged", device)
    x = torch.randn(n, dtype=torch.float64, device=device, requires_grad=True)
    torch.autograd.gradcheck(lambda x: group_win_rate(x, temperature=0.8, **kw), (x,))


# ------------------------------------------------------------------------------ grebt_loss
def _ref_kw(kw):
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in kw.items()}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grebt_matches_reference(backend, device, layout, reduction, dtype):
    n, kw = make_layout(layout, device)
    rewards = rand(n, dtype, device, scale=random.choice([0.1, 1.0, 5.0]))
    alpha = random.choice([0.0, 0.3, 1.0, random.random()])
    eps = random.choice([0.0, 1e-6, 0.1])
    res = assert_matches_reference(
        lambda rewards: grebt_loss(rewards, alpha=alpha, eps=eps, reduction=reduction, **kw),
        lambda rewards: ref.grebt_loss(rewards, alpha=alpha, eps=eps, reduction=reduction, **_ref_kw(kw)),
        {"rewards": rewards},
        grad=["rewards"],
        dtype=dtype,  # half precision: the low-precision rule of testing.assert_close_to_reference
    )
    assert res["out"].dtype == torch.float32
    assert res["grads"]["rewards"].dtype == dtype


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grebt_with_select(backend, device, layout):
    n, kw = make_layout(layout, device)
    rewards = torch.randn(n, device=device)
    select = torch.randint(0, 3, (n,), device=device).float()  # many ties: first index wins
    assert_matches_reference(
        lambda rewards, select: grebt_loss(rewards, select=select, reduction="none", **kw),
        lambda rewards, select: ref.grebt_loss(rewards, select=select, reduction="none", **_ref_kw(kw)),
        {"rewards": rewards, "select": select},
        grad=["rewards"],
    )


def test_grebt_gradcheck(backend, device):
    if backend == "triton":
        pytest.skip("float64 runs the reference on the Triton path")
    for layout in LAYOUTS:
        n, kw = make_layout(layout, device)
        x = torch.randn(n, dtype=torch.float64, device=device, requires_grad=True)
        torch.autograd.gradcheck(lambda x: grebt_loss(x, alpha=0.4, reduction="mean", **kw), (x,))
        # skipped groups are NaN in "none": keep them out of the numerical Jacobian
        torch.autograd.gradcheck(lambda x: grebt_loss(x, alpha=0.7, eps=0.0, reduction="none", **kw).nan_to_num(), (x,))


def test_grebt_singletons_skipped(backend, device):
    r = torch.randn(6, device=device, requires_grad=True)
    cu = torch.tensor([0, 1, 4, 5, 6], device=device)
    losses = grebt_loss(r, cu_groups=cu, reduction="none")
    assert losses[[0, 2, 3]].isnan().all() and not losses[1].isnan()
    mean = grebt_loss(r, cu_groups=cu)
    assert_close(mean, losses[1], atol=1e-6, rtol=1e-6)
    mean.backward()
    assert bool((r.grad[[0, 4, 5]] == 0).all())
    # no group of two: the mean is 0 with zero gradient, not NaN
    r2 = torch.randn(5, device=device, requires_grad=True)
    m2 = grebt_loss(r2, group_size=1)
    m2.backward()
    assert m2.item() == 0.0 and bool((r2.grad == 0).all())


def test_grebt_pairs_entropy_constant(backend, device):
    r = torch.randn(16, device=device) * 3
    gre = grebt_loss(r, group_size=2, alpha=1.0, eps=0.0, reduction="none")
    p = 1 / (1 + math.exp(-2.0))  # softmax(1, -1)
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    torch.testing.assert_close(gre, torch.full((8,), h, device=device), atol=1e-5, rtol=1e-5)


def test_grebt_ties(backend, device):
    r = torch.full((8,), 0.3, device=device, requires_grad=True)
    loss = grebt_loss(r, group_size=4, alpha=0.25)
    loss.backward()
    assert abs(loss.item() - (0.75 * math.log(2) + 0.25 * math.log(4))) < 1e-5
    assert bool((r.grad == 0).all())


def test_grebt_nan_propagates(backend, device):
    r = torch.randn(8, device=device)
    r[5] = float("nan")
    losses = grebt_loss(r, group_size=4, reduction="none")
    assert losses[1].isnan() and not losses[0].isnan()
    assert grebt_loss(r, group_size=4).isnan()
    sel = torch.randn(8, device=device)
    sel[0] = float("nan")
    r = torch.randn(8, device=device, requires_grad=True)
    losses = grebt_loss(r, group_size=4, select=sel, reduction="none")
    assert losses[0].isnan() and not losses[1].isnan()
    losses[1].backward()
    assert not r.grad.isnan().any()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("eager", [True, False])
def test_grebt_nan_loss_with_zero_gradient_sends_none_back(backend, device, reduction, eager):
    """A NaN total that receives a zero gradient (a loss term switched off with ``0 * loss``)
    sends back zeros, not NaN; a non-zero gradient keeps the NaN (the eager node reads a CPU
    scalar gradient instead of masking; the op path masks)."""
    r = torch.randn(8, device=device)
    r[5] = float("nan")
    r.requires_grad_(True)
    with _backend.eager_autograd(eager):
        (g0,) = torch.autograd.grad(0 * grebt_loss(r, group_size=4, reduction=reduction), (r,))
        (g1,) = torch.autograd.grad(grebt_loss(r, group_size=4, reduction=reduction), (r,))
    assert bool((g0 == 0).all()) and not g0.signbit().any(), g0
    assert g1.isnan().any()


def test_grebt_empty(backend, device):
    r = torch.empty(0, device=device, requires_grad=True)
    assert grebt_loss(r, group_size=4).item() == 0.0
    assert grebt_loss(r, group_size=4, reduction="sum").item() == 0.0
    assert grebt_loss(r, group_size=4, reduction="none").shape == (0,)
    assert grebt_loss(r, group_index=torch.empty(0, dtype=torch.long, device=device), reduction="none").shape == (0,)
    out = grebt_loss(r, cu_groups=torch.zeros(3, dtype=torch.long, device=device), reduction="none")
    assert out.shape == (2,) and bool(out.isnan().all())


def test_grebt_deterministic(backend, device):
    n, kw = make_layout("index", device)
    r = torch.randn(n, device=device, requires_grad=True)
    a = grebt_loss(r, **kw)
    (ga,) = torch.autograd.grad(a, r)
    b = grebt_loss(r, **kw)
    (gb,) = torch.autograd.grad(b, r)
    assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("kw", [{"group_size": 20}, {"group_size": 300}, {"cu_groups": [0, 70, 73, 213]}],
                         ids=["G=20", "G=300", "ragged-70-3-140"])
def test_large_groups(backend, device, kw):
    """Groups past the kernels' tiles: the multi-tile loops and the one-group-per-program path."""
    kw = {k: torch.tensor(v, device=device) if isinstance(v, list) else v for k, v in kw.items()}
    n = 600 if kw.get("group_size") == 300 else (213 if "cu_groups" in kw else 60)
    r = torch.randn(n, device=device)
    r[5] = r[3]  # a tie
    assert_matches_reference(lambda r: grebt_loss(r, alpha=0.6, reduction="none", **kw),
                             lambda r: ref.grebt_loss(r, alpha=0.6, reduction="none", **_ref_kw(kw)), {"r": r}, grad=["r"])
    if n != 600:
        for t in (None, 0.9):
            assert_matches_reference(lambda r: group_win_rate(r, temperature=t, **kw),
                                     lambda r: ref.group_win_rate(r, temperature=t, **_ref_kw(kw)), {"r": r},
                                     grad=[] if t is None else ["r"])


# ------------------------------------------------------------------------------ bad inputs
def test_bad_inputs(device):
    r = torch.randn(8, device=device)
    with pytest.raises(ValueError, match="rewards"):
        grebt_loss(r.view(2, 4), group_size=4)
    with pytest.raises(ValueError, match="scores"):
        group_win_rate(r.view(2, 4), group_size=4)
    with pytest.raises(TypeError, match="scores"):
        group_win_rate(torch.arange(8, device=device), group_size=4)
    with pytest.raises(ValueError, match="select"):
        grebt_loss(r, group_size=4, select=torch.randn(7, device=device))
    with pytest.raises(ValueError, match="alpha"):
        grebt_loss(r, group_size=4, alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        grebt_loss(r, group_size=4, alpha=-0.1)
    with pytest.raises(ValueError, match="eps"):
        grebt_loss(r, group_size=4, eps=-1e-6)
    with pytest.raises(ValueError, match="temperature"):
        group_win_rate(r, group_size=4, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        group_win_rate(r, group_size=4, temperature=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        grebt_loss(r, group_size=4, reduction="avg")
    with pytest.raises(ValueError, match="group_size"):
        grebt_loss(r, group_size=3)
    with pytest.raises(ValueError, match="exactly one"):
        group_win_rate(r)
    with pytest.raises(ValueError, match="exactly one"):
        grebt_loss(r, group_size=4, group_index=torch.zeros(8, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="cu_groups"):
        grebt_loss(r, cu_groups=torch.tensor([0, 3, 7], device=device))
    with pytest.raises(ValueError, match="cu_groups"):
        group_win_rate(r, cu_groups=torch.tensor([0, 5, 3, 8], device=device))
    with pytest.raises(ValueError, match="group_index"):
        grebt_loss(r, group_index=torch.zeros(5, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="select"):  # mixed devices
        grebt_loss(r, group_size=4, select=torch.randn(8, device="meta"))
    with pytest.raises(ValueError, match="cu_groups"):
        group_win_rate(r, cu_groups=torch.tensor([0, 8], device="meta"))


def test_unchecked_malformed_offsets_stay_in_bounds(backend, device):
    r = torch.randn(8, device=device)
    cu = torch.tensor([0, 6, 3, 20, 8], device=device)  # not monotone, past the end
    # every backend, the reference included, clamps the offsets (issue 9): no IndexError, no
    # device-side assert, results of the documented shapes
    with icrm_kernels.unchecked():
        w = group_win_rate(r, cu_groups=cu, temperature=1.0)
        loss = grebt_loss(r, cu_groups=cu, reduction="none")
    assert w.shape == (8,) and loss.shape == (4,)


# --------------------------------------------------------------------------- torch.compile
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    ids = torch.tensor([3, 1, 3, 0, 1, 1, 2, 3, 0, 5, 0, 1])

    def step(r, s, cu):
        loss = grebt_loss(r, group_size=4) + grebt_loss(r, cu_groups=cu, reduction="sum", alpha=0.5)
        loss = loss + grebt_loss(r, group_index=ids, select=s.detach())
        w = group_win_rate(s, group_size=4, temperature=0.5) + group_win_rate(s, cu_groups=cu)
        w = w + group_win_rate(s, group_index=ids, temperature=2.0)
        return loss + (w * w).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    r = torch.randn(12, requires_grad=True)
    s = torch.randn(12, requires_grad=True)
    cu = torch.tensor([0, 3, 4, 12])
    out = compiled(r, s, cu)
    out.backward()
    r2 = r.detach().clone().requires_grad_(True)
    s2 = s.detach().clone().requires_grad_(True)
    expected = step(r2, s2, cu)
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(r.grad, r2.grad)
    torch.testing.assert_close(s.grad, s2.grad)


def test_exported():
    assert icrm_kernels.grebt_loss is grebt_loss and icrm_kernels.group_win_rate is group_win_rate
    with use_backend("reference"):
        assert grebt_loss(torch.randn(4), group_size=2).dtype == torch.float32
