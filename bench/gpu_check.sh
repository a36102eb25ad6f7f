#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and no internet (torch and triton installed):
# installs the package, runs the whole test suite on CUDA, runs compute-sanitizer (memcheck) on
# the self-check (one small case per kernel), runs the benchmarks, and writes under OUT:
#   gpu_check.log   everything printed
#   table.txt       the benchmark table
#   results.tgz     CSVs, PNGs and logs (a few files, as the device tool returns at most 8)
# STEPS selects a subset, e.g. STEPS="install bench" (default: all five; "host" times each op's
# Python glue with null kernels). BENCH_FAMILIES picks benchmark families. The device tool allows
# 600 s a call: run STEPS="install test sanitize" and STEPS="install bench host" as two calls.
set -uo pipefail
OUT="${1:-}"
if [ -z "$OUT" ]; then echo "usage: make gpu-check OUT=folder" >&2; exit 2; fi
mkdir -p "$OUT/results"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
STEPS="${STEPS:-install test sanitize bench host}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
rc=0
has() { case " $STEPS " in *" $1 "*) return 0;; *) return 1;; esac; }
say() { echo "== $*" | tee -a "$LOG"; }

say "gpu-check $(date -u +%FT%TZ) steps: $STEPS"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$LOG"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"

if has install; then
  say "install"
  MAX_JOBS=16 $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -5 | tee -a "$LOG"
  $PY -c "import icrm_kernels, icrm_kernels._backend as b; print('cpp ext', b.HAS_CPP)" 2>&1 | tee -a "$LOG" || rc=1
fi
if has test; then
  say "pytest on CUDA"
  # pytest-xdist, where installed, spreads the Triton JIT compiles over the CPU cores
  XDIST=""; $PY -c "import xdist" 2>/dev/null && XDIST="-n ${TEST_WORKERS:-8}"
  timeout "${TEST_TIMEOUT:-420}" $PY -m pytest -q -p no:cacheprovider $XDIST tests 2>&1 | tee "$OUT/results/tests.log" | tail -40 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
if has sanitize; then
  say "compute-sanitizer memcheck on the self-check"
  if command -v compute-sanitizer >/dev/null; then
    timeout "${SAN_TIMEOUT:-300}" compute-sanitizer --tool memcheck --print-limit 20 $PY -m icrm_kernels selfcheck --device cuda \
      2>&1 | tee "$OUT/results/sanitizer.log" | tail -40 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  else
    say "compute-sanitizer not found"; rc=1
  fi
fi
if has bench; then
  # one process per family: a failed CUDA-graph capture or a slow baseline in one family cannot
  # spoil the next one, and each family has its own time limit
  : > "$OUT/table.txt"
  for fam in ${BENCH_FAMILIES:-advantages pairwise beta attention}; do
    say "benchmarks: $fam"
    timeout "${BENCH_TIMEOUT:-300}" $PY -m icrm_kernels bench --device cuda --family "$fam" --out "$OUT/results" 2>&1 \
      | tee "$OUT/results/bench_$fam.log" | tail -40 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    for t in "$OUT"/results/table_*.txt; do
      [ -f "$t" ] && { echo "== $fam"; cat "$t"; echo; } >> "$OUT/table.txt" && rm -f "$t"
    done
  done
fi
if has host; then
  say "host time per call (kernels replaced by no-ops)"
  timeout 120 $PY bench/host_overhead.py 2>&1 | tee "$OUT/results/host_overhead.log" | tee -a "$LOG"
fi
(cd "$OUT" && tar czf results.tgz results && rm -rf results)
say "gpu-check done, rc=$rc"
exit $rc
