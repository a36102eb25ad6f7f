"""ICRM Beta posterior math (docs/beta.md): every op against the float64 reference, every backend."""
import itertools
import math
import os
import subprocess
import sys

import pytest
import torch

import icrm_kernels
from icrm_kernels import _backend
from icrm_kernels import (
    BetaStats,
    beta_elbo_loss,
    beta_elbo_loss_from_logits,
    beta_from_logits,
    beta_kl,
    beta_posterior,
    beta_stats,
    hypervolume,
    steer,
)
from icrm_kernels.nn import BetaRewardHead
from icrm_kernels.reference import beta as ref
from icrm_kernels.testing import assert_matches_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _params(n, device, dtype=torch.float32, lo=-3.0, hi=5.0):
    """Log-uniform alpha, beta in [e^lo, e^hi]."""
    a = torch.exp(torch.empty(n, device=device).uniform_(lo, hi)).to(dtype)
    b = torch.exp(torch.empty(n, device=device).uniform_(lo, hi)).to(dtype)
    return a, b


# ------------------------------------------------------------------ ELBO
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_elbo_matches_reference(backend, device, dtype, reduction):
    a, b = _params(37, device, dtype)
    y = torch.rand(37, device=device).to(dtype)
    inputs = dict(alpha=a, beta=b, labels=y)
    kw = dict(prior_alpha=1.5, prior_beta=0.7, kl_weight=0.3, reduction=reduction)
    assert_matches_reference(lambda **k: beta_elbo_loss(**k, **kw), lambda **k: ref.beta_elbo_loss(**k, **kw),
                             inputs, grad=["alpha", "beta"])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_elbo_weights_and_hard_labels(backend, device, reduction):
    a, b = _params(29, device)
    y = torch.randint(0, 2, (29,), device=device).float()
    w = torch.rand(29, device=device) * 2
    kw = dict(reduction=reduction)
    # weights travel with the inputs so the float64 reference gets them on its own device
    assert_matches_reference(lambda **k: beta_elbo_loss(**k, **kw), lambda **k: ref.beta_elbo_loss(**k, **kw),
                             dict(alpha=a, beta=b, labels=y, weights=w), grad=["alpha", "beta"])
    # bool labels are accepted
    out = beta_elbo_loss(a, b, y.bool(), weights=w, reduction=reduction)
    torch.testing.assert_close(out, beta_elbo_loss(a, b, y, weights=w, reduction=reduction))


@pytest.mark.parametrize("dtype", DTYPES)
def test_elbo_from_logits_matches_reference(backend, device, dtype):
    m = (torch.randn(33, device=device) * 3).to(dtype)
    c = (torch.randn(33, device=device) * 3).to(dtype)
    y = torch.rand(33, device=device).to(dtype)
    w = torch.rand(33, device=device).to(dtype)
    # fp16 tops out at 65504: a sum of 33 losses of up to ~1e4 (alpha ~ 1e-4) can overflow it
    kw = dict(tau_min=0.05, kl_weight=0.5, reduction="mean" if dtype == torch.float16 else "sum")
    assert_matches_reference(lambda **k: beta_elbo_loss_from_logits(**k, **kw),
                             lambda **k: ref.beta_elbo_loss_from_logits(**k, **kw),
                             dict(mean_logit=m, conc_logit=c, labels=y, weights=w), grad=["mean_logit", "conc_logit"],
                             dtype=dtype)


def test_elbo_gradcheck_float64(backend, device):
    a, b = _params(8, device, torch.float64, -1.0, 3.0)
    y = torch.rand(8, dtype=torch.float64, device=device)
    w = torch.rand(8, dtype=torch.float64, device=device)
    a.requires_grad_()
    b.requires_grad_()
    f = lambda a, b: beta_elbo_loss(a, b, y, prior_alpha=2.0, kl_weight=0.7, weights=w, reduction="none")  # noqa: E731
    assert torch.autograd.gradcheck(f, (a, b))
    m = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    c = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, c: beta_elbo_loss_from_logits(m, c, y, reduction="mean"), (m, c))


