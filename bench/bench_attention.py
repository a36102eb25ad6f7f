"""pytest-benchmark over the attention family's quick cases (package op and baselines, same run).

    pytest bench/bench_attention.py --benchmark-only
Cases come from icrm_kernels/benchmarks/attention.py::cases(device, quick=True): the package's
op and each baseline on the same inputs; compare rows of the same op and shape.
"""
import pytest
from benchutil import DEVICE, case_ids, run_case

from icrm_kernels.benchmarks.attention import cases

CASES = cases(DEVICE, quick=True)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_attention(benchmark, case):
    run_case(benchmark, case)
