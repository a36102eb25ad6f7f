#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and no internet (torch and triton installed):
# installs the package, runs the whole test suite on CUDA and, at the same time, compute-sanitizer
# (memcheck) on the self-check (one small case per kernel), sweeps the launch configurations of
# the kernels behind missed targets, runs the benchmarks, and writes under OUT:
#   gpu_check.log   everything printed
#   table.txt       the benchmark table
#   results.tgz     CSVs, PNGs and logs (a few files, as the device tool returns at most 8)
# STEPS selects a subset, e.g. STEPS="install bench" (default: every step). Steps, in the order
# they run: install, test, sanitize (run concurrently with test when both are asked for: the
# suite is CPU-bound on the Triton compiles, the sanitizer on its instrumentation), bench, host
# (each op's Python glue with null kernels), rlprofile (`icrm-kernels profile`: the GRPO loop's
# stage table, traces and PNG), tune (bench/tune_gpu.py: it gets what time the benchmarks
# leave; TUNE_ARGS="--only grpo1m" picks kernels), elbo (bench/profile_elbo.py: where an ELBO
# fwd+bwd call spends its time; not in the default set), profile (ncu on the posterior kernel,
# torch.profiler on the attention ops; not in the default set). BENCH_FAMILIES picks benchmark families, TEST_PATHS the tests. The device tool allows 600 s a call and 15 min
# a session: run
#   STEPS="install test sanitize"  then  STEPS="install bench host tune"
# as two back-to-back calls (the second finds the machine warm and the package installed).
# DEVICE=cpu is the dry run on a machine without a GPU: the same steps on CPU tensors (pytest's
# CPU suite, the self-check without the sanitizer, quick benchmarks, the tune script under
# Triton's interpreter), so the script is known to run end to end before device time is spent.
set -uo pipefail
OUT="${1:-}"
if [ -z "$OUT" ]; then echo "usage: make gpu-check OUT=folder" >&2; exit 2; fi
mkdir -p "$OUT/results"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
STEPS="${STEPS:-install test sanitize tune bench host rlprofile}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
rc=0
# DEADLINE (seconds from now) bounds the whole run: every step's time limit is cut to what is
# left, less 20 s for packing the results, so results.tgz is written even when a step runs long
# (the device tool kills the command at its own limit, and returns at most 8 loose files).
END=$(( $(date +%s) + ${DEADLINE:-3600} - 20 ))
cap() { local left=$(( END - $(date +%s) )); [ "$left" -lt "$1" ] && echo $(( left > 5 ? left : 5 )) || echo "$1"; }
has() { case " $STEPS " in *" $1 "*) return 0;; *) return 1;; esac; }
say() { echo "== $(date -u +%T) $*" | tee -a "$LOG"; }
QUICK=""; [ "$DEVICE" = cpu ] && QUICK="--quick"
# without the install step, run the package from this checkout (the C++ extension is then
# missing, which only the CPU paths use)
has install || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

say "gpu-check $(date -u +%F) steps: $STEPS device: $DEVICE"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$LOG"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"
fi

if has install; then
  if $PY -c "import icrm_kernels._C" 2>/dev/null; then
    say "install: already installed with its C++ extension (a warm machine)"
  else
    say "install"
    $PY -c "import setuptools; print('setuptools', setuptools.__version__)" 2>&1 | tee -a "$LOG"
    if ! MAX_JOBS=16 $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -5 | tee -a "$LOG" \
        || ! $PY -c "import icrm_kernels" 2>/dev/null; then
      # e.g. a setuptools older than 77 cannot read the PEP 639 license field: run from the
      # checkout instead (only the CPU paths need the C++ extension)
      say "install failed: running from the checkout (PYTHONPATH), without the C++ extension"
      export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
  fi
  $PY -c "import icrm_kernels, icrm_kernels._backend as b; print('cpp ext', b.HAS_CPP)" 2>&1 | tee -a "$LOG" || rc=1
fi

sanitize() {
  if [ "$DEVICE" != cuda ]; then
    $PY -m icrm_kernels selfcheck --device "$DEVICE"
  elif command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --tool memcheck --print-limit 20 $PY -m icrm_kernels selfcheck --device cuda
  else
    echo "compute-sanitizer not found"; return 1
  fi
}
san_pid=""
if has sanitize; then
  say "compute-sanitizer memcheck on the self-check (in the background)"
  ( timeout "$(cap "${SAN_TIMEOUT:-300}")" bash -c "$(declare -f sanitize); DEVICE=$DEVICE PY=$PY sanitize" \
      > "$OUT/results/sanitizer.log" 2>&1 ) &
  san_pid=$!
