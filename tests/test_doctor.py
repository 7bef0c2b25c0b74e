"""edgefs doctor: the machine's facts, each engine's self-check of a bundle (reported, never raised) and its
camera rate; missing stacks are rows that say what to install; exit status 1 only for a failing bundle."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_edits import copy_bundle, edit_manifest

from edgefs import doctor
from edgefs.cli import main
from edgefs.cpu import cpu_info
from edgefs.runtime import onnxruntime_backend, openvino_backend, trt_flavour
from edgefs.runtime.selfcheck import SELFCHECK_FILE


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEFS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def doctor_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    """Run ``edgefs doctor ARGV --json -``: exit status, the JSON report (stdout), the table (stderr)."""
    capsys.readouterr()
    status = main(["doctor", *argv, "--json", "-"])
    out, err = capsys.readouterr()
    return status, json.loads(out), err


def engine_rows(report: dict, bundle_index: int = 0) -> dict[str, dict]:
    return {row["backend"] + ("" if "device" not in row else f":{row['device']}"): row
            for row in report["bundles"][bundle_index]["engines"]}




def test_the_table_and_json_hold_the_cpu_engines_and_a_verified_then_cached_bundle(
        conv4_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, report, table = doctor_json(capsys, str(conv4_bundle), "--no-rate")
    assert status == 0 and report["ok"]
    cpu = cpu_info()
    assert report["cpu"]["int8_class"] == cpu.int8_class and f"INT8 class           {cpu.int8_class}" in table
    assert report["engines"]["onnxruntime"]["installed"] and "CPUExecutionProvider" in table
    assert report["engines"]["torch"].get("imported") in (None, False)
    rows = engine_rows(report)
    ort = rows["onnxruntime:cpu"]
    assert ort["status"] == "verified" and ort["selfcheck"]["min_cosine"] >= 0.999 and ort["rate"] is None
    assert "onnxruntime fp32 cpu" in table and "verified" in table
    if openvino_backend.openvino_available():
        assert rows["openvino:cpu"]["status"] == "verified" and report["engines"]["openvino"]["version"]
    assert rows["tensorrt"]["status"] == "skipped" and rows["tensorrt"]["message"]
    assert "all bundles passed" in table

    status, report, table = doctor_json(capsys, str(conv4_bundle), "--no-rate")
    assert status == 0 and engine_rows(report)["onnxruntime:cpu"]["status"] == "cached"
    assert "cached" in table and "passed here before" in table


def test_the_rate_is_engine_only_frames_per_second_and_30_fps_cameras(
        conv4_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, report, table = doctor_json(capsys, str(conv4_bundle), "--seconds", "0.3")
    assert status == 0
    rate = engine_rows(report)["onnxruntime:cpu"]["rate"]
    assert rate["frames_per_s"] > 0 and rate["frames"] >= 3 and rate["seconds"] >= 0.3
    assert rate["cameras_30fps"] == math.floor(rate["frames_per_s"] / 30)
    assert "reference images" in rate["images"]
    assert "frames/s" in table and "30 FPS cams" in table and "engine-only throughput" in table
    assert "measured on this machine now" in table and "no capture" in table


def test_a_damaged_reference_file_is_a_failed_row_and_exit_status_1(
        conv4_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = copy_bundle(conv4_bundle, tmp_path / "bad.edgefs")
    data = bytearray((bad / SELFCHECK_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / SELFCHECK_FILE).write_bytes(bytes(data))
    status, report, table = doctor_json(capsys, str(conv4_bundle), str(bad), "--no-rate")
    assert status == 1 and not report["ok"]
    assert report["bundles"][0]["ok"] and not report["bundles"][1]["ok"]
    ort = engine_rows(report, 1)["onnxruntime:cpu"]
    assert ort["status"] == "failed" and "does not match the manifest's sha256" in ort["message"]
    assert "failed" in table and "does not match the manifest's" in table and f"FAILED: {bad}" in table


def test_reference_embeddings_an_engine_does_not_reproduce_fail_with_the_cosines(
        conv4_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = copy_bundle(conv4_bundle, tmp_path / "off.edgefs")
    with np.load(off / SELFCHECK_FILE) as npz:
        images, embeddings = npz["images"], npz["embeddings"]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, embeddings=np.roll(embeddings, 1, axis=1))  # another model's
    (off / SELFCHECK_FILE).write_bytes(buffer.getvalue())
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    edit_manifest(off, lambda doc: doc["export"]["selfcheck"].__setitem__("sha256", sha))
    status, report, table = doctor_json(capsys, str(off), "--seconds", "0.2")
    assert status == 1
    ort = engine_rows(report)["onnxruntime:cpu"]
    assert ort["status"] == "failed" and ort["selfcheck"]["mean_cosine"] < 0.9999 and ort["rate"] is None
    assert "too far from the FP32 model's" in ort["message"] and "To fix:" in ort["message"]
    assert "too far from the FP32" in table


def test_a_bundle_without_reference_images_is_unchecked_with_the_note_and_exit_0(
        conv4_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = copy_bundle(conv4_bundle, tmp_path / "old.edgefs")
    (old / SELFCHECK_FILE).unlink()
    edit_manifest(old, lambda doc: doc["export"].pop("selfcheck"))
    status, report, table = doctor_json(capsys, str(old), "--seconds", "0.2")
    assert status == 0 and report["bundles"][0]["reference_images"] == 0
    ort = engine_rows(report)["onnxruntime:cpu"]
    assert ort["status"] == "unchecked" and "no reference images" in ort["message"]
    assert ort["rate"]["frames_per_s"] > 0 and "synthetic camera frames" in ort["rate"]["images"]
    assert "unchecked" in table and "export (or quantize) it again" in table


def test_a_bundle_that_cannot_be_read_is_shown_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, report, table = doctor_json(capsys, str(tmp_path / "missing.edgefs"))
    assert status == 1 and "does not exist" in report["bundles"][0]["error"]
    assert f"bundle {tmp_path / 'missing.edgefs'}: FAILED" in table


@pytest.fixture
def bare_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No OpenVINO, no TensorRT, no nvidia-smi or NVIDIA driver, no CUDA, not a Jetson."""
    monkeypatch.setattr(openvino_backend, "openvino_available", lambda: False)
    monkeypatch.setattr(trt_flavour, "installed_flavours", lambda: [])
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    nowhere = tmp_path / "nowhere"
    for name in ("NVIDIA_PROC_VERSION", "DEVICE_TREE_MODEL", "TEGRA_RELEASE"):
        monkeypatch.setattr(doctor, name, nowhere / name)
    monkeypatch.setattr(doctor, "CUDA_HOMES", ())
    monkeypatch.setattr(doctor.ctypes.util, "find_library", lambda name: None)


