"""Hostile inputs for the attention (R2M), special-function and Beta ELBO/statistics ops (issue 9).

Every case ends in a clear error naming the argument or in a documented result; the cases that
used to crash or hang (malformed cu_seqlens on the unchecked paths, -inf / -1e30 to the special
functions) run in a child process with a timeout, so a crash or a hang fails one test instead
of taking the suite down.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import icrm_kernels as ik
import icrm_kernels.nn  # noqa: F401  (ik.nn)
from icrm_kernels import _backend
from icrm_kernels.testing import random_attention_inputs as _rand_inputs
from icrm_kernels.reference import attention as ref_att



# These cases build CPU tensors, so they run on the backends that take CPU tensors: the
# reference, the C++ kernels and, under Triton's interpreter (CI), the Triton kernels. On a GPU
# machine they skip the Triton kernels, which the CUDA suite and compute-sanitizer cover there.
@pytest.fixture(params=_backend.available_backends("cpu"))
def backend(request):
    with _backend.use_backend(request.param):
        yield request.param


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ref_inputs(inp):
    return {k: (v.detach().double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inp.items()}


def _run_child(code: str, timeout: float = 90.0) -> str:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"child failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "CHILD-OK" in proc.stdout, proc.stdout[-3000:]
    return proc.stdout


# ==================================================================== risky cases in a child process
_CHILD = r"""
import math, torch, icrm_kernels as ik
from icrm_kernels import _backend
from icrm_kernels.ops.attention import S2T_CORE, R2M_CORE
from icrm_kernels.testing import random_attention_inputs as _rand_inputs
s2t_attention_core, r2m_reward_core = S2T_CORE.custom_op, R2M_CORE.custom_op
BACKEND = {backend!r}
nan, inf = float("nan"), float("inf")

# --- special functions: no hang for -inf / -1e30 / huge negatives, documented values
for dt in (torch.float32, torch.float64):
    x = torch.tensor([-inf, -1e30, -3e38 if dt == torch.float32 else -1e300, -5.5, -3.0, -0.0, 0.0, 1e-30, 1e30,
                      inf, nan], dtype=dt)
    with _backend.use_backend(BACKEND), ik.unchecked():
        d, t, l = ik.digamma(x), ik.trigamma(x), ik.lgamma(x)
        bl = ik.betaln(x, torch.full_like(x, 2.0))
        kl = ik.beta_kl(x, torch.full_like(x, 2.0))
        el = ik.beta_elbo_loss(x, torch.full_like(x, 2.0), torch.full_like(x, 0.5), reduction="none")
        st = ik.beta_stats(x, torch.full_like(x, 2.0))
        ik.beta_elbo_loss_from_logits(x, x, torch.full_like(x, 0.5), reduction="none")
        ik.beta_from_logits(x, x)
    neg = slice(0, 5)  # x < 0 (and -inf): NaN
    assert torch.isnan(d[neg]).all() and torch.isnan(t[neg]).all() and torch.isnan(l[neg]).all(), (d, t, l)
    assert torch.isnan(bl[neg]).all() and torch.isnan(kl[neg]).all() and torch.isnan(el[neg]).all(), (bl, kl, el)
    assert d[6] == -inf and t[6] == inf and l[6] == inf, (d, t, l)  # the pole at 0, as torch/scipy
    assert torch.isfinite(d[7:9]).all() and torch.isfinite(l[7:9]).all(), (d, l)
    assert d[9] == inf and t[9] == 0 and l[9] == inf, (d, t, l)
    assert torch.isnan(d[10]) and torch.isnan(t[10]) and torch.isnan(l[10])
    for field in st:  # alpha <= 0, -inf or NaN: every statistic NaN (not finite mean/var)
        assert torch.isnan(field[:7]).all() and torch.isnan(field[10]), (field, st)
        assert torch.isfinite(field[7]) or field is st.entropy, (field, st)

# --- malformed cu_seqlens on the unchecked paths and through the custom ops (what torch.compile
# calls): no crash, no out-of-bounds read or write; rows that no sequence covers get dx = 0
bad_cus = [[0, 4, 10**9], [0, 5, 2, 7], [-3, 2, 7], [0, 7, 7], [0, 10**12, -10**12, 3], [2**62, 0, 7],
           [0, 2, 3]]
