#!/usr/bin/env bash
# CI lane: edgefs's device side on aarch64 (every Jetson and Raspberry-Pi-class board), emulated.
#
# An aarch64 Python 3.11 made of Debian's arm64 packages (apt-get download + dpkg -x: no chroot, no
# binfmt) runs under qemu-user, with PyPI's aarch64 wheels of the device runtime (numpy, OpenCV,
# PyYAML, ONNX Runtime, Pillow; no PyTorch) and pytest. Export needs PyTorch, so an x86 step with
# the normal .venv first exports the bundles and writes x86 reference embeddings; the emulated
# pytest then runs the torch-free device tests on those bundles and compares its embeddings with
# x86's (tests/test_aarch64_parity.py).
#
#   .ci/lane-aarch64.sh [PYTEST ARGS...]     # extra arguments go to the emulated pytest
#
# Everything is cached under ~/.cache/edgefs/aarch64 (EDGEFS_AARCH64_CACHE), keyed by what made
# it, so a second run does no downloads and no export. EDGEFS_AARCH64_CPU picks the emulated CPU
# (default cortex-a76: the ISA of a Raspberry Pi 5, and of a Jetson Orin's Cortex-A78AE: ARMv8.2
# with dot product, no SVE); the INT8 parity test runs once more on cortex-a57 (Jetson Nano and
# TX2, and the A72 of a Raspberry Pi 4: ARMv8.0, no dot product, so other INT8 kernels).
#
# ONNX Runtime 1.28 and later segfault at import under qemu-user 7.2 (1.27.0 is the newest that
# imports as it is): their cpuinfo library (pytorch/cpuinfo #372, "Report correct L2 cache size on
# ARM") counts L2 caches from its own table, which gives none when /proc/cpuinfo has no "CPU
# architecture" line, then fills them from sysfs wherever sysfs lists an L2, writing through the
# NULL array it never allocated. qemu 7.2 shows the guest the host's x86 /proc/cpuinfo; an arm64
# kernel always writes that line. So the guest gets the /proc/cpuinfo an arm64 kernel would write
# for the emulated CPU (its MIDR read from qemu itself), through qemu's -L prefix, which serves a
# guest path from the prefix where the file exists there. No pin, no namespace, no root.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${EDGEFS_AARCH64_CACHE:-$HOME/.cache/edgefs/aarch64}
CPU=${EDGEFS_AARCH64_CPU:-cortex-a76}
SECOND_CPU=${EDGEFS_AARCH64_SECOND_CPU:-cortex-a57}  # empty: no second INT8 run
PY=${VENV:-.venv}/bin/python
QEMU=qemu-aarch64-static

# The Debian arm64 packages of python3.11 and what its standard library links to.
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11 libc6 zlib1g libexpat1
      libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1
      libgcc-s1 libstdc++6 libcrypt1 libnsl2 libtirpc3 libdb5.3 libgdbm6 libgomp1)
# The device runtime (pyproject's dependencies + the device and serve extras), Pillow (the glyph
# renderer of the test fixtures) and the test tools; pinned below to the versions in the x86 .venv.
WHEELS=(numpy opencv-python-headless PyYAML onnxruntime pillow starlette uvicorn jinja2 pytest hypothesis)

# The device tests: every module that runs without PyTorch and is about the device (heads, store,
# quality gate, camera loop, serve API, file readers). The rest of tests/ imports torch at module
# level or exports with it (training, export, methods, backbones), or is workstation-only (data
# sets, fonts, kernels' CUDA emulation).
TESTS=(tests/test_aarch64_parity.py
       tests/test_heads.py tests/test_heads_center.py tests/test_heads_device.py tests/test_heads_rows.py
       tests/test_heads_continual.py tests/test_calibration.py tests/test_calibration_incremental.py
       tests/test_store.py tests/test_store_migration.py tests/test_store_concurrency.py tests/test_enroll.py
       tests/test_quality.py tests/test_preprocess.py tests/test_roi.py tests/test_views.py
       tests/test_camera_sources.py tests/test_camera_capture.py tests/test_run.py tests/test_run_failures.py
       tests/test_serve_api.py tests/test_bad_bundles.py tests/test_hostile_files.py tests/test_engine_file.py
       tests/test_fileio_dirs.py)
