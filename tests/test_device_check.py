"""tools/device_check.sh on a machine without a GPU: every step runs or says why it cannot.

On a GPU machine the check itself is what gets run (it is the first command there), so this
test is for CPU machines and CI: the report is written, the GPU steps are skipped with their
reasons, and the engines step's export and bench code runs with CPU engines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefs.backbones import BACKBONES

ROOT = Path(__file__).resolve().parent.parent


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="a GPU is present: run tools/device_check.sh itself")
def test_device_check_on_a_cpu_machine_reports_every_step(tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "device_check.sh"), str(out), "--engines-on-cpu",
                           "--iterations", "2",
                           "--engines-seconds", "900"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "device_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["machine", "device_tests", "kernels", "engines"]
    assert steps["machine"]["status"] == "ok"
    assert steps["machine"]["result"]["python"] == ".".join(map(str, sys.version_info[:3]))
    # Without a GPU every device test is skipped, and the report says why.
    assert steps["device_tests"]["status"] == "skipped"
    assert "no CUDA GPU" in steps["device_tests"]["reason"]
    assert steps["kernels"]["status"] == "skipped" and "GPU" in steps["kernels"]["reason"]
    engines = steps["engines"]
    assert engines["status"] == "ok", engines
    rows = engines["result"]["rows"]
    assert {r["backbone"] for r in rows} == set(BACKBONES.names())
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("torch", "onnxruntime") for n in (1, 8)}
    assert all(r["embed_p50_ms"] > 0 for r in rows)
    text = (out / "device_check.md").read_text()
    assert "| device_tests | skipped |" in text and "## Engines" in text
