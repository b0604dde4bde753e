#!/usr/bin/env bash
# One lease on a GPU machine (device tool): build, CUDA tests, compute-sanitizer, benchmarks.
# Usage: bash tools/gpu_session.sh STEP...   STEP: build | test | sanitize | bench | sbs | all
#   every step builds first when the extension is missing (a machine idle 30 s is a fresh one);
#   keep each call under 600 s: e.g. `build test`, then `sanitize bench`, then `sbs`.
# The device returns at most 8 files from $OUT: every log goes to $LOG and is packed into
# $OUT/logs.tgz after each step; the benchmark tables are appended to $OUT/bench.md.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_out}; LOG=${LOG:-/tmp/gpu_logs}; mkdir -p "$OUT" "$LOG"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # scripts under benchmarks/ and tools/ import fastloss from here
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then  # peers to benchmark against, carried as wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
DEADLINE=$((SECONDS + ${BUDGET:-570}))  # the device kills a command at 600 s: end (and pack) before that
step() { echo "== $1 $(date +%T), $((DEADLINE - SECONDS)) s left"; }
limit() {  # LIMIT: the seconds a step may take, capped by what is left; fails when under 30
  local l=$1 r=$((DEADLINE - SECONDS - 10)); (( r < l )) && l=$r
  (( l >= 30 )) || { echo "  skipped: ${r} s left" >&2; return 1; }
  echo "$l"
}
pack() { tar -czf "$OUT/logs.tgz.tmp" -C "$LOG" . && mv -f "$OUT/logs.tgz.tmp" "$OUT/logs.tgz"; }
trap pack EXIT
rcnote() { [[ $1 == 124 || $1 == 137 ]] && echo " (TIMED OUT)"; }
built() { $PY -c "import fastloss, sys; sys.exit(not fastloss.cuda_built())" 2>/dev/null; }
build() {
  step build
  { nvidia-smi; $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; nvcc --version | tail -1; } \
    > "$LOG/env.txt" 2>&1
  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY -m pip install --no-build-isolation --no-deps --no-index -e . \
    > "$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
  built || { echo "fastloss imports without CUDA kernels"; exit 1; }
  echo "fastloss CUDA build ok"
}
bench() {  # NAME LIMIT SCRIPT [ARGS]: the markdown it prints appended to $OUT/bench.md
  local name=$1 l; l=$(limit "$2") || return 0; shift 2
  timeout -k 10 "$l" $PY "$@" > "$LOG/$name.md" 2> "$LOG/$name.err"; local rc=$?
  echo "$name exit $rc$(rcnote $rc)"
  if [[ -s $LOG/$name.md ]]; then cat "$LOG/$name.md" >> "$OUT/bench.md"; echo >> "$OUT/bench.md"; fi
  tr '\r' '\n' < "$LOG/$name.err" | grep -a -E "WARNING|failed|Error|Traceback" | tail -6
}
for what in "${@:-all}"; do
  case $what in build|test|sanitize|bench|sbs|all) ;; *) echo "unknown step '$what'"; exit 2 ;; esac
  if [[ $what == build || $what == all ]]; then build; elif ! built; then build; fi
  if [[ $what == test || $what == all ]]; then
    step test
    n=(); $PY -c "import xdist" 2>/dev/null && n=(-n "${TEST_WORKERS:-8}")
    l=$(limit "${TEST_TIMEOUT:-420}") || continue
    TORCHINDUCTOR_COMPILE_THREADS=1 timeout -k 10 "$l" $PY -m pytest tests -q "${n[@]}" \
      -k "cuda or not cpu" --maxfail=30 -p no:cacheprovider --durations=15 > "$LOG/tests.log" 2>&1
    rc=$?; echo "pytest exit $rc$(rcnote $rc)"; grep -E "passed|failed|error" "$LOG/tests.log" | tail -3
    grep -E "^FAILED|^ERROR" "$LOG/tests.log" | head -20
  fi
  if [[ $what == sanitize || $what == all ]]; then
    for tool in memcheck racecheck; do
      step "sanitize $tool"
      l=$(limit "${SAN_TIMEOUT:-200}") || break
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$l" compute-sanitizer --tool $tool \
        --error-exitcode 9 $PY tools/sanitize_cases.py > "$LOG/sanitize_$tool.log" 2>&1
      rc=$?; echo "$tool exit $rc$(rcnote $rc)"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Error|done" "$LOG/sanitize_$tool.log" | tail -3
      pack
    done
  fi
  if [[ $what == bench || $what == all ]]; then
    step bench
    bench bench_default 150 -m fastloss.bench
    bench bench_cross_entropy 300 benchmarks/bench_cross_entropy.py
  fi
  if [[ $what == sbs || $what == all ]]; then  # side by side with torch.compile; --quick: compile on each loss's first case
    step sbs
    for s in regression embedding probabilistic ctc margin_rows; do
      bench "bench_$s" "${SBS_TIMEOUT:-150}" "benchmarks/bench_$s.py" ${SBS_ARGS:---quick}
    done
  fi
  pack
done
step end
