"""The service examples in deploy/: a systemd unit and a Dockerfile for ``edgefs serve``.

The unit is checked by systemd's own ``systemd-analyze verify`` (where installed) and its command by
edgefs's parser. Docker cannot build here (no daemon), so the Dockerfile's steps are run as the closest
real thing: the files it copies, ``pip install ".[device,serve]"`` into a fresh virtual environment (no
PyTorch), then its ENTRYPOINT and CMD (camera and /data swapped for a synthetic camera and a temporary
folder) stopped the way ``docker stop`` stops it, with SIGTERM.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefs.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "edgefs-serve.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def unit_command() -> list[str]:
    line = next(raw for raw in UNIT.read_text().splitlines() if raw.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def docker_command() -> list[str]:
    text = DOCKERFILE.read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    return [*entry, *cmd]


@pytest.mark.parametrize("command", [unit_command, docker_command])
def test_the_examples_run_edgefs_serve_with_flags_it_has(command: object) -> None:
    argv = command()  # type: ignore[operator]
    assert Path(argv[0]).name == "edgefs" and argv[1] == "serve"
    args = build_parser().parse_args(argv[1:])  # an unknown or renamed flag exits here
    assert args.host == "0.0.0.0" and args.summary_json and args.store


def test_the_unit_stops_with_sigterm_and_systemd_accepts_it(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "KillSignal=SIGTERM" in text and "Restart=on-failure" in text
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax was not checked by systemd")
    unit = tmp_path / "edgefs-serve.service"
    unit.write_text(text.replace("/opt/edgefs/.venv/bin/edgefs", str(Path(sys.executable).parent / "edgefs")))
    done = subprocess.run([verify, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("KillSignal=SIGTERM", "KillSignal=SIGTERMX"))
    assert subprocess.run([verify, "verify", str(broken)], capture_output=True, text=True,
                          timeout=60).returncode != 0  # the check can fail


@pytest.mark.slow
def test_the_dockerfile_steps_install_the_device_side_and_stop_cleanly(trained_bundle: Path, glyph_data: Path,
                                                                        tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    app = tmp_path / "opt-edgefs"
    app.mkdir()
    for line in re.findall(r"^COPY (.+)$", text, re.M):  # as Docker copies: into a folder, or to a name
        *sources, dest = line.split()
        for src in sources:
            target = app / dest / src if dest.endswith("/") else app / dest
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, target, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(ROOT / src, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    extras = re.search(r'pip install --no-cache-dir "(\.\[[^]]+\])"', text).group(1)  # type: ignore[union-attr]
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", extras], cwd=app, capture_output=True, text=True,
                         timeout=900)
    if pip.returncode != 0 and ("connection" in pip.stderr.lower() or "resolve" in pip.stderr.lower()):
        pytest.skip(f"the package registry cannot be reached here: {pip.stderr.strip().splitlines()[-1]}")
    assert pip.returncode == 0, pip.stderr
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"], capture_output=True, text=True,
                            check=True).stdout
    assert "torch" not in {p["name"].lower() for p in json.loads(listed)}  # the device side needs no PyTorch
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(trained_bundle, data / "model.edgefs")
    argv = [a.replace("/data", str(data)) for a in docker_command()]
    argv[argv.index("--source") + 1] = f"synthetic:{glyph_data}?fps=30&n_classes=2"
    proc = subprocess.Popen([str(venv / "bin" / argv[0]), *argv[1:], "--port", "0"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("edgefs serve:"):
                break
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)  # docker stop
        proc.wait(timeout=30)
        out = proc.stdout.read()  # not communicate(timeout=...): it would skip what the line reader buffered
    finally:
        proc.kill()
    out = "".join(lines) + out
    assert proc.returncode == 0, out
    assert "from other machines: http://" in out  # --host 0.0.0.0: addresses a browser elsewhere can open
    summary = json.loads((data / "last-run.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["frames"] > 0
    assert (data / "classes.db").is_file() and (data / "classes.db.token").is_file()
