#!/usr/bin/env bash
# Runs tools/gpu_check.sh here, without a GPU, against stub tools (nvidia-smi, nvcc, compute-sanitizer
# and a python3 that fakes the heavy commands and hands everything else to the real one), to check
# what the real run can only show on the device: SUMMARY.md written first and after every step, the
# caps (a step that hangs is killed at its cap, with its process group), a failed build skipping the
# steps that need it, and a kill -9 of the whole run leaving every log and the summary in place.
#
#   bash tools/gpu_check_dryrun.sh          the scenarios below; exit 0 when every check holds
# REAL_PY: the python that parses the logs (plain python3 will do; no torch needed).
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REAL_PY=${REAL_PY:-$(command -v python3)}
TMP=$(mktemp -d /tmp/gpu_check_dry.XXXXXX)
STUB=$TMP/bin
mkdir -p "$STUB"
fails=0
check() {  # DESCRIPTION COMMAND...: one assertion
  if "${@:2}"; then echo "  ok: $1"; else echo "  FAILED: $1"; fails=$((fails + 1)); fi
}

cat > "$STUB/nvidia-smi" <<'EOF'
#!/usr/bin/env bash
[[ "$*" == *--query-gpu* ]] && { echo "580.00.00"; exit 0; }
echo "Fake GPU 0: NVIDIA H100 80GB HBM3 (stub)"
EOF
cat > "$STUB/nvcc" <<'EOF'
#!/usr/bin/env bash
[[ "$*" == *--version* ]] && { echo "Cuda compilation tools, release 13.0 (stub)"; exit 0; }
out=""; while (( $# )); do [[ $1 == -o ]] && out=$2; shift; done
[[ -n $out ]] && printf '#!/usr/bin/env bash\necho probe ran\n' > "$out" && chmod +x "$out"
EOF
cat > "$STUB/compute-sanitizer" <<'EOF'
#!/usr/bin/env bash
tool=memcheck
while [[ $1 == --* ]]; do [[ $1 == --tool ]] && tool=$2; shift 2; done
echo "========= COMPUTE-SANITIZER"
if [[ $1 == */gpu_check_probe ]]; then
  echo "========= Invalid __global__ write of size 4 bytes"
  echo "=========     at k(int *, int)+0x70 in probe.cu:1"
  echo "========= ERROR SUMMARY: 1 error"; exit 0
fi
"$@"; rc=$?
if [[ $tool == racecheck ]]; then
  echo "========= Error: Race reported between Write access at void fastloss::cuda::ce::ce_block_rows_kernel<float>()+0x10 in cross_entropy_kernels.cuh:300"
  echo "=========     and Read access at void fastloss::cuda::ce::ce_block_rows_kernel<float>()+0x20 in cross_entropy_kernels.cuh:310 [4 hazards]"
  echo "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)"
else
  echo "========= Program hit cudaErrorInvalidValue (error 1) due to \"invalid argument\" on CUDA API call to cudaGetDeviceProperties."
  echo "=========     Saved host backtrace up to driver entry point at error"
  echo "=========         Host Frame: [0x1234] in libtorch_cuda.so"
  echo "========= ERROR SUMMARY: 1 error"
  exit 9  # --error-exitcode: errors were reported (outside fastloss here)
fi
exit $rc
EOF
# python3: DRY_SLEEP_<what> seconds of work for each faked command (to run into caps), DRY_BUILD_RC
cat > "$STUB/python3" <<EOF
#!/usr/bin/env bash
REAL=$REAL_PY
STATE=$TMP/state
EOF
cat >> "$STUB/python3" <<'EOF'
slow() { local s=${1:-0}; local i; for ((i = 0; i < s; i++)); do echo "  working $i"; sleep 1; done; }
case "$1 $2" in
  "-m pip")
    if [[ "$*" == *" -e ."* ]]; then
      for i in 1 2 3; do echo "[$i/32] nvcc -c csrc/cuda/file$i.cu"; done
      slow "${DRY_SLEEP_build:-0}"
      if [[ ${DRY_BUILD_RC:-0} != 0 ]]; then echo "csrc/cuda/ctc.cu(12): error: identifier x is undefined"; exit 1; fi
      mkdir -p "$STATE"; touch "$STATE/built"; mkdir -p build/temp.dry
      printf '# ninja log v5\n0\t61000\t0\tcsrc/cuda/cross_entropy_bf16.o\tx\n0\t2000\t0\tcsrc/ops/ctc.o\tx\n' > build/temp.dry/.ninja_log
      exit 0
    fi
    echo "installed wheels"; exit 0 ;;
  "-m pytest")
    for f in tests/pointwise/test_regression.py tests/test_ctc.py tests/test_cross_entropy.py; do
      echo "[gw0] [ 10%] PASSED $f::test_a[cuda-float32]"
      echo "[gw1] [ 20%] PASSED $f::test_b[cuda]"
      slow "${DRY_SLEEP_tests:-0}"
    done
    echo "[gw2] [ 30%] FAILED tests/test_ctc.py::test_long[cuda-3060]"
    echo "[gw2] [ 40%] SKIPPED tests/test_ctc.py::test_x[cuda]"
    echo "FAILED tests/test_ctc.py::test_long[cuda-3060] - RuntimeError: too many resources"
    echo "============ 1 failed, 6 passed, 1 skipped in 3.00s ============"
    exit 1 ;;
  "-m fastloss.bench") exec "$REAL" "$@" ;;
