"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed).

Prints registers, spills, stack and shared memory per kernel (run pytest with -s to see the
table) and fails on any compile error, on register spills, or on shared memory over the
smallest limit of the two architectures (163 KiB on sm_80, 227 KiB on sm_90).
"""
import pytest

from icrm_kernels import _backend

pytestmark = pytest.mark.skipif(not _backend.HAS_TRITON, reason="triton is not installed")

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def _specs():
    from icrm_kernels.triton._aot import all_specs

    return all_specs()


@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_compiles(arch, capsys):
    from icrm_kernels.triton._aot import compile_spec, report

    specs = _specs()
    results = []
    failures = []
    for spec in specs:
        try:
            results.append(compile_spec(spec, arch))
        except Exception as exc:  # collect all failures, then fail once
            failures.append(f"{spec.name} sm_{arch}: {type(exc).__name__}: {str(exc)[:2000]}")
    with capsys.disabled():
        print(f"\nAhead-of-time compile, sm_{arch}:\n" + report(results))
    assert not failures, "\n".join(failures)
    for r in results:
        assert r.spill_bytes <= 0, f"{r.name} spills {r.spill_bytes} bytes on sm_{arch}"
        assert r.shared_bytes <= SMEM_LIMIT[arch], f"{r.name} needs {r.shared_bytes} B shared memory on sm_{arch}"
