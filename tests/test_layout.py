"""export/ and kernels/ are top-level folders installed as edgefs.export and edgefs.kernels: in a wheel, and
from a source checkout that is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_export_and_kernels_inside_the_package(tmp_path: Path) -> None:
    """The wheel a device installs (pip install .) has the mapped folders, their subpackages and the CUDA
    sources the kernels compile from at first use."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("edgefs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("export", "kernels"):
        for f in (ROOT / folder).rglob("*"):
            if f.is_file() and f.suffix in {".py", ".cu", ".cuh", ".h"} and "__pycache__" not in f.parts:
                assert f"edgefs/{f.relative_to(ROOT).as_posix()}" in names, f"the wheel lacks {f.relative_to(ROOT)}"
    assert not any(n.startswith(("export/", "kernels/")) for n in names), "mapped folders must not be top-level"


def test_uninstalled_checkout_imports_the_mapped_packages(tmp_path: Path) -> None:
    """With only PYTHONPATH=<checkout> (no install, no site-packages finder), edgefs.export and edgefs.kernels
    (and a subpackage) import from the top-level folders."""
    code = ("import sys; sys.path = [p for p in sys.path if 'site-packages' not in p] + [sys.argv[1]]; "
            "import edgefs.kernels.emu, edgefs.export; "
            "print(edgefs.kernels.emu.__file__); print(edgefs.export.__file__)")
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-S", "-c", code, site], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    emu, export = proc.stdout.split()
    assert Path(emu) == ROOT / "kernels" / "emu" / "__init__.py"
    assert Path(export) == ROOT / "export" / "__init__.py"