@pytest.mark.parametrize("scale", [1e-4, 1e6])
def test_elbo_extreme_concentrations(backend, device, scale):
    """alpha, beta near 0 (1e-4) and huge (1e6): fp32 result against float64."""
    n = 24
    a = (scale * (0.5 + torch.rand(n, device=device))).float()
    b = (scale * (0.5 + torch.rand(n, device=device))).float()
    y = torch.rand(n, device=device)
    kw = dict(prior_alpha=1.0, prior_beta=1.0, reduction="none")
    # at 1e6 the gradients are O(1e-6): absolute tolerance. At 1e-4 the gradient is a sum of
    # +-psi'(.) ~ 1/alpha^2 ~ 1e8 terms that can cancel to ~1e3: fp32 resolves them to ~1e-7
    # relative, i.e. ~10 absolute; the loss itself (O(1e4)) is relative-accurate.
    tol = dict(atol=2e-5, rtol=1e-4) if scale > 1 else dict(atol=1e-3, rtol=1e-4, grad_atol=1e2)
    res = assert_matches_reference(lambda **k: beta_elbo_loss(**k, **kw), lambda **k: ref.beta_elbo_loss(**k, **kw),
                                   dict(alpha=a, beta=b, labels=y), grad=["alpha", "beta"], **tol)
    assert torch.isfinite(res["out"]).all()
    with torch.no_grad():
        st = beta_stats(a, b)
        rs = ref.beta_stats(a.double(), b.double())
    for name, got, want in zip(BetaStats._fields, st, rs):
        torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(beta_kl(a, b).double(), ref.beta_kl(a.double(), b.double()), atol=2e-5, rtol=1e-4)


def test_logit_mean_small_nearby_concentrations(backend, device):
    """E[logit t] = psi(a) - psi(b) for a, b -> 0 and a ~ b: two ~1/a poles cancel. Computed as
    psi(a+1) - psi(b+1) + (a - b)/(a b), it keeps its digits (the plain difference loses ~1e-3
    absolute at a ~ 1e-4 in fp32; this test failed on it). Deterministic edge values."""
    a = torch.tensor([1e-4, 1e-4, 3e-5, 1e-6, 2e-3, 0.5, 0.9, 1e-3, 7.0, 3.0], dtype=torch.float32)
    b = a * torch.tensor([1 + 1e-6, 1 - 3e-6, 1 + 1e-5, 1 + 1e-4, 1 - 1e-6, 1 + 1e-6, 1.0, 5e4, 1.0, 1 + 1e-6])
    with torch.no_grad():
        got = beta_stats(a.to(device), b.to(device)).logit_mean.double().cpu()
    want = ref.beta_stats(a.double(), b.double()).logit_mean
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


_BASELINE_ISA_SCRIPT = """
import torch
from icrm_kernels import beta_elbo_loss, beta_elbo_loss_from_logits, beta_stats, use_backend
from icrm_kernels.reference import beta as ref
from icrm_kernels.testing import assert_matches_reference
torch.manual_seed(0)
n = 1300  # two full lane blocks and a partial one
a, b = torch.exp(torch.empty(2, n).uniform_(-9.0, 13.0))
y, w = torch.rand(n), torch.rand(n) * 2
m, c = torch.randn(2, n) * 3
kw = dict(prior_alpha=1.5, prior_beta=0.7, kl_weight=0.3, reduction="none")
with use_backend("cpp"):
    assert_matches_reference(lambda **k: beta_elbo_loss(**k, **kw), lambda **k: ref.beta_elbo_loss(**k, **kw),
                             dict(alpha=a, beta=b, labels=y, weights=w), grad=["alpha", "beta"], grad_atol=1e2)
    assert_matches_reference(lambda **k: beta_elbo_loss_from_logits(**k, reduction="sum"),
                             lambda **k: ref.beta_elbo_loss_from_logits(**k, reduction="sum"),
                             dict(mean_logit=m, conc_logit=c, labels=y), grad=["mean_logit", "conc_logit"])
    got = beta_stats(a, b)
want = ref.beta_stats(a.double(), b.double())
for g, r in zip(got, want):
    torch.testing.assert_close(g.double(), r, atol=2e-5, rtol=1e-3)
"""


