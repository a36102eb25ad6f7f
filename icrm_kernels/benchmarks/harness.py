"""Timing harness: medians with CUDA events (L2 flushed between repeats) or perf_counter on CPU.

A benchmark is a list of :class:`Case`: one op at one shape by one implementation. Cases of the
same ``op`` and ``shape`` are compared in the table: every baseline's time over the package's
(``impl`` starting with ``"icrm"``) is the reported speed-up, measured in the same run.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import platform
import statistics
import time
from typing import Any, Callable, List, Optional

import torch


@dataclasses.dataclass
class Case:
    family: str  # "grouped", "attention", "beta"
    op: str  # what is computed, e.g. "group_advantages[grpo]"
    impl: str  # "icrm" for the package (suffix allowed: "icrm-ref"), else the baseline's name
    shape: str  # human-readable shape, e.g. "N=65536 G=8"
    size: int  # x-axis of the plot (N, tokens, ...)
    bytes: int  # the fewest bytes the op must move (inputs read once, outputs written once)
    fn: Callable[[], Any]  # runs the op once; inputs are prepared outside
    device: str = "cpu"
    note: str = ""  # e.g. "flash-attn not importable: SDPA flash backend"
    # CUDA only: also time replays of a CUDA graph of fn, i.e. device time without the Python and
    # launch overhead (METHOD.md: for small ops, time graph replays). Needs fn to be capturable.
    graph: bool = False

    @property
    def is_icrm(self) -> bool:
        return self.impl.startswith("icrm") and not self.impl.startswith("icrm-ref")


def hot_loop(cases: List[Case], *, graph_unless=("loop",)) -> List[Case]:
    """Time the package's ops as a hot loop would run them: inside ``unchecked()`` (no value
    checks, so no host sync), and on CUDA also as CUDA-graph replays (device time) for every
    case whose impl names none of ``graph_unless`` (Python loops cannot be captured) and that
    runs no backward (autograd is kept out of graph capture)."""
    from icrm_kernels._checks import unchecked

    def _wrap(fn):
        def run():
            with unchecked():
                return fn()

        return run

    # ICRM_BENCH_GRAPHS=0 turns graph timing off: a capture that fails (a baseline that syncs)
    # can leave torch's CUDA RNG in capture state and break later random inputs.
    graphs = os.environ.get("ICRM_BENCH_GRAPHS", "1") != "0"
    for c in cases:
        if c.is_icrm:
            c.fn = _wrap(c.fn)
        if graphs and c.device.startswith("cuda") and "bwd" not in c.op and not any(w in c.impl for w in graph_unless):
            c.graph = True
    return cases


def compiled_peers(device) -> bool:
    """Whether the benchmarks also time peer code through ``torch.compile``: what a careful user
    would pick instead of eager code, so every family times it beside the eager peer, on the CPU
    and on CUDA. ``ICRM_BENCH_COMPILE=0`` turns it off (Inductor's compiles take a few seconds
    each on a small machine)."""
    return os.environ.get("ICRM_BENCH_COMPILE", "1") != "0"


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode() -> str:
    """``torch.compile`` mode of the compiled peers: ``ICRM_BENCH_COMPILE_MODE``, default
    ``"default"``. ``max-autotune-no-cudagraphs`` can help matmul-heavy peers (the attention
    baselines) on a GPU but autotunes for minutes per shape; the committed GPU results say
    which mode they used."""
    mode = os.environ.get("ICRM_BENCH_COMPILE_MODE", "default")
    if mode not in COMPILE_MODES:
        raise ValueError(f"ICRM_BENCH_COMPILE_MODE must be one of {COMPILE_MODES}, got {mode!r}")
    return mode


def compiled(fn: Callable, *, dynamic: Optional[bool] = None) -> Callable:
    """``torch.compile(fn)`` for a peer, as a user gets it by default: ``dynamic=None`` (the
    first shape compiled static, a second shape recompiles with dynamic sizes), in
    :func:`compile_mode`. Dynamo keeps at most ``recompile_limit`` graphs per code object and
    silently falls back to eager beyond it; the benchmarks run one peer at several shapes, so the
    limit is raised here (a fallback would be timed as "compiled")."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < 64:
            setattr(cfg, name, 64)
    if hasattr(cfg, "accumulated_recompile_limit") and cfg.accumulated_recompile_limit < 1024:
        cfg.accumulated_recompile_limit = 1024
    mode = compile_mode()
    return torch.compile(fn, dynamic=dynamic, mode=None if mode == "default" else mode)


@dataclasses.dataclass
class Result:
    case: Case
    median_s: float
    min_s: float
    repeats: int
    bandwidth_gbs: Optional[float]
    bandwidth_frac: Optional[float]
    error: str = ""
    graph_s: Optional[float] = None  # median of CUDA-graph replays (device time), when captured
    loop_s: Optional[float] = None  # CUDA: wall time per call of back-to-back calls (what a Python loop sees)


