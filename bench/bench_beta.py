"""pytest-benchmark over the Beta family's quick cases (ours and the eager-torch baselines, same inputs).

    pytest bench/bench_beta.py --benchmark-only
"""
import pytest
from benchutil import DEVICE, case_ids, run_case

from icrm_kernels.benchmarks.beta import cases

CASES = cases(DEVICE, quick=True)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_beta(benchmark, case):
    run_case(benchmark, case)
