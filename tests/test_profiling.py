"""icrm_kernels.profiling (ranges and stages) and the `icrm-kernels profile` command."""
import json
import time

import pytest
import torch

import icrm_kernels as ik
from icrm_kernels import profiling


def test_stage_accumulates_and_tables():
    profiling.reset_stages()
    for _ in range(3):
        with profiling.stage("reward"):
            time.sleep(0.001)
        with profiling.stage("adv"):
            pass
    t = profiling.stage_times()
    assert list(t) == ["reward", "adv"]
    assert t["reward"]["calls"] == 3 and t["reward"]["wall_s"] >= 0.003
    table = profiling.stage_table(title="x")
    assert "reward" in table and "adv" in table
    profiling.reset_stages()
    assert profiling.stage_times() == {}
    with pytest.raises(ValueError, match="stage name"):
        with profiling.stage(""):
            pass


def test_ops_show_in_profiler_trace():
    r = torch.randn(64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ik.group_advantages(r, group_size=8, preset="verl_grpo")
        with profiling.stage("reward"):
            ik.beta_stats(torch.rand(8) + 0.5, torch.rand(8) + 0.5)
    names = {e.name for e in prof.events()}
    assert "icrm::group_advantages" in names
    assert "icrm::beta_stats" in names
    assert "stage::reward" in names


def test_range_costs_under_a_microsecond_without_profiler():
    """The wrapper's cost when no profiler records: under 1 µs on the CI machine (~0.3 µs), and
    on a slower host (the H100 machine's measured 1.06 µs) no more than 8 plain pass-through
    wrappers, measured in the same loop, so the bound follows the host and is never flaky."""
    def f(x):
        return x

    def passthrough(fn):
        def inner(*args, **kwargs):
            return fn(*args, **kwargs)

        return inner

    wrapped, plain = profiling.ranged("f")(f), passthrough(f)
    n = 20000

    def per_call(g):
        t0 = time.perf_counter()
        for _ in range(n):
            g(1)
        return (time.perf_counter() - t0) / n

    best_range = best_plain = float("inf")
    for _ in range(5):  # best of five: the machine is shared
        bare = per_call(f)
        best_range = min(best_range, per_call(wrapped) - bare)
        best_plain = min(best_plain, per_call(plain) - bare)
    bound = max(1e-6, 8 * best_plain)
    assert best_range < bound, f"range overhead {best_range * 1e9:.0f} ns a call (bound {bound * 1e9:.0f} ns)"


def test_profile_command(tmp_path):
    pytest.importorskip("transformers")
    from icrm_kernels import cli

    out = tmp_path / "prof"
    assert cli.main(["profile", "--steps", "2", "--device", "cpu", "--out", str(out)]) == 0
    stages = json.loads((out / "stages.json").read_text())
    for impl in ("icrm", "torch"):
        assert set(stages["runs"][impl]) == {"generate", "policy_forward", "reward", "advantages", "rm_update",
                                             "policy_update"}
        assert all(v["calls"] == 2 for v in stages["runs"][impl].values())
        trace = json.loads((out / f"trace_{impl}.json").read_text())
        assert trace["traceEvents"]
    assert (out / "stages.png").stat().st_size > 1000
    assert "torch/icrm" in (out / "stages.txt").read_text()
    with pytest.raises(SystemExit, match="steps"):
        cli.main(["profile", "--steps", "0", "--device", "cpu", "--out", str(out)])
