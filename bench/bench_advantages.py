"""pytest-benchmark: group_advantages beside its baselines on a few small cases (quick=True).

    pytest bench/bench_advantages.py --benchmark-group-by=param:case
"""
import pytest
import torch

from icrm_kernels.benchmarks.advantages import cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [c for c in cases(DEVICE, quick=True) if c.impl != "verl-loop" or c.size <= 4096]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}|{c.shape}|{c.impl}" for c in CASES])
def test_group_advantages(benchmark, case):
    benchmark.group = f"{case.op} {case.shape}"
    if DEVICE == "cuda":
        def run():
            case.fn()
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark(case.fn)
