"""Which implementation runs an op: the Triton kernel, the C++ CPU kernel, or the torch reference.

Policy (``"auto"``, the default):
- CUDA tensors run the Triton kernels.
- CPU tensors run the C++ extension (``torch.ops.icrm_cpu.*``) when it is built, else the
  float64-capable torch reference.

``use_backend("triton")`` forces the Triton path for CPU tensors too; that only works under the
Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how the test
suite exercises the kernels on machines without a GPU. ``use_backend("reference")`` and
``use_backend("cpp")`` force those paths. The environment variable ``ICRM_BACKEND`` sets the
default for the process.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings

import torch

from icrm_kernels._checks import compiling, reset_context

BACKENDS = ("auto", "triton", "cpp", "reference")

# ---------------------------------------------------------------- the C++ extension
try:  # importing runs the TORCH_LIBRARY registrations of csrc/*.cpp
    _C = importlib.import_module("icrm_kernels._C")

    HAS_CPP = True
    _CPP_ERROR = None
except Exception as exc:  # not built, or built against another torch: a warning, never an error
    _C = None
    HAS_CPP = False
    _CPP_ERROR = exc
    _reason = "it is not built" if isinstance(exc, ModuleNotFoundError) else f"it does not load: {exc}"
    warnings.warn(
        f"icrm_kernels: C++ extension unavailable ({_reason}); CPU ops use the torch reference. "
        "Reinstall with `pip install --no-build-isolation .` and a C++ compiler to build it.",
        RuntimeWarning,
        stacklevel=2,
    )


_CPP_OPS_SEEN = set()  # registrations are never removed: a found op is remembered (~1 µs a call)


def has_cpp_op(name: str) -> bool:
    """True when the extension registered ``icrm_cpu::<name>``."""
    if not HAS_CPP:
        return False
    # not while Dynamo traces: it would guard on the set's contents, and the first eager call
    # after a compiled one (which fills the set) would make the compiled function recompile
    tracing = compiling()
    if not tracing and name in _CPP_OPS_SEEN:
        return True
    try:
        getattr(torch.ops.icrm_cpu, name)
    except (AttributeError, RuntimeError):
        return False
    if not tracing:
        _CPP_OPS_SEEN.add(name)
    return True


# ---------------------------------------------------------------- Triton
def _probe_triton():
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401

        return True
    except Exception:
        return False


HAS_TRITON = _probe_triton()


def triton_interpreting() -> bool:
    """True when Triton kernels run on the CPU through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------- selection
# A ContextVar, not threading.local: asyncio tasks share one thread, and each task must see only
# its own ``use_backend`` block (each task runs in a copy of the context it was created in).
# None means "not forced": the default comes from ICRM_BACKEND, read at each call as before.
_forced: contextvars.ContextVar = contextvars.ContextVar("icrm_kernels_backend", default=None)


# CPython keeps os.environ's encoded entries in a dict (``_data``), which os.environ's setters
# (and pytest's monkeypatch.setenv) update: one lookup there, compared by identity with the last
# value validated, replaces os.environ.get's encode and decode (~0.7 µs of every op's host time).
# Elsewhere (no such dict) os.environ.get is read at each call.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("ICRM_BACKEND") if type(_ENV_DATA) is dict and hasattr(os.environ, "encodekey") else None
_env_seen = [None, "auto"]  # [raw value last validated (None: unset), the backend it names]


def _default_backend() -> str:
    if _ENV_KEY is not None:
        raw = _ENV_DATA.get(_ENV_KEY)
        if raw is _env_seen[0]:
            return _env_seen[1]
    else:
        raw = None
    env = os.environ.get("ICRM_BACKEND", "auto")
    if env not in BACKENDS:
        raise ValueError(f"ICRM_BACKEND must be one of {BACKENDS}, got {env!r}")
    if _ENV_KEY is not None:
        _env_seen[0], _env_seen[1] = raw, env
    return env


def _forced_backend():
    return _forced.get()