for cu_list in bad_cus:
    inp = _rand_inputs("cpu", torch.float32, packed=True, num_heads=2)
    b = len(cu_list) - 1
    inp["states"] = inp["states"][:7].clone().requires_grad_(True)
    inp["query"] = inp["query"][:1].expand(b, -1).clone()
    inp["cu_seqlens"] = torch.tensor(cu_list, dtype=torch.int64)
    with _backend.use_backend(BACKEND), ik.unchecked():
        out = ik.seq_to_token_attention(**inp)
        out.sum().backward()
        r = ik.r2m_reward(**inp, score_weight=torch.randn(12), omega=0.5)
        q_t = torch.randn(b, 2, inp["states"].shape[1])
        c, lse, _ = s2t_attention_core(q_t, inp["states"].detach(), inp["cu_seqlens"], None)
        y, ne = r2m_reward_core(q_t, torch.randn(2, inp["states"].shape[1]), inp["states"].detach(),
                                inp["cu_seqlens"].to(torch.int32), None)
    assert out.shape == (b, 12) and torch.isfinite(out).all(), out
    assert torch.isfinite(r).all() and torch.isfinite(c).all() and torch.isfinite(y).all()
    g = inp["states"].grad
    assert g is not None and torch.isfinite(g).all()
    cu = [min(max(v, 0), 7) for v in cu_list]
    cu = [max(cu[: i + 1]) for i in range(len(cu))]
    covered = torch.zeros(7, dtype=torch.bool)
    covered[cu[0]:cu[-1]] = True
    assert (g[~covered] == 0).all(), (cu_list, g)
# --- the same through torch.compile (dynamo + the custom ops; aot_eager: no C compiler needed)
inp = _rand_inputs("cpu", torch.float32, packed=True, num_heads=2)
inp["states"] = inp["states"][:7].contiguous()
inp["query"] = inp["query"][:3].contiguous()
inp["cu_seqlens"] = torch.tensor([0, 5, 2, 10**9], dtype=torch.int64)
fn = torch.compile(lambda kw: ik.seq_to_token_attention(**kw), backend="aot_eager", fullgraph=True)
with _backend.use_backend(BACKEND), ik.unchecked():
    got = fn(inp)
    want = ik.seq_to_token_attention(**inp)
assert torch.isfinite(got).all() and torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)

# --- raw custom ops with inconsistent shapes (no public checks in front): an error, not a crash
from icrm_kernels.ops.attention import S2T_CORE_BWD
s2t_attention_core_bwd = S2T_CORE_BWD.custom_op
x = torch.randn(7, 10)
cu = torch.tensor([0, 3, 7])
shape_cases = [
    lambda: s2t_attention_core(torch.randn(5, 2, 10), x, cu, None),  # B from q_tilde > B from cu
    lambda: s2t_attention_core(torch.randn(2, 2, 12), x, cu, None),  # D_p mismatch
    lambda: r2m_reward_core(torch.randn(2, 2, 10), torch.randn(3, 10), x, cu, None),  # u heads
    lambda: s2t_attention_core_bwd(torch.randn(1, 2, 10), torch.randn(2, 2, 10), x, cu, None,
                                   torch.randn(2, 2, 10), torch.randn(2, 2), True),  # dc too small
    lambda: s2t_attention_core(torch.randn(2, 2, 10), torch.randn(2, 4, 10), None,
                               torch.zeros(2, 9, dtype=torch.bool)),  # mask shape
]
for case in shape_cases:
    with _backend.use_backend(BACKEND):
        try:
            case()
        except (RuntimeError, ValueError, IndexError):
            pass
        else:
            # the reference is plain torch (memory-safe whatever it is given); it may broadcast a
            # size-1 dimension where the kernels, which index by the layout's sizes, must refuse
            assert BACKEND == "reference", "inconsistent shapes were accepted"
