"""How eager calls reach the kernels (icrm_kernels/_op.py::Op.__call__).

Eager calls skip torch.library's dispatcher: without a gradient they call the op's
implementation; with one, an autograd.Function built from the op's registered formula
(``_backend.register_autograd``). Both must give exactly what the registered op gives, forward
and backward, on every backend.
"""
import os

import pytest
import torch

import icrm_kernels as ik
from icrm_kernels import _backend


def _elbo(device):
    a = (torch.rand(37, device=device) * 3 + 0.2).requires_grad_(True)
    b = (torch.rand(37, device=device) * 3 + 0.2).requires_grad_(True)
    y = torch.rand(37, device=device)
    return lambda: ik.beta_elbo_loss(a, b, y), (a, b), "beta_elbo"


def _elbo_logits(device):
    m = torch.randn(37, device=device).requires_grad_(True)
    c = torch.randn(37, device=device).requires_grad_(True)
    y = torch.rand(37, device=device)
    return lambda: ik.beta_elbo_loss_from_logits(m, c, y, reduction="sum"), (m, c), "beta_elbo"


def _grebt(device):
    r = torch.randn(24, device=device).requires_grad_(True)
    return lambda: ik.grebt_loss(r, group_size=6), (r,), "grebt"


def _win_rate(device):
    s = torch.randn(24, device=device).requires_grad_(True)
    return lambda: (ik.group_win_rate(s, group_size=6, temperature=0.7) * torch.arange(24, device=device)).sum(), \
        (s,), "win_rate"


def _attention(device):
    g = torch.Generator().manual_seed(0)
    d_r, d_p, d = 6, 5, 4

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    q, x = r(3, d_r).requires_grad_(True), r(9, d_p).requires_grad_(True)
    w = dict(w_q=r(d_r, d), w_k=r(d_p, d), w_v=r(d_p, d), w_o=r(d, d_r))
    cu = torch.tensor([0, 4, 4, 9], device=device)
    return lambda: ik.seq_to_token_attention(q, x, **w, cu_seqlens=cu).square().sum(), (q, x), "s2t_attention_core"


CASES = {"elbo": _elbo, "elbo_logits": _elbo_logits, "grebt": _grebt, "win_rate": _win_rate, "attention": _attention}


@pytest.mark.parametrize("case", sorted(CASES))
def test_eager_autograd_equals_the_registered_op(backend, device, case):
    run, leaves, op_name = CASES[case](device)
    loss = run()
    fast = [loss.detach()] + list(torch.autograd.grad(loss, leaves))
    with _backend.eager_autograd(False):  # every call through torch.library's autograd
        loss_op = run()
        slow = [loss_op.detach()] + list(torch.autograd.grad(loss_op, leaves))
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=0, atol=0)


def test_eager_autograd_is_used_and_compile_goes_through_the_op():
    a = (torch.rand(8) + 0.5).requires_grad_(True)
    b = (torch.rand(8) + 0.5).requires_grad_(True)
    y = torch.rand(8)
    loss = ik.beta_elbo_loss(a, b, y, reduction="none")
    assert type(loss.grad_fn).__name__.startswith("Eager")  # the eager Function, not torch.library's
    with torch.no_grad():
        assert ik.beta_elbo_loss(a, b, y).grad_fn is None
    compiled = torch.compile(lambda a, b, y: ik.beta_elbo_loss(a, b, y), backend="eager", fullgraph=True)
    out = compiled(a, b, y)
    ga = torch.autograd.grad(out, a)[0]
    torch.testing.assert_close(ga, torch.autograd.grad(ik.beta_elbo_loss(a, b, y), a)[0])


def test_internal_outputs_get_no_materialized_gradient():
    """The ELBO's per-element gradient outputs are internal: on the torch.library path backward
    receives None for them (no [N]-sized zero tensors); the eager Function (``EagerElbo``) has
    no such outputs at all (the gradients ride on its ctx) and a single-gradient backward."""
    from icrm_kernels.ops import beta as ops_beta

    seen = []
    original = ops_beta._elbo_backward

    def spy(ctx, grad_loss, g1, g2):
        seen.append((g1, g2))
        return original(ctx, grad_loss, g1, g2)

    a = (torch.rand(8) + 0.5).requires_grad_(True)
    b = (torch.rand(8) + 0.5).requires_grad_(True)
    loss = ik.beta_elbo_loss(a, b, torch.rand(8))
    assert type(loss.grad_fn).__name__ == "EagerElboBackward"
    torch.autograd.grad(loss, (a, b))
    try:  # the torch.library registration takes the spy
        ops_beta.ELBO.register_autograd(spy)
        with _backend.eager_autograd(False):
            torch.autograd.grad(ik.beta_elbo_loss(a, b, torch.rand(8)), (a, b))
    finally:
        ops_beta.ELBO.register_autograd()  # the record's formula and eager twin again
    assert len(seen) == 1 and all(g1 is None and g2 is None for g1, g2 in seen)
    # restored: the op's formula and its eager twin are the record's again (no spy, the right arity)
    with _backend.eager_autograd(False):
        torch.autograd.grad(ik.beta_elbo_loss(a, b, torch.rand(8)), (a, b))
    loss, g1, g2 = ops_beta.ELBO(a, b, None, None, 1.0, 1.0, 1.0, 0.01, False, 2, True)  # the generic twin
    assert g1.shape == a.shape and g1.grad_fn is None
    torch.autograd.grad(loss, (a, b))
    assert len(seen) == 1