fi
if has test; then
  say "pytest ($DEVICE)"
  # pytest-xdist, where installed, spreads the Triton JIT compiles over the CPU cores
  XDIST=""; $PY -c "import xdist" 2>/dev/null && XDIST="-n ${TEST_WORKERS:-8}"
  timeout "$(cap "${TEST_TIMEOUT:-420}")" $PY -m pytest -q -p no:cacheprovider $XDIST ${TEST_PATHS:-tests} 2>&1 | tee "$OUT/results/tests.log" | tail -40 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
if [ -n "$san_pid" ]; then
  wait "$san_pid"; san_rc=$?
  say "sanitizer done (rc=$san_rc)"
  tail -40 "$OUT/results/sanitizer.log" | tee -a "$LOG"
  [ "$san_rc" = 0 ] || rc=1
fi
if has bench; then
  # one process per family: a failed CUDA-graph capture or a slow baseline in one family cannot
  # spoil the next one, and each family has its own time limit
  : > "$OUT/table.txt"
  for fam in ${BENCH_FAMILIES:-advantages pairwise beta attention}; do
    say "benchmarks: $fam"
    timeout "$(cap "${BENCH_TIMEOUT:-300}")" $PY -m icrm_kernels bench --device "$DEVICE" $QUICK --family "$fam" \
      --out "$OUT/results" 2>&1 | tee "$OUT/results/bench_$fam.log" | tail -40 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    for t in "$OUT"/results/table_*.txt; do
      [ -f "$t" ] && { echo "== $fam"; cat "$t"; echo; } >> "$OUT/table.txt" && rm -f "$t"
    done
  done
fi
if has host; then
  say "host time per call (kernels replaced by no-ops)"
  timeout "$(cap 120)" $PY bench/host_overhead.py ${HOST_ARGS:-} 2>&1 | tee "$OUT/results/host_overhead.log" | tee -a "$LOG"
fi
if has rlprofile; then
  say "icrm-kernels profile: the GRPO loop, reward stage on icrm vs plain torch"
  timeout "$(cap "${RLPROFILE_TIMEOUT:-120}")" $PY -m icrm_kernels profile --device "$DEVICE" \
    --steps "${RLPROFILE_STEPS:-10}" --out "$OUT/results/profile" 2>&1 | tail -20 | tee -a "$LOG"
fi
# last: the sweeps get whatever time the benchmarks leave
if has tune; then
  say "launch-configuration sweeps (bench/tune_gpu.py)"
  env $([ "$DEVICE" = cpu ] && echo TRITON_INTERPRET=1) timeout "$(cap "${TUNE_TIMEOUT:-200}")" $PY bench/tune_gpu.py $QUICK \
    --budget "${TUNE_BUDGET:-45}" ${TUNE_ARGS:-} 2>&1 | tee "$OUT/results/tune_gpu.log" | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
if has elbo; then
  say "beta_elbo_loss fwd+bwd: kernel vs call vs loop time, and a torch.profiler table (bench/profile_elbo.py)"
  # (no `head` in the pipe: it would end tee, and with it the script, at its last line)
  timeout "$(cap 90)" $PY bench/profile_elbo.py $QUICK > "$OUT/results/profile_elbo.log" 2>&1
  sed -n '1,22p' "$OUT/results/profile_elbo.log" | tee -a "$LOG"
fi
if has profile && [ "$DEVICE" = cuda ]; then
  say "profiles: ncu on the posterior kernel, torch.profiler on the attention ops"
  timeout "$(cap 40)" ncu --kill yes --kernel-name regex:_posterior_kernel --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats \
    $PY bench/tune_gpu.py --only posterior --quick > "$OUT/results/ncu_posterior.txt" 2>&1
  grep -E "Duration|Throughput|Achieved Occupancy|Registers Per|Stall" "$OUT/results/ncu_posterior.txt" | head -24 | tee -a "$LOG"
  timeout "$(cap 60)" $PY bench/profile_attention.py 2>&1 | tee "$OUT/results/profile_attention.log" | tail -30 | tee -a "$LOG"
fi
(cd "$OUT" && tar czf results.tgz results && rm -rf results)
say "gpu-check done, rc=$rc"
exit $rc