@pytest.mark.skipif(not _backend.HAS_CPP, reason="needs the C++ extension")
@pytest.mark.parametrize("flag", ["ICRM_NO_AVX512", "ICRM_NO_AVX2"])
def test_cpu_float32_lane_kernels_other_isa(flag):
    """The AVX2 copy (ICRM_NO_AVX512=1: what CPUs without AVX-512 run) and the baseline-ISA copy
    (ICRM_NO_AVX2=1: CPUs without AVX2+FMA) of the float32 CPU lane kernels against float64, in a
    fresh process: the choice is made once."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(icrm_kernels.__file__)))
    env = dict(os.environ, **{flag: "1"}, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _BASELINE_ISA_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_elbo_optimum_in_tau_is_finite(device):
    """ICRM's property: for a fixed dataset the ELBO has an interior optimum in the concentration."""
    y = (torch.rand(200, device=device) < 0.7).float()
    mu = 0.7
    taus = torch.logspace(-2, 5, 141, device=device, dtype=torch.float64)
    losses = []
    for tau in taus.tolist():
        a = torch.full_like(y, mu * tau)
        b = torch.full_like(y, (1 - mu) * tau)
        losses.append(float(beta_elbo_loss(a, b, y)))
    i = min(range(len(losses)), key=losses.__getitem__)
    assert 0 < i < len(losses) - 1, f"optimum at the edge of the grid (tau={taus[i].item()})"
    assert losses[0] > losses[i] + 0.1 and losses[-1] > losses[i] + 1.0
    # the gradient in tau changes sign at the optimum
    tau = taus[i].item()
    t = torch.tensor([tau * 0.5, tau * 2.0], device=device, requires_grad=True)
    loss = beta_elbo_loss(mu * t[:, None].expand(2, 200), (1 - mu) * t[:, None].expand(2, 200),
                          y.expand(2, 200), reduction="none").mean(1)
    g_lo, = torch.autograd.grad(loss[0], t, retain_graph=True)
    g_hi, = torch.autograd.grad(loss[1], t)
    assert g_lo[0] < 0 < g_hi[1]


def test_elbo_no_grad_path_and_empty(device):
    a, b = _params(10, device)
    with torch.no_grad():
        l1 = beta_elbo_loss(a, b, torch.rand(10, device=device))
    assert l1.shape == ()
    e = torch.empty(0, device=device)
    assert beta_elbo_loss(e, e, e, reduction="none").shape == (0,)
    assert float(beta_elbo_loss(e, e, e, reduction="sum")) == 0.0


def test_elbo_multidim(device):
    a, b = _params(12, device)
    a, b = a.reshape(3, 4), b.reshape(3, 4)
    y = torch.rand(3, 4, device=device)
    out = beta_elbo_loss(a, b, y, reduction="none")
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.double(), ref.beta_elbo_loss(a.double(), b.double(), y.double(), reduction="none"),
                               atol=2e-5, rtol=2e-4)


def test_unchecked_gives_nan(device):
    a = torch.tensor([1.0, -1.0, 0.0, 2.0], device=device)
    b = torch.tensor([1.0, 1.0, 1.0, float("nan")], device=device)
    y = torch.full((4,), 0.5, device=device)
    with icrm_kernels.unchecked():
        out = beta_elbo_loss(a, b, y, reduction="none")
        st = beta_stats(a, b)
    assert torch.isfinite(out[0]) and torch.isnan(out[1:]).all()
    assert torch.isnan(st.entropy[1:]).all()


def test_elbo_bad_inputs(device):
    a, b = _params(6, device)
    y = torch.rand(6, device=device)
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        beta_elbo_loss(-a, b, y)
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        beta_elbo_loss(a, b * float("inf"), y)
    with pytest.raises(ValueError, match="labels must lie in"):
        beta_elbo_loss(a, b, y + 1.5)
    with pytest.raises(ValueError, match="prior_alpha"):
        beta_elbo_loss(a, b, y, prior_alpha=0.0)
    with pytest.raises(ValueError, match="prior_beta"):
        beta_elbo_loss(a, b, y, prior_beta=-1.0)
    with pytest.raises(ValueError, match="labels must have the shape"):
        beta_elbo_loss(a, b, y[:5])
    with pytest.raises(ValueError, match="beta must have the shape"):
        beta_elbo_loss(a, b[:5], y)
    with pytest.raises(ValueError, match="weights must have the shape"):
        beta_elbo_loss(a, b, y, weights=y[:3])
    with pytest.raises(ValueError, match="reduction"):
        beta_elbo_loss(a, b, y, reduction="avg")
    with pytest.raises(TypeError, match="beta has dtype"):
        beta_elbo_loss(a, b.double(), y)
    with pytest.raises(ValueError, match="conc_logit must be finite"):
        beta_elbo_loss_from_logits(a, b * float("nan"), y)
    with pytest.raises(ValueError, match="tau_min"):
        beta_elbo_loss_from_logits(a, b, y, tau_min=-1.0)
    with pytest.raises(ValueError, match="kl_weight"):
        beta_elbo_loss(a, b, y, kl_weight=float("nan"))


