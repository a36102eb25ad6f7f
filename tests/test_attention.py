"""seq_to_token_attention / r2m_reward / r2m_omega against the float64 explicit-projection reference."""
import math

import pytest
import torch

import icrm_kernels
from icrm_kernels import r2m_omega, r2m_reward, seq_to_token_attention
from icrm_kernels.reference import attention as ref
from icrm_kernels.testing import assert_close_to_reference, assert_matches_reference, fresh_seed

GRAD_ALL = ["query", "states", "w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o"]


@pytest.fixture(autouse=True)
def small_program_share(monkeypatch):
    """Force 8 tokens per program so every multi-block sequence goes through the combine."""
    from icrm_kernels import _backend

    if _backend.HAS_TRITON:
        from icrm_kernels.triton import attention as tri

        with tri.launch_config(tokens_per_program=8):
            yield
    else:
        yield


def make_inputs(device, dtype, *, lens=(3, 0, 17, 1), layout="packed", num_heads=1, bias=False, d_r=12, d_p=10,
                d=6, pad_to=None, seed=None):
    seed = fresh_seed() if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    b = len(lens)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * s).to(device=device, dtype=dtype)

    inp = dict(query=r(b, d_r), w_q=r(d_r, d, s=d_r ** -0.5), w_k=r(d_p, d, s=2 * d_p ** -0.5),
               w_v=r(d_p, d, s=d_p ** -0.5), w_o=r(d, d_r, s=d ** -0.5), num_heads=num_heads)
    if bias:
        inp.update(b_q=r(d, s=0.3), b_k=r(d, s=0.3), b_v=r(d, s=0.3), b_o=r(d_r, s=0.3))
    if layout == "packed":
        inp["states"] = r(sum(lens), d_p)
        cu = torch.zeros(b + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int64), 0)
        inp["cu_seqlens"] = cu.to(device)
    else:
        length = pad_to or max(max(lens), 1)
        inp["states"] = r(b, length, d_p)
        mask = torch.arange(length)[None, :] >= torch.tensor(lens)[:, None]
        inp["key_padding_mask"] = mask.to(device)
    return inp, seed


def grads_for(inp):
    return [k for k in GRAD_ALL if k in inp]


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("num_heads,bias", [(1, False), (3, True)])
def test_matches_reference_fp32(backend, device, layout, num_heads, bias):
    inp, seed = make_inputs(device, torch.float32, layout=layout, num_heads=num_heads, bias=bias)
    assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp, grad=grads_for(inp), seed=seed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference_half(backend, device, dtype):
    inp, seed = make_inputs(device, dtype, num_heads=2, bias=True, d=8)
    # low precision: bounded by the error of the reference run in the same dtype (testing.py)
    out = assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp,
                                   grad=["query", "states", "w_q", "w_v", "w_o", "b_v"], seed=seed)
    assert out["out"].dtype == dtype


def test_padded_with_scattered_mask(backend, device):
    """Masked positions anywhere (not only a suffix), as nn.MultiheadAttention allows."""
    inp, seed = make_inputs(device, torch.float32, lens=(9, 9, 9), layout="padded", num_heads=2, d=4)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(3, 9, generator=gen) < 0.4
    mask[1] = True  # one row fully masked: Ĥ = 0
    inp["key_padding_mask"] = mask.to(device)
    res = assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp, grad=grads_for(inp), seed=seed)
    assert torch.all(res["out"][1] == 0)


def test_packed_and_padded_agree(backend, device):
    lens = (5, 1, 0, 23)
    packed, seed = make_inputs(device, torch.float32, lens=lens, layout="packed", num_heads=2, bias=True, d=4)
    padded = dict(packed)
    del padded["cu_seqlens"]
    length = max(lens)
    x = torch.randn(len(lens), length, packed["states"].shape[1], device=device)
    mask = torch.arange(length)[None, :] >= torch.tensor(lens)[:, None]
    cu = packed["cu_seqlens"].tolist()
    for i, n in enumerate(lens):
        x[i, :n] = packed["states"][cu[i]:cu[i] + n]
    padded.update(states=x, key_padding_mask=mask.to(device))
    a = seq_to_token_attention(**packed)
    b = seq_to_token_attention(**padded)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"seed {seed}: {m}")


