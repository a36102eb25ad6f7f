"""One record per op: the table every op of the package is declared in, and the one place that
turns a record into a torch.library op.

An op is declared once, in its family's module (``icrm_kernels/ops/<family>.py``), as an
:class:`OpRecord`: its name, its torch.library schema, its fake (shape) function, its backward,
and its three implementations, each a plain function with the op's signature:

- ``triton``: the launcher in ``icrm_kernels/triton/<family>.py`` (CUDA tensors, and CPU tensors
  under Triton's interpreter when forced);
- ``cpp``: a thin adapter over ``torch.ops.icrm_cpu.<cpp_op>`` (``csrc/<family>.cpp``; CPU);
- ``reference``: the torch reference in ``icrm_kernels/reference/<family>.py`` (any device; the
  float64 path).

:func:`define` builds from it the custom op ``icrm::<name>`` (schema, fake, autograd formula),
the eager fast path (no dispatcher when no graph or gradient needs it; the formula's
``autograd.Function`` twin when a gradient does), and the backend choice:

- CUDA: ``triton``; float64 CUDA tensors run ``reference`` unless the record says its kernel
  computes in float64 (``float64_triton``); CUDA without triton installed: ``reference``;
- CPU: ``cpp`` when the extension has ``cpp_op``, else ``reference``; ``triton`` only when forced
  and the interpreter is on;
- ``icrm_kernels.use_backend(name)`` forces one (tests, benchmarks, debugging).

So the path of a public call to its kernel is three plain calls: the public function
(``ops/<family>.py``: checks, argument encoding) calls the record (``OP(...)``), which calls the
chosen implementation (the launcher, the C++ adapter or the reference), which launches the
kernel. ``OPS`` lists every op; ``FAMILIES`` is the family list the CLI, the self-check and the
benchmarks enumerate.

The pattern is flash-attention's (one ``torch.library.custom_op`` + ``register_fake`` + one
autograd formula per op) with FlagGems' single table of ops. Where it departs: the backend is
chosen in Python per call rather than by torch.library's per-device kernel registration, because
eager calls skip the dispatcher altogether (the dispatch costs ~30-70 µs a call, more than the
kernels of the small ops); compile, export and tracing go through the registered op, whose
kernel is the same ``run``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

import torch

from icrm_kernels import _backend


@dataclasses.dataclass(frozen=True)
class OpRecord:
    """Everything the package knows about one op (see the module docstring)."""

    name: str  # icrm::<name>
    family: str  # "advantages", "pairwise", "attention" or "beta": its docs/<family>.md
    schema: str  # the torch.library schema, e.g. "(Tensor x) -> Tensor"
    fake: Callable  # output shapes/dtypes from input metadata (torch.compile, export)
    reference: Callable  # float64-capable torch reference, the op's signature
    triton: Optional[Callable] = None  # Triton launcher, the op's signature
    cpp: Optional[Callable] = None  # adapter over torch.ops.icrm_cpu.<cpp_op>, the op's signature
    cpp_op: Optional[str] = None  # the icrm_cpu kernel ``cpp`` needs (absent: reference)
    float64_triton: bool = False  # the Triton kernel computes float64 itself
    backward: Optional[Callable] = None  # backward(ctx, *grads) of torch.library's register_autograd
    setup_context: Optional[Callable] = None
    eager_outputs: Optional[int] = None  # trailing outputs internal (see _backend.register_autograd)
    differentiable: Optional[int] = None  # with a backward: only the first m arguments receive a gradient


OPS: Dict[str, "Op"] = {}

_select = _backend.select
_eager_mode = _backend._eager_mode
_needs_grad = _backend._needs_grad
_EAGER_ON = _backend._EAGER_ON
_f64 = torch.float64


class Op:
    """A defined op: call it like a function with the op's arguments."""

    __slots__ = ("record", "name", "custom_op", "_impls", "_cpp_op", "_f64_triton")

    def __init__(self, record: OpRecord):
        self.record = record
        self.name = record.name
        # (an op without a Triton kernel runs its reference where Triton would run)
        self._impls = {"triton": record.triton or record.reference, "cpp": record.cpp, "reference": record.reference}
        self._cpp_op = record.cpp_op if record.cpp is not None else None
        self._f64_triton = record.float64_triton
        self.custom_op = torch.library.custom_op(f"icrm::{record.name}", self.run, mutates_args=(),
                                                 schema=record.schema)
        self.custom_op.register_fake(record.fake)
        if record.backward is not None:
            if record.differentiable is None:
                raise ValueError(f"op {record.name}: a record with a backward states differentiable")
            self.register_autograd()

    def register_autograd(self, backward: Optional[Callable] = None) -> None:
        """(Re)register the autograd formula on the op and its eager twin: the record's
        ``backward``, or ``backward`` (tests put a spy in, then restore the record's)."""
        rec = self.record
        _backend.register_autograd(self.custom_op, self.run, backward or rec.backward, rec.setup_context,
                                   rec.differentiable, eager_outputs=rec.eager_outputs)

    def backend(self, x: torch.Tensor) -> str:
        """The implementation that runs for tensors like ``x`` (the op's first argument)."""
        b = _select(x.device, self._cpp_op)
        if b == "triton" and x.dtype == _f64 and not self._f64_triton:
            return "reference"
        return b

    def run(self, *args):
        """The op's implementation: the chosen backend's function on the op's arguments."""
        return self._impls[self.backend(args[0])](*args)

    def __call__(self, *args):
        # eager without a gradient: run (no dispatcher); eager with one: the formula's Function
        # around run (_backend.register_autograd); compile, export, tracing, tensor subclasses: the op
        if not _eager_mode(args):
            return self.custom_op(*args)
        if not _needs_grad(args):  # run(*args), inlined: the hot path (each Python frame ~0.1 µs)
            x = args[0]
            b = _select(x.device, self._cpp_op)
            if b == "triton" and x.dtype == _f64 and not self._f64_triton:
                b = "reference"
            return self._impls[b](*args)
        if not _needs_grad(args[:self.record.differentiable]) or not _EAGER_ON.get():
            # only arguments the formula gives no gradient need one, or the twins are off: the op
            return self.custom_op(*args)
        return _backend._EAGER_AUTOGRAD.get(self.custom_op, self.custom_op)(*args)

    def __repr__(self):
        return f"Op(icrm::{self.name}, family={self.record.family!r})"


def define(record: OpRecord) -> Op:
    """Build, register and list the op of ``record`` (once per name)."""
    if record.name in OPS:
        raise RuntimeError(f"op icrm::{record.name} is defined twice")
    op = Op(record)
    OPS[record.name] = op
    return op


# the families, in the order the CLI, the self-check and the benchmarks run them
FAMILIES = ("advantages", "pairwise", "attention", "beta")
