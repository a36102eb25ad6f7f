"""Ahead-of-time compilation of every Triton kernel for sm_80 and sm_90, without a GPU.

Each kernel module defines ``AOT_SPECS``: a list of :class:`AotSpec`, one per specialisation
worth checking (dtypes, block sizes, warps). ``compile_spec`` lowers it to a cubin with Triton's
own compiler and reads the resource usage back with the ``cuobjdump`` that Triton ships. This
catches code that the interpreter accepts and a real GPU rejects (shared memory over the limit,
unsupported dtypes in a dot, register spills). Run ``python -m icrm_kernels.triton._aot`` or the
test ``tests/test_aot_compile.py``.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import tempfile
from typing import Any, Dict

ARCHS = (80, 90)


@dataclasses.dataclass
class AotSpec:
    """One specialisation of a kernel to compile.

    signature: parameter name -> Triton type string (``"*bf16"``, ``"*fp32"``, ``"i32"``,
    ``"i64"``, ``"fp32"``), for every non-constexpr parameter.
    constexprs: parameter name -> value, for every ``tl.constexpr`` parameter.
    """

    kernel: Any
    signature: Dict[str, str]
    constexprs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    label: str = ""

    @property
    def name(self) -> str:
        base = getattr(self.kernel, "__name__", None) or self.kernel.fn.__name__
        return f"{base}[{self.label}]" if self.label else base


@dataclasses.dataclass
class AotResult:
    name: str
    arch: int
    registers: int
    spill_bytes: int
    stack_bytes: int
    shared_bytes: int


def _ast_source(spec: AotSpec):
    from triton.compiler import ASTSource

    sig = dict(spec.signature)
    fn = spec.kernel
    try:  # triton >= 3.2: constexprs appear in the signature and in `constexprs`
        for k in spec.constexprs:
            sig[k] = "constexpr"
        ordered = {name: sig[name] for name in fn.arg_names if name in sig}
        return ASTSource(fn, signature=ordered, constexprs=dict(spec.constexprs))
    except TypeError:  # triton 3.1: positional index keys, constants by index
        idx = {name: i for i, name in enumerate(fn.arg_names)}
        signature = {idx[k]: v for k, v in spec.signature.items()}
        constants = {idx[k]: v for k, v in spec.constexprs.items()}
        return ASTSource(fn, signature=signature, constants=constants)


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_spec(spec: AotSpec, arch: int) -> AotResult:
    import triton
    from triton.backends.compiler import GPUTarget

    compiled = triton.compile(
        _ast_source(spec),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )
    regs = spill = stack = -1
    shared = int(getattr(compiled.metadata, "shared", 0) or 0)
    cubin = compiled.asm.get("cubin")
    tool = _cuobjdump()
    if cubin is not None and os.path.exists(tool):
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(cubin)
            path = f.name
        try:
            out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, timeout=60).stdout
        finally:
            os.unlink(path)
        m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", out)
        if m:
            regs, stack, static_shared, spill = (int(g) for g in m.groups())
            shared = max(shared, static_shared)
    return AotResult(spec.name, arch, regs, spill, stack, shared)


def all_specs():
    """Every AotSpec of every kernel module that exists."""
    from icrm_kernels.triton import KERNEL_MODULES

    specs = []
    for mod_name in KERNEL_MODULES:
        try:
            mod = importlib.import_module(f"icrm_kernels.triton.{mod_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"icrm_kernels.triton.{mod_name}":
                continue  # that family is not written yet
            raise
        specs.extend(getattr(mod, "AOT_SPECS", []))
    return specs


def report(results) -> str:
    lines = [f"{'kernel':58s} {'sm':>3s} {'regs':>5s} {'spill':>6s} {'stack':>6s} {'smem':>7s}"]
    for r in results:
        lines.append(f"{r.name:58s} {r.arch:>3d} {r.registers:>5d} {r.spill_bytes:>6d} {r.stack_bytes:>6d} {r.shared_bytes:>7d}")
    return "\n".join(lines)


# Shared memory per block: the opt-in maximum of sm_80 (A100) and sm_90 (H100).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def check_all(archs=ARCHS):
    """Compile every spec for every arch. Returns (results, problems): compile errors, spills,
    shared memory over the architecture's limit."""
    results, problems = [], []
    for arch in archs:
        for spec in all_specs():
            try:
                r = compile_spec(spec, arch)
            except Exception as exc:
                problems.append(f"{spec.name} sm_{arch}: {type(exc).__name__}: {str(exc)[:2000]}")
                continue
            results.append(r)
            if r.spill_bytes > 0:
                problems.append(f"{r.name} spills {r.spill_bytes} bytes on sm_{arch}")
            if r.shared_bytes > SMEM_LIMIT[arch]:
                problems.append(f"{r.name} needs {r.shared_bytes} B of shared memory on sm_{arch}")
    return results, problems


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("TRITON_INTERPRET=1 turns kernels into interpreter objects; run with TRITON_INTERPRET=0")
        return 2
    results, problems = check_all()
    print(report(results))
    for p in problems:
        print("PROBLEM:", p)
    print(f"ahead-of-time compile: {len(results)} kernel builds, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
