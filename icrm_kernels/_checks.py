"""Input validation shared by every op family.

Every public op validates its arguments before dispatch and raises ``TypeError`` (wrong kind of
object or dtype) or ``ValueError`` (wrong shape or value), always naming the argument and what
was expected. Checks that must read tensor *values* (offsets monotone, labels in [0, 1], NaN with
``nan_policy="raise"``) synchronise with the device; hot loops can switch them off with
``icrm_kernels.unchecked()``, in which case malformed values give unspecified (but memory-safe)
results, as each op's docstring states.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterable, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)

# A ContextVar, not threading.local: concurrent asyncio tasks share a thread, and one task's
# ``unchecked()`` block must not switch off the checks of another.
_unchecked: contextvars.ContextVar = contextvars.ContextVar("icrm_kernels_unchecked", default=False)


# compiling(): True while torch.compile (Dynamo) traces the caller. torch.compiler.is_compiling
# itself, bound once: every eager call asks it a few times (~50 ns each saved), and Dynamo
# recognizes the function object, so traced code still sees True. (torch >= 2.4 has it.)
compiling = torch.compiler.is_compiling


def reset_context(var: contextvars.ContextVar, token: contextvars.Token, default) -> None:
    """Undo ``var.set`` with its token; when a block exits in another context than it entered (a
    generator-based fixture or context manager resumed elsewhere) the token is foreign there, so
    put the previous value back instead of raising on the way out."""
    try:
        var.reset(token)
    except ValueError:
        var.set(default if token.old_value is contextvars.Token.MISSING else token.old_value)


def value_checks_enabled() -> bool:
    """False inside ``unchecked()`` and while torch.compile traces (no data-dependent checks)."""
    # compiling() first: Dynamo cannot trace ContextVar.get, and while tracing the answer is False
    return not compiling() and not _unchecked.get()


@contextlib.contextmanager
def unchecked():
    """Skip the checks that read tensor values (and so synchronise with the GPU).

    Shape, dtype and device checks still run. Use in hot loops once the inputs are known good.
    The switch is per context (``contextvars``): this thread or asyncio task, and tasks created
    inside the block; other threads and concurrently running tasks keep their checks.
    """
    token = _unchecked.set(True)
    try:
        yield
    finally:
        reset_context(_unchecked, token, False)


def check_tensor(
    x,
    name: str,
    *,
    ndim: Optional[int | Sequence[int]] = None,
    floating: bool = False,
    integer: bool = False,
    dtypes: Optional[Iterable[torch.dtype]] = None,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the expected rank and dtype kind; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if floating and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if integer and x.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"{name} must be an integer tensor (int32 or int64), got {x.dtype}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if x.dtype not in dtypes:
            raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    return x


def check_same_device(**tensors) -> torch.device:
    """All non-None tensors on one device; returns it. Names the offending arguments."""
    device = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            # numpy arrays have a .device too ("cpu"): without this check a numpy index read as
            # "group_index is on cpu but rewards is on cpu"
            hint = " (string ids such as verl's uids: numpy.unique(ids, return_inverse=True)[1])" \
                if "index" in name else ""
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; convert it with "
                            f"torch.as_tensor{hint}")
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {device}; all tensors must be on one device")
    return device


def check_same_float_dtype(**tensors) -> torch.dtype:
    """All non-None floating tensors share one dtype (no silent mixed precision); returns it."""
    dtype = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if dtype is None:
            dtype, first = t.dtype, name
        elif t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first} has {dtype}; pass tensors of one float dtype")
    return dtype


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def value_bounds(*tensors) -> list:
    """``[(min, max), ...]`` of each tensor as Python numbers, read back in one host sync: one
    ``torch.aminmax`` per tensor, stacked, one ``.tolist()``. NaN anywhere makes both NaN, so
    ``lo > 0 and hi < inf`` means "finite and positive" and ``lo >= 0 and hi <= 1`` "in [0, 1]"
    (comparisons with NaN are False). Every tensor must be non-empty. The fused form of checks
    that otherwise cost a reduction and a sync each (isfinite(x).all() alone is ~13 µs of host
    time on a 4K CPU tensor, aminmax ~2 µs); callers rerun their detailed check, which raises
    with the exact message, only when a bound fails."""
    vals = []
    for t in tensors:
        vals.extend(torch.aminmax(t))
    dt = vals[0].dtype
    for v in vals:
        if v.dtype != dt:  # mixed dtypes: float64 holds every float16/bfloat16/float32 value exactly
            vals = [u.to(torch.float64) for u in vals]
            break
    flat = torch.stack(vals).tolist()
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def check_offsets(cu: torch.Tensor, name: str, total: int) -> torch.Tensor:
    """``cu`` is a 1-D int32/int64 offsets tensor: cu[0] = 0, non-decreasing, cu[-1] = total.

    The value checks run only while ``value_checks_enabled()``.
    """
    check_tensor(cu, name, ndim=1)
    if cu.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be an int32 or int64 tensor of offsets, got {cu.dtype}")
    if cu.numel() < 1:
        raise ValueError(f"{name} must have at least one element (B+1 offsets starting at 0)")
    if value_checks_enabled():
        # one host sync for the three facts (each int()/bool() is a sync on the GPU)
        if cu.numel() > 1:
            first, last, decreasing = torch.stack(
                (cu[0], cu[-1], (cu[1:] < cu[:-1]).any().to(cu.dtype))).tolist()
        else:
            first = last = int(cu[0])
            decreasing = 0
        if first != 0:
            raise ValueError(f"{name} must start at 0, got {name}[0] = {first}")
        if decreasing:
            raise ValueError(f"{name} must be non-decreasing")
        if last != total:
            raise ValueError(f"{name} must end at the number of rows ({total}), got {name}[-1] = {last}")
    return cu


def check_index(index: torch.Tensor, name: str, length: int) -> torch.Tensor:
    """``index`` is a 1-D integer tensor with one entry per row."""
    check_tensor(index, name, ndim=1)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of ids, got {index.dtype}")
    if index.numel() != length:
        raise ValueError(f"{name} must have one id per row ({length}), got {index.numel()}")
    return index


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def check_finite_float(value, name: str, *, low=None, high=None, low_open=False, high_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_positive(x, name: str) -> None:
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


# ---------------------------------------------------------------- value checks of float tensors
def check_pair(x: torch.Tensor, y: torch.Tensor, nx: str, ny: str) -> None:
    """Two float tensors of one dtype, device and shape (alpha and beta, the two logits)."""
    check_tensor(x, nx, floating=True)
    check_tensor(y, ny, floating=True)
    if y.dtype != x.dtype:
        raise TypeError(f"{ny} has dtype {y.dtype} but {nx} has {x.dtype}; pass tensors of one float dtype")
    if y.device != x.device:
        raise ValueError(f"{ny} is on {y.device} but {nx} is on {x.device}; all tensors must be on one device")
    if y.shape != x.shape:
        raise ValueError(f"{ny} must have the shape of {nx} {tuple(x.shape)}, got {tuple(y.shape)}")


def check_like(t: Optional[torch.Tensor], name: str, like: torch.Tensor, like_name: str) -> Optional[torch.Tensor]:
    """labels / weights: same shape and device as ``like``; bool/int converted to like's dtype."""
    if t is None:
        return None
    check_tensor(t, name)
    if t.is_complex():
        raise TypeError(f"{name} must be a real (float, int or bool) tensor, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but {like_name} is on {like.device}; all tensors must be on one device")
    if t.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(like.dtype)
    return t


