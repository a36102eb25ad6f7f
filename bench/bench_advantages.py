"""pytest-benchmark: group_advantages beside its baselines on a few small cases (quick=True).

    pytest bench/bench_advantages.py --benchmark-only
"""
import pytest
from benchutil import DEVICE, case_ids, run_case

from icrm_kernels.benchmarks.advantages import cases

CASES = [c for c in cases(DEVICE, quick=True) if c.impl != "verl-loop" or c.size <= 4096]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_group_advantages(benchmark, case):
    run_case(benchmark, case)
