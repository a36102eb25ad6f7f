"""CUDA-graph safety of the unchecked path: inside ``icrm_kernels.unchecked()`` no op reads a
tensor value back to the host (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``) and none
produces an output whose shape depends on tensor values (nonzero, unique, masked_select, boolean
indexing, repeat_interleave without output_size), either of which breaks CUDA graph capture.

Checked on the CPU: each op runs its eager path inside a TorchDispatchMode that fails on those
aten ops, with ``Tensor.tolist`` / ``Tensor.numpy`` patched to raise (they read memory without
the dispatcher). The mode is hidden from ``_backend._eager_mode`` so that the eager fast paths
(direct implementation call, eager autograd twin) are the ones checked, not the torch.library
dispatch that a mode would otherwise force. Triton path: the kernels are replaced by no-op
launches (the launcher's host code is what is checked; the kernels are device code). C++ path:
the ``icrm_cpu`` kernels are opaque to the mode (their CPU internals are not graph-captured).

Documented exceptions (data-dependent output shapes by contract, in the ops' docstrings):
``grebt_loss(reduction="none")`` with ``group_index`` (the number of groups is read on the host)
and ``beta_posterior(segment_index=...)`` without ``num_segments`` (K = max(index) + 1). The C++
``group_order`` counting sort of the index layout returns ``num_groups + 1`` offsets (CPU only).
"""
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import icrm_kernels as ik
from icrm_kernels import _backend, _checks

aten = torch.ops.aten

_FORBIDDEN = {
    "_local_scalar_dense", "item", "nonzero", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
    "masked_select", "bincount", "histc", "nonzero_numpy", "argwhere",
}


class GraphUnsafe(AssertionError):
    pass


