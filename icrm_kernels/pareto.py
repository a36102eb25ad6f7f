"""Pareto-front utilities for multi-objective steering (docs/beta.md#statistics-and-steering):
``hypervolume``. Host code (a sweep over the points, read back from the device), not a kernel op:
it lives here, not in ``ops/``, for that reason.
"""
from __future__ import annotations

import numbers
from typing import Sequence, Union

import torch
from torch import Tensor

from icrm_kernels._checks import check_tensor
from icrm_kernels.profiling import ranged


@ranged("hypervolume")
def hypervolume(points: Tensor, ref: Union[Tensor, Sequence[float]], *, clip: bool = False) -> Tensor:
    """Exact dominated hypervolume for maximisation, 2 or 3 objectives.

    The volume of the union over points p of the boxes [ref, p] (Lebesgue measure of the region
    dominated by the front and dominating ``ref``). points: [n, d], d in (2, 3); ref: [d].
    ``ref`` must be a lower bound of the points (every p >= ref): otherwise ValueError, unless
    ``clip=True``, which ignores the points that do not exceed ref in every objective (they
    dominate no volume). Returns a 0-d float64 tensor on points' device.

    Plain Python/torch on every device (sweep, O(n log n) in 2-D, O(n^2 log n) in 3-D); it reads
    the points back to the host. Not differentiable.
    """
    check_tensor(points, "points", ndim=2, floating=True)
    d = points.shape[1]
    if d not in (2, 3):
        raise ValueError(f"points must have 2 or 3 columns (objectives), got shape {tuple(points.shape)}")
    if not isinstance(clip, bool):
        raise TypeError(f"clip must be a bool, got {type(clip).__name__}")
    r = _hv_ref(ref, d)
    if r.shape != (d,):
        raise ValueError(f"ref must have {d} entries (one per objective), got shape {tuple(r.shape)}")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("ref must be finite")
    p = points.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(p).all()):
        raise ValueError("points must be finite")
    if p.shape[0] and not clip and bool((p < r).any()):
        raise ValueError("ref does not bound the points (some point is below ref in an objective); "
                         "pass clip=True to ignore such points")
    rows = [tuple(row) for row in (p - r).tolist() if all(v > 0 for v in row)]
    vol = _hv2(rows) if d == 2 else _hv3(rows)
    return torch.tensor(vol, dtype=torch.float64, device=points.device)


def _hv_ref(ref, d: int) -> Tensor:
    """``ref`` as a float64 CPU tensor; anything that is not real numbers is a TypeError naming it
    (torch.as_tensor would say "must be real number, not NoneType" without naming the argument,
    and would silently turn bools into 0/1 and drop imaginary parts of complex tensors)."""
    want = f"a tensor or sequence of {d} real numbers (the reference point, one per objective)"
    if isinstance(ref, Tensor):
        if ref.dtype == torch.bool or ref.dtype.is_complex:
            raise TypeError(f"ref must be {want}, got a {ref.dtype} tensor")
        return ref.detach().to(device="cpu", dtype=torch.float64)
    if ref is None or isinstance(ref, (str, bytes, dict, set)):
        raise TypeError(f"ref must be {want}, got {type(ref).__name__}")
    try:
        items = list(ref)
    except TypeError:
        raise TypeError(f"ref must be {want}, got {type(ref).__name__}") from None
    for v in items:
        if isinstance(v, Tensor) and v.dim() == 0 and not (v.dtype == torch.bool or v.dtype.is_complex):
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):  # numpy scalars are numbers.Real
            raise TypeError(f"ref must be {want}, got an entry of type {type(v).__name__}")
    return torch.tensor([float(v) for v in items], dtype=torch.float64)


def _hv2(pts) -> float:
    """Points relative to ref (all > 0): sweep by x descending, adding the new y strips."""
    vol = 0.0
    best_y = 0.0
    for x, y in sorted(pts, key=lambda t: -t[0]):
        if y > best_y:
            vol += x * (y - best_y)
            best_y = y
    return vol


def _hv3(pts) -> float:
    """Slice along z (descending): each slab's area is the 2-D hypervolume of points above it."""
    pts = sorted(pts, key=lambda t: -t[2])
    vol = 0.0
    active = []
    for i, (x, y, z) in enumerate(pts):
        active.append((x, y))
        z_next = pts[i + 1][2] if i + 1 < len(pts) else 0.0
        if z > z_next:
            vol += _hv2(active) * (z - z_next)
    return vol