# ------------------------------------------------------------------ KL, from_logits
def test_beta_kl(backend, device):
    a, b = _params(31, device)
    assert_matches_reference(lambda **k: beta_kl(**k, prior_alpha=2.0, prior_beta=3.0),
                             lambda **k: ref.beta_kl(**k, prior_alpha=2.0, prior_beta=3.0),
                             dict(alpha=a, beta=b), grad=["alpha", "beta"])
    # KL to itself is 0; tensor priors take the reference path
    torch.testing.assert_close(beta_kl(a, b, a, b), torch.zeros_like(a), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="prior_alpha"):
        beta_kl(a, b, -a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_beta_from_logits(backend, device, dtype):
    m = (torch.randn(20, device=device) * 4).to(dtype)
    c = (torch.randn(20, device=device) * 4).to(dtype)
    assert_matches_reference(lambda **k: beta_from_logits(**k, tau_min=0.1),
                             lambda **k: ref.beta_from_logits(**k, tau_min=0.1),
                             dict(mean_logit=m, conc_logit=c), grad=["mean_logit", "conc_logit"])
    a, b = beta_from_logits(m, c, tau_min=0.1)
    a2, b2 = beta_from_logits(-m, c, tau_min=0.1)  # swapping a and b: mu -> 1 - mu
    torch.testing.assert_close(a2, b)
    torch.testing.assert_close(b2, a)
    assert ((a.float() + b.float()) >= 0.1 - 1e-3).all()


def test_beta_from_logits_gradcheck(backend, device):
    m = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    c = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, c: beta_from_logits(m, c, 0.05), (m, c))


# ------------------------------------------------------------------ stats, steer
@pytest.mark.parametrize("dtype", DTYPES)
def test_beta_stats(backend, device, dtype):
    a, b = _params(27, device, dtype)
    # low precision: each gradient sums six terms of size up to ~1/alpha that partly cancel; the
    # rule of testing.assert_close_to_reference measures that error on the inputs at hand
    res = assert_matches_reference(lambda **k: tuple(beta_stats(**k)), lambda **k: tuple(ref.beta_stats(**k)),
                                   dict(alpha=a, beta=b), grad=["alpha", "beta"])
    st = beta_stats(a, b)
    assert isinstance(st, BetaStats) and st.mean.dtype == dtype


def test_beta_stats_gradcheck(backend, device):
    a, b = _params(6, device, torch.float64, -1.0, 3.0)
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: tuple(beta_stats(a, b)), (a, b))


@pytest.mark.parametrize("statistic", BetaStats._fields)
def test_steer_one_hot_is_single_objective(backend, device, statistic):
    a, b = _params(5 * 3, device)
    a, b = a.reshape(5, 3), b.reshape(5, 3)
    for k in range(3):
        w = torch.zeros(3, device=device)
        w[k] = 1.0
        torch.testing.assert_close(steer(a, b, w, statistic), getattr(beta_stats(a[:, k], b[:, k]), statistic))


def test_steer_weights_per_row_and_grad(backend, device):
    a, b = _params(4 * 3, device)
    a, b = a.reshape(4, 3), b.reshape(4, 3)
    w = torch.rand(4, 3, device=device)
    assert_matches_reference(lambda **k: steer(**k, statistic="log_mean"),
                             lambda **k: ref.steer(**k, statistic="log_mean"),
                             dict(alpha=a, beta=b, weights=w), grad=["alpha", "beta", "weights"])


def test_steer_bad_inputs(device):
    a, b = _params(6, device)
    a, b = a.reshape(2, 3), b.reshape(2, 3)
    with pytest.raises(ValueError, match="weights must have shape"):
        steer(a, b, torch.rand(4, device=device))
    with pytest.raises(ValueError, match="weights must have shape"):
        steer(a, b, torch.rand(3, 3, device=device))
    with pytest.raises(ValueError, match="statistic"):
        steer(a, b, torch.rand(3, device=device), statistic="median")
    with pytest.raises(ValueError, match="alpha must be finite"):
        steer(-a, b, torch.rand(3, device=device))


