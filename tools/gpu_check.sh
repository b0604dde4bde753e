#!/usr/bin/env bash
# One device call verifies fastloss's whole CUDA side: environment, build, smoke (every kernel variant
# once), the CUDA tests, compute-sanitizer (memcheck + racecheck) and a benchmark of every family.
#
#   bash tools/gpu_check.sh --plan        the steps, their time caps and the total; runs nothing
#   bash tools/gpu_check.sh               every step, in order
#   bash tools/gpu_check.sh STEP...       some steps only (env, build, smoke, tests, memcheck, racecheck,
#                                         bench); a missing build is built first
#
# Time: every step runs under a hard cap (timeout: TERM, KILL 3 s later, to its whole process group). The caps
# add up to TOTAL (540 s, under the device's 600 s per call); time a step leaves unused goes to the
# steps after it, never past TOTAL. Each step writes its log straight into $OUT as it runs and
# $OUT/SUMMARY.md is rewritten after every step (all steps "pending" first, "running" while one runs),
# so a kill at any moment loses nothing but the line being written. $OUT holds 7 files (the device
# returns at most 8): SUMMARY.md setup.log smoke.log tests.log sanitize.log bench.md bench.err.
#
# Environment: OUT (default ./gpu_out), PY (python3), TOTAL (540), CAPS ("tests=200 bench=20": other
# caps), COMMIT (written into SUMMARY.md: the device's copy of the tree has no .git), TEST_WORKERS (12),
# TEST_TIMEOUT (per test, 90 s). tools/gpu_check_dryrun.sh runs it here against stub tools.
# Wheels in .whl/ (tools/fetch_wheels.sh: benchmark peers) are installed to /tmp/site and put on
# PYTHONPATH after the tree, so they never shadow torch.
# Device call (carry .whl when it exists):  bash tools/gpu_check.sh   with timeout_s 600.
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-$ROOT/gpu_out}
PY=${PY:-python3}
TOTAL=${TOTAL:-540}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
REPORT=(env PYTHONPATH= "$PY" "$ROOT/tools/gpu_check_report.py")  # plain Python; torch only if importable

