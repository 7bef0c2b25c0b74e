#!/usr/bin/env bash
# CI lane: the gst: / csi: / rtsp:// camera sources against an OpenCV that has GStreamer.
#
# pip's opencv-python is built without GStreamer, so the main lane can only check that edgefs
# explains that. Debian's python3-opencv is built with it (as JetPack's OpenCV is on a Jetson).
# This lane installs it with GStreamer's base/good plugins (plus ugly + libav for H.264 and
# gst-rtsp-server for a real RTSP server on 127.0.0.1), makes .venv-gst from Debian's python3
# with --system-site-packages (cv2 and numpy are Debian's, ABI-matched), installs edgefs there
# without pip's OpenCV, and runs tests/test_gstreamer.py (pytest -m gstreamer).
#
# Idempotent: apt runs only when a package is missing; the venv is made once and edgefs
# reinstalled only when pyproject.toml changes. Run from anywhere: .ci/lane-gstreamer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
lane_start=$SECONDS

VENV=.venv-gst
PY=/usr/bin/python3  # Debian's python3: the one python3-opencv is built for (not a pyenv/conda shim)
PACKAGES=(
    python3-opencv python3-numpy python3-venv python3-gi
    gstreamer1.0-tools                                  # gst-launch-1.0: the command edgefs suggests when a pipeline fails
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-ugly gstreamer1.0-libav        # x264enc, avdec_h264: the H.264 RTSP test
    gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0        # a real RTSP server (GstRtspServer) for the tests
)

log() { echo "lane-gstreamer: $*"; }
die() { echo "lane-gstreamer: ERROR: $*" >&2; exit 1; }

# ---- Debian packages ----------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    t=$SECONDS
    SUDO=()
    if [[ $(id -u) != 0 ]]; then SUDO=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "apt took $((SECONDS - t)) s"
else
    log "Debian packages already installed"
fi

[[ -x $PY ]] || die "$PY not found (Debian's python3)"
py_version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case $py_version in
    3.10|3.11|3.12) ;;
    *) die "Debian's python3 is $py_version; edgefs needs 3.10-3.12 (requires-python <3.13)" ;;
esac

# ---- the venv -----------------------------------------------------------------------------
if [[ -e $VENV ]] && ! { grep -qx "home = /usr/bin" "$VENV/pyvenv.cfg" &&
                          grep -qx "include-system-site-packages = true" "$VENV/pyvenv.cfg" &&
                          [[ -x $VENV/bin/python ]]; } 2>/dev/null; then
    log "$VENV is not a --system-site-packages venv of $PY: remaking it"
    rm -rf "$VENV"
fi
if [[ ! -x $VENV/bin/python ]]; then
    log "making $VENV (python $py_version, --system-site-packages)"
    "$PY" -m venv --system-site-packages "$VENV"
fi
STAMP=$VENV/.edgefs-installed
if [[ ! -f $STAMP || pyproject.toml -nt $STAMP ]]; then
    t=$SECONDS
    # --no-deps: pyproject's opencv-python-headless (no GStreamer) and numpy (a different ABI
    # from Debian's cv2) must not come in. pytest and pyyaml are pure Python.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "pytest>=7.4" "pyyaml>=6.0"
    touch "$STAMP"
    log "pip took $((SECONDS - t)) s"
fi

# ---- what this OpenCV is ------------------------------------------------------------------
"$VENV/bin/python" - <<'EOF' || die "this venv's OpenCV cannot run the GStreamer tests (see above)"
import re, sys
import cv2, numpy
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)

info = cv2.getBuildInformation()
line = re.search(r"^\s*GStreamer:\s*(.*)$", info, re.MULTILINE)
ffmpeg = re.search(r"^\s*FFMPEG:\s*(.*)$", info, re.MULTILINE)
print(f"lane-gstreamer: python {sys.version.split()[0]} ({sys.executable})")
print(f"lane-gstreamer: cv2 {cv2.__version__} from {cv2.__file__}")
print(f"lane-gstreamer: numpy {numpy.__version__} from {numpy.__file__}")
print(f"lane-gstreamer: {Gst.version_string()}")
print(f"lane-gstreamer: OpenCV GStreamer: {line.group(1).strip() if line else 'not listed'}; "
      f"FFMPEG: {ffmpeg.group(1).strip() if ffmpeg else 'not listed'}")
bad = []
if not line or not line.group(1).strip().upper().startswith("YES"):
    bad.append("cv2.getBuildInformation() does not report GStreamer: YES")
if not cv2.__file__.startswith("/usr/lib/python3/"):
    bad.append("cv2 is not Debian's python3-opencv (a pip opencv-python in the venv shadows it?)")
if not numpy.__file__.startswith("/usr/lib/python3/"):
    bad.append("numpy is not Debian's python3-numpy: its ABI may not match Debian's cv2")
for element in ("videotestsrc", "videoconvert", "videoscale", "videoflip", "appsink", "fakesink",
                "jpegenc", "jpegdec", "rtspsrc", "rtpjpegpay", "rtpjpegdepay", "x264enc", "rtph264pay",
                "rtph264depay", "avdec_h264"):
    if Gst.ElementFactory.find(element) is None:
        bad.append(f"GStreamer element {element} is missing")
for problem in bad:
    print(f"lane-gstreamer: ERROR: {problem}", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
for pkg in python3-opencv libopencv-videoio406 python3-numpy libgstreamer1.0-0 gstreamer1.0-tools gstreamer1.0-plugins-base \
           gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav libgstrtspserver-1.0-0; do
    dpkg-query -W -f='lane-gstreamer: deb ${Package} ${Version}\n' "$pkg" 2>/dev/null || true
done

# ---- the tests (EDGEFS_GSTREAMER_LANE=1: a test that would skip for a missing piece fails) ----------
t=$SECONDS
status=0
EDGEFS_GSTREAMER_LANE=1 timeout --kill-after=10 600 "$VENV/bin/python" -m pytest -q -m gstreamer tests/test_gstreamer.py "$@" || status=$?
log "tests took $((SECONDS - t)) s (exit $status); lane took $((SECONDS - lane_start)) s"
exit "$status"
