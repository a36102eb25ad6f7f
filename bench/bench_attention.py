"""pytest-benchmark over the attention family's quick cases (package op and baselines, same run).

    pytest bench/bench_attention.py --benchmark-only
Cases come from icrm_kernels/benchmarks/attention.py::cases(device, quick=True): the package's
op and each baseline on the same inputs; compare rows of the same op and shape.
"""
import pytest
import torch

from icrm_kernels.benchmarks import attention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = attention.cases(DEVICE, quick=True)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}|{c.impl}|{c.shape}" for c in CASES])
def test_attention(benchmark, case):
    benchmark.group = f"{case.op} {case.shape}"
    benchmark.extra_info.update(impl=case.impl, bytes=case.bytes, note=case.note)
    if DEVICE.type == "cuda":
        def run():
            case.fn()
            torch.cuda.synchronize()
        benchmark(run)
    else:
        benchmark(case.fn)
