"""Command line: ``icrm-kernels {run,selfcheck,bench,profile,aot}`` (also ``python -m icrm_kernels``).

- ``selfcheck``: every kernel path on the available device against its float64 reference, fresh
  inputs (``icrm_kernels/selfcheck.py``).
- ``bench``: every op against its baselines in the same run; table on the terminal, CSV and
  PNG plot written to ``--out`` (default ``bench/results`` when run from the repository).
- ``profile``: a small GRPO loop with an R2M reward model, run with the reward stage on the
  package's ops and on plain torch / peer code; per-stage table, Chrome traces, PNG
  (``icrm_kernels/benchmarks/rl_loop.py``; needs transformers).
- ``run``: selfcheck, bench, then profile, on embedded defaults (what ``make run`` does).
- ``aot``: compile every Triton kernel for sm_80 and sm_90 and print its resource usage.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

import torch


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _families(selected):
    from icrm_kernels.benchmarks import FAMILIES

    names = FAMILIES if not selected else tuple(selected)
    for name in names:
        if name not in FAMILIES:
            raise SystemExit(f"--family must be one of {FAMILIES}, got {name!r}")
    return names


def _import_family(package: str, name: str):
    try:
        return importlib.import_module(f"icrm_kernels.{package}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"icrm_kernels.{package}.{name}":
            return None
        raise


def cmd_selfcheck(args) -> int:
    from icrm_kernels import selfcheck

    device = torch.device(args.device)
    print(f"icrm-kernels self-check on {device} ({_device_label(device)})")
    print("  each case: max error / tolerance over its outputs and gradients (testing.TOLERANCES; <= 1 passes)")
    results = selfcheck.run(device, _families(args.family),
                            on_result=lambda res: print(selfcheck.format_result(res), flush=True))
    failed = sum(not res.ok for res in results)
    print(f"self-check: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _device_label(device) -> str:
    from icrm_kernels.benchmarks.harness import device_name, library_versions

    return f"{device_name(str(device))}; {library_versions()}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def cmd_bench(args) -> int:
    from icrm_kernels.benchmarks import harness

    device = torch.device(args.device)
    out_dir = args.out or (os.path.join("bench", "results") if os.path.isdir("bench") else ".")
    print(f"icrm-kernels bench on {device} ({_device_label(device)}), quick={args.quick}")
    # Every family's inputs are made before anything is timed: a CUDA-graph capture that fails
    # (a baseline that syncs) can leave torch's CUDA RNG unusable for later torch.randn calls.
    family_cases = []
    for name in _families(args.family):
        mod = _import_family("benchmarks", name)
        if mod is not None:
            family_cases.append((name, mod.cases(device, quick=args.quick)))
    all_results = []
    for name, cases in family_cases:
        print(f"[{name}]")
        results = harness.run_cases(cases)
        all_results.extend(results)
        if results:
            tag = f"{name}_{_slug(harness.device_name(str(device)))}"
            csv_path = harness.write_csv(results, os.path.join(out_dir, f"{tag}.csv"))
            png = harness.plot(results, os.path.join(out_dir, f"{tag}.png"))
            print(f"  wrote {csv_path}" + (f" and {png}" if png else ""))
    if not all_results:
        print("no benchmark cases")
        return 0
    print()
    print(harness.table(all_results))
    table_path = os.path.join(out_dir, f"table_{_slug(harness.device_name(str(device)))}.txt")
    with open(table_path, "w") as f:
        f.write(f"{_device_label(device)}\n\n{harness.table(all_results)}\n")
    print(f"\nwrote {table_path}")
    return 0


def cmd_profile(args) -> int:
    from icrm_kernels.benchmarks import rl_loop

    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    out = args.out or (os.path.join("bench", "results", "profile") if os.path.isdir("bench") else "profile")
    return rl_loop.main(steps=args.steps, device=args.device, out=out)


def cmd_run(args) -> int:
    rc = cmd_selfcheck(args)
    print()
    rc |= cmd_bench(args)
    print()
    args.steps = 2 if args.quick else 10
    args.out = os.path.join(args.out, "profile") if args.out else None
    rc |= cmd_profile(args)
    return rc


def cmd_aot(args) -> int:
    from icrm_kernels.triton import _aot

    return _aot.main()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="icrm-kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn, help_ in (
        ("run", cmd_run, "self-check, benchmarks, then the profiled GRPO loop (what `make run` does)"),
        ("selfcheck", cmd_selfcheck, "every op against its float64 reference"),
        ("bench", cmd_bench, "every op against its baselines; table, CSV, PNG"),
        ("aot", cmd_aot, "compile every Triton kernel for sm_80/sm_90, print resources"),
        ("profile", cmd_profile, "a GRPO loop with an R2M reward model, reward stage on icrm vs plain torch: "
                                 "per-stage table, Chrome traces, PNG"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(fn=fn)
        if name != "aot":
            sp.add_argument("--device", default=_default_device(), help="cpu or cuda (default: cuda if available)")
        if name in ("run", "selfcheck", "bench"):
            sp.add_argument("--family", action="append", help="only this op family (repeatable)")
        if name == "profile":
            sp.add_argument("--steps", type=int, default=10, help="timed RL steps per run (default 10)")
            sp.add_argument("--out", default=None, help="folder for the table, traces and PNG "
                                                        "(default bench/results/profile in the repository)")
        if name in ("run", "bench"):
            sp.add_argument("--quick", action="store_true", help="small shapes only")
            sp.add_argument("--out", default=None, help="folder for the CSV, PNG and table")
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