def test_empty_sequences_no_nan(backend, device):
    inp, seed = make_inputs(device, torch.float32, lens=(0, 0, 0), num_heads=2, bias=True, d=4)
    inp = {k: (v.requires_grad_(True) if k in GRAD_ALL else v) for k, v in inp.items()}
    out = seq_to_token_attention(**inp)
    assert out.shape == (3, 12) and torch.all(out == 0)
    out.sum().backward()
    for k in GRAD_ALL:
        g = inp[k].grad
        assert g is None or (torch.isfinite(g).all() and torch.all(g == 0)), k


def test_unequal_lengths_and_long_sequence(backend, device):
    # one sequence spans many programs (8 tokens each), others have 0, 1 and 2 tokens
    inp, seed = make_inputs(device, torch.float32, lens=(1, 61, 0, 2, 8), num_heads=1, d=4)
    assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp, grad=grads_for(inp), seed=seed)


def test_custom_scale_and_different_widths(backend, device):
    inp, seed = make_inputs(device, torch.float32, d_r=7, d_p=13, d=9, num_heads=3, bias=True)
    inp["scale"] = 0.37
    assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp, grad=grads_for(inp), seed=seed)


def test_states_detached_gives_no_states_grad(backend, device):
    inp, _ = make_inputs(device, torch.float32)
    q = inp["query"].clone().requires_grad_(True)
    inp["query"] = q
    seq_to_token_attention(**inp).sum().backward()
    assert q.grad is not None and inp["states"].grad is None


def test_default_program_share(device):
    """The launcher's own choice of tokens per program (no override) on the Triton path."""
    from icrm_kernels import _backend

    if "triton" not in _backend.available_backends(device):
        pytest.skip("no Triton backend here")
    from icrm_kernels.triton import attention as tri

    inp, seed = make_inputs(device, torch.float32, lens=(40, 3))
    with tri.launch_config(reset=True), icrm_kernels.use_backend("triton"):
        assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp, grad=["query", "states"], seed=seed)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_gradcheck_float64(layout):
    inp, _ = make_inputs("cpu", torch.float64, lens=(2, 0, 4), layout=layout, num_heads=2, bias=True, d=4, d_r=5, d_p=3)
    names = ["query", "states", "w_q", "w_k", "w_v", "w_o", "b_q", "b_v", "b_o"]
    rest = {k: v for k, v in inp.items() if k not in names}

    def f(*args):
        return seq_to_token_attention(**dict(zip(names, args)), **rest)

    args = tuple(inp[k].clone().requires_grad_(True) for k in names)
    with icrm_kernels.use_backend("reference"):
        assert torch.autograd.gradcheck(f, args)


def test_core_gradcheck_float64():
    from icrm_kernels.ops.attention import S2T_CORE

    s2t_attention_core = S2T_CORE.custom_op
    q = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 3, 3, 7])
    with icrm_kernels.use_backend("reference"):
        assert torch.autograd.gradcheck(lambda q, x: s2t_attention_core(q, x, cu, None)[0], (q, x))


# ---------------------------------------------------------------- r2m_reward and r2m_omega
@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("num_heads,bias", [(1, False), (2, True)])
def test_r2m_reward_matches_reference(backend, device, layout, num_heads, bias):
    inp, seed = make_inputs(device, torch.float32, layout=layout, num_heads=num_heads, bias=bias, d=4)
    gen = torch.Generator().manual_seed(seed)
    sw = torch.randn(12, generator=gen).to(device)
    omega = r2m_omega(3, 10)
    r = r2m_reward(**inp, score_weight=sw, score_bias=0.5, omega=omega)
    r0 = ref.r2m_reward(**{k: (v.double().cpu() if isinstance(v, torch.Tensor) and v.is_floating_point() else
                               (v.cpu() if isinstance(v, torch.Tensor) else v)) for k, v in inp.items()},
                        score_weight=sw.double().cpu(), score_bias=0.5, omega=omega)
    assert r.shape == (4,) and r.dtype == torch.float32
    torch.testing.assert_close(r.double().cpu(), r0, atol=2e-5, rtol=2e-4, msg=lambda m: f"seed {seed}: {m}")
    # the empty sequence (row 1) gets φ(ω·H)
    q = inp["query"][1].double().cpu()
    torch.testing.assert_close(r[1].double().cpu(), omega * (q @ sw.double().cpu()) + 0.5, atol=1e-5, rtol=1e-5)


