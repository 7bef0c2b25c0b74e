"""The demo's presets, and a colour demo whose data cannot be fetched."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefs.camera.roi import Roi
from edgefs.cli import main
from edgefs.data import debian
from edgefs.demo import COLOUR_CHECKPOINT, DEFAULT_CHECKPOINT, demo_config
from edgefs.errors import EdgefsError


def test_presets_pick_model_data_and_designs() -> None:
    colour, glyphs = demo_config("colour"), demo_config("glyphs")
    assert colour.checkpoint == COLOUR_CHECKPOINT and colour.build == "units"
    assert colour.enroll_instances is None and colour.stream_instances is None  # the objects the user enrolled
    assert not colour.roi.is_full and colour.object_size < 1
    assert glyphs.checkpoint == DEFAULT_CHECKPOINT and glyphs.roi == Roi()
    assert (glyphs.enroll_instances, glyphs.stream_instances) == ("0:3", "3:")  # other fonts in the stream
    assert demo_config("colour", seconds=5.0, roi=None).seconds == 5.0  # None leaves the preset's value
    with pytest.raises(EdgefsError, match="presets: colour, glyphs"):
        demo_config("photos")


def test_colour_demo_without_its_package_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    def unreachable(name: str, cache: Path | None = None, log: object = None) -> debian.Package:
        raise debian.PackageFetchError(f"'apt-get download {name}' failed: network unreachable")

    monkeypatch.setattr(debian, "fetch", unreachable)
    data = tmp_path / "data" / "units"
    rc = main(["demo", "--data", str(data), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "freeciv-data" in err and "network unreachable" in err
    assert "apt-get update" in err and "make demo-glyphs" in err
    assert not data.exists()
    assert not (data.parent.exists() and any(data.parent.iterdir()))  # no hidden partial folder either
    assert not (tmp_path / "run").exists()