STEPS=(env build smoke tests memcheck racecheck bench)
declare -A CAP=([env]=20 [build]=170 [smoke]=40 [tests]=145 [memcheck]=55 [racecheck]=25 [bench]=85)
for kv in ${CAPS:-}; do  # CAPS="tests=200 bench=20": other caps (the total must stay within TOTAL)
  [[ $kv == *=* && -n ${CAP[${kv%%=*}]+x} && ${kv#*=} =~ ^[0-9]+$ ]] || { echo "bad CAPS entry '$kv'" >&2; exit 2; }
  CAP[${kv%%=*}]=${kv#*=}
done
declare -A WHAT=(
  [env]="GPU, driver, torch, nvcc, pytest plugins; wheels from .whl/; a 5 s compute-sanitizer probe"
  [build]="pip install -e . (TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16, FASTLOSS_CUDA=1)"
  [smoke]="tools/gpu_smoke.py: one synchronized call per kernel variant vs torch float64"
  [tests]="pytest CUDA cases (tools/pytest_cuda_only.py), never-run families first, no compile tests"
  [memcheck]="compute-sanitizer memcheck over tools/sanitize_cases.py (every kernel variant)"
  [racecheck]="compute-sanitizer racecheck over the shared-memory kernels (sanitize_cases.py --racecheck)"
  [bench]="fastloss vs torch eager, every family, copy bandwidth in the same run; linear CE bf16 8192x4096x128256 vs torch chunked / Liger / CCE / the GEMMs alone; CE peers if time is left"
)
# Test files in order: the families whose CUDA kernels never ran first, cross_entropy last.
TEST_FILES=(tests/pointwise/test_regression.py tests/pointwise/test_margin_ranking_hinge.py
            tests/pointwise/test_kl_div.py tests/pointwise/test_binary.py tests/pointwise/test_poisson_gaussian.py
            tests/pointwise/test_soft_margin.py tests/test_embedding.py tests/test_margin_rows.py tests/test_ctc.py
            tests/test_cross_entropy.py tests/test_linear_cross_entropy.py)

plan_total() { local s=0 st; for st in "${STEPS[@]}"; do s=$((s + CAP[$st])); done; echo "$s"; }

if [[ ${1:-} == --plan ]]; then
  echo "gpu_check plan (caps in seconds; unused time goes to the later steps; total <= TOTAL=$TOTAL):"
  for st in "${STEPS[@]}"; do printf '  %-10s %4d s  %s\n' "$st" "${CAP[$st]}" "${WHAT[$st]}"; done
  printf '  %-10s %4d s\n' total "$(plan_total)"
  (( $(plan_total) <= TOTAL )) || { echo "the caps add up to more than TOTAL=$TOTAL" >&2; exit 1; }
  exit 0
fi
if (( $(plan_total) > TOTAL )); then echo "caps add up to $(plan_total) s > TOTAL=$TOTAL" >&2; exit 2; fi
want=("$@")
for w in "${want[@]}"; do [[ -n ${CAP[$w]+x} ]] || { echo "unknown step '$w' (steps: ${STEPS[*]})" >&2; exit 2; }; done
(( ${#want[@]} )) || want=("${STEPS[@]}")
wanted() { local w; for w in "${want[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }

mkdir -p "$OUT"
START=$SECONDS
DEADLINE=$((SECONDS + TOTAL))
COMMIT=${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
SETUP=$OUT/setup.log
: > "$SETUP"

# ---------------------------------------------------------------------------------------- SUMMARY.md
# One row per (step, family): "step<TAB>family<TAB>status<TAB>detail"; family "-" is the step's own row.
ROWS=()
DEVICE_NAME="(not read yet)"
set_row() {  # STEP FAMILY STATUS DETAIL: replace that row, or add it after the step's last row
  local key="$1"$'\t'"$2" new="$1"$'\t'"$2"$'\t'"$3"$'\t'"$4" i last=-1
  for i in "${!ROWS[@]}"; do
    [[ ${ROWS[$i]} == "$key"$'\t'* ]] && { ROWS[$i]=$new; return; }
    [[ ${ROWS[$i]} == "$1"$'\t'* ]] && last=$i
  done
  if (( last < 0 )); then ROWS+=("$new"); return; fi
  ROWS=("${ROWS[@]:0:last+1}" "$new" "${ROWS[@]:last+1}")
}
render() {
  {
    echo "# fastloss GPU check"
    echo
    echo "commit $COMMIT · $(date -u '+%F %T') UTC · device: $DEVICE_NAME · $((SECONDS - START)) s of $TOTAL s used"
    echo
    echo "| step | family | status | detail |"
    echo "|---|---|---|---|"
    local r step fam st det
    for r in "${ROWS[@]}"; do
      IFS=$'\t' read -r step fam st det <<< "$r"
      echo "| $step | $fam | $st | ${det//|//} |"
    done
  } > "$OUT/SUMMARY.md.tmp" && mv -f "$OUT/SUMMARY.md.tmp" "$OUT/SUMMARY.md"
}
add_rows() {  # STEP < TSV rows "family<TAB>status<TAB>detail" (from gpu_check_report.py)
  local fam st det
  while IFS=$'\t' read -r fam st det; do [[ -n $fam ]] && set_row "$1" "$fam" "$st" "$det"; done
}
for st in "${STEPS[@]}"; do
  if wanted "$st"; then set_row "$st" - pending "cap ${CAP[$st]} s: ${WHAT[$st]}"; fi
done
render
trap 'render' EXIT

# ------------------------------------------------------------------------------------------- running
# cap STEP: the seconds STEP may take: what is left before the deadline, less the planned caps of the
# wanted steps after it (so an early finish passes its time on, and a late step never eats a later one's).
cap() {
  local after=0 seen=0 st
  for st in "${STEPS[@]}"; do
    (( seen )) && wanted "$st" && after=$((after + CAP[$st]))
    [[ $st == "$1" ]] && seen=1
  done
  echo $((DEADLINE - SECONDS - after))
}
LIMIT=0
begin() {  # STEP: fails (and marks the step skipped) when under 10 s (half of a smaller cap) are left for it
  LIMIT=$(cap "$1")
  local least=$(( CAP[$1] < 20 ? CAP[$1] / 2 : 10 ))
  if (( LIMIT < least )); then set_row "$1" - skipped "no time left (${LIMIT} s)"; render; return 1; fi
  STEP_T0=$SECONDS
  set_row "$1" - running "since $(date -u +%T) UTC, cap ${LIMIT} s"
  render
  echo "== $1 $(date -u +%T), cap ${LIMIT} s" | tee -a "$SETUP"
}
run_capped() {  # LOG CMD...: CMD under the step's cap, stdout and stderr appended to LOG; returns its status
  local log=$1; shift  # TERM 3 s before the cap, KILL at it (timeout signals CMD's whole process group)
  timeout -k 3 $((LIMIT > 4 ? LIMIT - 3 : 1)) "$@" >> "$log" 2>&1
}
# STEP RC [DETAIL]: the step's row from its exit status (124/137: the cap killed it)
finish() {
  local st=pass detail=${3:-}
  (( $2 == 0 )) || st=FAIL
  (( $2 == 124 || $2 == 137 )) && st=TIMEOUT
  set_row "$1" - "$st" "exit $2 in $((SECONDS - STEP_T0)) s (cap $LIMIT s)${detail:+; $detail}"
  render
}
trim() {  # FILE: keep a log under the device's 16 MiB per file (head and tail)
  local f=$1 max=$((15 * 1024 * 1024))
  [[ -f $f ]] && (( $(stat -c %s "$f") > max )) || return 0
  { head -c $((max / 2)) "$f"; printf '\n[... trimmed ...]\n'; tail -c $((max / 2)) "$f"; } > "$f.tmp" && mv -f "$f.tmp" "$f"
}
built() { "$PY" -c "import fastloss, sys; sys.exit(not fastloss.cuda_built())" >/dev/null 2>&1; }
HAVE_BUILD=0
SAN_OK=unknown
upto() {  # N: N seconds, or what is left of the step's cap if less (at least 1)
  local left=$((LIMIT - (SECONDS - STEP_T0)))
  (( left < 1 )) && left=1
  echo $(( $1 < left ? $1 : left ))
}

step_env() {
  begin env || return
  local t0=$SECONDS
  if ls .whl/*.whl >/dev/null 2>&1; then  # benchmark peers: --no-deps, after the tree on PYTHONPATH
    run_capped "$SETUP" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
    echo "wheels: $(ls .whl | tr '\n' ' ')" >> "$SETUP"
  fi
  {
    echo "--- machine"; uname -a; nproc; free -g | head -2
    echo "--- nvidia-smi"; timeout "$(upto 10)" nvidia-smi
    echo "--- nvcc"; timeout "$(upto 10)" nvcc --version | tail -2
  } >> "$SETUP" 2>&1
  local info
  info=$(timeout "$(upto 20)" "$PY" - 2>>"$SETUP" <<'EOF'
import importlib, sys, torch
p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
dev = f"{p.name}, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}" if p else "no CUDA device"
print(f"{dev} · torch {torch.__version__} (CUDA {torch.version.cuda}) · Python {sys.version.split()[0]}", flush=True)
mods = []
for m in ("pytest", "xdist", "pytest_timeout", "hypothesis", "liger_kernel", "cut_cross_entropy", "triton"):
    try:
        mods.append(f"{m} {getattr(importlib.import_module(m), '__version__', 'present')}")
    except Exception:
        mods.append(f"{m} missing")
print("; ".join(mods))
EOF
  )
  echo "$info" >> "$SETUP"
  DEVICE_NAME=$(head -1 <<< "$info")
  [[ -n $DEVICE_NAME ]] || DEVICE_NAME="(torch failed to start: see setup.log)"
  local drv
  drv=$(timeout "$(upto 10)" nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
  # compute-sanitizer probe: a kernel that writes one element past its allocation must be reported
  local probe=/tmp/gpu_check_probe
  cat > $probe.cu <<'EOF'
__global__ void k(int* p, int n) { p[threadIdx.x] = n; }
int main() { int* p; cudaMalloc(&p, 31 * sizeof(int)); k<<<1, 32>>>(p, 7); cudaDeviceSynchronize(); return 0; }
EOF
  SAN_OK=no
  local san_detail="nvcc failed on the probe"
  if timeout "$(upto 20)" nvcc -arch=native -o $probe $probe.cu >> "$SETUP" 2>&1 ||
     timeout "$(upto 20)" nvcc -o $probe $probe.cu >> "$SETUP" 2>&1; then
    timeout -k 2 "$(upto 5)" compute-sanitizer --tool memcheck $probe > $probe.log 2>&1
    local rc=$?
    cat $probe.log >> "$SETUP"
    if grep -q "Invalid __global__ write" $probe.log; then SAN_OK=yes; san_detail="works (found the planted write)"
    elif (( rc == 124 || rc == 137 )); then san_detail="probe timed out (5 s)"
    else san_detail="did not report the planted write (exit $rc): $(grep -m1 -i -E 'error|not supported' $probe.log | cut -c1-100)"
    fi
  fi
  set_row env - pass "$(head -1 <<< "$info"); driver ${drv:-?}; compute-sanitizer: $san_detail; $((SECONDS - t0)) s"
  set_row env modules info "$(sed -n 2p <<< "$info")"
  render
}

step_build() {
  begin build || return
  local t0=$SECONDS
  echo "--- build" >> "$SETUP"
  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 FASTLOSS_CUDA=1 \
    run_capped "$SETUP" "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e .
  local rc=$?
  if (( rc == 0 )) && ! built; then
    rc=1
    echo "fastloss imports without its CUDA kernels" >> "$SETUP"
  fi
  (( rc == 0 )) && HAVE_BUILD=1
  local slow
  slow=$("${REPORT[@]}" ninja "$ROOT/build" '/tmp/*.build-temp' | cut -f3)  # pip -e builds in /tmp
  local err=""
  (( rc == 0 )) || err="; first error: $(sed -n '/^--- build/,$p' "$SETUP" | grep -m1 -E 'error[: ]' | cut -c1-200)"
  finish build $rc "$((SECONDS - t0)) s; ${slow}${err}"
  trim "$SETUP"
}

ensure_build() {  # the steps after build need the extension: this run's build, or one already there
  (( HAVE_BUILD )) && return 0
  built && HAVE_BUILD=1
  (( HAVE_BUILD ))
}

step_smoke() {
  begin smoke || return
  ensure_build || { finish smoke 1 "no working build"; return; }
  run_capped "$OUT/smoke.log" "$PY" tools/gpu_smoke.py --device cuda
  local rc=$?
  add_rows smoke < <("${REPORT[@]}" smoke "$OUT/smoke.log")
  finish smoke $rc "$(grep -m1 '^SMOKE total' "$OUT/smoke.log")"
  trim "$OUT/smoke.log"
}

step_tests() {
  begin tests || return
  ensure_build || { finish tests 1 "no working build"; return; }
  local files=() f
  for f in "${TEST_FILES[@]}"; do [[ -f $f ]] && files+=("$f"); done
  for f in tests/test_*.py tests/*/test_*.py; do [[ " ${TEST_FILES[*]} " == *" $f "* ]] || files+=("$f"); done
  local extra=()
  "$PY" -c "import xdist" 2>/dev/null && extra+=(-n "${TEST_WORKERS:-12}" --dist load)
  "$PY" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout "${TEST_TIMEOUT:-90}")
  # OMP_NUM_THREADS=1: a dozen workers each computing CPU references would oversubscribe 16 cores
  OMP_NUM_THREADS=1 PYTHONPATH=$ROOT/tools:$PYTHONPATH run_capped "$OUT/tests.log" \
    "$PY" -m pytest "${files[@]}" -p pytest_cuda_only -m "not compile" -v -p no:cacheprovider -rfE \
    --durations=15 "${extra[@]}"
  local rc=$?
  add_rows tests < <("${REPORT[@]}" tests "$OUT/tests.log")
  finish tests $rc "$(grep -E '^=+ .*(passed|failed|error).* =+$' "$OUT/tests.log" | tail -1 | tr -d '=')"
  trim "$OUT/tests.log"
}

step_sanitize() {  # memcheck | racecheck
  local tool=$1
  begin "$tool" || return
  ensure_build || { finish "$tool" 1 "no working build"; return; }
  if [[ $SAN_OK == no ]]; then finish "$tool" 1 "compute-sanitizer failed its probe (setup.log)"; return; fi
  local args=()
  [[ $tool == racecheck ]] && args=(--racecheck)
  echo "==================== $tool $(date -u +%T)" >> "$OUT/sanitize.log"
  # no caching allocator: every tensor is its own allocation, so an overrun is caught at its end
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_capped "$OUT/sanitize.log" compute-sanitizer --tool "$tool" \
    --print-limit 50 --error-exitcode 9 "$PY" tools/sanitize_cases.py --device cuda "${args[@]}"
  local rc=$?
  local part
  part=$(awk -v t="==================== $tool" 'index($0, t) == 1 {buf = ""} {buf = buf $0 "\n"} END {printf "%s", buf}' \
    "$OUT/sanitize.log" > /tmp/gpu_check_$tool.log; "${REPORT[@]}" sanitize /tmp/gpu_check_$tool.log)
  local pst pdet
  IFS=$'\t' read -r _ pst pdet <<< "$part"
  finish "$tool" $rc "$pdet"
  # the status is the parsed one: exit 9 (--error-exitcode) also comes from reports outside fastloss
  # (API errors torch itself provokes), and a FAIL in fastloss's kernels stands whatever the exit code
  if [[ $pst == FAIL ]] || (( rc == 9 )); then
    set_row "$tool" - "$pst" "exit $rc in $((SECONDS - STEP_T0)) s (cap $LIMIT s); $pdet"
    render
  fi
  trim "$OUT/sanitize.log"
}

step_bench() {
  begin bench || return
  ensure_build || { finish bench 1 "no working build"; return; }
  local t0=$SECONDS
  # every family's default cases plus the few-class cross-entropy shapes, in one process; each row is
  # appended to bench.md as soon as it is measured (a kill keeps the rows done)
  { echo "## python -m fastloss.bench cases (+ cross_entropy 65536x1000 fp32, 262144x128 bf16), commit $COMMIT"
    echo; } >> "$OUT/bench.md"
  run_capped "$OUT/bench.err" "$PY" - "$OUT/bench.md" <<'EOF'
import sys, torch
from fastloss import bench as B
dev = torch.device("cuda")
cases = B.default_cases(dev) + [B.make_case("cross_entropy", (65536, 1000), torch.float32, dev),
                                B.make_case("cross_entropy", (262144, 128), torch.bfloat16, dev)]
bw = B.copy_bandwidth(dev)
with open(sys.argv[1], "a") as f:
    head = B.format_table([], bw, dev).splitlines()
    f.write("\n".join(head[:2]) + "\n")
    f.flush()
    for case in cases:
        print(case.name(), file=sys.stderr, flush=True)
        try:
            rows, _ = B.run_cases([case], 20, progress=False)
        except Exception as e:  # noqa: BLE001 - one case failing must not lose the others
            f.write(f"| {case.name()} | failed: {type(e).__name__}: {str(e)[:120]} | | |\n")
            f.flush()
            continue
        f.write(B.format_table(rows, bw, dev).splitlines()[2] + "\n")
        f.flush()
    f.write("\n" + head[-1] + "\n\n")
EOF
  local rc=$?
  add_rows bench < <("${REPORT[@]}" bench "$OUT/bench.md")
  finish bench $rc "fastloss.bench cases $((SECONDS - t0)) s"
  # linear cross-entropy (issue 17's GPU case, one subprocess per implementation: peak memory of each alone),
  # up to 50 s, if at least 25 s of the cap are left; its table goes into bench.md
  local left=$((LIMIT - (SECONDS - STEP_T0))) full=$LIMIT
  if (( left >= 25 )); then
    LIMIT=$(( left < 50 ? left : 50 ))
    { echo; echo "## benchmarks/bench_linear_cross_entropy.py --device cuda, commit $COMMIT"; } >> "$OUT/bench.md"
    run_capped "$OUT/bench.md" "$PY" benchmarks/bench_linear_cross_entropy.py --device cuda --reps 3
    local lrc=$?
    set_row bench linear_ce "$( ((lrc == 0)) && echo pass || echo FAIL)" \
      "exit $lrc: bf16 N=8192 H=4096 V=128256, cap ${LIMIT} s; $(grep -m1 'three GEMMs alone' "$OUT/bench.md")"
    LIMIT=$full
  else
    set_row bench linear_ce skipped "only ${left} s left in the cap"
  fi
  render
  # peers side by side (Liger when carried in .whl/), if at least 40 s of the cap are left
  left=$((LIMIT - (SECONDS - STEP_T0)))
  if (( left >= 40 )); then
    LIMIT=$left
    run_capped "$OUT/bench.md" "$PY" benchmarks/bench_cross_entropy.py --no-compile --quick
    local prc=$?
    set_row bench peers "$( ((prc == 0)) && echo pass || echo FAIL)" \
      "exit $prc: benchmarks/bench_cross_entropy.py --no-compile --quick, cap ${left} s (table in bench.md)"
  else
    set_row bench peers skipped "only ${left} s left in the cap"
  fi
  render
}

# a step that needs the extension on a machine without one (a fresh one) builds it first
if ! wanted build && ! built; then
  for st in smoke tests memcheck racecheck bench; do
    wanted "$st" && { want+=(build); set_row build - pending "cap ${CAP[build]} s: ${WHAT[build]}"; break; }
  done
fi
for st in "${STEPS[@]}"; do
  wanted "$st" || continue
  case $st in
    env) step_env ;;
    build) step_build ;;
    smoke) step_smoke ;;
    tests) step_tests ;;
    memcheck|racecheck) step_sanitize "$st" ;;
    bench) step_bench ;;
  esac
done
echo "== done in $((SECONDS - START)) s" | tee -a "$SETUP"
render
cat "$OUT/SUMMARY.md"  # also on stdout: the device's reply shows the tail of it
