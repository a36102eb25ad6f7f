"""Benchmarks shipped with the package so that `icrm-kernels bench` works from any install.

``harness.py`` times cases and writes the table, CSV and plot; one module per op family
(``advantages.py``, ``pairwise.py``, ``attention.py``, ``beta.py``) defines ``cases(device, quick)`` returning the
:class:`~icrm_kernels.benchmarks.harness.Case` list: the package's kernel and each baseline,
measured in the same run. ``bench/bench_<family>.py`` wraps the same cases for pytest-benchmark.
"""
from icrm_kernels._op import FAMILIES  # noqa: E402,F401  (the one family list)