def check_unit_interval(t: Optional[torch.Tensor], name: str) -> None:
    """Every value in [0, 1] (checked path only)."""
    if t is not None and value_checks_enabled() and t.numel():
        bad = ~((t >= 0) & (t <= 1))
        if bool(bad.any()):
            raise ValueError(f"{name} must lie in [0, 1], got {t[bad].flatten()[0].item()}")


def check_finite_values(t: Optional[torch.Tensor], name: str) -> None:
    """Every value finite (checked path only)."""
    if t is not None and value_checks_enabled() and t.numel():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got a non-finite value")


def check_weights(t: Optional[torch.Tensor], name: str = "weights") -> None:
    """ELBO per-element loss weights: finite and >= 0 (a negative weight turns the loss into a gain)."""
    check_finite_values(t, name)
    if t is not None and value_checks_enabled() and t.numel():
        bad = t < 0
        if bool(bad.any()):
            raise ValueError(f"{name} must be >= 0, got {t[bad].flatten()[0].item()}")


# what each kind of value check accepts, on a tensor's (min, max); NaN fails every one
VALUE_BOUNDS = {
    "positive": lambda lo, hi: lo > 0 and hi < math.inf,  # check_positive
    "finite": lambda lo, hi: lo > -math.inf and hi < math.inf,  # check_finite_values
    "unit": lambda lo, hi: lo >= 0 and hi <= 1,  # check_unit_interval
    "weights": lambda lo, hi: lo >= 0 and hi < math.inf,  # check_weights
}
_VALUE_CHECKS = {
    "positive": check_positive,
    "finite": check_finite_values,
    "unit": check_unit_interval,
    "weights": check_weights,
}


def check_values(*specs) -> None:
    """The value checks of one call, ``(tensor or None, name, kind)`` each, fused: one aminmax per
    tensor and a single host sync (:func:`value_bounds`) instead of a reduction and a sync per
    check. A failing bound reruns the detailed checks in the given order, which raise with
    their usual messages."""
    if not value_checks_enabled():
        return
    live = [sp for sp in specs if sp[0] is not None and sp[0].numel()]
    if not live:
        return
    bounds = value_bounds(*(sp[0] for sp in live))
    for (t, name, kind), (lo, hi) in zip(live, bounds):
        if not VALUE_BOUNDS[kind](lo, hi):
            for t2, name2, kind2 in live:
                _VALUE_CHECKS[kind2](t2, name2)
            return
