#!/usr/bin/env bash
# Formatting and lint of the whole tree, with the versions pinned in requirements-dev.txt.
#   tools/format.sh           apply: clang-format -i over csrc/, then `ruff check --fix` (safe fixes only)
#                             and the findings ruff cannot fix itself
#   tools/format.sh --check   change nothing; exit 1 when a csrc/ file is not clang-formatted or ruff
#                             finds something (CI runs this before the build)
# The style lives in .clang-format and pyproject.toml ([tool.ruff]). The tools are taken from
# $CLANG_FORMAT / $RUFF, else .venv/bin/, else PATH; a clang-format of another version than the pinned
# one formats differently, so it is refused.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: tools/format.sh [--check]" >&2; exit 2 ;;
esac

tool() {  # tool VAR name: the executable to use
  local var=$1 name=$2
  if [ -n "${!var:-}" ]; then echo "${!var}"
  elif [ -x ".venv/bin/$name" ]; then echo ".venv/bin/$name"
  elif command -v "$name" >/dev/null; then command -v "$name"
  else echo "tools/format.sh: $name not found: pip install -r requirements-dev.txt (or set $var)" >&2; exit 2
  fi
}
pinned() {  # pinned name: the version requirements-dev.txt pins
  sed -n "s/^$1==\([^ #]*\).*/\1/p" requirements-dev.txt
}
clang_format=$(tool CLANG_FORMAT clang-format)
ruff=$(tool RUFF ruff)
want=$(pinned clang-format)
if ! "$clang_format" --version | grep -q "version $want\b"; then
  echo "tools/format.sh: $clang_format is not clang-format $want (requirements-dev.txt): $("$clang_format" --version)" >&2
  exit 2
fi

# Tracked and new (not ignored) C++/CUDA files under csrc/.
mapfile -t cxx < <(git ls-files --cached --others --exclude-standard -- 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' \
                     'csrc/*.cuh' 'csrc/*.inc' | sort -u)

status=0
if [ "$check" = 1 ]; then
  # --dry-run -Werror: one warning per misformatted place, exit status non-zero
  "$clang_format" --dry-run -Werror "${cxx[@]}" || { echo "== clang-format: run tools/format.sh" >&2; status=1; }
  "$ruff" check . || status=1
else
  "$clang_format" -i "${cxx[@]}"
  "$ruff" check --fix . || status=1  # what is left needs a hand
fi
exit $status
