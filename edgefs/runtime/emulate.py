"""Run a bundle's graph as another CPU would: ONNX Runtime under qemu-user, for the INT8 parity gate.

``edgefs quantize`` measures its INT8 graph on the machine it runs on. The classes it
claims but is not (:mod:`edgefs.cpu`) are measured here when the machine can emulate
them:

- ``x86`` (AVX2, no VNNI) on any x86 machine: this Python under
  ``qemu-x86_64-static -cpu Haswell`` (Debian's ``qemu-user-static``); ONNX Runtime reads
  the emulated CPUID and takes its AVX2 kernels;
- ``arm64``: an aarch64 Python given by ``EDGEFS_AARCH64_PYTHON`` (a command, e.g. the
  wrapper ``.ci/lane-aarch64.sh`` makes) with numpy and onnxruntime on
  ``EDGEFS_AARCH64_SITE``;
- ``x86-vnni`` cannot be emulated (qemu-user has no AVX-512): said, not measured.

The child is this module run with ``-m`` (as a script its folder would come first on the path,
where ``select.py`` hides the standard library's): it needs numpy and onnxruntime only.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1800


@dataclass
class Emulator:
    """How to run a Python as one CPU class: ``command`` (argv before the script), extra environment."""

    cpu_class: str
    how: str
    command: list[str]
    env: dict[str, str]


def emulator_for(cpu_class: str) -> tuple[Emulator | None, str]:
    """The emulator for ``cpu_class`` on this machine, or None and why not."""
    machine = platform.machine().lower()
    if cpu_class == "x86":
        qemu = shutil.which("qemu-x86_64-static")
        if machine not in ("x86_64", "amd64"):
            return None, "x86 is emulated on x86 machines only"
        if qemu is None:
            return None, "qemu-x86_64-static is not installed (apt-get install qemu-user-static)"
        return Emulator("x86", "qemu-x86_64-static -cpu Haswell (AVX2, no VNNI)", [qemu, "-cpu", "Haswell",
                        sys.executable], {}), ""
    if cpu_class == "arm64":
        python, site = os.environ.get("EDGEFS_AARCH64_PYTHON"), os.environ.get("EDGEFS_AARCH64_SITE")
        if not python or not site:
            return None, ("no aarch64 Python: set EDGEFS_AARCH64_PYTHON and EDGEFS_AARCH64_SITE "
                          "(.ci/lane-aarch64.sh makes both under ~/.cache/edgefs/aarch64)")
        if not Path(python).exists() or not Path(site).is_dir():
            return None, f"EDGEFS_AARCH64_PYTHON {python} or EDGEFS_AARCH64_SITE {site} does not exist"
        return Emulator("arm64", f"aarch64 Python {Path(python).name} (qemu-user)", [python],
                        {"PYTHONPATH": os.pathsep.join([site, str(ROOT)])}), ""
    if cpu_class == "x86-vnni":
        return None, "qemu-user cannot offer AVX-512 VNNI; the portable formats compute the same integers there"
    return None, f"no emulator for CPU class {cpu_class!r}"


def embed_emulated(emulator: Emulator, onnx_path: Path, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Embed uint8 ``images`` with ONNX Runtime under ``emulator``; returns the embeddings and seconds taken.

    Raises:
        RuntimeError: the child failed (its last lines in the message) or ran past the timeout.
    """
    with tempfile.TemporaryDirectory(prefix="edgefs-emulate.") as tmp:
        src, out = Path(tmp) / "images.npy", Path(tmp) / "out.npy"
        np.save(src, images)
        env = {**os.environ, **emulator.env}
        if "PYTHONPATH" not in emulator.env:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        started = time.perf_counter()
        try:
            proc = subprocess.run([*emulator.command, "-m", "edgefs.runtime.emulate", str(onnx_path), str(src),
                                   str(out)], capture_output=True, text=True, env=env, timeout=TIMEOUT_S, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{emulator.how} ran past {TIMEOUT_S} s") from None
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not out.exists():
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"{emulator.how} failed (exit {proc.returncode}): {tail}")
        return np.load(out), seconds


def _child(model: str, images: str, out: str) -> None:
    import onnxruntime as ort

    x = np.load(images)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    np.save(out, np.concatenate([session.run(None, {name: x[i : i + 8]})[0] for i in range(0, len(x), 8)]))


if __name__ == "__main__":
    _child(*sys.argv[1:4])
