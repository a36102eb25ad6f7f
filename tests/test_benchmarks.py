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