def test_r2m_reward_bf16_and_tensor_omega(backend, device):
    inp, seed = make_inputs(device, torch.bfloat16, num_heads=2, bias=True, d=4)
    sw = torch.randn(12).to(device, torch.bfloat16)
    omega = torch.tensor(0.75, device=device)
    r = r2m_reward(**inp, score_weight=sw.view(1, -1), score_bias=torch.tensor([0.1], device=device), omega=omega)
    r0 = ref.r2m_reward(**{k: (v.double().cpu() if isinstance(v, torch.Tensor) and v.is_floating_point() else
                               (v.cpu() if isinstance(v, torch.Tensor) else v)) for k, v in inp.items()},
                        score_weight=sw.double().cpu(), score_bias=0.1, omega=0.75)
    r_low = ref.r2m_reward(**{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()},
                           score_weight=sw.cpu(), score_bias=0.1, omega=0.75)
    assert_close_to_reference(r, r0, r_low, what=f"r2m_reward (seed {seed})")


def test_r2m_reward_equals_attention_path(backend, device):
    inp, seed = make_inputs(device, torch.float32, num_heads=2, bias=True, d=4, lens=(4, 11, 0))
    score = torch.nn.Linear(12, 1).to(device)
    omega = 0.65
    with torch.no_grad():
        h_hat = seq_to_token_attention(**inp)
        expect = score(omega * inp["query"] + (1 - omega) * h_hat).squeeze(-1)
        r = r2m_reward(**inp, score_weight=score.weight, score_bias=score.bias, omega=omega)
    torch.testing.assert_close(r, expect, atol=2e-5, rtol=2e-4, msg=lambda m: f"seed {seed}: {m}")


def test_r2m_omega_schedule():
    assert r2m_omega(0, 100) == 1.0
    assert r2m_omega(50, 100) == pytest.approx(0.6)  # ½ < floor 0.6
    assert r2m_omega(50, 100, floor=0.2) == pytest.approx(0.5)
    assert r2m_omega(100, 100) == pytest.approx(0.6)
    assert r2m_omega(100, 100, floor=0.0) == pytest.approx(0.0, abs=1e-12)
    assert r2m_omega(25, 100, floor=0.0) == pytest.approx(0.5 * math.cos(math.pi / 4) + 0.5)
    assert r2m_omega(500, 100) == pytest.approx(0.6)  # past T: the floor
    t = r2m_omega(torch.tensor([0.0, 50.0, 100.0]), 100, floor=0.3)
    torch.testing.assert_close(t, torch.tensor([1.0, 0.5, 0.3], dtype=torch.float64))
    with pytest.raises(ValueError, match="total_steps"):
        r2m_omega(1, 0)
    with pytest.raises(ValueError, match="floor"):
        r2m_omega(1, 10, floor=1.5)


# ---------------------------------------------------------------- bad inputs
def _bad(device, **change):
    inp, _ = make_inputs(device, torch.float32, num_heads=2, bias=True, d=4)
    inp.update(change)
    return inp


@pytest.mark.parametrize("change,exc,match", [
    (lambda i: dict(w_q=i["w_q"][:-1]), ValueError, "w_q"),
    (lambda i: dict(w_k=i["w_k"][:, :-1]), ValueError, "w_k"),
    (lambda i: dict(w_v=i["w_v"][:-1]), ValueError, "w_v"),
    (lambda i: dict(w_o=i["w_o"][:, :-1]), ValueError, "w_o"),
    (lambda i: dict(b_o=i["b_o"][:-1]), ValueError, "b_o"),
    (lambda i: dict(states=i["states"][:, :-1]), ValueError, "w_k"),
    (lambda i: dict(num_heads=3), ValueError, "num_heads"),
    (lambda i: dict(num_heads=0), ValueError, "num_heads"),
    (lambda i: dict(cu_seqlens=i["cu_seqlens"].float()), TypeError, "cu_seqlens"),
    (lambda i: dict(cu_seqlens=i["cu_seqlens"][:-1]), ValueError, "cu_seqlens"),
    (lambda i: dict(cu_seqlens=i["cu_seqlens"].flip(0)), ValueError, "cu_seqlens"),
    (lambda i: dict(cu_seqlens=None), ValueError, "cu_seqlens"),
    (lambda i: dict(key_padding_mask=torch.zeros(4, 3, dtype=torch.bool, device=i["query"].device)), ValueError, "not both"),
    (lambda i: dict(w_q=i["w_q"].double()), TypeError, "w_q"),
    (lambda i: dict(query=i["query"].long()), TypeError, "query"),
    (lambda i: dict(query=i["query"][0]), ValueError, "query"),
    (lambda i: dict(scale=float("nan")), ValueError, "scale"),
])
def test_bad_inputs(device, change, exc, match):
    inp, _ = make_inputs(device, torch.float32, num_heads=2, bias=True, d=4)
    inp.update(change(inp))
    with pytest.raises(exc, match=match):
        seq_to_token_attention(**inp)