# ------------------------------------------------------------------ posterior
def _brute_posterior(y, seg, k, w, a0, b0, g):
    """Plain loops: segment members in order of appearance."""
    alpha = [a0] * k
    beta = [b0] * k
    for s in range(k):
        rows = [i for i in range(len(seg)) if seg[i] == s]
        n = len(rows)
        for pos, i in enumerate(rows):
            f = (1.0 if w is None else w[i]) * g ** (n - 1 - pos)
            alpha[s] += f * y[i]
            beta[s] += f * (1 - y[i])
    return torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)


@pytest.mark.parametrize("layout", ["cu", "index"])
@pytest.mark.parametrize("discount", [1.0, 0.8])
@pytest.mark.parametrize("weighted", [False, True])
def test_posterior_matches_loops(backend, device, layout, discount, weighted):
    k = 7
    sizes = torch.randint(0, 9, (k,))
    m = int(sizes.sum())
    y = torch.rand(m, device=device)
    w = torch.rand(m, device=device) * 2 if weighted else None
    seg_sorted = torch.repeat_interleave(torch.arange(k), sizes)
    if layout == "cu":
        cu = torch.zeros(k + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(sizes, 0)
        seg = seg_sorted
        alpha, beta = beta_posterior(y, cu_segments=cu.to(device), weights=w, prior_alpha=0.5, prior_beta=2.0,
                                     discount=discount)
    else:
        seg = seg_sorted[torch.randperm(m)]
        alpha, beta = beta_posterior(y, segment_index=seg.to(device), num_segments=k, weights=w, prior_alpha=0.5,
                                     prior_beta=2.0, discount=discount)
    ea, eb = _brute_posterior(y.double().cpu().tolist(), seg.tolist(), k,
                              None if w is None else w.double().cpu().tolist(), 0.5, 2.0, discount)
    assert alpha.shape == (k,) and alpha.dtype == torch.float32
    torch.testing.assert_close(alpha.double().cpu(), ea, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(beta.double().cpu(), eb, atol=1e-5, rtol=1e-5)
    # the package's reference agrees too
    ra, rb = ref.beta_posterior(y.double().cpu(), segment_index=seg, num_segments=k,
                                weights=None if w is None else w.double().cpu(), prior_alpha=0.5, prior_beta=2.0,
                                discount=discount)
    torch.testing.assert_close(ra, ea)
    torch.testing.assert_close(rb, eb)


@pytest.mark.parametrize("layout", ["cu", "index"])
def test_posterior_ragged_long_segments(backend, device, layout):
    """Segment lengths from 0 to a few hundred: several steps per tile, masked tails."""
    sizes = torch.tensor([0, 150, 3, 40, 1, 0, 77, 300, 2])[torch.randperm(9)]
    k, m = 9, int(sizes.sum())
    y = torch.rand(m, device=device)
    w = torch.rand(m, device=device)
    seg = torch.repeat_interleave(torch.arange(k), sizes)
    if layout == "cu":
        cu = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
        alpha, beta = beta_posterior(y, cu_segments=cu.to(device), weights=w, discount=0.97)
    else:
        perm = torch.randperm(m)
        seg, y, w = seg[perm], y[perm.to(device)], w[perm.to(device)]
        alpha, beta = beta_posterior(y, segment_index=seg.to(device), num_segments=k, weights=w, discount=0.97)
    ea, eb = _brute_posterior(y.double().cpu().tolist(), seg.tolist(), k, w.double().cpu().tolist(), 1.0, 1.0, 0.97)
    torch.testing.assert_close(alpha.double().cpu(), ea, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(beta.double().cpu(), eb, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("tile", [16, 2048])
def test_posterior_tile_sizes(device, tile, monkeypatch):
    """The Triton posterior with other demonstrations-per-program tiles (the benchmark's
    candidate 2048, and 16: one segment per program): same sums."""
    from icrm_kernels import _backend

    if "triton" not in _backend.available_backends(device):
        pytest.skip("no Triton backend here")
    from icrm_kernels.triton import beta as tri

    sizes = torch.tensor([5, 0, 64, 3, 130, 1, 17, 64])
    k, m = sizes.numel(), int(sizes.sum())
    y, w = torch.rand(m, device=device), torch.rand(m, device=device)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)]).to(device)
    with tri.posterior_tile(tile), icrm_kernels.use_backend("triton"):
        alpha, beta = beta_posterior(y, cu_segments=cu, weights=w, discount=0.9)
    seg = torch.repeat_interleave(torch.arange(k), sizes).tolist()
    ea, eb = _brute_posterior(y.double().cpu().tolist(), seg, k, w.double().cpu().tolist(), 1.0, 1.0, 0.9)
    torch.testing.assert_close(alpha.double().cpu(), ea, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(beta.double().cpu(), eb, atol=1e-4, rtol=1e-5)


def test_posterior_hard_labels_is_conjugate_update(backend, device):
    seg = torch.randint(0, 5, (60,), device=device)
    y = torch.randint(0, 2, (60,), device=device).bool()
    alpha, beta = beta_posterior(y, segment_index=seg, num_segments=6, prior_alpha=1.0, prior_beta=3.0)
    for s in range(6):
        sel = seg == s
        n, wins = int(sel.sum()), int(y[sel].sum())
        assert alpha[s].item() == 1.0 + wins and beta[s].item() == 3.0 + n - wins
    # K inferred from max(segment_index) + 1
    a2, _ = beta_posterior(y, segment_index=seg)
    assert a2.shape == (int(seg.max()) + 1,)


def test_posterior_float64_and_empty(device):
    y = torch.rand(10, dtype=torch.float64, device=device)
    cu = torch.tensor([0, 4, 4, 10], device=device)
    a, b = beta_posterior(y, cu_segments=cu, discount=0.5)
    assert a.dtype == torch.float64 and a[1].item() == 1.0 and b[1].item() == 1.0
    a, b = beta_posterior(torch.empty(0, device=device), cu_segments=torch.zeros(3, dtype=torch.int64, device=device))
    assert a.tolist() == [1.0, 1.0]


def test_posterior_bad_inputs(device):
    y = torch.rand(8, device=device)
    cu = torch.tensor([0, 3, 8], device=device)
    idx = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1], device=device)
    with pytest.raises(ValueError, match="outcomes must lie in"):
        beta_posterior(y + 1, cu_segments=cu)
    with pytest.raises(ValueError, match="discount"):
        beta_posterior(y, cu_segments=cu, discount=0.0)
    with pytest.raises(ValueError, match="discount"):
        beta_posterior(y, cu_segments=cu, discount=1.5)
    with pytest.raises(ValueError, match="prior_alpha"):
        beta_posterior(y, cu_segments=cu, prior_alpha=0)
    with pytest.raises(ValueError, match="weights must have one entry"):
        beta_posterior(y, cu_segments=cu, weights=torch.rand(5, device=device))
    with pytest.raises(ValueError, match="segment_index must have one id per row"):
        beta_posterior(y, segment_index=idx[:5])
    with pytest.raises(ValueError, match="cu_segments must end at"):
        beta_posterior(y, cu_segments=torch.tensor([0, 3, 7], device=device))
    with pytest.raises(ValueError, match="cu_segments must be non-decreasing"):
        beta_posterior(y, cu_segments=torch.tensor([0, 5, 3, 8], device=device))
    with pytest.raises(ValueError, match="cu_segments must start at 0"):
        beta_posterior(y, cu_segments=torch.tensor([1, 3, 8], device=device))
    with pytest.raises(ValueError, match="segment_index must hold segment numbers"):
        beta_posterior(y, segment_index=idx, num_segments=2)
    with pytest.raises(ValueError, match="segment_index must hold segment numbers"):
        beta_posterior(y, segment_index=idx - 1)
    with pytest.raises(ValueError, match="exactly one of cu_segments and segment_index"):
        beta_posterior(y, cu_segments=cu, segment_index=idx)
    with pytest.raises(ValueError, match="num_segments"):
        beta_posterior(y, cu_segments=cu, num_segments=3)
    with pytest.raises(ValueError, match="outcomes must be 1-D"):
        beta_posterior(y.reshape(2, 4), cu_segments=cu)
    # unchecked: ids out of range are ignored, no crash
    with icrm_kernels.unchecked():
        a, _ = beta_posterior(y, segment_index=idx, num_segments=2)
    assert a.shape == (2,)


