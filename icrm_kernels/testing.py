"""Test helpers shared by every op family's tests (and usable by users to check their setup).

The one helper that matters is :func:`assert_matches_reference`: it runs an op and its float64
reference on the same fresh random inputs, compares the outputs, then back-propagates one random
cotangent through both and compares every requested gradient.

float32 and float64 results are compared with fixed tolerances (:data:`TOLERANCES`). bfloat16 and
float16 results are not: their error depends on the inputs (magnitudes, cancellations, how many
roundings a value goes through), so any fixed elementwise tolerance is either loose or, on some
seed, flaky. They follow flash-attention's rule instead (:func:`assert_close_to_reference`): the
kernel's error against the float64 reference must be at most ``factor`` (2) times the error of
the reference itself run in the same low-precision dtype, plus a small floor.

Both rules have one number that says how close a result came to failing: the error as a
fraction of the tolerance (:func:`tolerance_ratio`, :func:`low_precision_ratio`; <= 1 passes).
``assert_matches_reference(..., record=list)`` appends it for every comparison; ``icrm-kernels
selfcheck`` (:mod:`icrm_kernels.selfcheck`) reports its maximum per case.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

# Default tolerances per compute dtype: fp32 accumulation everywhere, so the error is the
# rounding of the inputs and outputs to the storage dtype. The float16/bfloat16 rows are what
# assert_close uses when called directly; assert_matches_reference applies the
# low-precision rule (assert_close_to_reference) to those dtypes instead.
LOW_PRECISION = (torch.float16, torch.bfloat16)
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


def tolerance_ratio(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float) -> float:
    """The error as a fraction of :func:`assert_close`'s tolerance: max |a - e| / (atol + rtol |e|)
    over the entries where both are finite; <= 1 exactly when assert_close passes. inf when the
    shapes differ or NaN/±inf sit elsewhere than in ``expected`` (what assert_close rejects)."""
    a = actual.detach().to(device="cpu", dtype=torch.float64)
    e = expected.detach().to(device="cpu", dtype=torch.float64)
    if a.shape != e.shape:
        return math.inf
    fin_a, fin_e = a.isfinite(), e.isfinite()
    if (not torch.equal(fin_a, fin_e) or not torch.equal(a.isnan(), e.isnan())
            or not torch.equal(a[a.isinf()], e[e.isinf()])):
        return math.inf
    if not bool(fin_e.any()):
        return 0.0
    diff = (a[fin_e] - e[fin_e]).abs()
    tol = atol + rtol * e[fin_e].abs()
    ratio = torch.where(diff == 0, 0.0, diff / tol)  # a zero tolerance allows only exact equality (x/0 = inf)
    return float(ratio.max())


def _max_abs_error(x: torch.Tensor, ref64: torch.Tensor, finite: torch.Tensor) -> float:
    if not bool(finite.any()):
        return 0.0
    return float((x[finite] - ref64[finite]).abs().max())


def _low_precision_error(out, ref64, ref_lowp, factor, atol_floor):
    """(err, base, atol_floor, bound, a, e, low, baseline) of flash-attention's rule, or a string
    saying why the result has no such error (shapes, NaN or ±inf placed unlike the reference)."""
    a = out.detach().to(device="cpu", dtype=torch.float64)
    e = ref64.detach().to(device="cpu", dtype=torch.float64)
    low = ref_lowp.detach().to(device="cpu", dtype=torch.float64)
    if a.shape != e.shape:
        return f"shape {tuple(a.shape)} != reference {tuple(e.shape)}"
    if low.shape != e.shape:
        return f"low-precision reference shape {tuple(low.shape)} != {tuple(e.shape)}"
    if not torch.equal(a.isnan(), e.isnan()):
        return (f"NaN at {int((a.isnan() != e.isnan()).sum())} positions where the "
                "float64 reference has none, or the reverse")
    inf_a, inf_e = a.isinf(), e.isinf()
    if not torch.equal(inf_a, inf_e) or not torch.equal(a[inf_a], e[inf_e]):
        return "±inf entries differ from the float64 reference"
    finite = e.isfinite()
    # Where the low-precision reference itself overflows or gives NaN, the dtype offers no
    # yardstick: both maxima run over the entries where it has one (like with like), and there
    # the kernel must only be finite, which the NaN/inf pattern check above already demands.
    # (Measuring the kernel there against the baseline's other entries failed 1 seed in 1000:
    # a beta_stats bf16 gradient at an ill-conditioned point where the bf16 reference was NaN.)
    baseline = finite & low.isfinite()
    err = _max_abs_error(a, e, baseline)
    base = _max_abs_error(low, e, baseline)
    if atol_floor is None:
        lowp = out.dtype if out.dtype in LOW_PRECISION else ref_lowp.dtype
        eps = torch.finfo(lowp if lowp in LOW_PRECISION else torch.bfloat16).eps
        scale = float(e[finite].abs().max()) if bool(finite.any()) else 0.0
        atol_floor = 2 * eps * max(scale, 1e-3)
    bound = factor * base + atol_floor
    return err, base, atol_floor, bound, a, e, low, baseline


def low_precision_ratio(out: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor, *, factor: float = 2.0,
                        atol_floor: Optional[float] = None) -> float:
    """The error as a fraction of :func:`assert_close_to_reference`'s bound: max|out - ref64| /
    (factor * max|ref_lowp - ref64| + atol_floor); <= 1 exactly when that assertion passes, inf
    when it fails on the shape or the NaN/±inf pattern."""
    m = _low_precision_error(out, ref64, ref_lowp, factor, atol_floor)
    if isinstance(m, str):
        return math.inf
    err, bound = m[0], m[3]
    if err == 0:
        return 0.0
    return err / bound if bound > 0 else math.inf


def assert_close_to_reference(
    out: torch.Tensor,
    ref64: torch.Tensor,
    ref_lowp: torch.Tensor,
    *,
    factor: float = 2.0,
    atol_floor: Optional[float] = None,
    what: str = "output",
):
    """flash-attention's test rule for low-precision results.

    ``out``: the kernel's result (float16/bfloat16 inputs, any output dtype). ``ref64``: the
    reference on the same inputs upcast to float64 (the "true" value). ``ref_lowp``: the same
    reference run on the low-precision inputs in their own dtype: what a straightforward
    implementation in that precision gets. Asserts

        max|out - ref64| <= factor * max|ref_lowp - ref64| + atol_floor

    over the entries where both references are finite (maxima over the whole tensor, not per
    element: per element, the low-precision reference can be exact by chance where a kernel that
    rounds differently is not). NaN and ±inf must sit where ``ref64`` has them. Why not a fixed atol/rtol: the error of
    a bf16/fp16 computation scales with the data (value magnitudes, cancellation, the number of
    roundings on the way), so a fixed tolerance is either too loose for easy inputs or fails on
    an unlucky seed; measuring the error the dtype itself makes on these very inputs gives a
    bound that is tight and does not flake. ``atol_floor`` (default: two units of the dtype's
    epsilon times max(max|ref64|, 1e-3), i.e. 2-4 ulps of the largest value) covers tensors
    where the low-precision reference happens to be nearly exact while the kernel rounds its
    intermediates at other points (the attention kernel's absorbed form rounds q~, c and o to the
    storage dtype; its gradients measured 1 in ~1000 comparisons just above 2x + 1 eps).
    """
    m = _low_precision_error(out, ref64, ref_lowp, factor, atol_floor)
    if isinstance(m, str):
        raise AssertionError(f"{what}: {m}")
    err, base, atol_floor, bound, a, e, low, baseline = m
    if not err <= bound:
        worst = int(torch.where(baseline, (a - e).abs(), torch.zeros_like(a)).flatten().argmax())
        raise AssertionError(
            f"{what}: max abs error {err:.3g} against the float64 reference exceeds {factor} x the error of "
            f"the reference in {ref_lowp.dtype} ({base:.3g}) + floor {atol_floor:.3g} = {bound:.3g}; worst at "
            f"flat index {worst}: got {a.flatten()[worst].item():.6g}, float64 reference "
            f"{e.flatten()[worst].item():.6g}, {ref_lowp.dtype} reference {low.flatten()[worst].item():.6g}")


def _lowp_copy(value, requires_grad: bool):
    """The op's input as the low-precision reference sees it: same dtype, on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone().requires_grad_(requires_grad and value.is_floating_point())
    return value


