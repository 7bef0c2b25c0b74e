#!/usr/bin/env bash
# The one device check (tools/device_check.py): run it first on any GPU machine that is lent.
#
#   tools/device_check.sh [OUT_DIR]     # OUT_DIR defaults to $OUT, else runs/device_check
#
# On the GPU machine (no network there), carry .whl/ made here by tools/device_wheels.sh: this
# script installs the carried wheels into /tmp/site and builds pycuda from its source (about
# 80 s) before the check. The repository root goes on PYTHONPATH, so edgefs runs from the
# checkout without being installed. On a machine without a GPU every GPU step is reported as
# skipped with its reason. Commit the report it writes (device_check.md/.json) under reports/gpu/.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-${OUT:-runs/device_check}}
mkdir -p "$out"
py=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  if ! PYTHONPATH=/tmp/site "$py" -c "import pycuda.driver" 2>/dev/null; then
    echo "device_check: installing carried wheels into /tmp/site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      || echo "device_check: installing the carried wheels failed; steps that need them will say so"
    if ls .whl/pycuda-*.tar.gz >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1; then
      echo "device_check: building pycuda from .whl/ (about 80 s)"
      src=$(mktemp -d)
      tar xzf .whl/pycuda-*.tar.gz -C "$src"
      cuda_root=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
      (cd "$src"/pycuda-* && PYTHONPATH=/tmp/site "$py" configure.py --cuda-root="$cuda_root" >/dev/null &&
        PYTHONPATH=/tmp/site "$py" -m pip install -q --no-index --no-build-isolation --no-deps --target /tmp/site .) \
        > "$out/pycuda_build.log" 2>&1 || echo "device_check: pycuda did not build (see $out/pycuda_build.log)"
    fi
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# edgefs from this checkout (an installed edgefs would shadow it otherwise).
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" tools/device_check.py --out "$out" "${@:2}"