# ------------------------------------------------------------------ hypervolume
def _grid_volume(points, ref_point):
    """Count unit cells of an integer grid covered by the union of boxes (exact for integer data)."""
    d = len(ref_point)
    hi = [int(max(p[j] for p in points)) for j in range(d)] if points else [0] * d
    count = 0
    for cell in itertools.product(*[range(int(ref_point[j]), hi[j]) for j in range(d)]):
        if any(all(cell[j] + 1 <= p[j] for j in range(d)) for p in points):
            count += 1
    return float(count)


@pytest.mark.parametrize("d", [2, 3])
def test_hypervolume_vs_brute_force(device, d):
    for _ in range(5):
        n = int(torch.randint(1, 8, ()))
        pts = torch.randint(1, 7, (n, d)).double()
        got = hypervolume(pts.to(device), torch.zeros(d))
        assert got.item() == _grid_volume(pts.tolist(), [0] * d)
        pts = torch.rand(n, d, dtype=torch.float64) + 0.1
        r = torch.full((d,), 0.05, dtype=torch.float64)
        torch.testing.assert_close(hypervolume(pts.to(device), r).cpu(), ref.hypervolume(pts, r))


def test_hypervolume_clip_and_bad_inputs(device):
    pts = torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.5, -1.0]], device=device)
    with pytest.raises(ValueError, match="ref does not bound the points"):
        hypervolume(pts, [0.0, 0.0])
    assert hypervolume(pts, [0.0, 0.0], clip=True).item() == 3.0
    with pytest.raises(ValueError, match="points must have 2 or 3 columns"):
        hypervolume(torch.rand(4, 4, device=device), [0.0] * 4)
    with pytest.raises(ValueError, match="points must be 2-D"):
        hypervolume(torch.rand(4, device=device), [0.0, 0.0])
    with pytest.raises(ValueError, match="ref must have 2 entries"):
        hypervolume(torch.rand(4, 2, device=device), [0.0, 0.0, 0.0])
    assert hypervolume(torch.empty(0, 3, device=device), [0.0, 0.0, 0.0]).item() == 0.0


