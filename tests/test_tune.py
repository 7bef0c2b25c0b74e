"""edgefs tune: live measurement with the real camera loop, the choice, the profile, and run/serve taking it.

Behaviour only, never timings: the measured settings run 1 camera at 10 FPS of a 28 px network (which any
machine holds), or an impossible 4 cameras x 500 FPS (which none does).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgefs import tune as T
from edgefs.cli import build_parser, main

FAST = ["--seconds", "1.5", "--fps", "10", "--engine", "onnxruntime", "--max-threads", "1"]


@pytest.fixture(scope="module")
def tuned(conv4_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tune of the conv4 bundle (1 camera x 10 FPS) into its own config folder; its output and measurement."""
    root = tmp_path_factory.mktemp("tuned")
    config = root / "config"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEFS_CONFIG", str(config))
        lines: list[str] = []
        result = T.tune([conv4_bundle], cameras=1, fps=10.0, seconds=1.5, engine="onnxruntime", max_threads=1,
                        json_out=root / "tune.json", log=lines.append)
    return {"config": config, "result": result, "lines": lines, "json": json.loads((root / "tune.json").read_text())}


def _config(tuned: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the tuned config folder, as EDGEFS_CONFIG."""
    config = tmp_path / "config"
    shutil.copytree(tuned["config"], config)
    monkeypatch.setenv("EDGEFS_CONFIG", str(config))
    return config


def _run(bundle: Path, glyph_data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["run", str(bundle), "--store", str(tmp_path / "classes.db"), "--source", f"synthetic:{glyph_data}",
            "--frames", "3", "--no-display", *extra]


def test_tune_saves_a_profile_whose_choice_held_in_its_own_table(tuned: dict[str, Any], conv4_bundle: Path) -> None:
    result, doc = tuned["result"], tuned["json"]
    assert result.exit_code == 0 and result.choice is not None
    index = next(i for i, r in enumerate(doc["settings"]) if r["setting"] == result.choice["setting"])
    assert doc["settings"][index]["holds"] and doc["settings"][index]["why_not"] == []
    table = "\n".join(tuned["lines"])
    row = next(line for line in table.splitlines() if line.startswith(f"{index + 1}  "))
    assert row.rstrip().endswith("yes")
    assert f"chose #{index + 1}: conv4.edgefs on onnxruntime, 1 thread, batch-wait 0 ms" in table
    [profile] = list((tuned["config"] / "profiles").iterdir())
    saved = json.loads(profile.read_text())
    assert profile.name == T.profile_path(saved["bundle"]["fingerprint"]).name
    assert profile.name.endswith(f"-{T.machine_key()}.json")
    assert saved["format"] == T.PROFILE_FORMAT and saved["cameras"] == 1 and saved["fps"] == 10.0
    assert saved["choice"]["backend"] == "onnxruntime" and saved["choice"]["threads"] == 1
    assert saved["choice"]["batch_wait_ms"] == 0.0 and saved["best_for_this_bundle"] == saved["choice"]
    assert saved["choice"]["cosine_mean"] > 0.999  # the FP32 graph against its own reference embeddings
    assert doc["settings"][index]["cosine"]["against"] == "stored FP32 reference"


def test_run_takes_the_profile_and_a_flag_wins_over_it(tuned: dict[str, Any], conv4_bundle: Path, glyph_data: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _config(tuned, tmp_path, monkeypatch)
    assert main(_run(conv4_bundle, glyph_data, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "profile: " in out and "(tuned " in out and "for 1 camera x 10 FPS): backend onnxruntime, threads 1, " \
        "batch-wait 0 ms" in out
    assert "engine: onnxruntime (fp32, cpu, CPUExecutionProvider, 1 threads)" in out
    assert main(_run(conv4_bundle, glyph_data, tmp_path, "--threads", "2", "--batch-wait", "5")) == 0
    out = capsys.readouterr().out
    assert "backend onnxruntime, threads 2, batch-wait 5 ms; from the command line: --threads, --batch-wait" in out
    assert "engine: onnxruntime (fp32, cpu, CPUExecutionProvider, 2 threads" in out


def test_no_profile_ignores_it(tuned: dict[str, Any], conv4_bundle: Path, glyph_data: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _config(tuned, tmp_path, monkeypatch)
    assert main(_run(conv4_bundle, glyph_data, tmp_path, "--no-profile")) == 0
    assert "profile:" not in capsys.readouterr().out
    args = build_parser().parse_args(["serve", str(conv4_bundle), "--store", "s.db", "--source", "0", "--no-profile"])
    assert T.apply_profile(args, args.bundle, log=pytest.fail) is None
    assert (args.backend, args.threads, args.batch_wait_ms) == ("auto", None, 0.0)  # the loop's own defaults


def test_serve_flags_take_the_profile(tuned: dict[str, Any], conv4_bundle: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _config(tuned, tmp_path, monkeypatch)
    args = build_parser().parse_args(["serve", str(conv4_bundle), "--store", "s.db", "--source", "0"])
    lines: list[str] = []
    assert T.apply_profile(args, args.bundle, log=lines.append) is not None
    assert (args.backend, args.device, args.threads, args.batch_wait_ms) == ("onnxruntime", "cpu", 1, 0.0)
    assert len(lines) == 1 and lines[0].startswith("profile: ")


def test_nothing_holds_exits_2_says_what_holds_instead_and_saves_nothing(
        conv4_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGEFS_CONFIG", str(tmp_path / "config"))
    rc = main(["tune", str(conv4_bundle), "--cameras", "4", "--fps", "500", "--seconds", "1", "--engine",
               "onnxruntime", "--max-threads", "1", "--batch-wait", "0", "--json", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert rc == 2
    assert "nothing held 4 x 500 FPS: this machine holds about" in out and " instead, with onnxruntime fp32" in out
    assert "No profile was saved" in out and "edgefs quantize" in out
    assert not (tmp_path / "config" / "profiles").exists()
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["choice"] is None and doc["profiles"] == [] and "holds about" in doc["holds_instead"]


def test_bundles_of_different_checkpoints_are_refused(conv4_bundle: Path, trained_bundle: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGEFS_CONFIG", str(tmp_path / "config"))
    assert main(["tune", str(conv4_bundle), str(trained_bundle), *FAST]) == 2
    err = capsys.readouterr().err
    assert "exported from different checkpoints" in err and "A class store belongs to one embedding space" in err
    assert main(["tune", str(conv4_bundle), str(conv4_bundle), *FAST]) == 2
    assert "are the same bundle" in capsys.readouterr().err
    assert not (tmp_path / "config").exists()


@pytest.mark.parametrize("damage", ["not json {", '{"format": "edgefs-tune-profile", "version": 1}', "[]"])
def test_a_damaged_profile_is_reported_and_ignored(tuned: dict[str, Any], conv4_bundle: Path, glyph_data: Path,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], damage: str) -> None:
    config = _config(tuned, tmp_path, monkeypatch)
    [profile] = list((config / "profiles").iterdir())
    profile.write_text(damage)
    assert main(_run(conv4_bundle, glyph_data, tmp_path)) == 0
    out = capsys.readouterr().out
    assert f"warning: profile {profile}" in out and "it is ignored (run 'edgefs tune" in out
    assert "profile: " not in out


def test_a_profile_that_chose_another_bundle_does_not_switch_bundle(tuned: dict[str, Any], conv4_bundle: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tuned, tmp_path, monkeypatch)
    [path] = list((config / "profiles").iterdir())
    doc = json.loads(path.read_text())
    doc["choice"] = {**doc["choice"], "bundle": "/models/int8.edgefs", "fingerprint": "f" * 64, "precision": "int8",
                     "backend": "openvino", "threads": 2}
    doc["best_for_this_bundle"] = {**doc["best_for_this_bundle"], "threads": 1, "batch_wait_ms": 3.0}
    path.write_text(json.dumps(doc))
    args = build_parser().parse_args(["run", str(conv4_bundle), "--store", "s.db", "--source", "0"])
    lines: list[str] = []
    T.apply_profile(args, args.bundle, log=lines.append)
    assert (args.bundle, args.backend, args.threads, args.batch_wait_ms) == (str(conv4_bundle), "onnxruntime", 1, 3.0)
    text = "\n".join(lines)
    assert "tune chose another bundle for this machine: /models/int8.edgefs (int8" in text
    assert "This run keeps" in text and "edgefs classes reembed" in text
    doc["best_for_this_bundle"] = None  # nothing of this bundle held: nothing applied, the advice stays
    path.write_text(json.dumps(doc))
    args = build_parser().parse_args(["run", str(conv4_bundle), "--store", "s.db", "--source", "0"])
    lines.clear()
    T.apply_profile(args, args.bundle, log=lines.append)
    assert (args.backend, args.threads, args.batch_wait_ms) == ("auto", None, 0.0)
    assert "not applied (no setting of this bundle held)" in lines[0] and "another bundle" in lines[1]


# ---- the choice, on made-up measurements -------------------------------------------------------------
def _row(precision: str, backend: str, *, cos: float | None, cpu: float, holds: bool = True, px: int = 224,
         drop: float | None = 0.0, threads: int = 1) -> dict[str, Any]:
    return {"setting": {"precision": precision, "backend": backend, "input_size": [px, px], "threads": threads,
                        "batch_wait_ms": 0.0, "fingerprint": precision},
            "cosine": None if cos is None else {"mean": cos, "min": cos}, "fewshot_drop_points": drop,
            "cpu_ms_per_frame": {"process": cpu}, "holds": holds, "fps": 120.0, "dropped": 0,
            "latency_ms": {"p50": 5.0, "p99": 10.0}}


def test_the_least_accuracy_loss_wins_then_the_least_cpu() -> None:
    fp32_ort = _row("fp32", "onnxruntime", cos=1.0, cpu=7.0)
    fp32_ov = _row("fp32", "openvino", cos=0.99995, cpu=6.5)  # a tie in accuracy (rounding), less CPU
    int8 = _row("int8", "openvino", cos=0.993, cpu=4.0)
    assert T.choose([fp32_ort, fp32_ov, int8])[0] is fp32_ov
    assert T.choose([fp32_ort, {**fp32_ov, "holds": False}, int8])[0] is fp32_ort
    assert T.choose([{**fp32_ort, "holds": False}, {**fp32_ov, "holds": False}, int8])[0] is int8
    worse = _row("int8", "onnxruntime", cos=0.999, cpu=3.0, drop=1.5)  # closer cosine, but a recorded drop
    assert T.choose([int8, worse])[0] is int8
    small = _row("fp32", "onnxruntime", cos=1.0, cpu=2.0, px=160)  # another input size: taken to lose more
    chosen, why = T.choose([small, int8])
    assert chosen is int8 and "largest input that held, 224 px" in why
    assert T.choose([{**int8, "holds": False}]) == (None, "")


def test_judge_states_why_a_setting_does_not_hold() -> None:
    row = {**_row("fp32", "onnxruntime", cos=1.0, cpu=5.0), "seconds": 4.0}
    assert T.judge(row, 4, 30.0) == []
    assert T.judge({**row, "fps": 100.0}, 4, 30.0) == ["100.0 of 120 FPS"]
    assert T.drop_allowance(4, 30.0, 4.0) == 4 and T.drop_allowance(1, 10.0, 1.0) == 1
    assert T.judge({**row, "dropped": 5}, 4, 30.0) == ["5 stale frames dropped (> 4)"]
    assert T.judge({**row, "latency_ms": {"p50": 5.0, "p99": 40.0}}, 4, 30.0) == ["p99 40.0 ms > 33.3 ms"]
    assert T.judge({"error": "refused"}, 1, 30.0) == ["did not run: refused"]