esac
case "$1" in
  -c)
    case "$2" in
      *cuda_built*) [[ -f $STATE/built ]]; exit ;;
      "import xdist"|"import pytest_timeout") exit 0 ;;
    esac
    exec "$REAL" "$@" ;;
  -)
    code=$(cat)
    if [[ $code == *get_device_properties* ]]; then
      echo "NVIDIA H100 80GB HBM3 (stub), 132 SMs, sm_90 · torch 2.11.0+cu130 (CUDA 13.0) · Python 3.12.3"
      echo "pytest 9; xdist 3; pytest_timeout 2; liger_kernel missing"; exit 0
    fi
    if [[ $code == *default_cases* ]]; then
      { echo "| case | fastloss ms | torch ms | speed-up | fastloss GB/s | of copy BW |"; echo "|---|---:|---:|---:|---:|---:|"; } >> "$2"
      for c in "cross_entropy bf16 8192x128256" "mse_loss fp32 67108864" "ctc_loss fp32 1000x64x64x200"; do
        slow "${DRY_SLEEP_bench:-0}"
        echo "| $c | 1.000 | 2.000 | 2.00x | 2400 | 80% |" >> "$2"
      done
      printf '\nforward+backward, median; device: stub; torch 2.11.0; measured copy bandwidth 3000 GB/s (read+write)\n\n' >> "$2"
      exit 0
    fi
    exec "$REAL" - "${@:2}" <<< "$code" ;;
  tools/gpu_smoke.py)
    echo "ok   regression l1_loss f32 none n4099"
    slow "${DRY_SLEEP_smoke:-0}"
    echo "FAIL ctc long target S3060 (K=8) f32 mean: RuntimeError: CUDA error: too many resources requested for launch"
    echo "ok   ctc padded T40 N4 C33 S12 f32 none"
    echo "SMOKE regression: 1 ok, 0 failed"
    echo "SMOKE ctc: 1 ok, 1 failed"
    echo "SMOKE total: 2 ok, 1 failed, 0.5 s"
    exit 1 ;;
  tools/sanitize_cases.py)
    echo "sanitize: pointwise ..." >&2
    slow "${DRY_SLEEP_sanitize:-0}"
    echo "sanitize: cross_entropy ..." >&2
    echo "sanitize cases done: 42 calls" >&2
    exit 0 ;;
  benchmarks/bench_cross_entropy.py) echo "| cross_entropy bf16 8192x128256 | liger | 2.0 | 1.0 | 1.00x |"; exit 0 ;;