# ------------------------------------------------------------------ module
def test_beta_reward_head_drop_in_and_pair_symmetry(device):
    class TinyRM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(8, 16)
            self.score = torch.nn.Linear(16, 1, bias=False)

        def forward(self, x):
            return self.score(torch.tanh(self.body(x)))

    rm = TinyRM().to(device)
    x = torch.randn(5, 8, device=device)
    old_reward = rm(x).squeeze(-1)
    head = BetaRewardHead.replace_score(rm, tau_min=0.05)
    out = rm(x)
    assert out.shape == (5, 2) and (out > 0).all()
    m, c = head.logits(torch.tanh(rm.body(x)))
    torch.testing.assert_close(m, old_reward)  # the old score becomes the mean logit
    # pair scoring: swapping a and b maps mean to 1 - mean (alpha <-> beta)
    ha, hb = torch.randn(4, 16, device=device), torch.randn(4, 16, device=device)
    a_ab, b_ab = head.score_pair(ha, hb)
    a_ba, b_ba = head.score_pair(hb, ha)
    torch.testing.assert_close(a_ab, b_ba)
    torch.testing.assert_close(b_ab, a_ba)
    torch.testing.assert_close(a_ab / (a_ab + b_ab), 1 - a_ba / (a_ba + b_ba))
    # logits output feeds the fused loss; gradients reach the head
    head.output = "logits"
    logits = rm(x)
    loss = beta_elbo_loss_from_logits(logits[:, 0], logits[:, 1], torch.rand(5, device=device), tau_min=head.tau_min)
    loss.backward()
    assert head.mean_head.weight.grad is not None and head.conc_head.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ torch.compile
def test_torch_compile_fullgraph_cpu():
    def step(m, c, y, seg):
        loss = beta_elbo_loss_from_logits(m, c, y, kl_weight=0.5)
        a, b = beta_from_logits(m, c)
        st = beta_stats(a, b)
        pa, pb = beta_posterior(y, segment_index=seg, num_segments=4, discount=0.9)
        return loss + st.entropy.mean() + steer(a.reshape(4, 4), b.reshape(4, 4), torch.ones(4)).sum() + (pa - pb).sum()

    m = torch.randn(16, requires_grad=True)
    c = torch.randn(16, requires_grad=True)
    y = torch.rand(16)
    seg = torch.randint(0, 4, (16,))
    compiled = torch.compile(step, fullgraph=True)
    with icrm_kernels.unchecked():  # value checks read tensors; compile skips them anyway
        out = compiled(m, c, y, seg)
        want = step(m, c, y, seg)
    torch.testing.assert_close(out, want)
    g = torch.autograd.grad(out, (m, c))
    gw = torch.autograd.grad(want, (m, c))
    torch.testing.assert_close(g, gw)


