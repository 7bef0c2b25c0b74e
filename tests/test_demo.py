"""The demo's presets, and a colour demo whose data cannot be fetched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefs.cli import main
from edgefs.data import debian
from edgefs.demo import COLOUR_CHECKPOINT, DEFAULT_CHECKPOINT, demo_config
from edgefs.errors import EdgefsError
from edgefs.runtime.roi import Roi


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


def test_demo_reports_both_static_references(glyph_data: Path, trained_bundle: Path, tmp_path: Path) -> None:
    """A short real demo (trained Conv-4, ONNX Runtime, live synthetic camera): demo.json and the summary
    give the camera-stills reference beside the clean images, each a top-1 over the designs streamed."""
    import json
    import shutil

    from edgefs.demo import STILLS_PER_DESIGN, choose_classes, run_demo

    out = tmp_path / "run"
    shutil.copytree(trained_bundle, out / "model.edgefs")  # exported from the checkpoint: not exported again
    cfg = demo_config("glyphs", data=glyph_data, out=out, classes=2, unknown=1, shots=2, enroll_designs=1,
                      seconds=1.5, fps=10.0, threads=1)
    lines: list[str] = []
    report = run_demo(cfg, log=lines.append)
    assert json.loads((out / "demo.json").read_text()) == json.loads(json.dumps(report))
    enrolled, _, designs = choose_classes(cfg)
    shown = sum(len(designs[n]) - cfg.enroll_designs for n in enrolled)
    assert report["static_images"] == shown
    assert report["still_frames"] == STILLS_PER_DESIGN * shown
    for key in ("static_top1", "still_top1"):
        assert 0.0 <= report[key] <= 1.0
        # a fraction of the images: a whole number of them right
        n = report["static_images" if key == "static_top1" else "still_frames"]
        assert abs(report[key] * n - round(report[key] * n)) < 1e-6
    text = "\n".join(lines)
    assert f"on {report['still_frames']} camera stills (no motion)" in text
    assert f"on {report['static_images']} clean images on white" in text


def test_camera_stills_are_fixed_region_crops_of_the_shown_designs(glyph_data: Path) -> None:
    from edgefs.demo import camera_stills, choose_classes

    cfg = demo_config("glyphs", data=glyph_data, classes=2, unknown=1, enroll_designs=1, roi=Roi(0.5, 0.5, 0.7, 0.6))
    enrolled, _, designs = choose_classes(cfg)
    frames, truth = camera_stills(cfg, enrolled, designs, per_design=2)
    again, _ = camera_stills(cfg, enrolled, designs, per_design=2)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))  # seeded: the same set
    counts = [2 * (len(designs[n]) - 1) for n in enrolled]
    assert truth == [i for i, c in enumerate(counts) for _ in range(c)]
    assert all(f.shape == (144, 224, 3) and f.dtype == np.uint8 for f in frames)  # the ROI of 320x240
    assert len({f.tobytes() for f in frames}) == len(frames)  # every still a fresh draw of pose and scene


def test_a_bundle_is_current_only_for_the_checkpoint_it_was_exported_from(trained_bundle: Path,
                                                                           tmp_path: Path) -> None:
    """The demo and the benchmarks export again when the checkpoint at the same path has changed."""
    import shutil

    from edgefs.runtime.bundle import exported_from, source_checkpoint
    from tests.conftest import CHECKPOINT

    assert exported_from(trained_bundle, CHECKPOINT)
    other = tmp_path / "retrained.pt"
    data = bytearray(CHECKPOINT.read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    assert not exported_from(trained_bundle, other)
    assert not exported_from(trained_bundle, tmp_path / "missing.pt")
    copy = tmp_path / "copy.edgefs"
    shutil.copytree(trained_bundle, copy)
    assert source_checkpoint(copy) == source_checkpoint(trained_bundle) is not None
    (copy / "manifest.json").write_text("{not json")
    assert source_checkpoint(copy) is None and not exported_from(copy, CHECKPOINT)
    (copy / "manifest.json").unlink()
    assert not exported_from(copy, CHECKPOINT)