print("CHILD-OK")
"""


@pytest.mark.parametrize("backend_name", _backend.available_backends("cpu"))
def test_risky_inputs_no_crash_no_hang(backend_name):
    """-inf, -1e30, NaN to every special function and Beta op, and malformed cu_seqlens through
    unchecked() and the raw custom ops: the child must finish (no hang) and exit 0 (no crash)."""
    _run_child(_CHILD.format(backend=backend_name), timeout=120)


# ==================================================================== class 4: NaN propagates
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("where", ["states", "query", "w_k", "w_q", "w_v", "b_k", "b_q"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_attention_nan_propagates(backend, packed, where, value):
    torch.manual_seed(0)
    inp = _rand_inputs("cpu", torch.float32, packed=packed, num_heads=2)
    if not packed:
        inp["key_padding_mask"][:, 0] = False  # row 1 stays fully masked below
        inp["key_padding_mask"][1] = True
    t = inp[where].clone()
    t.view(-1)[0] = value
    inp[where] = t
    out = ik.seq_to_token_attention(**inp)
    want = ref_att.seq_to_token_attention(**_ref_inputs(inp))
    # NaN in: exactly the reference's NaN pattern. inf in: the same non-finite pattern (an inf in
    # w_v gives ±inf in the absorbed form, where the explicit form's inf - inf gives NaN)
    bad, want_bad = (torch.isnan(out), torch.isnan(want)) if value != value else (~torch.isfinite(out),
                                                                                  ~torch.isfinite(want))
    assert torch.equal(bad, want_bad), (where, out, want)
    assert bad.any(), "a NaN/inf input must show up in the output"
    assert (out[1] == 0).all(), "row 1 is empty: 0, whatever the other inputs hold"
    r = ik.r2m_reward(**inp, score_weight=torch.randn(12), omega=0.5)
    assert torch.equal(~torch.isfinite(r), want_bad.any(-1)), (r, want)


def test_attention_nan_rows_match_multihead_attention(backend):
    """The NaN pattern of nn.MultiheadAttention on the padded layout (no empty rows: MHA gives NaN there)."""
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)
    mod = ik.nn.PolicyFeedbackAttention.from_multihead_attention(mha)
    q = torch.randn(3, 8)
    x = torch.randn(3, 5, 6)
    x[1, 2, 3] = float("nan")
    want, _ = mha(q[:, None], x, x, need_weights=False)
    got = mod(q, x)
    assert torch.equal(torch.isnan(got), torch.isnan(want[:, 0]))
    assert torch.isnan(got[1]).all() and torch.isfinite(got[[0, 2]]).all()


# ==================================================================== class 3: strides
def test_noncontiguous_cu_seqlens_and_states(backend):
    torch.manual_seed(2)
    inp = _rand_inputs("cpu", torch.float32, packed=True, num_heads=2)
    cu = inp["cu_seqlens"].to(torch.int64)
    wide = torch.stack([cu, torch.full_like(cu, 10**6)], 1)  # cu_seqlens as a strided view
    states = inp["states"]
    wide_states = torch.zeros(states.shape[0], 2 * states.shape[1])
    wide_states[:, ::2] = states
    s1 = states.clone().requires_grad_(True)
    s2 = wide_states.requires_grad_(True)
    y1 = ik.seq_to_token_attention(**dict(inp, states=s1, cu_seqlens=cu))
    y2 = ik.seq_to_token_attention(**dict(inp, states=s2[:, ::2], cu_seqlens=wide[:, 0]))
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    g1, = torch.autograd.grad(y1.sum(), [s1])
    g2, = torch.autograd.grad(y2.sum(), [s2])
    torch.testing.assert_close(g2[:, ::2], g1, rtol=0, atol=0)
    assert (g2[:, 1::2] == 0).all()
    r1 = ik.r2m_reward(**dict(inp, cu_seqlens=cu), score_weight=torch.ones(12), omega=0.3)
    r2 = ik.r2m_reward(**dict(inp, cu_seqlens=wide[:, 0]), score_weight=torch.ones(24)[::2], omega=0.3)
    torch.testing.assert_close(r2, r1, rtol=0, atol=0)


# ==================================================================== class 6: float64 is float64
def test_attention_float64_is_float64_and_gradchecks(backend):
    torch.manual_seed(3)
    inp = _rand_inputs("cpu", torch.float64, packed=True, num_heads=2)
    inp["states"] = inp["states"][:8]
    inp["cu_seqlens"] = torch.tensor([0, 3, 3, 7, 8], dtype=torch.int32)
    out = ik.seq_to_token_attention(**inp)
    want = ref_att.seq_to_token_attention(**inp)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-13)
    names = ["query", "states", "w_q", "w_k", "w_v", "b_v"]

    def f(*ts):
        return ik.seq_to_token_attention(**dict(inp, **dict(zip(names, ts))))

    assert torch.autograd.gradcheck(f, tuple(inp[k].clone().requires_grad_(True) for k in names), eps=1e-6,
                                    atol=1e-8, rtol=1e-6)
    sw = torch.randn(12, dtype=torch.float64)
    r = ik.r2m_reward(**inp, score_weight=sw, omega=0.4, score_bias=0.1)
    r0 = ref_att.r2m_reward(**inp, score_weight=sw, omega=0.4, score_bias=0.1)
    torch.testing.assert_close(r, r0, rtol=1e-12, atol=1e-13)


def _mp_elbo(a, b, y, pa, pb, kw):
    import mpmath

    lnb = lambda x, z: mpmath.loggamma(x) + mpmath.loggamma(z) - mpmath.loggamma(x + z)  # noqa: E731
    a, b, y = mpmath.mpf(a), mpmath.mpf(b), mpmath.mpf(y)
    s = a + b
    da, db = mpmath.digamma(a) - mpmath.digamma(s), mpmath.digamma(b) - mpmath.digamma(s)
    kl = lnb(pa, pb) - lnb(a, b) + (a - pa) * mpmath.digamma(a) + (b - pb) * mpmath.digamma(b) + (pa + pb - s) * mpmath.digamma(s)
    return -(y * da + (1 - y) * db) + kw * kl


def test_beta_elbo_float64_against_mpmath(backend):
    """float64 ELBO, KL and their gradients within 1e-12 relative of mpmath, concentrations
    1e-4 .. 1e6 (C++ double kernels; the reference, which float64 CUDA and extension-less
    installs run; the Triton backend routes float64 to the reference)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    gen = torch.Generator().manual_seed(4)
    n = 48
    a = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-9.2, 13.8, generator=gen)).requires_grad_(True)
    b = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-9.2, 13.8, generator=gen)).requires_grad_(True)
    y = torch.rand(n, dtype=torch.float64, generator=gen)
    pa, pb, kw = 2.5, 0.7, 0.8
    loss = ik.beta_elbo_loss(a, b, y, prior_alpha=pa, prior_beta=pb, kl_weight=kw, reduction="none")
    ga, = torch.autograd.grad(loss.sum(), [a])
    for i in range(n):
        A, B, Y = a[i].item(), b[i].item(), y[i].item()
        want = _mp_elbo(A, B, Y, pa, pb, kw)
        assert abs(loss[i].item() - want) <= 1e-12 * abs(want), (A, B, Y, loss[i].item(), want)
        if i < 12:
            dwant = mpmath.diff(lambda t: _mp_elbo(t, B, Y, pa, pb, kw), mpmath.mpf(A))
            assert abs(ga[i].item() - dwant) <= 1e-11 * abs(dwant), (A, B, ga[i].item(), dwant)