def test_bad_padded_inputs(device):
    inp, _ = make_inputs(device, torch.float32, layout="padded")
    with pytest.raises(ValueError, match="key_padding_mask"):
        seq_to_token_attention(**dict(inp, key_padding_mask=inp["key_padding_mask"][:, :-1]))
    with pytest.raises(TypeError, match="key_padding_mask"):
        seq_to_token_attention(**dict(inp, key_padding_mask=inp["key_padding_mask"].float()))
    with pytest.raises(ValueError, match="states"):
        seq_to_token_attention(**dict(inp, states=inp["states"][:-1]))


def test_mixed_devices():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    inp, _ = make_inputs("cuda", torch.float32)
    with pytest.raises(ValueError, match="w_q"):
        seq_to_token_attention(**dict(inp, w_q=inp["w_q"].cpu()))


def test_mixed_devices_meta():
    """A tensor on another device (meta here, so no GPU is needed) is named."""
    inp, _ = make_inputs("cpu", torch.float32)
    with pytest.raises(ValueError, match="w_v"):
        seq_to_token_attention(**dict(inp, w_v=inp["w_v"].to("meta")))


def test_r2m_reward_bad_inputs(device):
    inp, _ = make_inputs(device, torch.float32)
    sw = torch.randn(12, device=device)
    with pytest.raises(ValueError, match="score_weight"):
        r2m_reward(**inp, score_weight=sw[:-1], omega=0.6)
    with pytest.raises(ValueError, match="omega"):
        r2m_reward(**inp, score_weight=sw, omega=1.5)
    with pytest.raises(TypeError, match="score_weight"):
        r2m_reward(**inp, score_weight=sw.double(), omega=0.6)


# ---------------------------------------------------------------- torch.compile
def test_compile_fullgraph_cpu():
    inp, seed = make_inputs("cpu", torch.float32, num_heads=2, bias=True, d=4)
    names = ["query", "states", "w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o"]
    nh = inp["num_heads"]
    cu = inp["cu_seqlens"]

    def f(query, states, w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o):
        return seq_to_token_attention(query, states, w_q, w_k, w_v, w_o, cu_seqlens=cu, num_heads=nh,
                                      b_q=b_q, b_k=b_k, b_v=b_v, b_o=b_o)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [inp[k].clone().requires_grad_(True) for k in names]
    args2 = [a.detach().clone().requires_grad_(True) for a in args]
    out = compiled(*args)
    expect = f(*args2)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=1e-6)
    out.sum().backward()
    expect.sum().backward()
    for a, b, n in zip(args, args2, names):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-6, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_opcheck_custom_ops(backend, device, layout):
    """Schema, fake (shapes and strides), autograd registration of the custom ops."""
    from icrm_kernels.ops import attention as ops

    inp, _ = make_inputs(device, torch.float32, layout=layout, num_heads=2, d=4)
    cu, mask, x = inp.get("cu_seqlens"), inp.get("key_padding_mask"), inp["states"]
    q = torch.randn(4, 2, x.shape[-1], device=device).transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous
    c, lse, _ = ops.S2T_CORE.custom_op(q, x, cu, mask)
    torch.library.opcheck(ops.S2T_CORE.custom_op, (q.requires_grad_(True), x.requires_grad_(True), cu, mask))
    torch.library.opcheck(ops.S2T_CORE_BWD.custom_op, (torch.randn_like(c), q.detach(), x.detach(), cu, mask, c, lse, True))
    torch.library.opcheck(ops.R2M_CORE.custom_op, (q.detach(), torch.randn(2, x.shape[-1], device=device), x.detach(), cu, mask))


def test_triton_path_has_no_host_sync(device, monkeypatch):
    """With value checks off, the Triton path never reads a tensor value on the host."""
    from icrm_kernels import _backend

    if "triton" not in _backend.available_backends(device):
        pytest.skip("no Triton backend here")
    inp, _ = make_inputs(device, torch.float32, num_heads=2, bias=True, d=4)
    sw = torch.randn(12, device=device)

    def no_sync(*args, **kwargs):
        raise AssertionError("host synchronisation on the fast path")

    with icrm_kernels.use_backend("triton"), icrm_kernels.unchecked():
        seq_to_token_attention(**inp)  # warm-up (imports, kernel cache)
        for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__"):
            monkeypatch.setattr(torch.Tensor, name, no_sync)
        try:
            out = seq_to_token_attention(**inp)
            r = r2m_reward(**inp, score_weight=sw, omega=0.7)
        finally:
            monkeypatch.undo()
    assert out.shape == (4, 12) and r.shape == (4,)