_copy_bw_cache = {}


def measured_copy_bandwidth(device: torch.device) -> Optional[float]:
    """Bytes/s of a large device-to-device copy (bytes read + written), measured once."""
    if device.type != "cuda":
        return None
    if device in _copy_bw_cache:
        return _copy_bw_cache[device]
    n = 256 * 1024 * 1024  # 1 GiB of fp32: far above L2
    # no RNG here: a failed CUDA-graph capture earlier in the run can leave torch's CUDA
    # generator in capture state, and the copy's speed does not depend on the values
    src = torch.full((n,), 1.5, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = _time_cuda(lambda: dst.copy_(src), repeats=20, flush=None)
    bw = 2 * src.numel() * 4 / t[0]
    del src, dst
    torch.cuda.empty_cache()
    _copy_bw_cache[device] = bw
    return bw


def _time_cuda(fn, repeats: int, flush: Optional[torch.Tensor], warmup: int = 3, budget_s: float = 3.0):
    # slow baselines (Python loops) get one warm-up and fewer repeats: at most ~budget_s of
    # timing per case (a 2 s verl loop would otherwise spend 8 s warming up)
    for i in range(warmup + 1):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        once = time.perf_counter() - t0
        if i >= 1 and once > budget_s / 10:
            break
    repeats = max(3, min(repeats, int(budget_s / max(once, 1e-9))))
    times = []
    for _ in range(repeats):
        if flush is not None:
            flush.zero_()  # evict the inputs from L2 so each repeat reads them from memory
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), min(times), len(times)


def _time_cuda_loop(fn, budget_s: float = 0.05, max_calls: int = 200):
    """Wall seconds per call of back-to-back calls, the queue drained before and after: what a
    training loop pays per call, host overhead included (max of host and device time). The
    event timing of :func:`_time_cuda` cannot show host time shorter than the L2 flush before
    it (the host enqueues the call while the device is still flushing)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    calls = max(3, min(max_calls, int(budget_s / max(once, 1e-9))))
    best = float("inf")
    for _ in range(3):  # the best of three batches: the least disturbed by other host work
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def _time_cuda_graph(fn, repeats: int, flush: Optional[torch.Tensor]):
    """Median time of replaying a CUDA graph that holds one call of fn (None if not capturable)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs recommends
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    med, _, _ = _time_cuda(graph.replay, repeats, flush)
    del graph
    return med