def test_functorch_transforms_go_through_the_op():
    """Under torch.func transforms the tensors are wrapped but look plain: the eager shortcuts
    must not be taken (the op path decides what the transform supports)."""
    seen = []

    def f(x):
        seen.append(_backend._eager_mode([x]))
        return x.sum()

    torch.func.grad(f)(torch.randn(3))
    assert seen == [False]
    assert _backend._eager_mode([torch.randn(3)])


def test_host_overhead_script_runs():
    """bench/host_overhead.py (the gpu-check 'host' step) still runs every op's glue with null
    kernels. A subprocess: the script replaces the Triton kernels module-wide."""
    import os
    import pathlib
    import subprocess
    import sys

    if not _backend.HAS_TRITON:
        pytest.skip("triton is not installed")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(root / "bench" / "host_overhead.py"), "--repeats", "3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "r2m_reward" in proc.stdout and "seq_to_token_attention fwd+bwd" in proc.stdout


def test_tune_gpu_script_runs():
    """bench/tune_gpu.py (the gpu-check 'tune' step) launches each swept kernel at its launcher
    default and times it: under Triton's interpreter here, on the GPU (at the full sizes) where
    there is one. A subprocess, as the interpreter must be set before triton is imported."""
    import os
    import pathlib
    import subprocess
    import sys

    if not _backend.HAS_TRITON:
        pytest.skip("triton is not installed")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(root / "bench" / "tune_gpu.py"), "--quick"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FAILED" not in proc.stdout, proc.stdout[-2000:]
    for kernel in ("grpo", "tokens", "posterior", "elbo"):
        assert f"best {kernel}:" in proc.stdout


# ---------------------------------------------------------------- per-context state (issue 9, class 9)
def test_use_backend_and_unchecked_do_not_leak_between_asyncio_tasks():
    """Two tasks interleave (each awaits inside its block while the other runs): each sees only
    its own use_backend/unchecked choice; outside the blocks nothing is left behind."""
    import asyncio

    from icrm_kernels import _checks

    seen = {}

    async def task(name, backend, skip_checks, first, second):
        with ik.use_backend(backend):
            with (ik.unchecked() if skip_checks else _nullcontext()):
                first.set()
                await second.wait()  # the other task enters its own blocks meanwhile
                seen[name] = (_backend.current_backend(), _checks.value_checks_enabled())
                await asyncio.sleep(0)
        seen[name + " after"] = (_backend.current_backend(), _checks.value_checks_enabled())

    async def main():
        a_in, b_in = asyncio.Event(), asyncio.Event()
        outside = []

        async def observer():
            await a_in.wait()
            await b_in.wait()
            outside.append((_backend.current_backend(), _checks.value_checks_enabled()))

        await asyncio.gather(task("a", "reference", True, a_in, b_in),
                             task("b", "cpp", False, b_in, a_in), observer())
        return outside

    default = _backend.current_backend()
    outside = asyncio.run(main())
    assert seen["a"] == ("reference", False)
    assert seen["b"] == ("cpp", True)
    assert seen["a after"] == seen["b after"] == (default, True)
    assert outside == [(default, True)]  # a task outside both blocks keeps the defaults
    assert _backend.current_backend() == default and _checks.value_checks_enabled()


def test_use_backend_and_unchecked_are_per_thread():
    import threading

    from icrm_kernels import _checks

    default = _backend.current_backend()
    inside, other = threading.Event(), threading.Event()
    seen = []

    def worker():
        inside.wait(10)
        seen.append((_backend.current_backend(), _checks.value_checks_enabled()))
        other.set()

    t = threading.Thread(target=worker)
    t.start()
    with ik.use_backend("reference"), ik.unchecked():
        inside.set()
        other.wait(10)
        assert (_backend.current_backend(), _checks.value_checks_enabled()) == ("reference", False)
    t.join(10)
    assert seen == [(default, True)]


