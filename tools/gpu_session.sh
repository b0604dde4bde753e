#!/usr/bin/env bash
# One lease on a GPU machine (device tool): build, CUDA tests, compute-sanitizer, benchmarks.
# Logs go to $OUT (or ./gpu_out). Usage: bash tools/gpu_session.sh [build|test|sanitize|bench|all]...
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then  # peers to benchmark against, carried as wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
step() { echo "== $1 $(date +%T)"; }
for what in "${@:-all}"; do
  if [[ $what == build || $what == all ]]; then
    step build
    { nvidia-smi; $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; nvcc --version | tail -1; } > "$OUT/env.txt" 2>&1
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY -m pip install --no-build-isolation --no-deps --no-index -e . \
      > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
    $PY -c "import fastloss; assert fastloss.cuda_built(); print('fastloss CUDA build ok')"
  fi
  if [[ $what == test || $what == all ]]; then
    step test
    timeout ${TEST_TIMEOUT:-300} $PY -m pytest tests -q -k "not cpu" --maxfail=30 -p no:cacheprovider > "$OUT/tests.log" 2>&1
    echo "pytest exit $?"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
    grep -E "^FAILED|^ERROR" "$OUT/tests.log" | head -20
  fi
  if [[ $what == sanitize || $what == all ]]; then
    for tool in memcheck racecheck; do
      step "sanitize $tool"
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout ${SAN_TIMEOUT:-150} compute-sanitizer --tool $tool --error-exitcode 9 \
        $PY tools/sanitize_cases.py > "$OUT/sanitize_$tool.log" 2>&1
      echo "$tool exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Error|done" "$OUT/sanitize_$tool.log" | tail -3
    done
  fi
  if [[ $what == bench || $what == all ]]; then
    step bench
    $PY -m fastloss.bench > "$OUT/bench_default.md" 2>/dev/null; cat "$OUT/bench_default.md"
    $PY benchmarks/bench_cross_entropy.py --out "$OUT/bench_cross_entropy.md" 2>"$OUT/bench_ce.err" | tail -40
    # (48 regression cases, each compiled: split by dtype to stay under the 10-minute call limit)
    $PY benchmarks/bench_regression.py --dtype fp32,bf16 --out "$OUT/bench_regression.md" 2>"$OUT/bench_reg.err" | tail -40
    $PY benchmarks/bench_embedding.py --out "$OUT/bench_embedding.md" 2>"$OUT/bench_emb.err" | tail -40
    # (stderr also says whether torch took cuDNN on the 'cudnn' cases)
    $PY benchmarks/bench_probabilistic.py --out "$OUT/bench_probabilistic.md" 2>"$OUT/bench_prob.err" | tail -40
    $PY benchmarks/bench_ctc.py --out "$OUT/bench_ctc.md" 2>"$OUT/bench_ctc.err" | tail -40; grep -a WARNING "$OUT/bench_ctc.err"
    $PY benchmarks/bench_margin_rows.py --out "$OUT/bench_margin_rows.md" 2>"$OUT/bench_mr.err" | tail -40
  fi
done
step end
