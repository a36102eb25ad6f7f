"""pytest-benchmark wrappers of the pairwise benchmark cases (quick shapes), package and baselines.

    PYTHONPATH=. python -m pytest bench/bench_pairwise.py --benchmark-only
Cases of one op and shape share a group: pytest-benchmark prints the package beside the baselines.
"""
import pytest
import torch

from icrm_kernels.benchmarks.pairwise import cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = cases(DEVICE, quick=True)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}|{c.shape}|{c.impl}".replace(" ", "_") for c in CASES])
def test_pairwise(benchmark, case):
    benchmark.group = f"{case.op} {case.shape}"
    if DEVICE == "cuda":
        def run():
            case.fn()
            torch.cuda.synchronize()
    else:
        run = case.fn
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