def test_wide_states_smaller_token_blocks(backend, device):
    """D_p = 1100 fp32: the launcher shrinks BLOCK_L to 8 and the D loop has a ragged last chunk."""
    inp, seed = make_inputs(device, torch.float32, lens=(3, 19, 0), d_p=1100, d=4, num_heads=2)
    assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp,
                             grad=["query", "states", "w_k", "w_v"], seed=seed)


@pytest.mark.parametrize("variant,num_heads", [("generic", 1), ("row", 2), ("row", 1)])
def test_forced_kernel_variant(device, monkeypatch, variant, num_heads):
    """Both kernel families (full-row and generic) for fwd, bwd (with and without d states) and
    r2m, whatever the launcher would pick; odd BLOCK_L / tokens per program to hit ragged blocks.
    The row backward with d states and several heads falls back to the generic kernel."""
    from icrm_kernels import _backend

    if "triton" not in _backend.available_backends(device):
        pytest.skip("no Triton backend here")
    from icrm_kernels.triton import attention as tri

    cfg = {"variant": variant, "BLOCK_L": 2, "num_warps": 4}
    inp, seed = make_inputs(device, torch.float32, lens=(7, 0, 12, 1), num_heads=num_heads, bias=True, d=4, d_p=20)
    sw = torch.randn(12, dtype=torch.float32).to(device)
    forced = tri.launch_config({"fwd": cfg, "bwd": cfg, "r2m": cfg}, tokens_per_program=5)
    with forced, icrm_kernels.use_backend("triton"):
        assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp,
                                 grad=["query", "states", "w_k"], seed=seed)
        inp["states"] = inp["states"].detach()
        assert_matches_reference(seq_to_token_attention, ref.seq_to_token_attention, inp, grad=["query"], seed=seed)
        got = r2m_reward(**inp, score_weight=sw, omega=0.6)
    want = ref.r2m_reward(**{k: (v.detach().double().cpu() if torch.is_tensor(v) and v.is_floating_point() else
                                 (v.cpu() if torch.is_tensor(v) else v)) for k, v in inp.items()},
                          score_weight=sw.double().cpu(), omega=0.6)
    torch.testing.assert_close(got.double().cpu(), want, rtol=2e-4, atol=2e-5, msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [1, 3])
def test_head_gemv_matches_float64(device, dtype, heads):
    """r2m_reward's z = W_o w_s and u_h = W_v,h z_h: read in the weight's dtype, fp32 accumulate.
    Sizes off the block grid (R = 37 rows, 700 columns per head: two column blocks)."""
    from icrm_kernels import _backend

    if "triton" not in _backend.available_backends(device):
        pytest.skip("no Triton backend here")
    from icrm_kernels.triton import attention as tri

    w = torch.randn(37, heads * 700, dtype=torch.float32).to(device, dtype)
    v = torch.randn(heads, 700, dtype=torch.float32).to(device)
    want = torch.einsum("rhc,hc->hr", w.double().cpu().view(37, heads, 700), v.double().cpu())
    got = tri.head_gemv(w, v)
    assert got.shape == (heads, 37) and got.dtype == torch.float32
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-5, atol=1e-4)
    # a weight seen through a transpose (unit column stride lost) is made contiguous first
    wt = w.t().contiguous().t()
    torch.testing.assert_close(tri.head_gemv(wt, v), got, rtol=0, atol=0)


def test_r2m_reward_deterministic(device, monkeypatch):
    """The per-sequence merge of partials walks them in work order (no scatter_add): bitwise
    identical results run to run, with sequences split over several programs."""
    from icrm_kernels import _backend

    if "triton" not in _backend.available_backends(device):
        pytest.skip("no Triton backend here")
    from icrm_kernels.triton import attention as tri

    inp, _ = make_inputs(device, torch.float32, lens=(13, 0, 9), num_heads=2, bias=True, d=4)
    sw = torch.randn(12, dtype=torch.float32).to(device)
    with tri.launch_config(tokens_per_program=4), icrm_kernels.use_backend("triton"):
        first = r2m_reward(**inp, score_weight=sw, omega=0.6)
        for _ in range(3):
            assert torch.equal(r2m_reward(**inp, score_weight=sw, omega=0.6), first)
