"""pytest-benchmark wrappers of the pairwise benchmark cases (quick shapes), package and baselines.

    pytest bench/bench_pairwise.py --benchmark-only
"""
import pytest
from benchutil import DEVICE, case_ids, run_case

from icrm_kernels.benchmarks.pairwise import cases

CASES = cases(DEVICE, quick=True)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_pairwise(benchmark, case):
    # the Python-loop baselines take ~0.1 s a call: a few rounds are enough
    run_case(benchmark, case, rounds=5, iterations=1, warmup_rounds=1)
