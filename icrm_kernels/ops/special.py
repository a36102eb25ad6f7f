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

import functools

import torch

from icrm_kernels import _op, vocab
from icrm_kernels._checks import check_positive, check_tensor
from icrm_kernels.profiling import ranged
from icrm_kernels.reference import special as ref

# ------------------------------------------------------- the records' implementations
# (triton is imported on first use: it is an optional dependency, and slow to import)
def _unary_triton(name, x):
    from icrm_kernels.triton import special as tri

    return tri.unary(name, x)


def _unary_cpp(which, x):
    return torch.ops.icrm_cpu.special_unary(x.contiguous(), which)


def _unary_reference(fn, x):
    return fn(x.to(torch.float64)).to(x.dtype)


def _betaln_triton(a, b):
    from icrm_kernels.triton import special as tri

    return tri.betaln_launch(a, b)


def _betaln_cpp(a, b):
    return torch.ops.icrm_cpu.betaln(a.contiguous(), b.contiguous())


def _betaln_reference(a, b):
    return ref.betaln(a.to(torch.float64), b.to(torch.float64)).to(a.dtype)


def _like(x, *rest):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _save_x(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _digamma_bwd(ctx, g):
    (x,) = ctx.saved_tensors
    return g * TRIGAMMA(x)


def _trigamma_bwd(ctx, g):
    (x,) = ctx.saved_tensors
    return g * torch.polygamma(2, x)


def _lgamma_bwd(ctx, g):
    (x,) = ctx.saved_tensors
    return g * DIGAMMA(x)


def _betaln_bwd(ctx, g):
    a, b = ctx.saved_tensors
    psi_s = DIGAMMA(a + b)
    return g * (DIGAMMA(a) - psi_s), g * (DIGAMMA(b) - psi_s)


def _unary_record(name, which, reference, backward):
    """The record of one elementwise special function: the same launcher, C++ op and dtype
    handling for all three, the function picked by ``name`` / ``which`` (icrm_kernels/vocab.py)."""
    return _op.OpRecord(
        name=name, family="beta", schema="(Tensor x) -> Tensor", fake=_like,
        triton=functools.partial(_unary_triton, name), cpp=functools.partial(_unary_cpp, which),
        cpp_op="special_unary", reference=functools.partial(_unary_reference, reference), backward=backward,
        setup_context=_save_x, differentiable=1)


# ------------------------------------------------------------------------------ the records
DIGAMMA = _op.define(_unary_record("digamma", vocab.UNARY_DIGAMMA, ref.digamma, _digamma_bwd))
TRIGAMMA = _op.define(_unary_record("trigamma", vocab.UNARY_TRIGAMMA, ref.trigamma, _trigamma_bwd))
LGAMMA = _op.define(_unary_record("lgamma", vocab.UNARY_LGAMMA, ref.lgamma, _lgamma_bwd))
BETALN = _op.define(_op.OpRecord(
    name="betaln", family="beta", schema="(Tensor a, Tensor b) -> Tensor", fake=_like,
    triton=_betaln_triton, cpp=_betaln_cpp, cpp_op="betaln", reference=_betaln_reference,
    backward=_betaln_bwd, setup_context=_save_x, differentiable=2))


@ranged("digamma")
def digamma(x: torch.Tensor) -> torch.Tensor:
    """psi(x) = d/dx log Gamma(x), elementwise, for x > 0. Same shape and dtype as ``x``."""
    check_tensor(x, "x", floating=True)
    check_positive(x, "x")
    return DIGAMMA(x)


@ranged("trigamma")
def trigamma(x: torch.Tensor) -> torch.Tensor:
    """psi'(x), elementwise, for x > 0. Same shape and dtype as ``x``."""
    check_tensor(x, "x", floating=True)
    check_positive(x, "x")
    return TRIGAMMA(x)


@ranged("lgamma")
def lgamma(x: torch.Tensor) -> torch.Tensor:
    """log Gamma(x), elementwise, for x > 0. Same shape and dtype as ``x``."""
    check_tensor(x, "x", floating=True)
    check_positive(x, "x")
    return LGAMMA(x)


@ranged("betaln")
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
    return BETALN(a.contiguous(), b.contiguous())
