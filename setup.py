"""Build script: the package is pure Python plus one optional C++ extension, ``icrm_kernels._C``.

The extension holds the CPU kernels of every op family (``csrc/*.cpp``), registered with
TORCH_LIBRARY under the ``icrm_cpu`` namespace. It is optional on purpose: when torch is not
importable at build time (an isolated build) or the compiler fails, the install still succeeds
and the package runs its CPU ops on the plain-torch reference, with one warning at import.
Set ``ICRM_NO_EXTENSION=1`` to skip the build explicitly.
"""
import glob
import os
import sys
import warnings

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extension_kwargs():
    if os.environ.get("ICRM_NO_EXTENSION") == "1":
        warnings.warn("icrm-kernels: ICRM_NO_EXTENSION=1, skipping the C++ extension")
        return {}
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # an isolated build without torch
        warnings.warn(
            "icrm-kernels: torch is not importable at build time (%s); the C++ CPU kernels are "
            "not built and CPU ops will use the torch reference. Install with "
            "`pip install --no-build-isolation .` to build them." % exc
        )
        return {}

    # library.cpp defines the op namespace for the CMake build; module.cpp does it here.
    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
        if os.path.basename(p) != "library.cpp"
    )
    # -fno-trapping-math (clang's default; values unchanged, we never unmask FP exceptions) lets
    # GCC if-convert selects between float expressions, without which the branch-free lane loops
    # of the float kernels (csrc/special.h) do not vectorize. -fno-math-errno (values unchanged,
    # no kernel reads errno) lets loops that call std::sqrt vectorize (csrc/advantages.cpp).
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-DNDEBUG"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp without libomp
        cxx = [f for f in cxx if f != "-fopenmp"]
    ext = CppExtension(
        "icrm_kernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=[] if sys.platform == "darwin" else ["-fopenmp"],
    )

    class OptionalBuildExtension(BuildExtension):
        """Never fail the install because the optional extension did not compile."""

        def run(self):
            try:
                super().run()
            except Exception as exc:
                warnings.warn("icrm-kernels: C++ extension build failed (%s); CPU ops use the reference" % exc)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                warnings.warn("icrm-kernels: C++ extension build failed (%s); CPU ops use the reference" % exc)

    return {
        "ext_modules": [ext],
        "cmdclass": {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)},
    }


setup(**_extension_kwargs())
