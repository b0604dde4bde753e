#!/usr/bin/env bash
# Build fastloss (CPU + CUDA) against torch 2.11 and run the CPU test suite with it.
#
# Why: the GPU machine has Python 3.12 + torch 2.11.0+cu130, CI has Python 3.11 + torch 2.14.1. A
# compile error against torch 2.11's headers would kill the one GPU call (tools/gpu_check.sh), so run
# this whenever csrc/, setup.py or the build changed, before that call.
#
# Usage: bash tools/check_torch211.sh [--with-compile] [-- PYTEST_ARGS...]
#   --with-compile  also run the tests marked `compile` (torch.compile; slow: left out by default)
#   -- ARGS         passed to pytest, e.g. `-- tests/test_embedding.py -x` (default: tests)
# Environment (all optional):
#   VENV=/tmp/venv211        venv with torch $TORCH_VERSION, created when missing or on another torch
#   TORCH_VERSION=2.11.0     torch to build against (pip's constraints here cap torch at 2.14.1: 2.11 fits)
#   WORK=/tmp/fastloss211    copy of this tree (tracked + untracked-not-ignored files); its build/ is kept
#                            between runs so a rerun recompiles only what changed. The repo's own build
#                            folders and fastloss/_C*.so are never touched.
#   MAX_JOBS=1  NICE=10      compile parallelism and niceness (the development machine is shared)
#   PYTHON=python3           interpreter that creates the venv
# Exit code: 0 when the build and the tests pass; the log of each stage is in $WORK/check_*.log.
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-/tmp/venv211}
TORCH_VERSION=${TORCH_VERSION:-2.11.0}
WORK=${WORK:-/tmp/fastloss211}
NICE=${NICE:-10}
export MAX_JOBS=${MAX_JOBS:-1}
PYTHON=${PYTHON:-python3}
MARK="not compile"
PYTEST_ARGS=(tests)
while (( $# )); do
  case $1 in
    --with-compile) MARK="" ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "== $(date +%T) $*"; }

# 1. The venv: torch $TORCH_VERSION plus what the tests and the build need (requirements-dev.txt, less torch).
have=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null)
if [[ $have != "$TORCH_VERSION" ]]; then
  say "creating $VENV with torch $TORCH_VERSION (found: ${have:-none}); torch's CUDA wheels are several GB"
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV" || exit 1
  extras=$(grep -v -E '^\s*(#|$)|^torch\b' "$ROOT/requirements-dev.txt")
  # shellcheck disable=SC2086  # one package a word
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" $extras setuptools wheel || exit 1
fi
"$VENV/bin/python" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])" || exit 1

# 2. A copy of the tree: what git would send (tracked and untracked-not-ignored files), stale files
#    deleted, the copy's ignored build outputs kept for an incremental rebuild.
say "copying $ROOT to $WORK"
mkdir -p "$WORK"
# (-c lists a tracked file deleted in the work tree too: keep the ones that exist)
(cd "$ROOT" && git ls-files -co --exclude-standard | while IFS= read -r f; do [[ -e $f ]] && echo "$f"; done) \
  | sort > "$WORK/.files.new" || exit 1
if [[ -f $WORK/.files ]]; then  # files of the last copy that are gone now (a deleted .cu would still build)
  comm -23 "$WORK/.files" "$WORK/.files.new" | while IFS= read -r f; do rm -f "$WORK/$f"; done
fi
# Only files whose content differs are copied, and they get a fresh modification time: ninja then
# recompiles exactly what changed. (Keeping the source's times, as tar does, misses a file edited
# before the copy's last build finished: ninja saw an object newer than it and linked stale code.)
while IFS= read -r f; do
  cmp -s "$ROOT/$f" "$WORK/$f" && continue
  mkdir -p "$WORK/$(dirname "$f")" && cp "$ROOT/$f" "$WORK/$f" || exit 1
done < "$WORK/.files.new"
mv -f "$WORK/.files.new" "$WORK/.files"
cd "$WORK" || exit 1

# 3. Build in place, CPU + CUDA for one architecture; FASTLOSS_CUDA=1 makes a missing nvcc an error.
say "building (TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=$MAX_JOBS), log: $WORK/check_build.log"
start=$SECONDS
TORCH_CUDA_ARCH_LIST=9.0 FASTLOSS_CUDA=1 nice -n "$NICE" "$VENV/bin/python" setup.py build_ext --inplace \
  > check_build.log 2>&1
rc=$?
if (( rc != 0 )); then
  grep -n -E "error|Error" check_build.log | head -30
  say "BUILD FAILED against torch $TORCH_VERSION (exit $rc, $((SECONDS - start)) s)"; exit 1
fi
say "build ok in $((SECONDS - start)) s"
"$VENV/bin/python" -c "
import fastloss, sys
assert fastloss.__file__.startswith('$WORK'), fastloss.__file__
assert fastloss.cuda_built(), 'CUDA kernels missing from the build'
print('fastloss', fastloss.__file__, 'CUDA kernels built')" || exit 1

# 4. The CPU suite (no GPU here, so the CUDA cases skip). cwd first on sys.path: the copy is tested.
say "tests (-m '${MARK:-all}'), log: $WORK/check_tests.log"
start=$SECONDS
nice -n "$NICE" "$VENV/bin/python" -m pytest "${PYTEST_ARGS[@]}" -q -p no:cacheprovider ${MARK:+-m "$MARK"} \
  > check_tests.log 2>&1
rc=$?
tail -3 check_tests.log
grep -E "^(FAILED|ERROR)" check_tests.log | head -20
say "tests exit $rc in $((SECONDS - start)) s (torch $TORCH_VERSION)"
exit $rc