def test_beta_elbo_float64_gradcheck(backend):
    gen = torch.Generator().manual_seed(5)
    a = (torch.rand(6, dtype=torch.float64, generator=gen) * 5 + 0.2).requires_grad_(True)
    b = (torch.rand(6, dtype=torch.float64, generator=gen) * 5 + 0.2).requires_grad_(True)
    y = torch.rand(6, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda a_, b_: ik.beta_elbo_loss(a_, b_, y, prior_alpha=1.5, reduction="sum"),
                                    (a, b), eps=1e-6, atol=1e-9, rtol=1e-7)
    m = torch.randn(6, dtype=torch.float64, generator=gen, requires_grad=True)
    c = torch.randn(6, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m_, c_: ik.beta_elbo_loss_from_logits(m_, c_, y, reduction="mean"),
                                    (m, c), eps=1e-6, atol=1e-9, rtol=1e-7)


def test_special_float64_against_mpmath(backend):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    x = torch.exp(torch.linspace(-9.2, 13.8, 40, dtype=torch.float64))
    d, t, l = ik.digamma(x), ik.trigamma(x), ik.lgamma(x)
    for i, v in enumerate(x.tolist()):
        for got, want in ((d[i], mpmath.digamma(v)), (t[i], mpmath.psi(1, v)), (l[i], mpmath.loggamma(v))):
            assert abs(got.item() - want) <= 1e-12 * max(1.0, abs(want)), (v, got.item(), want)


# ==================================================================== class 7: b_k gets a gradient
@pytest.mark.parametrize("packed", [True, False])
def test_key_bias_gets_zero_gradient(backend, packed):
    inp = _rand_inputs("cpu", torch.float32, packed=packed, num_heads=2)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inp.items() if k in ("query", "b_k", "b_q", "w_k")}
    out = ik.seq_to_token_attention(**dict(inp, **leaves))
    grads = torch.autograd.grad(out.sum(), list(leaves.values()))
    g = dict(zip(leaves, grads))
    assert g["b_k"] is not None and torch.equal(g["b_k"], torch.zeros_like(g["b_k"]))
    assert torch.isfinite(g["query"]).all() and g["query"].abs().sum() > 0
    mod = ik.nn.PolicyFeedbackAttention(12, 10, attn_dim=8, num_heads=2, bias=True)
    x = inp["states"]
    y = mod(inp["query"], x, cu_seqlens=inp.get("cu_seqlens"), key_padding_mask=inp.get("key_padding_mask"))
    y.sum().backward()
    assert mod.b_k.grad is not None and (mod.b_k.grad == 0).all()