class NoSyncMode(TorchDispatchMode):
    """Fails on host reads and data-dependent output shapes."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _FORBIDDEN:
            raise GraphUnsafe(f"{func} (host sync or data-dependent shape) on the unchecked path")
        if (name == "repeat_interleave" and func is not aten.repeat_interleave.self_int
                and kwargs.get("output_size") is None):  # tensor repeats: the output size is their sum
            raise GraphUnsafe(f"{func} without output_size on the unchecked path")
        if name in ("index", "index_put", "index_put_"):
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx or ()):
                raise GraphUnsafe(f"{func} with a boolean mask (data-dependent shape) on the unchecked path")
        return func(*args, **kwargs)


class _NullLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _raise(*args, **kwargs):
    raise GraphUnsafe("Tensor.tolist/numpy (host read) on the unchecked path")


@pytest.fixture(params=[b for b in ("triton", "cpp") if b in _backend.available_backends("cpu")])
def graph_backend(request, monkeypatch):
    if request.param == "triton":
        from icrm_kernels.triton import KERNEL_MODULES

        for fam in KERNEL_MODULES:
            mod = importlib.import_module(f"icrm_kernels.triton.{fam}")
            for name in dir(mod):
                if name.endswith("_kernel"):
                    monkeypatch.setattr(mod, name, _NullLaunch())
    with ik.use_backend(request.param):
        yield request.param


def run_no_sync(fn, monkeypatch):
    """fn() inside unchecked(), under NoSyncMode, with the mode hidden from _eager_mode."""
    fn()  # warm-up outside the mode: caches (options, launch plans, ln B of the prior) filled
    monkeypatch.setattr(_backend, "_dispatch_stack_len", lambda: 0)
    monkeypatch.setattr(torch.Tensor, "tolist", _raise)
    monkeypatch.setattr(torch.Tensor, "numpy", _raise)
    try:
        with _checks.unchecked(), NoSyncMode():
            return fn()
    finally:
        monkeypatch.undo()


N, G = 64, 8


def _rewards(requires_grad=False):
    r = torch.randn(N, generator=torch.Generator().manual_seed(0))
    return r.requires_grad_(requires_grad)


ADV_CASES = {
    "fixed verl_grpo": dict(group_size=G, preset="verl_grpo"),
    "fixed trl_batch": dict(group_size=G, preset="trl_batch"),
    "ragged": dict(cu_groups=torch.tensor([0, 5, 6, 20, 40, 64])),
    "index": dict(group_index=torch.arange(N) % 7),
    "index rloo": dict(group_index=torch.arange(N) % 5, preset="verl_rloo"),
    "tokens": dict(group_size=G, preset="verl_grpo", response_mask=torch.rand(N, 12) > 0.3),
    "tokens whiten": dict(group_size=G, preset="verl_reinforce_pp_baseline", response_mask=torch.rand(N, 12) > 0.3),
    "bnpo": dict(group_size=G, preset="bnpo"),
    "dler": dict(group_size=G, preset="dler"),
    "omit": dict(group_size=G, nan_policy="omit"),
    "K=2 normalize_then_sum": dict(group_size=G, aggregation="normalize_then_sum", rewards2=True),
}


@pytest.mark.parametrize("case", list(ADV_CASES))
def test_group_advantages_no_sync(graph_backend, case, monkeypatch):
    kw = dict(ADV_CASES[case])
    r = torch.randn(N, 2) if kw.pop("rewards2", False) else _rewards()
    if graph_backend == "cpp" and "group_index" in kw:
        pytest.skip("C++ index layout: the counting sort returns num_groups + 1 offsets (CPU only, documented)")
    run_no_sync(lambda: ik.group_advantages(r, **kw), monkeypatch)


@pytest.mark.parametrize("layout", ["fixed", "ragged", "index"])
@pytest.mark.parametrize("temperature", [None, 1.0])
def test_group_win_rate_no_sync(graph_backend, layout, temperature, monkeypatch):
    kw = {"fixed": dict(group_size=G), "ragged": dict(cu_groups=torch.tensor([0, 5, 6, 20, 64])),
          "index": dict(group_index=torch.arange(N) % 7)}[layout]
    r = _rewards(True)
    run_no_sync(lambda: torch.autograd.grad(ik.group_win_rate(r, temperature=temperature, **kw).sum(), r,
                                            allow_unused=True), monkeypatch)


@pytest.mark.parametrize("layout", ["fixed", "ragged", "index"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_grebt_loss_no_sync(graph_backend, layout, reduction, monkeypatch):
    if layout == "index" and reduction == "none":
        pytest.skip("documented: reduction='none' with group_index reads the number of groups on the host")
    kw = {"fixed": dict(group_size=G), "ragged": dict(cu_groups=torch.tensor([0, 5, 6, 20, 64])),
          "index": dict(group_index=torch.arange(N) % 7)}[layout]
    r = _rewards(True)
    run_no_sync(lambda: torch.autograd.grad(ik.grebt_loss(r, reduction=reduction, **kw).sum(), r), monkeypatch)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_beta_elbo_no_sync(graph_backend, from_logits, reduction, monkeypatch):
    a = (torch.rand(N) + 0.5).requires_grad_()
    b = (torch.rand(N) + 0.5).requires_grad_()
    y = torch.rand(N)
    w = torch.rand(N)
    fn = ik.beta_elbo_loss_from_logits if from_logits else ik.beta_elbo_loss
    run_no_sync(lambda: torch.autograd.grad(fn(a, b, y, weights=w, reduction=reduction).sum(), (a, b)),
                monkeypatch)


def test_beta_kl_and_stats_no_sync(graph_backend, monkeypatch):
    a = (torch.rand(N) + 0.5).requires_grad_()
    b = (torch.rand(N) + 0.5).requires_grad_()
    run_no_sync(lambda: torch.autograd.grad(ik.beta_kl(a, b, 2.0, 0.5).sum(), (a, b)), monkeypatch)
    run_no_sync(lambda: ik.beta_stats(a.detach(), b.detach()), monkeypatch)


@pytest.mark.parametrize("layout", ["cu", "index"])
def test_beta_posterior_no_sync(graph_backend, layout, monkeypatch):
    y = torch.rand(N)
    kw = dict(cu_segments=torch.tensor([0, 5, 6, 20, 64])) if layout == "cu" else \
        dict(segment_index=torch.arange(N) % 7, num_segments=7)
    run_no_sync(lambda: ik.beta_posterior(y, discount=0.9, weights=torch.rand(N), **kw), monkeypatch)


def _attn(requires_grad=True):
    g = torch.Generator().manual_seed(1)
    d_r, d_p, d = 8, 12, 8
    q = torch.randn(4, d_r, generator=g).requires_grad_(requires_grad)
    return q, dict(states=torch.randn(40, d_p, generator=g), w_q=torch.randn(d_r, d, generator=g),
                   w_k=torch.randn(d_p, d, generator=g), w_v=torch.randn(d_p, d, generator=g),
                   w_o=torch.randn(d, d_r, generator=g), cu_seqlens=torch.tensor([0, 10, 10, 25, 40]))


def test_seq_to_token_attention_no_sync(graph_backend, monkeypatch):
    q, kw = _attn()
    run_no_sync(lambda: torch.autograd.grad(ik.seq_to_token_attention(q, **kw).sum(), q), monkeypatch)
    kw["key_padding_mask"] = torch.rand(4, 10) > 0.3
    kw["states"] = torch.randn(4, 10, 12)
    del kw["cu_seqlens"]
    run_no_sync(lambda: torch.autograd.grad(ik.seq_to_token_attention(q, **kw).sum(), q), monkeypatch)


def test_r2m_reward_no_sync(graph_backend, monkeypatch):
    q, kw = _attn(False)
    run_no_sync(lambda: ik.r2m_reward(q, **kw, score_weight=torch.randn(8), omega=0.6), monkeypatch)


def test_the_mode_catches_syncs(monkeypatch):
    """The checker itself: a host read and a data-dependent shape both fail under it."""
    x = torch.randn(8)
    with pytest.raises(GraphUnsafe):
        run_no_sync(lambda: bool((x > 0).any()), monkeypatch)
    with pytest.raises(GraphUnsafe):
        run_no_sync(lambda: x[x > 0], monkeypatch)
    with pytest.raises(GraphUnsafe):
        run_no_sync(lambda: x.tolist(), monkeypatch)
    with pytest.raises(GraphUnsafe):
        run_no_sync(lambda: torch.repeat_interleave(torch.tensor([1, 2])), monkeypatch)
