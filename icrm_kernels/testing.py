"""Test helpers shared by every op family's tests (and usable by users to check their setup).

The one helper that matters is :func:`assert_matches_reference`: it runs an op and its float64
reference on the same fresh random inputs, compares the outputs, then back-propagates one random
cotangent through both and compares every requested gradient.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch

# Default tolerances per compute dtype: fp32 accumulation everywhere, so the error is the
# rounding of the inputs and outputs to the storage dtype.
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (2e-5, 2e-4),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (1.6e-2, 2e-2),
}


def fresh_seed() -> int:
    """A new seed each call (every run tests new inputs); printed by failures to reproduce them."""
    return int.from_bytes(os.urandom(4), "little")


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        flat = []
        for o in out:
            flat.extend(_flatten(o))
        return flat
    return []


def _upcast(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(device="cpu", dtype=torch.float64).requires_grad_(value.requires_grad)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, what: str = "output"):
    """Like torch.testing.assert_close on float64 copies, NaN positions must agree."""
    a = actual.detach().to(device="cpu", dtype=torch.float64)
    e = expected.detach().to(device="cpu", dtype=torch.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} != reference {tuple(e.shape)}")
    torch.testing.assert_close(a, e, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def assert_matches_reference(
    op: Callable,
    reference: Callable,
    inputs: Mapping[str, Any],
    *,
    grad: Sequence[str] = (),
    dtype: Optional[torch.dtype] = None,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    grad_atol: Optional[float] = None,
    grad_rtol: Optional[float] = None,
    seed: Optional[int] = None,
) -> Dict[str, Any]:
    """Compare ``op(**inputs)`` with ``reference(**inputs upcast to float64 on the CPU)``.

    grad: names of floating inputs to differentiate; one random cotangent per output is
    back-propagated through both and the gradients compared. Tolerances default to
    ``TOLERANCES[dtype]`` (dtype defaults to the first floating input's dtype). Returns the
    op's outputs and gradients for further checks.
    """
    seed = fresh_seed() if seed is None else seed
    if dtype is None:
        dtype = next((v.dtype for v in inputs.values() if isinstance(v, torch.Tensor) and v.is_floating_point()), torch.float32)
    d_atol, d_rtol = TOLERANCES[dtype]
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    grad_atol = atol if grad_atol is None else grad_atol
    grad_rtol = rtol if grad_rtol is None else grad_rtol

    op_inputs = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and k in grad:
            v = v.detach().clone().requires_grad_(True)
        op_inputs[k] = v
    ref_inputs = {k: _upcast(v) for k, v in op_inputs.items()}

    out = op(**op_inputs)
    ref = reference(**ref_inputs)
    outs, refs = _flatten(out), _flatten(ref)
    if len(outs) != len(refs):
        raise AssertionError(f"op returned {len(outs)} tensors, reference {len(refs)}")
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert_close(o, r, atol=atol, rtol=rtol, what=f"output {i} (seed {seed})")

    grads = {}
    if grad:
        gen = torch.Generator().manual_seed(seed)
        pairs = [(o, r) for o, r in zip(outs, refs) if o.requires_grad and o.is_floating_point()]
        cot = [torch.randn(r.shape, generator=gen, dtype=torch.float64) for _, r in pairs]
        op_leaves = [op_inputs[k] for k in grad]
        ref_leaves = [ref_inputs[k] for k in grad]
        op_grads = torch.autograd.grad(
            [o for o, _ in pairs], op_leaves, [c.to(o.device, o.dtype) for c, (o, _) in zip(cot, pairs)], allow_unused=True
        )
        ref_grads = torch.autograd.grad([r for _, r in pairs], ref_leaves, cot, allow_unused=True)
        for name, g, rg in zip(grad, op_grads, ref_grads):
            if rg is None:
                rg = torch.zeros_like(ref_inputs[name])
            if g is None:
                g = torch.zeros_like(op_inputs[name])
            assert_close(g, rg, atol=grad_atol, rtol=grad_rtol, what=f"grad of {name} (seed {seed})")
            grads[name] = g
    return {"out": out, "grads": grads, "seed": seed}