# Left out, and why. Under emulation everything runs 10-50x slower (Lite0 FP32: ~8 s an image), so
# tests that take more than ~10 s here are left out where a faster test covers the same code, and
# tests that assert real-time behaviour cannot pass. Seconds: measured here, emulated, 2-core VM.
DESELECT=(
    # Their module's own fixture exports a 224 px bundle with PyTorch (conftest's are prebuilt).
    tests/test_quality.py::test_classifier_with_a_224_px_bundle_enrolls_sharp_64_px_photos
    tests/test_quality.py::test_live_enrollment_in_the_camera_loop_uses_the_same_rule
    tests/test_roi.py::test_pipeline_embeds_the_region_and_records_it_drawn
    tests/test_roi.py::test_a_region_saved_with_the_store_is_the_default
    # Real-time assertions (frames per second, wake-up latency, request timeouts).
    tests/test_run.py::test_batch_wait_puts_the_frames_of_several_live_cameras_in_one_engine_call
    tests/test_run.py::test_the_loop_wakes_on_frames_and_stops_promptly
    tests/test_serve_api.py::test_live_enrollment_by_api_with_per_shot_verdicts
    tests/test_serve_api.py::test_stream_frame_status_history_and_metrics
    # Slow here (seconds): the camera loop is covered by the golden clip (same JSONL as on x86),
    # live enrollment and the failure tests.
    tests/test_run.py::test_each_source_notices_its_own_scene_cuts                      # 72
    tests/test_run.py::test_summary_scores_the_smoothed_and_the_raw_label_of_every_labelled_frame  # 41
    tests/test_run.py::test_run_over_video_file_ends_cleanly_with_summary               # 36
    tests/test_run.py::test_source_that_fails_mid_stream_comes_back                     # 23
    tests/test_run.py::test_run_cli_takes_the_loop_and_engine_knobs                     # 22
    tests/test_run.py::test_frames_are_prepared_on_the_capture_threads_and_timed        # 15
    tests/test_views.py::test_a_store_with_shot_views_sums_means_and_calibrates_on_single_views  # 46
    tests/test_views.py::test_live_enrollment_embeds_the_views_on_the_loop_thread       # 36
    tests/test_views.py::test_packs_and_reembedding_keep_single_views                   # 30
    tests/test_views.py::test_enroll_cli_saves_the_shot_views_choice                    # 13
    tests/test_views.py::test_changing_shot_views_names_the_classes_that_keep_theirs    # 10
    "tests/test_heads_continual.py::test_enroll_and_run_with_continual_heads[den]"      # 17 (DEN: heads tests)
    tests/test_hostile_files.py::test_real_20000px_png_is_refused_without_decoding      # 29
    # They start children through sys.executable, which works (the qemu wrapper) but costs 10-80 s
    # each. "Imports no torch" is moot here: this Python has no torch at all. test_store's such test
    # is kept, as the one check that a child process works.
    tests/test_run.py::test_ctrl_c_exits_cleanly_with_summary                           # 27
    tests/test_serve_api.py::test_serve_command_starts_answers_and_stops_on_ctrl_c      # 77
    tests/test_serve_api.py::test_web_app_imports_no_torch                              # 52
    tests/test_store_concurrency.py::test_concurrent_appends_keep_the_head_equal_to_the_samples  # 98
    tests/test_engine_file.py::test_device_side_modules_import_without_torch_or_tensorrt  # 10
)
say() { echo "lane-aarch64: $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
hash_of() { sha256sum | cut -c1-16; }
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
COLD=()

t_setup=$(now)
# ---- qemu-user ----------------------------------------------------------------------------------
if ! command -v "$QEMU" >/dev/null 2>&1; then
    say "installing qemu-user-static"
    sudo_ apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq qemu-user-static >/dev/null
    COLD+=(qemu)
fi
[ -x "$PY" ] || { say "no $PY: run 'make install' first (the x86 step exports with PyTorch)"; exit 2; }
mkdir -p "$CACHE"

# ---- the aarch64 root: Debian's arm64 python3.11, unpacked ------------------------------------
ROOT=$CACHE/root
root_key=$(printf '%s\n' "${DEBS[@]}" | hash_of)
if [ "$(cat "$ROOT/.lane-key" 2>/dev/null)" != "$root_key" ]; then
    COLD+=(root)
    dpkg --print-foreign-architectures | grep -qx arm64 || sudo_ dpkg --add-architecture arm64
    if ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then
        say "apt-get update (arm64 package lists)"
        sudo_ apt-get update -qq >/dev/null
    fi
    rm -rf "$CACHE/debs.tmp" "$ROOT.tmp" && mkdir -p "$CACHE/debs.tmp" "$ROOT.tmp"
    say "downloading ${#DEBS[@]} arm64 packages"
    (cd "$CACHE/debs.tmp" && apt-get download -qq "${DEBS[@]/%/:arm64}" 2>&1 | { grep -v unsandboxed || true; })
    for deb in "$CACHE"/debs.tmp/*.deb; do dpkg -x "$deb" "$ROOT.tmp"; done
    # The guest's site.py would add the host's dist-packages (x86 modules) to sys.path: under -L
    # these empty folders are found first and hide them.
    mkdir -p "$ROOT.tmp/usr/lib/python3/dist-packages" "$ROOT.tmp/usr/local/lib/python3.11/dist-packages"
    echo "$root_key" > "$ROOT.tmp/.lane-key"
    rm -rf "$ROOT" "$CACHE/debs" && mv "$ROOT.tmp" "$ROOT" && mv "$CACHE/debs.tmp" "$CACHE/debs"
fi

# ---- the aarch64 site folder: PyPI's aarch64 wheels, unzipped -----------------------------------
mapfile -t REQS < <("$PY" - "${WHEELS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
SITE=$CACHE/site-$(printf '%s\n' "${REQS[@]}" | hash_of)
if [ ! -f "$SITE/.lane-done" ]; then
    COLD+=(site)
    say "downloading aarch64 wheels: ${REQS[*]}"
    rm -rf "$SITE.tmp" "$SITE.whl" && mkdir -p "$SITE.tmp"
    "$PY" -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux2014_aarch64 \
        --platform manylinux_2_28_aarch64 -d "$SITE.whl" "${REQS[@]}" 2>&1 | { grep -v "^WARNING: Location" || true; }
    for whl in "$SITE.whl"/*.whl; do "$PY" -m zipfile -e "$whl" "$SITE.tmp"; done
    rm -rf "$SITE.whl"
    touch "$SITE.tmp/.lane-done"
    rm -rf "$SITE" && mv "$SITE.tmp" "$SITE"
    find "$CACHE" -maxdepth 1 -name 'site-*' ! -path "$SITE" -exec rm -rf {} +
fi

# ---- the guest's file system for one emulated CPU: the root, and the /proc/cpuinfo of that CPU ----
# qemu -L GUEST serves a guest path from GUEST where it exists there, else from the host: GUEST is
# the root's folders (links) plus proc/cpuinfo. Listing /proc itself then shows only cpuinfo;
# /proc/self/... and every other file are the host's as before.
guest_for() {  # CPU -> prints the guest folder, made if needed
    local cpu=$1 guest=$CACHE/guest-$1 midr
    if [ ! -f "$guest/midr" ]; then
        rm -rf "$guest" && mkdir -p "$guest/proc"
        for d in etc lib usr; do ln -s "../root/$d" "$guest/$d"; done
        # MIDR_EL1 as the emulated CPU reports it (mrs x0, midr_el1; ret), from inside the guest.
        midr=$("$QEMU" -cpu "$cpu" -L "$ROOT" "$ROOT/usr/bin/python3.11" -S -c '
import ctypes, mmap, struct
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(struct.pack("<II", 0xD5380000, 0xD65F03C0))
print(ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))())')
        echo "$midr" > "$guest/midr"
    fi
    midr=$(cat "$guest/midr")
    # One entry per host processor, as arch/arm64/kernel/cpuinfo.c prints it (the ISA features come
    # from AT_HWCAP, which qemu sets for the emulated CPU, so no "Features" line is needed).
    grep '^processor' /proc/cpuinfo | awk -F: -v m="$midr" '{
        printf "processor\t: %d\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x%02x\nCPU architecture: 8\n", $2, int(m / 16777216) % 256
        printf "CPU variant\t: 0x%x\nCPU part\t: 0x%03x\nCPU revision\t: %d\n\n", int(m / 1048576) % 16, int(m / 16) % 4096, m % 16
    }' > "$guest/proc/cpuinfo"
    echo "$guest"
}

# sys.executable: a host script that runs the guest Python under qemu. A test that starts
# [sys.executable, ...] then works: qemu hands execve to the host kernel, which runs this script.
wrapper_for() {  # CPU -> prints the wrapper's path
    local cpu=$1 guest wrap=$CACHE/bin/python3.11-$1
    guest=$(guest_for "$cpu")
    mkdir -p "$CACHE/bin"
    cat > "$wrap.tmp" <<WRAP
#!/bin/sh
# The aarch64 Python of .ci/lane-aarch64.sh (emulated $cpu); argv[0] stays this script's path.
exec '$QEMU' -cpu '$cpu' -L '$guest' -0 "\$0" '$ROOT/usr/bin/python3.11' "\$@"
WRAP
    chmod +x "$wrap.tmp" && mv "$wrap.tmp" "$wrap"
    echo "$wrap"
}

GUEST_PY=$(wrapper_for "$CPU")
[ -z "$SECOND_CPU" ] || SECOND_PY=$(wrapper_for "$SECOND_CPU")

# ---- x86: the bundles and reference embeddings (export needs PyTorch), cached by what makes them --
ref_key=$( { printf '%s\n' "${REQS[@]}"; "$PY" -c 'import torch, onnx; print(torch.__version__, onnx.__version__)';
             find -L edgefs export kernels models tests/conftest.py tests/test_aarch64_parity.py -type f \
                 \( -name '*.py' -o -name '*.pt' \) -not -path '*/__pycache__/*' | sort | xargs sha256sum; } | hash_of)
REF=$CACHE/ref-$ref_key
if [ ! -f "$REF/reference.json" ]; then
    COLD+=(reference)
    say "x86 step: exporting the test bundles and the colour model, quantising it, embedding on x86"
    t=$(now)
    rm -rf "$REF.tmp" && mkdir -p "$REF.tmp"
    EDGEFS_AARCH64_MAKE=$REF.tmp "$PY" -m pytest -q -p no:cacheprovider tests/test_aarch64_parity.py \
        -k test_make_reference >"$REF.tmp.log" 2>&1 || { tail -40 "$REF.tmp.log"; say "x86 step failed"; exit 1; }
    mv "$REF.tmp" "$REF" && mv "$REF.tmp.log" "$REF/make.log"
    find "$CACHE" -maxdepth 1 -name 'ref-*' ! -path "$REF" -exec rm -rf {} +
    say "x86 step: $(since "$t") s"
fi
setup_s=$(since "$t_setup")
if [ ${#COLD[@]} -gt 0 ]; then
    say "setup: ${setup_s} s (cold: made ${COLD[*]})"
else
    say "setup: ${setup_s} s (warm: everything cached)"
fi

# ---- aarch64: the device tests, in one emulated pytest ---------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgefs-aarch64.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cp -r "$REF/prebuilt" "$WORK/prebuilt"  # a fresh copy each run: a test that writes to a fixture's bundle cannot spoil the cache
export PYTHONPATH="$SITE:$REPO" EDGEFS_TEST_PREBUILT="$WORK/prebuilt" EDGEFS_AARCH64_REFERENCE="$REF" \
       EDGEFS_AARCH64_RESULTS="$WORK/results.json"
say "pytest on emulated $CPU: ${#TESTS[@]} modules, ${#DESELECT[@]} tests left out (see DESELECT in this script)"
t_tests=$(now)
rc=0
EDGEFS_AARCH64_CPU=$CPU "$GUEST_PY" -m pytest -q -p no:cacheprovider --durations=10 --basetemp "$WORK/pytest" \
    "${DESELECT[@]/#/--deselect=}" "$@" "${TESTS[@]}" || rc=$?
tests_s=$(since "$t_tests")
rc2=0
if [ -n "$SECOND_CPU" ]; then
    say "pytest on emulated $SECOND_CPU: the INT8 parity test again (no dot product instructions: other kernels)"
    t=$(now)
    EDGEFS_AARCH64_CPU=$SECOND_CPU "$SECOND_PY" -m pytest -q -p no:cacheprovider --basetemp "$WORK/pytest2" \
        tests/test_aarch64_parity.py -k "int8_on_arm or without_torch" || rc2=$?
    second_s=$(since "$t")
    tests_s=$(since "$t_tests")
fi

env -u PYTHONPATH "$PY" - "$WORK/results.json" <<'EOF_PY' || true
import json
import sys

try:
    doc = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("lane-aarch64: no parity figures were written")
for cpu, figures in doc.items():
    print(f"lane-aarch64: parity on emulated {cpu} (ONNX Runtime {figures.pop('onnxruntime', '?')}):")
    figures.pop("x86 reference", None)
    for key, value in figures.items():
        if not key.startswith("engine"):
            print(f"  {key}: {value}")
EOF_PY
say "wall time: setup ${setup_s} s, tests ${tests_s} s${SECOND_CPU:+ (of which $SECOND_CPU ${second_s} s)}"
if [ "$rc" != 0 ] || [ "$rc2" != 0 ]; then
    say "FAILED (pytest exit $rc on $CPU${SECOND_CPU:+, $rc2 on $SECOND_CPU})"
    exit 1
fi
say "passed"
