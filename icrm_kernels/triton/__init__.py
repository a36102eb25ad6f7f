"""Triton kernels and their launchers, one module per op family.

Modules here import ``triton`` lazily from the ops (the package imports without Triton). Each
module lists its kernels for the ahead-of-time compile check in ``AOT_SPECS`` (see ``_aot.py``).
"""
# the kernel modules (the families of icrm_kernels._op.FAMILIES, plus the special functions the
# Beta kernels share)
KERNEL_MODULES = ("advantages", "pairwise", "attention", "beta", "special")


def cdiv(a: int, b: int) -> int:
    """Host-side ceil(a / b) for grids. ``triton.cdiv`` is a constexpr function in recent Triton
    (~3 µs per call from Python), a cost every eager op call would pay a few times over."""
    return -(-int(a) // int(b))


def next_power_of_2(n: int) -> int:
    """Host-side smallest power of 2 >= n (0 for n <= 0, as ``triton.next_power_of_2``)."""
    n = int(n)
    return 0 if n <= 0 else 1 << (n - 1).bit_length()