# Dynamo cannot trace ContextVar.get (a graph break, fatal under fullgraph=True) where select()
# runs in traced code (group_advantages with a process_group). This marker, what
# torch.compiler.assume_constant_result sets, makes it call the function at trace time and
# take the result as a constant, without importing torch._dynamo for eager-only users. (No guard
# is installed: code traced inside a use_backend block keeps that block's choice, unlike the
# custom ops, which resolve the backend each time they run.)
_forced_backend._dynamo_marked_constant = True


def current_backend() -> str:
    return _forced_backend() or _default_backend()


@contextlib.contextmanager
def use_backend(name: str):
    """Force one implementation inside the ``with`` block (tests, benchmarks, debugging).

    ``name`` is one of ``"auto"``, ``"triton"``, ``"cpp"``, ``"reference"``. The choice is
    per context (``contextvars``): it holds in this thread or asyncio task and in tasks it
    creates inside the block, never in other threads or concurrently running tasks.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    token = _forced.set(name)
    try:
        yield
    finally:
        reset_context(_forced, token, None)


_interpreting_seen = False


def _note_interpreting() -> bool:
    """triton_interpreting(), remembered once true: the environment lookup is ~1 µs of every
    forced-Triton CPU call, and Triton fixes interpreted kernels when they are defined."""
    global _interpreting_seen
    _interpreting_seen = triton_interpreting()
    return _interpreting_seen


_WARNED_NO_TRITON = []


def _warn_no_triton() -> None:
    """Once per process: CUDA tensors without Triton run the (slow) torch reference."""
    if not _WARNED_NO_TRITON:
        _WARNED_NO_TRITON.append(True)
        warnings.warn("icrm_kernels: triton is not installed, so ops on CUDA tensors run the float64 torch "
                      "reference (correct, but slow). The CUDA builds of torch install triton; otherwise "
                      "`pip install \"icrm-kernels[triton]\"` (or `pip install triton`).", RuntimeWarning, stacklevel=3)


def select(device: torch.device, cpp_op: str | None = None) -> str:
    """Resolve the backend for tensors on ``device``: ``"triton"``, ``"cpp"`` or ``"reference"``.

    ``cpp_op`` names the ``icrm_cpu`` op the CPU path would call; if the extension lacks it the
    reference runs instead.
    """
    forced = current_backend()
    if forced == "reference":
        return "reference"
    if device.type == "cuda":
        if not HAS_TRITON:
            _warn_no_triton()
            return "reference"
        return "triton"
    if forced == "triton":
        # Dynamo would guard on the remembered flag (first eager call after a compile flips it)
        interpreting = triton_interpreting() if compiling() else (_interpreting_seen or _note_interpreting())
        if not (HAS_TRITON and interpreting):
            raise RuntimeError(
                "use_backend('triton') on CPU tensors needs Triton's interpreter: set "
                "TRITON_INTERPRET=1 before triton is imported"
            )
        return "triton"
    if forced in ("auto", "cpp") and cpp_op is not None and has_cpp_op(cpp_op):
        return "cpp"
    if forced == "cpp":
        raise RuntimeError(f"use_backend('cpp'): the C++ extension has no op icrm_cpu::{cpp_op}")
    return "reference"


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
_dispatch_stack_len = torch._C._len_torch_dispatch_stack  # what _get_current_dispatch_mode reads
_Tensor = torch.Tensor


def _eager_mode(tensors) -> bool:
    """True outside torch.compile, export, torch.func transforms and dispatch modes (make_fx,
    FakeTensorMode), with plain tensors only (no subclasses such as FakeTensor or DTensor).
    ``tensors`` may hold None and non-tensor arguments: only tensor subclasses count.
    (Called on every eager op: the torch entry points are bound once, ~1.5 -> ~0.5 µs.)"""
    if compiling():
        return False
    if _functorch_active is not None and _functorch_active():  # vmap/grad wrap tensors that still look plain
        return False
    if _dispatch_stack_len():
        return False
    for t in tensors:
        if isinstance(t, _Tensor) and type(t) is not _Tensor:
            return False
    return True


def _needs_grad(tensors) -> bool:
    """Grad mode on and some argument a tensor that requires grad (None and numbers skipped)."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if isinstance(t, _Tensor) and t.requires_grad:
            return True
    return False