esac
exec "$REAL" "$@"
EOF
chmod +x "$STUB"/*

# Each scenario: a fresh copy of the tree's tools and tests (the stub pip writes build/ there).
scenario() {  # NAME: prepare $W (work tree) and $O (output folder)
  W=$TMP/$1/tree O=$TMP/$1/out
  rm -rf "$TMP/state"
  mkdir -p "$W" "$O"
  cp -r "$ROOT/tools" "$ROOT/tests" "$W/"
  mkdir -p "$W/benchmarks" && touch "$W/benchmarks/bench_cross_entropy.py"
  echo "== scenario $1"
}
run_check() {  # ENV...: run gpu_check.sh in $W with the stubs first on PATH
  (cd "$W" && env PATH="$STUB:$PATH" PY=python3 OUT="$O" COMMIT=dryrun "$@" bash tools/gpu_check.sh) > "$O/../stdout" 2>&1
}
row() { grep -E "^\| $1 \| $2 \| $3 \|" "$O/SUMMARY.md" > /dev/null; }

scenario plan
out=$(bash "$ROOT/tools/gpu_check.sh" --plan)
check "--plan lists 7 steps and a total <= 540" bash -c "[[ \$(grep -c ' s  ' <<< '$out') == 7 ]] && grep -qE 'total +(5[0-3][0-9]|540) s' <<< '$out'"
check "--plan runs nothing (no output folder)" test ! -e "$ROOT/gpu_out/SUMMARY.md.tmp"
check "CAPS over TOTAL refused" bash -c "! CAPS='tests=400' bash '$ROOT/tools/gpu_check.sh' --plan >/dev/null 2>&1"

scenario full
run_check
check "exit 0 and every step has a row" bash -c "for s in env build smoke tests memcheck racecheck bench; do grep -q \"^| \$s | - |\" '$O/SUMMARY.md' || exit 1; done"
check "env passes with the sanitizer probe" row env - pass
check "build passes, slowest compile named" grep -q "cross_entropy_bf16 61 s" "$O/SUMMARY.md"
check "smoke fails, ctc row names the case" bash -c "grep -q '^| smoke | ctc | FAIL | 1 ok, 1 failed; first: long target S3060' '$O/SUMMARY.md'"
check "smoke regression row passes" row smoke regression pass
check "tests: per-file rows" bash -c "grep -q '^| tests | ctc | FAIL | 2 passed, 1 failed, 0 errors, 1 skipped' '$O/SUMMARY.md' && grep -q '^| tests | regression | pass |' '$O/SUMMARY.md'"
check "memcheck: an error outside fastloss does not fail it" row memcheck - pass
check "racecheck: a race in a fastloss kernel fails it" row racecheck - FAIL
check "bench: per-family rows and copy bandwidth" bash -c "grep -q '^| bench | (all) | pass | 3 cases; copy bandwidth 3000 GB/s' '$O/SUMMARY.md'"
check "at most 8 files in OUT" bash -c "(( \$(find '$O' -type f | wc -l) <= 8 ))"
check "no step left pending or running" bash -c "! grep -qE '\| (pending|running) \|' '$O/SUMMARY.md'"

scenario caps
# smoke hangs past its cap (3 s here); the later steps still run inside TOTAL
run_check TOTAL=40 CAPS="env=5 build=5 smoke=3 tests=8 memcheck=5 racecheck=5 bench=5" DRY_SLEEP_smoke=30
check "smoke marked TIMEOUT" row smoke - TIMEOUT
check "smoke.log kept what it printed before the kill" grep -q "working 1" "$O/smoke.log"
check "the stub's sleep was killed (no stray process)" bash -c "! pgrep -f '[g]pu_check_dry.*python3 tools/gpu_smoke.py' >/dev/null"
check "tests still ran after the timeout" bash -c "grep -qE '^\| tests \| - \| (pass|FAIL) \|' '$O/SUMMARY.md'"
check "whole run within TOTAL (40 s)" bash -c "grep -qE '[0-9]+ s of 40 s used' '$O/SUMMARY.md' && (( \$(grep -oE '[0-9]+ s of 40 s' '$O/SUMMARY.md' | cut -d' ' -f1) <= 41 ))"

scenario rollover
# build uses 1 of its 60 s: smoke's cap grows by the 59 s left over
run_check TOTAL=100 CAPS="env=5 build=60 smoke=5 tests=10 memcheck=5 racecheck=5 bench=10"
check "smoke's cap includes build's unused time" bash -c "grep -qE '^\| smoke \| - \| FAIL \| exit 1 in [0-9]+ s \(cap (5[0-9]|6[0-9]|70) s\)' '$O/SUMMARY.md'"

scenario buildfail
run_check DRY_BUILD_RC=1
check "build FAIL with the compiler's error" bash -c "grep -q '^| build | - | FAIL | .*identifier x is undefined' '$O/SUMMARY.md'"
check "smoke skipped: no working build" bash -c "grep -q '^| smoke | - | FAIL | .*no working build' '$O/SUMMARY.md'"

scenario kill
(cd "$W" && exec env PATH="$STUB:$PATH" PY=python3 OUT="$O" COMMIT=dryrun DRY_SLEEP_tests=20 setsid bash tools/gpu_check.sh) \
  > "$O/../stdout" 2>&1 &
pid=$!
for _ in $(seq 60); do grep -q "working 2" "$O/tests.log" 2>/dev/null && break; sleep 0.5; done
pkill -9 -s "$pid"  # the whole session at once (timeout's own process groups too), as the device does
{ wait "$pid"; } 2>/dev/null
sleep 1
check "SUMMARY.md shows tests running and the steps before it done" bash -c "grep -q '^| tests | - | running |' '$O/SUMMARY.md' && grep -q '^| smoke | - | FAIL |' '$O/SUMMARY.md' && grep -q '^| bench | - | pending |' '$O/SUMMARY.md'"
check "tests.log holds the lines printed before the kill" grep -q "working 2" "$O/tests.log"
check "the report still reads the cut log" bash -c "'$REAL_PY' '$ROOT/tools/gpu_check_report.py' tests '$O/tests.log' | grep -q 'cut short'"

if (( fails )); then echo "dry run: $fails checks FAILED (files in $TMP)"; exit 1; fi
echo "dry run: every check passed"
rm -rf "$TMP"