def test_labels_requiring_grad_get_no_gradient(device):
    a, b = _params(5, device)
    y = torch.rand(5, device=device, requires_grad=True)
    loss = beta_elbo_loss(a, b, y)
    (g,) = torch.autograd.grad(loss, y, allow_unused=True)
    assert g is None


# ---------------------------------------------------------------- tensor priors (issue 11 §5)
@pytest.mark.parametrize("layout", ["cu", "index"])
def test_posterior_tensor_priors_per_segment(backend, device, layout):
    """Amortised alpha, beta (one prior per query) combined with explicit demonstrations in one
    call: prior_k + discounted counts, on every backend, against the float64 loop."""
    from icrm_kernels.reference import beta as ref

    k = 6
    sizes = torch.tensor([3, 0, 5, 1, 8, 2])
    m = int(sizes.sum())
    y = torch.rand(m, device=device)
    w = torch.rand(m, device=device)
    pa = (torch.rand(k, device=device) * 4 + 0.1).requires_grad_()
    pb = torch.rand(k, device=device) * 4 + 0.1
    seg = torch.repeat_interleave(torch.arange(k), sizes)
    if layout == "cu":
        cu = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)]).to(device)
        alpha, beta = beta_posterior(y, cu_segments=cu, weights=w, prior_alpha=pa, prior_beta=pb, discount=0.9)
    else:
        alpha, beta = beta_posterior(y, segment_index=seg.to(device), weights=w, prior_alpha=pa, prior_beta=pb,
                                     discount=0.9)  # K from the priors' length
    ra, rb = ref.beta_posterior(y.double().cpu(), segment_index=seg, num_segments=k, weights=w.double().cpu(),
                                prior_alpha=pa.detach().double().cpu(), prior_beta=pb.double().cpu(), discount=0.9)
    assert alpha.shape == (k,) and alpha.dtype == torch.float32
    torch.testing.assert_close(alpha.detach().double().cpu(), ra, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(beta.double().cpu(), rb, rtol=1e-5, atol=1e-5)
    assert alpha[1].item() == pytest.approx(pa[1].item()) and beta[1].item() == pytest.approx(pb[1].item())
    alpha.sum().backward()  # differentiable w.r.t. the amortised prior
    torch.testing.assert_close(pa.grad, torch.ones_like(pa))
    # a 0-d tensor prior (and a mix with a number) equals the number
    a0, b0 = beta_posterior(y, segment_index=seg.to(device), num_segments=k, prior_alpha=torch.tensor(0.5, device=device),
                            prior_beta=2.0)
    a1, b1 = beta_posterior(y, segment_index=seg.to(device), num_segments=k, prior_alpha=0.5, prior_beta=2.0)
    torch.testing.assert_close(a0, a1)
    torch.testing.assert_close(b0, b1)


def test_posterior_tensor_priors_hostile(device):
    y = torch.rand(5, device=device)
    cu = torch.tensor([0, 2, 5], device=device)
    good = torch.ones(2, device=device)
    with pytest.raises(ValueError, match="prior_alpha"):
        beta_posterior(y, cu_segments=cu, prior_alpha=torch.ones(3, device=device), prior_beta=good)
    with pytest.raises(ValueError, match="prior_beta"):
        beta_posterior(y, cu_segments=cu, prior_alpha=good, prior_beta=-good)
    with pytest.raises(ValueError, match="prior_alpha"):
        beta_posterior(y, cu_segments=cu, prior_alpha=torch.full((2,), float("nan"), device=device))
    with pytest.raises(TypeError, match="prior_alpha"):
        beta_posterior(y, cu_segments=cu, prior_alpha=torch.ones(2, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="prior_beta"):
        beta_posterior(y, cu_segments=cu, prior_alpha=good, prior_beta=torch.ones(2, 1, device=device))
    with pytest.raises(ValueError, match="prior_beta"):
        beta_posterior(y, cu_segments=cu, prior_alpha=good, prior_beta=0.0)