def steady_cpu_heap() -> bool:
    """Keep freed heap memory in this (benchmark) process: glibc's heap trimming and per-call
    mmap off (``mallopt``), so that a CPU figure does not depend on whether glibc handed a
    previous output's pages back to the OS. In some processes it does on every call, and the
    next call page-faults its fresh output in again (~680 faults, +0.8 ms at 1M rows, measured
    on the CI machine, bench/NOTES.md §11.1), in others never: the same build then ran at
    0.26 or 1.1 ms. Applies to every implementation in the run alike. Returns whether it took
    effect (glibc only). A training process can do the same, or preload tcmalloc / jemalloc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # 32 MB: glibc's largest mmap threshold on 64-bit (a larger value is refused)
    return bool(mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(M_MMAP_THRESHOLD, 32 << 20))


def _time_cpu(fn, repeats: int, warmup: int = 1, budget_s: float = 2.0):
    for _ in range(warmup):
        fn()
    times = []
    t_end = time.perf_counter() + budget_s
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() > t_end:
            break
    return statistics.median(times), min(times), len(times)


def run_cases(cases: List[Case], *, repeats: int = 50, cpu_repeats: int = 21, log=print) -> List[Result]:
    results = []
    flush = {}
    if any(torch.device(c.device).type == "cpu" for c in cases):
        steady_cpu_heap()
    for dev in {torch.device(c.device) for c in cases}:
        measured_copy_bandwidth(dev)  # before any case: nothing captured yet, L2 state irrelevant
    for case in cases:
        device = torch.device(case.device)
        try:
            if device.type == "cuda":
                if device not in flush:
                    # 2x the L2 of any current GPU
                    flush[device] = torch.empty(64 * 1024 * 1024, dtype=torch.int32, device=device)
                med, mn, n = _time_cuda(case.fn, repeats, flush[device])
                loop_s = _time_cuda_loop(case.fn) if med < 0.05 else None  # slow baselines: no loop
                graph_s = None
                if case.graph:
                    try:
                        graph_s = _time_cuda_graph(case.fn, repeats, flush[device])
                    except Exception as exc:  # not capturable (host sync, CPU work): eager only
                        torch.cuda.synchronize()
                        log(f"    (no CUDA graph for {case.impl}: {type(exc).__name__})")
            else:
                # three warm-ups: the first call compiles a compiled peer, the next ones settle
                # caches (the C++ kernels' per-thread tables, the allocator)
                med, mn, n = _time_cpu(case.fn, cpu_repeats, warmup=3)
                graph_s = loop_s = None
        except Exception as exc:  # a failing baseline must not hide the others
            results.append(Result(case, float("nan"), float("nan"), 0, None, None, f"{type(exc).__name__}: {exc}"))
            log(f"  {case.op:34s} {case.impl:26s} {case.shape:30s} FAILED: {exc}")
            continue
        bw = case.bytes / med if case.bytes else None
        peak = measured_copy_bandwidth(device)
        frac = bw / peak if (bw and peak) else None
        results.append(Result(case, med, mn, n, bw / 1e9 if bw else None, frac, graph_s=graph_s, loop_s=loop_s))
        log(f"  {case.op:34s} {case.impl:26s} {case.shape:30s} {_fmt_time(med):>10s}"
            + (f"  {frac * 100:5.1f}% of copy bw" if frac else "")
            + (f"  graph replay {_fmt_time(graph_s)}" if graph_s else "")
            + (f"  loop {_fmt_time(loop_s)}" if loop_s else ""))
    return results


def _fmt_time(s: float) -> str:
    if s != s:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def library_versions() -> str:
    parts = [f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except Exception:
        parts.append("triton -")
    from icrm_kernels import _backend

    parts.append("cpp ext " + ("built" if _backend.HAS_CPP else "NOT built"))
    return ", ".join(parts)


def speedups(results: List[Result]):
    """Rows (op, shape, icrm impl, icrm time, baseline impl, baseline time, ratio)."""
    rows = []
    by_key = {}
    for r in results:
        by_key.setdefault((r.case.op, r.case.shape), []).append(r)
    for (op, shape), group in by_key.items():
        mine = [r for r in group if r.case.is_icrm and r.median_s == r.median_s]
        for m in mine:
            for b in group:
                if b.case.is_icrm or b.median_s != b.median_s:
                    continue
                rows.append((op, shape, m.case.impl, m.median_s, b.case.impl, b.median_s, b.median_s / m.median_s))
    return rows


def table(results: List[Result]) -> str:
    lines = [f"{'op':34s} {'shape':30s} {'impl':26s} {'median':>10s} {'graph':>10s} {'loop':>10s} {'GB/s':>8s} "
             f"{'%copy':>6s}  vs icrm"]
    icrm_time = {}
    for r in results:
        if r.case.is_icrm and r.median_s == r.median_s:
            icrm_time.setdefault((r.case.op, r.case.shape), r.median_s)
    for r in results:
        ref = icrm_time.get((r.case.op, r.case.shape))
        ratio = "" if (r.case.is_icrm or ref is None or r.median_s != r.median_s) else f"{r.median_s / ref:7.1f}x slower"
        bw = f"{r.bandwidth_gbs:8.1f}" if r.bandwidth_gbs else f"{'':8s}"
        frac = f"{r.bandwidth_frac * 100:5.1f}%" if r.bandwidth_frac else f"{'':6s}"
        err = f"  FAILED {r.error[:60]}" if r.error else ""
        graph = _fmt_time(r.graph_s) if r.graph_s else ""
        loop = _fmt_time(r.loop_s) if r.loop_s else ""
        lines.append(f"{r.case.op:34s} {r.case.shape:30s} {r.case.impl:26s} {_fmt_time(r.median_s):>10s} {graph:>10s} "
                     f"{loop:>10s} {bw} {frac}  {ratio}{err}")
    return "\n".join(lines)


def write_csv(results: List[Result], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    versions = library_versions()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "device", "versions", "family", "op", "impl", "shape", "size", "bytes",
                    "median_s", "min_s", "repeats", "bandwidth_GBps", "fraction_of_copy_bw", "graph_replay_s",
                    "loop_s", "note", "error"])
        for r in results:
            c = r.case
            w.writerow([stamp, device_name(c.device), versions, c.family, c.op, c.impl, c.shape, c.size, c.bytes,
                        f"{r.median_s:.6e}", f"{r.min_s:.6e}", r.repeats,
                        "" if r.bandwidth_gbs is None else f"{r.bandwidth_gbs:.2f}",
                        "" if r.bandwidth_frac is None else f"{r.bandwidth_frac:.4f}",
                        "" if r.graph_s is None else f"{r.graph_s:.6e}",
                        "" if r.loop_s is None else f"{r.loop_s:.6e}", c.note, r.error])
    return path


def plot(results: List[Result], path: str) -> Optional[str]:
    """Time against size, one panel per op, one line per implementation. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    ops = sorted({r.case.op for r in results})
    if not ops:
        return None
    cols = min(3, len(ops))
    rows = (len(ops) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        impls = sorted({r.case.impl for r in results if r.case.op == op})
        for impl in impls:
            pts = sorted((r.case.size, r.median_s) for r in results
                         if r.case.op == op and r.case.impl == impl and r.median_s == r.median_s)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op, fontsize=9)
        ax.set_xlabel("size")
        ax.set_ylabel("median time (ms)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    fig.suptitle(f"{device_name(results[0].case.device)} — {library_versions()}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