def _cotangent(shape, gen: torch.Generator) -> torch.Tensor:
    """A random float64 cotangent whose entries have magnitudes in [0.5, 1.5) and random signs.
    A standard normal entry is sometimes near 0 (|c| < 0.1 one time in 12), and a scalar loss has
    a single entry: a gradient that is 1% wrong then fell within tolerance (a flaky self-check
    test). Bounded away from 0, every gradient error shows at its size."""
    magnitude = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)
    sign = torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) * 2 - 1
    return magnitude * sign


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
    factor: float = 2.0,
    atol_floor: Optional[float] = None,
    seed: Optional[int] = None,
    record: Optional[List[Tuple[str, float]]] = None,
) -> Dict[str, Any]:
    """Compare ``op(**inputs)`` with ``reference(**inputs upcast to float64 on the CPU)``.

    grad: names of floating inputs to differentiate; one random cotangent per output is
    back-propagated through both and the gradients compared. ``dtype`` defaults to the first
    floating input's dtype. float32/float64: tolerances default to ``TOLERANCES[dtype]``.
    float16/bfloat16: the reference also runs on the inputs in that dtype (on the CPU), and every
    output and gradient must satisfy :func:`assert_close_to_reference` (``factor``,
    ``atol_floor``); ``atol``/``rtol``/``grad_atol``/``grad_rtol`` are refused there, as a fixed
    tolerance is what that rule replaces. Returns the op's outputs and gradients for further
    checks. ``record``: a list that gets ``(what, error / tolerance)`` for every output and
    gradient compared (:func:`tolerance_ratio` or :func:`low_precision_ratio`), appended before
    the comparison is asserted, so a caller that catches the AssertionError still has the number.
    """
    seed = fresh_seed() if seed is None else seed
    if dtype is None:
        dtype = next((v.dtype for v in inputs.values() if isinstance(v, torch.Tensor) and v.is_floating_point()), torch.float32)
    low_precision = dtype in LOW_PRECISION
    if low_precision:
        given = [n for n, v in (("atol", atol), ("rtol", rtol), ("grad_atol", grad_atol), ("grad_rtol", grad_rtol))
                 if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: {dtype} results are checked against the error of the reference run "
                             f"in {dtype} (assert_close_to_reference); tune factor/atol_floor instead")
    else:
        d_atol, d_rtol = TOLERANCES[dtype]
        atol = d_atol if atol is None else atol
        rtol = d_rtol if rtol is None else rtol
        grad_atol = atol if grad_atol is None else grad_atol
        grad_rtol = rtol if grad_rtol is None else grad_rtol

    def compare(actual, expected, expected_lowp, what):
        if record is not None:
            if low_precision:
                ratio = low_precision_ratio(actual, expected, expected_lowp, factor=factor, atol_floor=atol_floor)
            elif what.startswith("grad"):
                ratio = tolerance_ratio(actual, expected, atol=grad_atol, rtol=grad_rtol)
            else:
                ratio = tolerance_ratio(actual, expected, atol=atol, rtol=rtol)
            record.append((what, ratio))
        if low_precision:
            assert_close_to_reference(actual, expected, expected_lowp, factor=factor, atol_floor=atol_floor, what=what)
        elif what.startswith("grad"):
            assert_close(actual, expected, atol=grad_atol, rtol=grad_rtol, what=what)
        else:
            assert_close(actual, expected, atol=atol, rtol=rtol, what=what)

    op_inputs = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and k in grad:
            v = v.detach().clone().requires_grad_(True)
        op_inputs[k] = v
    ref_inputs = {k: _upcast(v) for k, v in op_inputs.items()}
    low_inputs = {k: _lowp_copy(v, k in grad) for k, v in op_inputs.items()} if low_precision else None

    out = op(**op_inputs)
    ref = reference(**ref_inputs)
    outs, refs = _flatten(out), _flatten(ref)
    if len(outs) != len(refs):
        raise AssertionError(f"op returned {len(outs)} tensors, reference {len(refs)}")
    lows = _flatten(reference(**low_inputs)) if low_precision else [None] * len(refs)
    for i, (o, r, lo) in enumerate(zip(outs, refs, lows)):
        compare(o, r, lo, f"output {i} (seed {seed})")

    grads = {}
    if grad:
        gen = torch.Generator().manual_seed(seed)
        idx = [i for i, o in enumerate(outs) if o.requires_grad and o.is_floating_point()]
        cot = [_cotangent(refs[i].shape, gen) for i in idx]
        op_leaves = [op_inputs[k] for k in grad]
        ref_leaves = [ref_inputs[k] for k in grad]
        op_grads = torch.autograd.grad(
            [outs[i] for i in idx], op_leaves, [c.to(outs[i].device, outs[i].dtype) for c, i in zip(cot, idx)],
            allow_unused=True)
        ref_grads = torch.autograd.grad([refs[i] for i in idx], ref_leaves, cot, allow_unused=True)
        if low_precision:  # the same cotangent, rounded to the dtype as the op's was
            low_pairs = [(lows[i], c) for c, i in zip(cot, idx) if lows[i].requires_grad]
            low_grads = torch.autograd.grad([lo for lo, _ in low_pairs], [low_inputs[k] for k in grad],
                                            [c.to(lo.dtype) for lo, c in low_pairs], allow_unused=True)
        else:
            low_grads = [None] * len(grad)
        for name, g, rg, lg in zip(grad, op_grads, ref_grads, low_grads):
            if rg is None:
                rg = torch.zeros_like(ref_inputs[name])
            if g is None:
                g = torch.zeros_like(op_inputs[name])
            if low_precision and lg is None:
                lg = torch.zeros_like(low_inputs[name])
            compare(g, rg, lg, f"grad of {name} (seed {seed})")
            grads[name] = g
    return {"out": out, "grads": grads, "seed": seed}