# ==================================================================== class 8: validation
def _attn_kw():
    inp = _rand_inputs("cpu", torch.float32, packed=True, num_heads=2)
    return inp


@pytest.mark.parametrize("omega, exc", [(torch.tensor(1.5), ValueError), (torch.tensor(-0.1), ValueError),
                                        (torch.tensor(float("nan")), ValueError), (torch.tensor(0.5j), TypeError),
                                        (torch.tensor([0.5, 0.5]), ValueError), (1.5, ValueError),
                                        (float("nan"), ValueError)])
def test_r2m_omega_validated(omega, exc):
    inp = _attn_kw()
    with pytest.raises(exc, match="omega"):
        ik.r2m_reward(**inp, score_weight=torch.ones(12), omega=omega)


@pytest.mark.parametrize("kw, name, exc", [
    (dict(step=torch.tensor(float("nan")), total_steps=10), "step", ValueError),
    (dict(step=torch.tensor([-1.0, 2.0]), total_steps=10), "step", ValueError),
    (dict(step=torch.tensor(1.0), total_steps=torch.tensor(0.0)), "total_steps", ValueError),
    (dict(step=torch.tensor(1j), total_steps=10), "step", TypeError),
    (dict(step=1, total_steps=10, floor=float("nan")), "floor", ValueError),
    (dict(step=-1, total_steps=10), "step", ValueError)])
def test_r2m_omega_schedule_validated(kw, name, exc):
    with pytest.raises(exc, match=name):
        ik.r2m_omega(**kw)


def test_r2m_omega_values():
    assert ik.r2m_omega(0, 10) == 1.0 and ik.r2m_omega(10, 10) == 0.6 and ik.r2m_omega(50, 10) == 0.6
    t = ik.r2m_omega(torch.tensor([0.0, 5.0, 10.0, 1e30]), 10)
    torch.testing.assert_close(t, torch.tensor([1.0, 0.6, 0.6, 0.6], dtype=torch.float64))


@pytest.mark.parametrize("shape", [(12, 1), (2, 6), (1, 1, 12), (11,), ()])
def test_r2m_score_weight_shape(shape):
    inp = _attn_kw()
    with pytest.raises(ValueError, match="score_weight"):
        ik.r2m_reward(**inp, score_weight=torch.ones(shape), omega=0.5)


def test_num_heads_must_divide():
    inp = _attn_kw()
    with pytest.raises(ValueError, match="num_heads"):
        ik.seq_to_token_attention(**dict(inp, num_heads=3))
    with pytest.raises(ValueError, match="num_heads"):
        ik.nn.PolicyFeedbackAttention(12, 10, attn_dim=8, num_heads=3)
    with pytest.raises((TypeError, ValueError), match="num_heads"):
        ik.seq_to_token_attention(**dict(inp, num_heads=0))


@pytest.mark.parametrize("case", ["states_int", "query_0d", "query_complex", "states_meta", "w_k_shape",
                                  "cu_float", "cu_decreasing", "cu_past_end", "cu_negative", "mask_float",
                                  "dtype_mix"])
def test_attention_bad_arguments_named(case):
    inp = _attn_kw()
    name, exc = {
        "states_int": ("states", TypeError), "query_0d": ("query", ValueError),
        "query_complex": ("query", TypeError), "states_meta": ("states", ValueError),
        "w_k_shape": ("w_k", ValueError), "cu_float": ("cu_seqlens", TypeError),
        "cu_decreasing": ("cu_seqlens", ValueError), "cu_past_end": ("cu_seqlens", ValueError),
        "cu_negative": ("cu_seqlens", ValueError), "mask_float": ("key_padding_mask", TypeError),
        "dtype_mix": ("w_v", TypeError),
    }[case]
    if case == "states_int":
        inp["states"] = inp["states"].to(torch.int64)
    elif case == "query_0d":
        inp["query"] = torch.tensor(1.0)
    elif case == "query_complex":
        inp["query"] = inp["query"].to(torch.complex64)
    elif case == "states_meta":
        inp["states"] = inp["states"].to("meta")
    elif case == "w_k_shape":
        inp["w_k"] = inp["w_k"][:, :4]
    elif case == "cu_float":
        inp["cu_seqlens"] = inp["cu_seqlens"].float()
    elif case == "cu_decreasing":
        inp["cu_seqlens"] = torch.tensor([0, 5, 3, 20, 21], dtype=torch.int32)
    elif case == "cu_past_end":
        inp["cu_seqlens"] = torch.tensor([0, 3, 3, 20, 10**9], dtype=torch.int64)
    elif case == "cu_negative":
        inp["cu_seqlens"] = torch.tensor([-1, 3, 3, 20, 21], dtype=torch.int64)
    elif case == "mask_float":
        inp = _rand_inputs("cpu", torch.float32, packed=False, num_heads=2)
        inp["key_padding_mask"] = inp["key_padding_mask"].float()
    elif case == "dtype_mix":
        inp["w_v"] = inp["w_v"].double()
    with pytest.raises(exc, match=name):
        ik.seq_to_token_attention(**inp)


