"""Profiling the reward stage: named ranges around every op, and a per-stage timer.

Ranges. Every public op of the package (the functions in ``icrm_kernels.__all__`` that run a
kernel) runs inside ``torch.profiler.record_function("icrm::<op>")`` while a torch profiler is
recording, so ``torch.profiler.profile`` traces and their Chrome/TensorBoard views show
``icrm::group_advantages`` etc. around the kernels. With :func:`nvtx` turned on (or
``ICRM_NVTX=1`` in the environment) each op also pushes an NVTX range on CUDA, for Nsight
Systems. With no profiler recording and NVTX off, the cost is one check per call (measured
under 1 µs: ``tests/test_profiling.py``).

Stages. ``with stage("reward"):`` times a block: wall time always, device time too when CUDA is
in use (CUDA events around the block, read when the table is made, so timing adds no host
synchronisation inside the loop). Stages nest and accumulate over calls; :func:`stage_table`
prints them, :func:`stage_times` returns them, :func:`reset_stages` clears them. Each stage is
also a ``record_function`` range (``stage::reward``) while a profiler records. The names TRL and
verl use for their own timers (``reward``, ``adv``, ...) work as stage names.

    from icrm_kernels import profiling
    for step in range(steps):
        with profiling.stage("generate"):
            ...
        with profiling.stage("reward"):
            rewards = r2m_reward(...)
        with profiling.stage("advantages"):
            adv = group_advantages(rewards, group_size=G, preset="trl_group")
    print(profiling.stage_table())
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional

import torch

from icrm_kernels._checks import compiling

__all__ = ["nvtx", "ranged", "stage", "stage_times", "stage_table", "reset_stages"]

_profiler_enabled = torch._C._autograd._profiler_enabled
_NVTX = [os.environ.get("ICRM_NVTX", "0") == "1"]


def nvtx(enabled: Optional[bool] = None) -> bool:
    """Turn NVTX ranges around the ops on or off (CUDA only); returns the current setting."""
    if enabled is not None:
        _NVTX[0] = bool(enabled)
    return _NVTX[0]


def ranged(name: str) -> Callable:
    """Decorator: run ``fn`` inside ``record_function("icrm::<name>")`` while a torch profiler
    records, and inside an NVTX range when :func:`nvtx` is on. Not applied while torch.compile
    traces (the compiled graph has its own ranges)."""
    label = f"icrm::{name}"

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            # compiling() first: Dynamo traces it (a constant), not the profiler's C query
            if compiling() or not (_NVTX[0] or _profiler_enabled()):
                return fn(*args, **kwargs)
            with contextlib.ExitStack() as stack:
                if _profiler_enabled():
                    stack.enter_context(torch.profiler.record_function(label))
                if _NVTX[0] and torch.cuda.is_available():
                    stack.enter_context(torch.cuda.nvtx.range(label))
                return fn(*args, **kwargs)

        inner.__wrapped__ = fn
        return inner

    return wrap


# ------------------------------------------------------------------------ stages
class _Stage:
    __slots__ = ("calls", "wall_s", "events")

    def __init__(self):
        self.calls = 0
        self.wall_s = 0.0
        self.events: List[tuple] = []  # (start, end) CUDA events, read lazily


_STAGES: "OrderedDict[str, _Stage]" = OrderedDict()


@contextlib.contextmanager
def stage(name: str, *, cuda: Optional[bool] = None):
    """Time the block as stage ``name`` (wall time; CUDA event time too when ``cuda`` is True,
    default: when CUDA is initialized). Accumulates over calls."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"stage name must be a non-empty string, got {name!r}")
    st = _STAGES.setdefault(name, _Stage())
    use_cuda = torch.cuda.is_available() and torch.cuda.is_initialized() if cuda is None else bool(cuda)
    start = end = None
    if use_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    rf = torch.profiler.record_function(f"stage::{name}") if _profiler_enabled() else contextlib.nullcontext()
    t0 = time.perf_counter()
    with rf:
        try:
            yield st
        finally:
            if use_cuda:
                end.record()
                st.events.append((start, end))
            st.wall_s += time.perf_counter() - t0
            st.calls += 1


def stage_times() -> Dict[str, dict]:
    """``{name: {"calls", "wall_s", "device_s" (None without CUDA events)}}`` in first-use order.
    Reading device times synchronizes on the recorded events."""
    out = {}
    for name, st in _STAGES.items():
        device_s = None
        if st.events:
            st.events[-1][1].synchronize()
            device_s = sum(s.elapsed_time(e) for s, e in st.events) / 1e3
        out[name] = {"calls": st.calls, "wall_s": st.wall_s, "device_s": device_s}
    return out


def reset_stages() -> None:
    """Forget every stage's accumulated time."""
    _STAGES.clear()


def stage_table(times: Optional[Dict[str, dict]] = None, *, title: str = "") -> str:
    """The stages as a text table: calls, total wall ms, ms per call, share of the total, and
    device ms where CUDA events were recorded."""
    times = stage_times() if times is None else times
    total = sum(t["wall_s"] for t in times.values()) or 1.0
    has_dev = any(t["device_s"] is not None for t in times.values())
    head = f"{'stage':24s} {'calls':>6s} {'wall ms':>10s} {'ms/call':>9s} {'share':>6s}" + (
        f" {'device ms':>10s}" if has_dev else "")
    lines = ([title] if title else []) + [head]
    for name, t in times.items():
        line = (f"{name:24s} {t['calls']:6d} {t['wall_s'] * 1e3:10.2f} {t['wall_s'] * 1e3 / max(t['calls'], 1):9.3f} "
                f"{100 * t['wall_s'] / total:5.1f}%")
        if has_dev:
            line += f" {t['device_s'] * 1e3:10.2f}" if t["device_s"] is not None else f" {'':>10s}"
        lines.append(line)
    return "\n".join(lines)
