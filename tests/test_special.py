"""digamma / trigamma / lgamma / betaln: accuracy against float64 (scipy), every backend."""
import numpy as np
import pytest
import scipy.special as sps
import torch

import icrm_kernels
from icrm_kernels import betaln, digamma, lgamma, trigamma
from icrm_kernels.reference import special as ref
from icrm_kernels.testing import assert_close_to_reference

BOUNDS = {"digamma": 2e-6, "trigamma": 2e-6, "lgamma": 5e-6}
SCIPY = {"digamma": sps.digamma, "trigamma": lambda v: sps.polygamma(1, v), "lgamma": sps.gammaln}
OPS = {"digamma": digamma, "trigamma": trigamma, "lgamma": lgamma}


def _grid():
    """Dense log grid over [1e-4, 1e6], random points, and the cancellation zones near 1 and 2."""
    rng = np.random.default_rng()
    return np.concatenate([
        np.logspace(-4, 6, 6000),
        rng.uniform(1e-4, 10.0, 2000),
        np.exp(rng.uniform(np.log(1e-4), np.log(1e6), 2000)),
        1.0 + np.linspace(-1e-2, 1e-2, 801),
        2.0 + np.linspace(-1e-2, 1e-2, 801),
        [1e-4, 1.0, 2.0, 1.4616321449683622, 1e6],
    ])


def _rel_err(got, want):
    return np.abs(got - want) / np.maximum(1.0, np.abs(want))


@pytest.mark.parametrize("name", list(OPS))
def test_fp32_accuracy_bound(name, backend, device):
    x = torch.tensor(_grid(), dtype=torch.float32, device=device)
    got = OPS[name](x).double().cpu().numpy()
    want = SCIPY[name](x.double().cpu().numpy())
    err = _rel_err(got, want)
    i = int(err.argmax())
    bound = BOUNDS[name] if backend != "reference" else 1e-6  # reference: float64, rounded to fp32
    assert err.max() <= bound, f"{name} max err {err.max():.2e} at x={x[i].item()!r} ({backend})"


def test_betaln_fp32_accuracy(backend, device):
    rng = np.random.default_rng()
    a = np.exp(rng.uniform(np.log(1e-4), np.log(1e6), 6000))
    b = np.exp(rng.uniform(np.log(1e-4), np.log(1e6), 6000))
    at = torch.tensor(a, dtype=torch.float32, device=device)
    bt = torch.tensor(b, dtype=torch.float32, device=device)
    got = betaln(at, bt).double().cpu().numpy()
    want = sps.betaln(at.double().cpu().numpy(), bt.double().cpu().numpy())
    err = _rel_err(got, want)
    if backend == "reference":  # lgamma(a) + lgamma(b) - lgamma(a + b) in float64 loses ~1e-9 at 1e6
        assert err.max() <= 1e-6
    else:
        assert err.max() <= 1e-5, f"betaln max err {err.max():.2e}"


def test_float64_cpu_kernels_are_float64_accurate():
    if not icrm_kernels._backend.HAS_CPP:
        pytest.skip("C++ extension not built")
    x = torch.tensor(_grid(), dtype=torch.float64)
    with icrm_kernels.use_backend("cpp"):
        for name in OPS:
            err = _rel_err(OPS[name](x).numpy(), SCIPY[name](x.numpy()))
            assert err.max() < 1e-13, (name, err.max())
        a, b = x[:4000], x.flip(0)[:4000]
        err = _rel_err(betaln(a, b).numpy(), sps.betaln(a.numpy(), b.numpy()))
        assert err.max() < 1e-8  # scipy itself is ~4e-9 off at (7e5, 0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs(dtype, backend, device):
    x = (torch.rand(40, device=device) * 20 + 1e-2).to(dtype)
    for name, op in OPS.items():
        out = op(x)
        assert out.dtype == dtype and out.shape == x.shape
        if dtype == torch.float32:
            want = getattr(ref, name)(x.double()).to(dtype)
            torch.testing.assert_close(out.double(), want.double(), atol=1e-2, rtol=1e-2)
        else:  # error bounded by the reference's own error in this dtype (testing.py)
            assert_close_to_reference(out, getattr(ref, name)(x.double()), getattr(ref, name)(x.cpu()), what=name)
    out = betaln(x, x.flip(0))
    assert out.dtype == dtype


def test_gradients_float64(backend, device):
    x = (torch.rand(12, dtype=torch.float64, device=device) * 5 + 0.1).requires_grad_()
    y = (torch.rand(12, dtype=torch.float64, device=device) * 5 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(digamma, (x,))
    assert torch.autograd.gradcheck(lgamma, (x,))
    assert torch.autograd.gradcheck(trigamma, (x,))
    assert torch.autograd.gradcheck(betaln, (x, y))


def test_gradients_fp32_match_torch(backend, device):
    x = (torch.rand(30, device=device) * 10 + 0.05).requires_grad_()
    (g,) = torch.autograd.grad(lgamma(x).sum(), x)
    torch.testing.assert_close(g, torch.digamma(x.detach()), atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(digamma(x).sum(), x)
    torch.testing.assert_close(g, torch.polygamma(1, x.detach()), atol=1e-5, rtol=1e-5)


def test_betaln_broadcasts(device):
    a = torch.rand(3, 1, device=device) + 0.5
    b = torch.rand(1, 4, device=device) + 0.5
    out = betaln(a, b)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.double(), ref.betaln(a.double(), b.double()).expand(3, 4), atol=1e-5, rtol=1e-5)


def test_bad_inputs(device):
    x = torch.rand(5, device=device) + 0.1
    with pytest.raises(ValueError, match="x must be finite and > 0"):
        digamma(torch.tensor([1.0, 0.0], device=device))
    with pytest.raises(ValueError, match="x must be finite and > 0"):
        lgamma(torch.tensor([float("nan")], device=device))
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        trigamma(torch.arange(3, device=device))
    with pytest.raises(ValueError, match="b must be finite and > 0"):
        betaln(x, -x)
    with pytest.raises(TypeError, match="b has dtype"):
        betaln(x, x.double())
    with icrm_kernels.unchecked():  # no value check, no error
        digamma(torch.tensor([1.0, 0.0], device=device))


def test_empty(device):
    x = torch.empty(0, device=device)
    assert digamma(x).shape == (0,) and betaln(x, x).shape == (0,)


def test_torch_compile_fullgraph():
    def f(x, y):
        return digamma(x) + trigamma(y) * lgamma(x) - betaln(x, y)

    x = torch.rand(16) + 0.5
    y = torch.rand(16) + 0.5
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, y), f(x, y))
