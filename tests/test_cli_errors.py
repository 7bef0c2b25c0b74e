"""The CLI's error boundary and parse-time checks: no traceback reaches a user, bad flags name their range."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgefs.cli.classes
from edgefs.cli import build_parser, main
from edgefs.methods import METHODS
from tests.conftest import sigint_default

EDGEFS = [sys.executable, "-m", "edgefs"]


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error line argparse prints for ``argv``; fails unless it exits with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# Each case of a bad value -> the message it gives (verbatim), before anything is loaded.
BAD_FLAGS = [
    (["eval", "--ways", "0"], "edgefs eval: error: argument --ways: must be >= 2, got 0"),
    (["eval", "--episodes", "0"], "edgefs eval: error: argument --episodes: must be >= 1, got 0"),
    (["eval", "--episodes", "-3"], "edgefs eval: error: argument --episodes: must be >= 1, got -3"),
    (["eval", "--queries", "0"], "edgefs eval: error: argument --queries: must be >= 1, got 0"),
    (["eval", "--protocols", "0w1s"], "edgefs eval: error: argument --protocols: cannot read protocol '0w1s': "
                                      "write NwKs or NwKs-within with N >= 2 ways and K >= 1 shots, e.g. "
                                      "5w1s,20w5s-within"),
    (["eval", "--baselines", "magic"], "edgefs eval: error: argument --baselines: unknown baseline 'magic'; "
                                       "known: pixels, efficientnet_lite0"),
    (["train", "--lr", "-1"], "edgefs train: error: argument --lr: must be a finite number > 0 and <= 10, got -1"),
    (["train", "--lr", "inf"], "edgefs train: error: argument --lr: must be a finite number > 0 and <= 10, got inf"),
    (["train", "--val-every", "0"], "edgefs train: error: argument --val-every: must be >= 1, got 0"),
    (["train", "--queries", "0"], "edgefs train: error: argument --queries: must be >= 1, got 0"),
    (["train", "--ways", "0"], "edgefs train: error: argument --ways: must be >= 2, got 0"),
    (["train", "--ways", "five"], "edgefs train: error: argument --ways: expected a whole number >= 2, got 'five'"),
    (["train", "--method", "magic"], "edgefs train: error: argument --method: invalid choice: 'magic' (choose from "
                                     + ", ".join(map(repr, METHODS.names())) + ")"),
    (["train", "--device", "banana"], "edgefs train: error: argument --device: unknown device 'banana'; use one "
                                      "of: cpu, cuda, cuda:N (N: the GPU's index)"),
    (["data", "glyphs", "--out", "x", "--size", "0"],
     "edgefs data glyphs: error: argument --size: must be from 8 to 512, got 0"),
    (["enroll", "b", "--store", "s", "--label", "l", "--images", "i", "--min-sharpness", "nan"],
     "edgefs enroll: error: argument --min-sharpness: must be a finite number >= 0, got nan"),
    (["enroll", "b", "--store", "s", "--label", "l", "--images", "i", "--max-similarity", "2"],
     "edgefs enroll: error: argument --max-similarity: must be a finite number > 0 and <= 1, got 2"),
    (["enroll", "b", "--store", "s", "--label", "l", "--images", "i", "--max-similarity", "nan"],
     "edgefs enroll: error: argument --max-similarity: must be a finite number > 0 and <= 1, got nan"),
    (["enroll", "b", "--store", "s", "--label", "l", "--images", "i", "--threshold", "1.5"],
     "edgefs enroll: error: argument --threshold: must be a finite number >= -1 and <= 1, got 1.5"),
    (["run", "b", "--store", "s", "--source", "0", "--shots", "-1"],
     "edgefs run: error: argument --shots: must be >= 1, got -1"),
    (["run", "b", "--store", "s", "--source", "0", "--enroll", ""],
     "edgefs run: error: argument --enroll: a class name cannot be empty"),
    (["run", "b", "--store", "s", "--source", "0", "--device", "banana"],
     "edgefs run: error: argument --device: unknown device 'banana'; use one of: cpu, cuda, cuda:N (N: the GPU's "
     "index)"),
    (["run", "b", "--store", "s", "--source", "0", "--open-timeout", "0"],
     "edgefs run: error: argument --open-timeout: must be a finite number > 0, got 0"),
    (["run", "b", "--store", "s", "--source", "0", "--frames", "0"],
     "edgefs run: error: argument --frames: must be >= 1, got 0"),
    (["bench", "b", "--iterations", "0"], "edgefs bench: error: argument --iterations: must be >= 1, got 0"),
    (["build-engine", "b", "--device", "cpu"],
     "edgefs build-engine: error: argument --device: TensorRT needs a GPU: use cuda or cuda:N"),
    (["export", "c", "--out", "o", "--min-cosine", "2"],
     "edgefs export: error: argument --min-cosine: must be a finite number >= -1 and <= 1, got 2"),
    (["demo", "--difficulty", "1.5"], "edgefs demo: error: argument --difficulty: must be a finite number >= 0 and "
                                      "<= 1, got 1.5"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_values_are_refused_at_parse_time(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_error(argv, capsys) == message


def test_good_values_parse() -> None:
    args = build_parser().parse_args(["run", "b", "--store", "s", "--source", "0", "--device", "CUDA:1",
                                      "--threshold", "AUTO", "--enroll", " mug ", "--open-timeout", "2.5"])
    assert (args.device, args.threshold, args.enroll, args.open_timeout_s) == ("cuda:1", "auto", "mug", 2.5)
    args = build_parser().parse_args(["eval", "--protocols", "5w1s, 20W5S-within", "--baselines", "pixels"])
    assert args.protocols == ["5w1s", "20w5s-within"] and args.baselines == ["pixels"]


def test_train_help_lists_the_registered_methods_and_backbones(capsys: pytest.CaptureFixture[str]) -> None:
    from edgefs.backbones import BACKBONES

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"few-shot method: {', '.join(METHODS.names())} (default protonet)" in text
    assert f"backbone: {', '.join(BACKBONES.names())} (default conv4)" in text


def test_top_level_help_does_not_import_torch() -> None:
    code = ("import sys; from edgefs.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_unexpected_error_prints_one_line_and_writes_a_report(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The boundary itself: a command whose code raises something unplanned (injected here, since
    every known failure now has its own message)."""
    def broken(args: object) -> int:
        return {}["missing"]  # a real KeyError, raised inside edgefs code

    monkeypatch.setenv("EDGEFS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(edgefs.cli.classes, "run", broken)
    rc = main(["classes", "list", "--store", "s.db", "--bundle", "b"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    reports = list((tmp_path / "cache" / "crash").glob("crash-*.txt"))
    assert len(reports) == 1
    assert err.startswith("edgefs classes: unexpected error: KeyError: 'missing'")
    assert f"the full report is in {reports[0]}" in err
    report = reports[0].read_text()
    assert "Traceback (most recent call last)" in report and "KeyError: 'missing'" in report
    assert "command: edgefs classes list --store s.db --bundle b" in report and "edgefs " in report.splitlines()[0]

    rc = main(["--debug", "classes", "list", "--store", "s.db", "--bundle", "b"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback (most recent call last)" in err and "KeyError: 'missing'" in err


def test_crash_report_folder_not_writable_still_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("EDGEFS_CACHE", str(tmp_path / "file"))  # crash/ cannot be made under a file
    monkeypatch.setattr(edgefs.cli.classes, "run", lambda args: 1 / 0)
    rc = main(["classes", "list", "--store", "s.db", "--bundle", "b"])
    err = capsys.readouterr().err
    assert rc == 1 and "ZeroDivisionError: division by zero" in err
    assert "run again with --debug to see the traceback" in err and "Traceback" not in err


@pytest.mark.parametrize("reader", ["true", "head -1"])
def test_closed_pipe_ends_quietly(conv4_bundle: Path, glyph_data: Path, tmp_path: Path, reader: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`edgefs classes list | head -1` with a real pipe: exit 0 under pipefail, nothing on stderr."""
    store = tmp_path / "s.db"
    for folder in sorted(p for p in (glyph_data / "test").glob("*/*") if p.is_dir())[:3]:
        assert main(["enroll", str(conv4_bundle), "--store", str(store), "--label", folder.name, "--images",
                     str(folder), "--threads", "1", "--min-sharpness", "0", "--max-similarity", "1"]) == 0
    capsys.readouterr()
    cmd = " ".join(EDGEFS) + f" classes list --store {store} --bundle {conv4_bundle} | {reader}"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_ctrl_c_during_glyph_rendering(tmp_path: Path) -> None:
    """SIGINT to the whole process group (as a terminal's Ctrl-C) while the pool renders: one line,
    exit 130, no worker tracebacks, and the earlier complete output is left as it was."""
    out = tmp_path / "glyphs"
    cmd = [*EDGEFS, "data", "glyphs", "--out", str(out), "--dejavu-only", "--max-classes-per-script", "4"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    manifest = (out / "manifest.json").read_text()
    images = sorted(p.relative_to(out) for p in out.rglob("*.png"))

    # Every DejaVu class at 96 px: far more work than the half second before the interrupt, on any machine.
    proc = subprocess.Popen([*cmd[:-2], "--size", "96", "--overwrite"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint_default,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("rendering"):
                break
        time.sleep(0.5)  # the pool is rendering
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.strip() == "edgefs data: interrupted"
    assert (out / "manifest.json").read_text() == manifest
    assert json.loads(manifest)["config"]["size"] == 28
    assert sorted(p.relative_to(out) for p in out.rglob("*.png")) == images
    assert not (tmp_path / "glyphs.tmp").exists() and not (tmp_path / "glyphs.old").exists()


@pytest.mark.parametrize(("setting", "message"), [
    ("queries: 0", "edgefs eval: error: queries must be a whole number >= 1, got 0"),
    ("episodes: -3", "edgefs eval: error: episodes must be a whole number >= 1, got -3"),
    ("device: banana", "edgefs eval: error: unknown device 'banana'; use one of: cpu, cuda, cuda:N (N: the GPU's "
                       "index)"),
])
def test_eval_settings_from_a_yaml_file_are_checked_too(tmp_path: Path, setting: str, message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(setting + "\n")
    rc = main(["eval", "baseline:pixels", "--config", str(config), "--data", str(tmp_path / "none")])
    assert rc == 2 and capsys.readouterr().err.strip() == message
