"""Special functions as ops: ``digamma``, ``trigamma``, ``lgamma``, ``betaln``.

Domain x > 0 (a, b > 0 for betaln): these are the functions the Beta posterior math needs, and
the kernels are written for positive arguments only. fp32 accuracy over [1e-4, 1e6],
|err| / max(1, |ref|) against float64: digamma and trigamma <= 2e-6, lgamma <= 5e-6
(measured ~1e-6); betaln is computed as
(a-1/2) log(a/s) + (b-1/2) log(b/s) - log(s)/2 + log(2 pi)/2 + C(a) + C(b) - C(s) with the Stirling
remainders C, so it stays accurate at a, b ~ 1e6 where lgamma(a) + lgamma(b) - lgamma(a+b) in
fp32 loses every digit.

Dispatch: CUDA -> Triton (fp32 math; bf16/fp16 upcast on load, result in the input dtype;
float64 CUDA tensors run the torch reference); CPU -> C++ (float and double kernels), or the
torch reference when the extension is not built. Gradients: digamma' = trigamma,
lgamma' = digamma, d betaln = (psi(a) - psi(s), psi(b) - psi(s)) through these ops; trigamma's
gradient uses ``torch.polygamma(2, x)`` (not fused).

Checked path: non-positive or non-finite arguments raise ``ValueError`` naming the argument.
Inside ``icrm_kernels.unchecked()`` they are not checked, and every backend returns: x = 0 ->
the pole (digamma -inf, trigamma +inf, lgamma +inf, as torch.special/scipy); x < 0 (no
reflection formula), -inf, NaN -> NaN; +inf -> digamma +inf, trigamma 0, lgamma +inf. Every
loop is bounded by a fixed step count, so no argument can hang (-inf and x <= -2^53 used to).
float64 is float64-accurate on every path (C++ double kernels; the reference elsewhere, whose
trigamma is its own series because torch.polygamma(1, x) is only ~5e-10 accurate).
"""
from __future__ import annotations

import math

import torch

from icrm_kernels import _backend
from icrm_kernels._checks import check_tensor, value_bounds, value_checks_enabled
from icrm_kernels import vocab

_WHICH = vocab.codes(vocab.SPECIAL_UNARY)  # name -> C++ special_unary selector (icrm_kernels/vocab.py)


def _backend_for(x: torch.Tensor) -> str:
    b = _backend.select(x.device, cpp_op="special_unary")
    if b == "triton" and x.dtype == torch.float64:
        return "reference"  # the kernels compute in fp32
    return b


def _reference_unary(name, x):
    from icrm_kernels.reference import special as ref

    return getattr(ref, name)(x.to(torch.float64)).to(x.dtype)


def _unary_impl(name: str, x: torch.Tensor) -> torch.Tensor:
    backend = _backend_for(x)
    if backend == "triton":
        from icrm_kernels.triton import special as tri

        return tri.unary(name, x)
    if backend == "cpp":
        return torch.ops.icrm_cpu.special_unary(x.contiguous(), _WHICH[name])
    return _reference_unary(name, x)


@torch.library.custom_op("icrm::digamma", mutates_args=())
def _digamma_op(x: torch.Tensor) -> torch.Tensor:
    return _unary_impl("digamma", x)


@torch.library.custom_op("icrm::trigamma", mutates_args=())
def _trigamma_op(x: torch.Tensor) -> torch.Tensor:
    return _unary_impl("trigamma", x)


@torch.library.custom_op("icrm::lgamma", mutates_args=())
def _lgamma_op(x: torch.Tensor) -> torch.Tensor:
    return _unary_impl("lgamma", x)


@torch.library.custom_op("icrm::betaln", mutates_args=())
def _betaln_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    backend = _backend_for(a)
    if backend == "triton":
        from icrm_kernels.triton import special as tri

        return tri.betaln_launch(a, b)
    if backend == "cpp":
        return torch.ops.icrm_cpu.betaln(a.contiguous(), b.contiguous())
    from icrm_kernels.reference import special as ref

    return ref.betaln(a.to(torch.float64), b.to(torch.float64)).to(a.dtype)


for _op in (_digamma_op, _trigamma_op, _lgamma_op):
    _op.register_fake(lambda x: torch.empty_like(x, memory_format=torch.contiguous_format))


@_betaln_op.register_fake
def _(a, b):
    return torch.empty_like(a, memory_format=torch.contiguous_format)


