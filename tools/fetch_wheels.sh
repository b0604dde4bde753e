#!/usr/bin/env bash
# Download into .whl/ (ignored by git) the peer libraries the GPU benchmarks compare against, as wheels
# for the GPU machine (Python 3.12, manylinux x86_64), without their dependencies: the device call
# carries .whl/ (carry: [".whl"]) and tools/gpu_check.sh installs them with --no-deps to /tmp/site.
#
#   bash tools/fetch_wheels.sh          (pip from PYTHON, default python3; PyPI must be reachable)
#
# Only packages whose own requirements the GPU machine already has (it has torch 2.11, triton 3.6,
# transformers 5.x, ...; nothing can be installed there from a registry):
#   liger-kernel 0.8.5      Requires-Dist: torch>=2.1.2, triton>=2.3.1 (both there); everything else is
#                           an extra (cutile, cutedsl, dev tools): benchmarks/bench_cross_entropy.py's
#                           "liger" column. Python >= 3.10. ~0.9 MB.
#   cut-cross-entropy 25.1.1  Requires-Dist: torch, triton (both there); extras only otherwise
#                           (transformers, test tools): the linear_cross_entropy peer (Apple's CCE;
#                           written for triton 3.1/3.2: whether it runs on triton 3.6 is for the device
#                           to tell). Python >= 3.10. ~25 KB.
# Versions are pinned so two fetches give the same wheels (one version each: two would stop the install).
# The tree sent to the device must stay under 64 MiB with .whl/ in it: the script prints the total.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
DEST=$ROOT/.whl
PACKAGES=(liger-kernel==0.8.5 cut-cross-entropy==25.1.1)
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for pkg in "${PACKAGES[@]}"; do
  name=${pkg%%==*}
  # keep one version of each: drop an older wheel of the same package first
  find "$DEST" -maxdepth 1 -iname "$(tr - _ <<< "$name")-*.whl" ! -iname "$(tr - _ <<< "$name")-${pkg#*==}-*" -delete
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST" "$pkg"
done
for w in "$DEST"/*.whl; do
  echo "$(du -k "$w" | cut -f1) KiB  $(basename "$w")"
  unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^/    /' || true
done
echo "total .whl/: $(du -sk "$DEST" | cut -f1) KiB (the tree the device gets must stay under 64 MiB)"