@pytest.mark.usefixtures("bare_machine")
def test_missing_stacks_are_rows_saying_what_to_install_and_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["doctor"]) == 0
    table = capsys.readouterr().out
    assert "none found (no nvidia-smi on the PATH" in table
    assert "Jetson               none found" in table
    assert "no nvcc found; libcudart: none found" in table
    assert "openvino             not installed; install: pip install 'edgefs[openvino]'" in table
    assert "TensorRT (tensorrt)  not installed; install:" in table
    assert "TensorRT (rtx)       not installed; install: pip install 'edgefs[rtx]'" in table
    status, report, _ = doctor_json(capsys)
    assert status == 0 and report["ok"] and report["bundles"] == []
    assert report["gpu"]["nvidia"] == {"source": None, "gpus": [], "driver": None}
    assert not report["engines"]["openvino"]["installed"] and "edgefs[openvino]" in report["engines"]["openvino"][
        "install"]
    assert not any(f["installed"] for f in report["gpu"]["tensorrt"])


@pytest.mark.usefixtures("bare_machine")
def test_a_bundle_on_a_bare_machine_runs_on_onnxruntime_and_skips_the_rest(
        conv4_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, report, table = doctor_json(capsys, str(conv4_bundle), "--no-rate")
    assert status == 0
    rows = engine_rows(report)
    assert rows["onnxruntime:cpu"]["status"] == "verified"
    assert rows["openvino"]["status"] == "skipped" and "openvino is not installed" in rows["openvino"]["message"]
    assert rows["tensorrt"]["status"] == "skipped" and "TensorRT is not installed" in rows["tensorrt"]["message"]
    assert "openvino is not installed: pip install 'edgefs[openvino]'" in table


@pytest.mark.usefixtures("bare_machine")
def test_no_engine_at_all_for_a_bundle_exits_1(conv4_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(onnxruntime_backend, "available_providers", lambda: [])
    status, report, table = doctor_json(capsys, str(conv4_bundle), "--no-rate")
    assert status == 1 and "no engine backend can run this bundle here" in report["bundles"][0]["problem"]
    assert "onnxruntime          not installed; install: pip install 'edgefs[device]'" in table


def test_nvidia_smi_and_jetson_files_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA GeForce RTX 4060, 550.54.15, 8188 MiB, 8.9'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    model, release = tmp_path / "model", tmp_path / "nv_tegra_release"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64\n")
    monkeypatch.setattr(doctor, "DEVICE_TREE_MODEL", model)
    monkeypatch.setattr(doctor, "TEGRA_RELEASE", release)
    status, report, table = doctor_json(capsys)
    assert status == 0
    assert report["gpu"]["nvidia"]["gpus"] == [{"name": "NVIDIA GeForce RTX 4060", "driver": "550.54.15",
                                                "memory": "8188 MiB", "compute_cap": "8.9"}]
    assert "NVIDIA GeForce RTX 4060, 8188 MiB, compute capability 8.9, driver 550.54.15" in table
    assert report["gpu"]["jetson"] == {"jetson": True, "board_model": "NVIDIA Jetson Orin Nano Developer Kit",
                                       "l4t": "L4T R36.3.0"}
    assert "NVIDIA Jetson Orin Nano Developer Kit, L4T R36.3.0" in table
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver'\n"
                   "exit 9\n")
    status, report, table = doctor_json(capsys)
    assert status == 0 and "nvidia-smi failed: NVIDIA-SMI has failed" in table


def test_json_file_help_and_no_torch_import(conv4_bundle: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports" / "doctor.json"
    assert main(["doctor", "--no-rate", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["cpu"]["cores"] >= 1 and f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    assert "Exit status 1 where a bundle" in " ".join(capsys.readouterr().out.split())
    code = ("import sys; from edgefs.cli import main; s = main(['doctor', '--no-rate', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'doctor imported torch'; sys.exit(s)")
    done = subprocess.run([sys.executable, "-c", code, str(conv4_bundle)], capture_output=True, text=True,
                          env={**os.environ, "EDGEFS_CACHE": str(tmp_path / "cache2")}, timeout=120)
    assert done.returncode == 0, done.stderr


def test_seconds_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--seconds", "0"])
    assert exit_.value.code == 2 and "must be a finite number > 0" in capsys.readouterr().err