# op -> autograd.Function.apply running the op's implementation with its registered formula
_EAGER_AUTOGRAD = {}
# eager_autograd(False) turns the eager twins off for a block (tests compare the two paths)
_EAGER_ON: contextvars.ContextVar = contextvars.ContextVar("icrm_kernels_eager_autograd", default=True)


@contextlib.contextmanager
def eager_autograd(enabled: bool):
    """Inside the block, eager calls that need a gradient use the eager twins (``True``, the
    default) or go through torch.library's registered autograd formula (``False``); per context,
    like :func:`use_backend`. The two paths compute the same values and gradients (tested)."""
    token = _EAGER_ON.set(bool(enabled))
    try:
        yield
    finally:
        reset_context(_EAGER_ON, token, True)


def register_autograd(op, impl, backward, setup_context, differentiable, eager_outputs=None):
    """``op.register_autograd(backward, setup_context=setup_context)``, plus the same formula as
    a ``torch.autograd.Function`` around ``impl`` that :meth:`icrm_kernels._op.Op.__call__` uses
    for eager calls that need a gradient: torch.library's autograd path adds ~50 µs of host time
    a call (argument defaults refilled, redispatch, dynamo's disable wrapper) to a forward that
    may itself take a few µs. Both paths run the same ``setup_context`` and ``backward`` on the
    same kind of ctx (torch.library's formula is an autograd.Function too).

    ``differentiable=m``: only the first ``m`` arguments can receive a gradient (the formula
    returns None for the others). The eager Function takes those ``m`` tensors and one tuple of
    the other arguments: each argument of ``Function.apply`` costs host time, and
    ``ctx.needs_input_grad[i]`` keeps the op's positions for i < m.

    ``eager_outputs=k`` (ops returning a tuple whose trailing outputs are internal, such as the
    per-element gradients a fused forward saves for backward): the eager Function returns only
    the first ``k`` outputs as graph outputs (each extra output of an autograd.Function costs
    ~4 µs a call); the caller still gets the whole tuple, the trailing outputs as plain tensors
    without grad_fn (handed back through a list, apply's last argument), and ``backward``
    receives None for their gradients, what it gets from torch.library when they are unused
    (``ctx.set_materialize_grads(False)``)."""
    op.register_autograd(backward, setup_context=setup_context)
    k = eager_outputs
    m = differentiable

    def forward(ctx, *a):  # a = (*args[:m], args[m:], box)
        args = a[:m] + a[m]
        out = impl(*args)
        setup_context(ctx, args, out)
        if k is None:
            return out
        rest = out[k:]
        ctx.icrm_rest_n = len(rest)  # (a count, not the tensors: setup_context saves what backward needs)
        a[m + 1].append(rest)
        return out[0] if k == 1 else out[:k]

    def bwd(ctx, *grads):
        if k is not None:
            grads = grads + (None,) * ctx.icrm_rest_n
        g = backward(ctx, *grads)
        g = (g,) if g is None or isinstance(g, _Tensor) else tuple(g)
        return g[:m] + (None,) * (m - len(g[:m])) + (None, None)

    eager = type(f"Eager_{getattr(op, '_name', 'op').replace('::', '_')}", (torch.autograd.Function,),
                 {"forward": staticmethod(forward), "backward": staticmethod(bwd)})
    apply = eager.apply
    if k is None:
        def run(*args):
            return apply(*args[:m], args[m:], None)
    else:
        def run(*args):
            box = []
            y = apply(*args[:m], args[m:], box)
            return ((y,) if k == 1 else y) + box[0]

    _EAGER_AUTOGRAD[op] = run


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device`` in this process (for tests and benchmarks)."""
    device = torch.device(device)
    out = ["reference"]
    if device.type == "cuda":
        if HAS_TRITON:
            out.append("triton")
        return out
    if HAS_CPP:
        out.append("cpp")
    if HAS_TRITON and triton_interpreting():
        out.append("triton")
    return out
