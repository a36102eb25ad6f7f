"""Triton kernels and their launchers, one module per op family.

Modules here import ``triton`` lazily from the ops (the package imports without Triton). Each
module lists its kernels for the ahead-of-time compile check in ``AOT_SPECS`` (see ``_aot.py``).
"""
FAMILY_MODULES = ("advantages", "pairwise", "attention", "beta", "special")
