"""The benchmark cases (``icrm-kernels bench``, bench/bench_*.py) keep working: every family's quick
cases build and run once, and a peer timed "compiled" is really compiled and computes what the
eager peer computes."""
import importlib

import pytest
import torch

from icrm_kernels.benchmarks import FAMILIES, harness


@pytest.mark.parametrize("family", FAMILIES)
def test_every_quick_case_runs(family, monkeypatch):
    monkeypatch.setenv("ICRM_BENCH_COMPILE", "0")  # compiles are slow on a small machine: one below
    mod = importlib.import_module(f"icrm_kernels.benchmarks.{family}")
    cases = mod.cases("cpu", quick=True)
    assert any(c.is_icrm for c in cases), "no case times the package's op"
    assert all(c.bytes > 0 for c in cases)
    for c in cases:
        if "loop" in c.impl and c.size > 4096:
            continue  # the Python-loop peers are slow; they run in the benchmark itself
        c.fn()


def test_compiled_peers_on_by_default(monkeypatch):
    monkeypatch.delenv("ICRM_BENCH_COMPILE", raising=False)
    assert harness.compiled_peers("cpu") and harness.compiled_peers("cuda")
    monkeypatch.setenv("ICRM_BENCH_COMPILE", "0")
    assert not harness.compiled_peers("cpu")
    monkeypatch.setenv("ICRM_BENCH_COMPILE_MODE", "fastest")
    with pytest.raises(ValueError, match="ICRM_BENCH_COMPILE_MODE"):
        harness.compile_mode()


def test_compiled_peer_is_compiled_and_equal():
    import torch._dynamo

    from icrm_kernels.benchmarks import baselines_advantages as peers

    torch._dynamo.reset()
    fn = harness.compiled(peers.grpo_view)
    r = torch.randn(64 * 8)
    counters = torch._dynamo.utils.counters
    counters.clear()
    out = fn(r, 8)
    assert counters["stats"]["unique_graphs"] >= 1, "torch.compile fell back to eager"
    torch.testing.assert_close(out, peers.grpo_view(r, 8))
    torch.testing.assert_close(peers.bnpo_view((r > 0).float(), 8),
                               __import__("icrm_kernels").group_advantages((r > 0).float(), group_size=8, preset="bnpo"),
                               rtol=1e-4, atol=1e-5)


def test_cpu_benchmarks_keep_the_heap_steady(monkeypatch):
    """CPU timings run with glibc's heap trimming off (harness.steady_cpu_heap; without it some
    processes page-fault each call's fresh output in again, bench/NOTES.md §11.1): run_cases
    turns it on for CPU cases, and on glibc it takes effect (checked in a fresh process, since
    it changes that process's malloc)."""
    import platform
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(harness, "steady_cpu_heap", lambda: calls.append(1) or True)
    case = harness.Case(family="grouped", op="noop", impl="icrm", shape="-", size=1, bytes=4, fn=lambda: None)
    harness.run_cases([case], cpu_repeats=3, log=lambda *a, **k: None)
    assert calls
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        script = "from icrm_kernels.benchmarks.harness import steady_cpu_heap; assert steady_cpu_heap()"
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