def _save_x(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _digamma_bwd(ctx, g):
    (x,) = ctx.saved_tensors
    return g * _trigamma_op(x)


def _trigamma_bwd(ctx, g):
    (x,) = ctx.saved_tensors
    return g * torch.polygamma(2, x)


def _lgamma_bwd(ctx, g):
    (x,) = ctx.saved_tensors
    return g * _digamma_op(x)


def _betaln_bwd(ctx, g):
    a, b = ctx.saved_tensors
    psi_s = _digamma_op(a + b)
    return g * (_digamma_op(a) - psi_s), g * (_digamma_op(b) - psi_s)


_digamma_op.register_autograd(_digamma_bwd, setup_context=_save_x)
_trigamma_op.register_autograd(_trigamma_bwd, setup_context=_save_x)
_lgamma_op.register_autograd(_lgamma_bwd, setup_context=_save_x)
_betaln_op.register_autograd(_betaln_bwd, setup_context=_save_x)


def check_positive(x: torch.Tensor, name: str) -> None:
    """Raise ValueError naming ``name`` if any value is <= 0 or not finite (checked path only)."""
    if value_checks_enabled() and x.numel():
        if x.dtype.is_floating_point:  # one aminmax and one sync; the detailed pass only to raise
            ((lo, hi),) = value_bounds(x)
            if lo > 0 and hi < math.inf:
                return
        bad = ~(torch.isfinite(x) & (x > 0))
        if bool(bad.any()):
            first = x[bad].flatten()[0].item()
            raise ValueError(f"{name} must be finite and > 0, got {first} ({int(bad.sum())} bad value(s))")


def _unary_public(name, op, x):
    check_tensor(x, "x", floating=True)
    check_positive(x, "x")
    return op(x)


def digamma(x: torch.Tensor) -> torch.Tensor:
    """psi(x) = d/dx log Gamma(x), elementwise, for x > 0. Same shape and dtype as ``x``."""
    return _unary_public("digamma", _digamma_op, x)


def trigamma(x: torch.Tensor) -> torch.Tensor:
    """psi'(x), elementwise, for x > 0. Same shape and dtype as ``x``."""
    return _unary_public("trigamma", _trigamma_op, x)


def lgamma(x: torch.Tensor) -> torch.Tensor:
    """log Gamma(x), elementwise, for x > 0. Same shape and dtype as ``x``."""
    return _unary_public("lgamma", _lgamma_op, x)


def betaln(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b) for a, b > 0; a and b broadcast
    (one float dtype). Accurate also when a or b is ~1e6 (see the module docstring)."""
    check_tensor(a, "a", floating=True)
    check_tensor(b, "b", floating=True)
    if a.dtype != b.dtype:
        raise TypeError(f"b has dtype {b.dtype} but a has {a.dtype}; pass tensors of one float dtype")
    if a.device != b.device:
        raise ValueError(f"b is on {b.device} but a is on {a.device}; all tensors must be on one device")
    check_positive(a, "a")
    check_positive(b, "b")
    if a.shape != b.shape:
        a, b = torch.broadcast_tensors(a, b)
    return _betaln_op(a.contiguous(), b.contiguous())


def selfcheck(device):
    """(op, ok, max rel err, backend) for each special function on a small random input."""
    from icrm_kernels.reference import special as ref

    device = torch.device(device)
    x = torch.exp(torch.empty(4096, dtype=torch.float64).uniform_(-9.2, 13.8)).to(device)
    x32 = x.float()
    out = []
    for name, fn, bound in (("digamma", digamma, 2e-6), ("trigamma", trigamma, 2e-6), ("lgamma", lgamma, 5e-6)):
        got = fn(x32).double().cpu()
        want = getattr(ref, name)(x32.double().cpu())
        err = float(((got - want).abs() / want.abs().clamp_min(1)).max())
        out.append((name, err <= bound, err, _backend_for(x32)))
    a, b = x32[:2048], x32[2048:]
    got = betaln(a, b).double().cpu()
    want = ref.betaln(a.double().cpu(), b.double().cpu())
    err = float(((got - want).abs() / want.abs().clamp_min(1)).max())
    out.append(("betaln", err <= 1e-5, err, _backend_for(a)))
    return out


# every public op inside a profiler range named icrm::<op> (icrm_kernels/profiling.py);
# assigned last so that selfcheck and the modules importing these names get the ranged ones
from icrm_kernels.profiling import ranged  # noqa: E402

digamma = ranged('digamma')(digamma)
trigamma = ranged('trigamma')(trigamma)
lgamma = ranged('lgamma')(lgamma)
betaln = ranged('betaln')(betaln)