def test_state_blocks_nest_and_restore_on_error():
    from icrm_kernels import _checks

    default = _backend.current_backend()
    with pytest.raises(RuntimeError, match="boom"):
        with ik.use_backend("reference"), ik.unchecked():
            with ik.use_backend("cpp"), ik.unchecked():
                assert _backend.current_backend() == "cpp"
            assert _backend.current_backend() == "reference" and not _checks.value_checks_enabled()
            raise RuntimeError("boom")
    assert _backend.current_backend() == default and _checks.value_checks_enabled()
    with pytest.raises(ValueError, match="backend must be one of"):
        with ik.use_backend("gpu"):
            pass


def test_state_block_exited_in_another_context_restores_instead_of_raising():
    """A generator-based fixture may be finalised in a different context than it was entered
    in; the token reset must not raise there."""
    import contextvars

    from icrm_kernels import _checks

    cms = [ik.use_backend("reference"), ik.unchecked()]
    contextvars.copy_context().run(lambda: [cm.__enter__() for cm in cms])
    for cm in reversed(cms):  # exited here, where the tokens were never set: no ValueError
        cm.__exit__(None, None, None)
    assert _checks.value_checks_enabled()
    assert _backend._forced.get() is None


def test_icrm_backend_env_is_the_default(monkeypatch):
    monkeypatch.setenv("ICRM_BACKEND", "reference")
    assert _backend.current_backend() == "reference"
    with ik.use_backend("cpp"):
        assert _backend.current_backend() == "cpp"
    assert _backend.current_backend() == "reference"
    monkeypatch.setenv("ICRM_BACKEND", "bogus")
    with pytest.raises(ValueError, match="ICRM_BACKEND"):
        _backend.current_backend()
    with pytest.raises(ValueError, match="ICRM_BACKEND"):  # (an invalid value is never remembered)
        _backend.current_backend()
    # the value is read again after every change (the default remembers the last value it read)
    monkeypatch.setenv("ICRM_BACKEND", "cpp")
    assert _backend.current_backend() == "cpp"
    os.environ["ICRM_BACKEND"] = "reference"
    assert _backend.current_backend() == "reference"
    monkeypatch.delenv("ICRM_BACKEND")
    assert _backend.current_backend() == "auto"


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_backend_state_is_readable_under_fullgraph_compile():
    """ContextVar.get is not traceable by Dynamo: the state readers must not break the graph."""
    from icrm_kernels import _checks

    def f(x):
        checks = _checks.value_checks_enabled()
        return x + (1.0 if _backend.current_backend() == "reference" else 2.0) + (0.0 if checks else 10.0)

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    with ik.use_backend("reference"):
        # reference: +1; value checks are off while tracing: +10
        torch.testing.assert_close(compiled(torch.zeros(2)), torch.full((2,), 11.0))


def test_low_precision_rule():
    """testing.assert_close_to_reference: 2x the dtype's own error plus a floor; entries where
    the low-precision reference is not finite give no yardstick (a sweep seed failed on one)."""
    from icrm_kernels.testing import assert_close_to_reference

    ref64 = torch.tensor([1.0, -64.0, 3.0], dtype=torch.float64)
    low = torch.tensor([1.01, float("nan"), 3.0], dtype=torch.float64)  # the dtype's error: 0.01
    assert_close_to_reference(torch.tensor([1.0, -62.5, 3.02]), ref64, low.bfloat16())
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close_to_reference(torch.tensor([1.0, -64.0, 5.0]), ref64, low.bfloat16())
    with pytest.raises(AssertionError, match="NaN"):  # the kernel must stay finite there
        assert_close_to_reference(torch.tensor([1.0, float("nan"), 3.0]), ref64, low.bfloat16())


def test_cuda_without_triton_warns_once_and_names_the_extra(monkeypatch):
    """Triton is an optional extra: CUDA tensors without it run the reference, with one warning
    that says how to install it."""
    import warnings

    from icrm_kernels import _backend

    monkeypatch.setattr(_backend, "HAS_TRITON", False)
    monkeypatch.setattr(_backend, "_WARNED_NO_TRITON", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _backend.select(torch.device("cuda")) == "reference"
        assert _backend.select(torch.device("cuda")) == "reference"
    msgs = [str(w.message) for w in caught if "triton is not installed" in str(w.message)]
    assert len(msgs) == 1 and "icrm-kernels[triton]" in msgs[0]