def test_attention_empty_batch_and_empty_sequences(backend):
    inp = _attn_kw()
    inp["query"] = inp["query"][:0]
    inp["cu_seqlens"] = torch.zeros(1, dtype=torch.int32)
    inp["states"] = inp["states"][:0]
    assert ik.seq_to_token_attention(**inp).shape == (0, 12)
    inp = _attn_kw()
    inp["states"] = inp["states"][:0]
    inp["cu_seqlens"] = torch.zeros(5, dtype=torch.int32)
    out = ik.seq_to_token_attention(**inp)
    assert out.shape == (4, 12) and (out == 0).all()
    r = ik.r2m_reward(**inp, score_weight=torch.ones(12), omega=0.25)
    torch.testing.assert_close(r, 0.25 * inp["query"].sum(-1))


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_attention_extreme_values(backend, scale):
    """1e±30 states: tiny ones give finite results equal to the reference; huge ones overflow the
    scores (fp32) and give NaN, never 0 and never a crash."""
    inp = _attn_kw()
    inp["states"] = inp["states"] * scale
    out = ik.seq_to_token_attention(**inp)
    assert out.shape == (4, 12)
    assert (out[1] == 0).all()  # the empty row
    if scale < 1:
        want = ref_att.seq_to_token_attention(**_ref_inputs(inp))
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)
    else:
        live = out[[0, 2, 3]]
        assert (torch.isnan(live) | torch.isfinite(live)).all()


# ---------------------------------------------------------------- special functions and Beta ops
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf"), float("-inf"), -1e30])
def test_special_checked_rejects(value):
    x = torch.tensor([1.0, value])
    for fn in (ik.digamma, ik.trigamma, ik.lgamma):
        with pytest.raises(ValueError, match="x"):
            fn(x)
    with pytest.raises(ValueError, match="b"):
        ik.betaln(torch.ones(2), x)


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_special_extremes_documented(backend, dt):
    x = torch.tensor([1e-30, 1e-4, 1.0, 1e6, 1e30], dtype=dt)
    want = {"digamma": torch.digamma, "trigamma": lambda v: torch.polygamma(1, v), "lgamma": torch.lgamma}
    for name, fn in want.items():
        got = getattr(ik, name)(x).double()
        w = fn(x.double()).to(dt).double()  # trigamma(1e-30) = 1e60 overflows float32 to inf
        fin = torch.isfinite(w)
        assert torch.equal(torch.isfinite(got), fin) and torch.equal(got[~fin], w[~fin]), (name, got, w)
        assert ((got - w)[fin].abs() <= 5e-6 * w[fin].abs().clamp_min(1)).all(), (name, got, w)


