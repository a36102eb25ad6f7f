"""pytest-benchmark over the Beta family's quick cases (ours and the eager-torch baselines, same inputs).

    pytest bench/bench_beta.py --benchmark-only
"""
import pytest
import torch

from icrm_kernels.benchmarks.beta import cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = cases(DEVICE, quick=True)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}|{c.impl}|{c.shape}" for c in CASES])
def test_beta(benchmark, case):
    benchmark.group = f"{case.op} {case.shape}"
    if DEVICE == "cuda":
        def run():
            case.fn()
            torch.cuda.synchronize()

        benchmark(run)
    else:
        benchmark(case.fn)
