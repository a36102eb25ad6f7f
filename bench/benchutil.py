"""Shared plumbing of the pytest-benchmark suites: bench/bench_<family>.py each parametrize over
their family's quick cases and call ``run_case``.

    pytest bench/ --benchmark-only --benchmark-group-by=group
"""
import torch

from icrm_kernels.benchmarks.harness import steady_cpu_heap

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    steady_cpu_heap()  # as icrm-kernels bench does: no figure depends on glibc's heap trimming


def case_ids(cases):
    return [f"{c.op}|{c.shape}|{c.impl}".replace(" ", "_") for c in cases]


def run_case(benchmark, case, **pedantic):
    """Time one harness Case with pytest-benchmark; on CUDA each round ends in a synchronize so
    the device work is inside the measurement. Cases of one op and shape share a group, so the
    package's op prints beside its baselines."""
    benchmark.group = f"{case.op} {case.shape}"
    benchmark.extra_info.update(impl=case.impl, bytes=case.bytes, note=case.note)
    if DEVICE == "cuda":
        def run():
            case.fn()
            torch.cuda.synchronize()
    else:
        run = case.fn
    if pedantic:
        return benchmark.pedantic(run, **pedantic)
    return benchmark(run)