def test_special_bad_dtypes_and_shapes():
    with pytest.raises(TypeError, match="x"):
        ik.digamma(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="x"):
        ik.lgamma(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(TypeError):
        ik.digamma([1.0, 2.0])
    with pytest.raises(TypeError, match="b"):
        ik.betaln(torch.ones(2), torch.ones(2, dtype=torch.float64))
    assert ik.digamma(torch.tensor(2.0)).shape == ()
    assert ik.lgamma(torch.ones(0)).shape == (0,)
    x = torch.rand(4, 6) + 0.5
    torch.testing.assert_close(ik.digamma(x.t()), ik.digamma(x.t().contiguous()))


@pytest.mark.parametrize("arg, value, exc", [
    ("labels", -0.5, ValueError), ("labels", float("nan"), ValueError), ("labels", 1.5, ValueError),
    ("weights", -1.0, ValueError), ("weights", float("nan"), ValueError), ("weights", float("inf"), ValueError),
    ("alpha", -1.0, ValueError), ("alpha", float("nan"), ValueError), ("alpha", float("inf"), ValueError),
    ("beta", 0.0, ValueError)])
def test_elbo_bad_values_named(arg, value, exc):
    kw = dict(alpha=torch.ones(4), beta=torch.ones(4), labels=torch.full((4,), 0.5), weights=torch.ones(4))
    kw[arg] = kw[arg].clone()
    kw[arg][1] = value
    with pytest.raises(exc, match=arg):
        ik.beta_elbo_loss(kw.pop("alpha"), kw.pop("beta"), kw.pop("labels"), **kw)


@pytest.mark.parametrize("arg", ["labels", "weights"])
def test_elbo_complex_labels_weights(arg):
    kw = dict(labels=torch.full((4,), 0.5), weights=torch.ones(4))
    kw[arg] = kw[arg].to(torch.complex64)
    with pytest.raises(TypeError, match=arg):
        ik.beta_elbo_loss(torch.ones(4), torch.ones(4), kw.pop("labels"), **kw)
    with pytest.raises(TypeError, match=arg):
        ik.beta_elbo_loss_from_logits(torch.ones(4), torch.ones(4), kw2_labels(arg, kw), **kw2_rest(arg, kw))


def kw2_labels(arg, kw):
    return torch.full((4,), 0.5).to(torch.complex64) if arg == "labels" else torch.full((4,), 0.5)


def kw2_rest(arg, kw):
    return {"weights": kw["weights"]} if arg == "weights" else {}


def test_elbo_shapes_dtypes_empty():
    with pytest.raises(ValueError, match="beta"):
        ik.beta_elbo_loss(torch.ones(4), torch.ones(3), torch.ones(4))
    with pytest.raises(TypeError, match="beta"):
        ik.beta_elbo_loss(torch.ones(4), torch.ones(4, dtype=torch.float64), torch.ones(4))
    with pytest.raises(ValueError, match="labels"):
        ik.beta_elbo_loss(torch.ones(4), torch.ones(4), torch.ones(5))
    with pytest.raises(TypeError, match="alpha"):
        ik.beta_elbo_loss(torch.ones(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32), torch.ones(4))
    assert ik.beta_elbo_loss(torch.ones(0), torch.ones(0), torch.ones(0), reduction="none").shape == (0,)
    assert ik.beta_elbo_loss(torch.ones(0), torch.ones(0), torch.ones(0)).shape == ()
    assert ik.beta_elbo_loss(torch.tensor(2.0), torch.tensor(3.0), torch.tensor(1.0), reduction="none").shape == ()
    with pytest.raises(ValueError, match="reduction"):
        ik.beta_elbo_loss(torch.ones(4), torch.ones(4), torch.ones(4), reduction="avg")


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_beta_ops_extreme_concentrations(backend, dt):
    """1e-30 .. 1e30 concentrations: finite or a documented inf, never a crash or hang (checked
    path accepts them: they are finite and > 0)."""
    a = torch.tensor([1e-30, 1e-4, 1.0, 1e6, 1e30], dtype=dt)
    b = torch.flip(a, [0])
    st = ik.beta_stats(a, b)
    assert torch.isfinite(st.mean).all()
    loss = ik.beta_elbo_loss(a, b, torch.full_like(a, 0.5), reduction="none")
    assert not torch.isnan(loss[1:4]).any()
    kl = ik.beta_kl(a, b)
    assert not torch.isnan(kl[1:4]).any()


@pytest.mark.parametrize("packed", [True, False])
def test_attention_nan_propagates_into_gradients(backend, packed):
    """A NaN in one sequence's states poisons that row's gradients only (the backward used to
    zero p for a non-finite lse); the other rows' gradients stay finite."""
    torch.manual_seed(6)
    inp = _rand_inputs("cpu", torch.float32, packed=packed, num_heads=2)
    if not packed:
        inp["key_padding_mask"][:, 0] = False
    states = inp["states"].clone()
    states.view(-1)[0] = float("nan")  # sequence 0, first (attended) row
    query = inp["query"].clone().requires_grad_(True)
    out = ik.seq_to_token_attention(**dict(inp, states=states, query=query))
    g, = torch.autograd.grad(out[[0, 2]].sum(), [query])
    assert torch.isnan(g[0]).all() and torch.isfinite(g[1:]).all(), g


def test_noncontiguous_padded_states_and_mask(backend):
    torch.manual_seed(7)
    inp = _rand_inputs("cpu", torch.float32, packed=False, num_heads=2)
    mask_t = inp["key_padding_mask"].t().contiguous().t()  # same values, transposed strides
    states_t = inp["states"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not mask_t.is_contiguous() and not states_t.is_contiguous()
    want = ik.seq_to_token_attention(**inp)
    got = ik.seq_to_token_attention(**dict(inp, key_padding_mask=mask_t, states=states_t))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    sw = torch.randn(24)[::2]
    torch.testing.assert_close(ik.r2m_reward(**dict(inp, key_padding_mask=mask_t, states=states_t), score_weight=sw,
                                             omega=torch.tensor(0.3)),
                               ik.r2m_reward(**inp, score_weight=sw.contiguous(), omega=0.3), rtol=0, atol=0)


def test_beta_from_logits_nonfinite_documented(backend):
    """NaN logits give NaN (propagate); ±inf / ±1e30 logits give the limits the reference gives
    (mu -> 0 or 1, tau -> inf or tau_min): the same on every backend."""
    inf, nan = float("inf"), float("nan")
    m = torch.tensor([nan, 0.0, inf, -inf, 1e30, -1e30, 0.0, 0.0, 0.0])
    c = torch.tensor([0.0, nan, 0.0, 0.0, 0.0, 0.0, inf, -inf, 1e30])
    a, b = ik.beta_from_logits(m, c)
    from icrm_kernels.reference import beta as ref_beta

    ra, rb = ref_beta.beta_from_logits(m.double(), c.double(), 1e-2)
    torch.testing.assert_close(a.double(), ra, equal_nan=True, rtol=1e-6, atol=0)
    torch.testing.assert_close(b.double(), rb, equal_nan=True, rtol=1e-6, atol=0)


def test_beta_stats_and_steer_validation():
    a = torch.rand(3, 4) + 0.5
    with pytest.raises(ValueError, match="alpha"):
        ik.beta_stats(-a, a)
    with pytest.raises(ValueError, match="beta"):
        ik.beta_stats(a, a * float("nan"))
    with pytest.raises(TypeError, match="alpha"):
        ik.beta_stats(a.to(torch.complex64), a.to(torch.complex64))
    with pytest.raises(ValueError, match="beta"):
        ik.beta_stats(a, a[:, :3])
    with pytest.raises(ValueError, match="weights"):
        ik.steer(a, a, torch.ones(3))
    with pytest.raises(ValueError, match="weights"):
        ik.steer(a, a, torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    with pytest.raises(TypeError, match="weights"):
        ik.steer(a, a, torch.ones(4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="statistic"):
        ik.steer(a, a, torch.ones(4), statistic="median")
    with pytest.raises(ValueError, match="alpha"):
        ik.steer(torch.tensor(1.0), torch.tensor(1.0), torch.ones(1))
    assert ik.beta_stats(torch.ones(0), torch.ones(0)).mean.shape == (0,)
    assert ik.beta_stats(torch.tensor(2.0), torch.tensor(3.0)).entropy.shape == ()
    st = ik.beta_stats(a.t(), a.t() + 1)  # strided inputs
    torch.testing.assert_close(st.entropy, ik.beta_stats(a.t().contiguous(), a.t() + 1).entropy)


def test_beta_stats_float64_against_mpmath(backend):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    gen = torch.Generator().manual_seed(8)
    a = torch.exp(torch.empty(16, dtype=torch.float64).uniform_(-9.2, 13.8, generator=gen))
    b = torch.exp(torch.empty(16, dtype=torch.float64).uniform_(-9.2, 13.8, generator=gen))
    st = ik.beta_stats(a, b)
    for i in range(16):
        A, B = mpmath.mpf(a[i].item()), mpmath.mpf(b[i].item())
        S = A + B
        ent = (mpmath.loggamma(A) + mpmath.loggamma(B) - mpmath.loggamma(S) - (A - 1) * mpmath.digamma(A)
               - (B - 1) * mpmath.digamma(B) + (S - 2) * mpmath.digamma(S))
        lm = mpmath.digamma(A) - mpmath.digamma(S)
        for got, want in ((st.entropy[i], ent), (st.log_mean[i], lm)):
            # |err| / max(1, |ref|): psi(a) - psi(s) for b << a is a difference of two ~log(a)
            # values, so its float64 accuracy is absolute (~1e-15), not relative
            assert abs(got.item() - want) <= 1e-12 * max(abs(want), 1), (A, B, got.item(), want)