def random_attention_inputs(device, dtype, *, packed=True, num_heads=2, bias=True, gen=None):
    """Keyword arguments of a small ``seq_to_token_attention`` call (4 sequences of lengths 3, 0,
    17, 1; widths D_r = 12, D_p = 10, d = 8), packed with ``cu_seqlens`` or padded with a
    ``key_padding_mask``; random values in ``dtype`` on ``device`` (``gen``: a CPU generator)."""
    d_r, d_p, d = 12, 10, 8
    lens = [3, 0, 17, 1]
    b = len(lens)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * s).to(device=device, dtype=dtype)

    inputs = dict(query=r(b, d_r), w_q=r(d_r, d, s=d_r ** -0.5), w_k=r(d_p, d, s=d_p ** -0.5),
                  w_v=r(d_p, d, s=d_p ** -0.5), w_o=r(d, d_r, s=d ** -0.5), num_heads=num_heads)
    if bias:
        inputs.update(b_q=r(d, s=0.1), b_k=r(d, s=0.1), b_v=r(d, s=0.1), b_o=r(d_r, s=0.1))
    if packed:
        inputs["states"] = r(sum(lens), d_p)
        cu = torch.zeros(b + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lens), 0)
        inputs["cu_seqlens"] = cu.to(device)
    else:
        inputs["states"] = r(b, 6, d_p)
        mask = torch.rand(b, 6, generator=gen) < 0.3
        mask[1] = True
        inputs["key_padding_mask"] = mask.to(device)
    return inputs
