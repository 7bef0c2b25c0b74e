"""The region of interest: parsing, cropping as a view, drawing, and the camera loop embedding only the region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefs.camera.loop import Pipeline, RunConfig
from edgefs.cli import main
from edgefs.errors import ConfigError
from edgefs.runtime.roi import Roi
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions


@pytest.mark.parametrize(("text", "roi"), [
    ("full", Roi()),
    ("FULL", Roi()),
    ("0.6", Roi(0.5, 0.5, 0.6, 0.6)),
    ("0.3,0.4,0.5,0.2", Roi(0.3, 0.4, 0.5, 0.2)),
    (" 1 ", Roi()),
])
def test_parse_forms_and_round_trip(text: str, roi: Roi) -> None:
    assert Roi.parse(text) == roi
    assert Roi.parse(roi.to_text()) == roi


def test_to_text_names_the_short_forms() -> None:
    assert Roi().to_text() == "full"
    assert Roi.parse("0.6").to_text() == "0.6"
    assert Roi(0.3, 0.4, 0.5, 0.2).to_text() == "0.3,0.4,0.5,0.2"


@pytest.mark.parametrize("text", ["", "abc", "0", "1.5", "-0.2", "0.5,0.5", "0.5,0.5,0.5", "nan", "2,0.5,0.5,0.5",
                                  "0.5,0.5,0,0.5", "inf"])
def test_bad_text_is_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ConfigError, match="roi"):
        Roi.parse(text)


def test_crop_is_a_view_of_the_right_box() -> None:
    frame = np.arange(240 * 320 * 3, dtype=np.uint32).reshape(240, 320, 3).astype(np.uint8)
    roi = Roi.parse("0.5")
    crop = roi.crop(frame)
    assert crop.shape == (120, 160, 3)
    assert np.shares_memory(crop, frame)
    assert np.array_equal(crop, frame[60:180, 80:240])
    assert Roi().crop(frame).shape == frame.shape


def test_crop_clips_at_the_edges_and_keeps_a_pixel() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    assert Roi(0.0, 0.0, 0.5, 0.5).crop(frame).shape == (25, 50, 3)  # the corner quarter of the box
    assert Roi(1.0, 1.0, 0.001, 0.001).crop(frame).shape == (1, 1, 3)


def test_draw_marks_the_border_only() -> None:
    frame = np.zeros((120, 160, 3), np.uint8)
    Roi.parse("0.5").draw(frame)
    x0, y0, x1, y1 = Roi.parse("0.5").box(120, 160)
    assert frame[y0, x0:x1].any() and frame[y0:y1, x0].any()
    assert not frame[y0 + 5 : y1 - 5, x0 + 5 : x1 - 5].any()  # the inside is left as it was
    assert not frame[:y0 - 3].any()
    full = np.zeros((120, 160, 3), np.uint8)
    Roi().draw(full)
    assert not full.any()  # the whole frame: nothing to show


def test_pipeline_embeds_the_region_and_records_it_drawn(trained_bundle_for_roi: Path, glyph_data: Path,
                                                          tmp_path: Path) -> None:
    """The real loop over a synthetic camera: what reaches the engine's resize is the region, not the frame."""
    roi = Roi(0.4, 0.5, 0.5, 0.6)
    seen: list[tuple[int, ...]] = []
    with Classifier.open(trained_bundle_for_roi, tmp_path / "s.db",
                         options=EngineOptions(backend="onnxruntime", threads=1), log=lambda _: None) as clf:
        prepare = clf.prepare

        def spy(frames, input_order="RGB"):  # the real prepare runs; only the shapes are noted
            seen.extend(f.shape for f in frames)
            return prepare(frames, input_order)

        clf.prepare = spy  # type: ignore[method-assign]
        config = RunConfig(sources=[f"synthetic:{glyph_data}?seed=3&frames=12&size=320x240"], roi=roi,
                           record=str(tmp_path / "out.avi"))
        summary = Pipeline(clf, config, log=lambda _: None).run()
    assert summary.frames == 12
    assert seen and all(s == (144, 160, 3) for s in seen)  # 0.6 x 240 rows, 0.5 x 320 columns
    import cv2

    video = cv2.VideoCapture(str(tmp_path / "out.avi"))
    ok, img = video.read()
    assert ok
    x0, y0, x1, _ = roi.box(240, 320)
    # The rectangle is drawn in the recorded frame (yellow in BGR: high green and red, low blue).
    edge = img[y0, x0 + 10 : x1 - 10].astype(int)
    assert (edge[:, 1] > 150).mean() > 0.8 and (edge[:, 2] > 150).mean() > 0.8


def test_a_region_saved_with_the_store_is_the_default(trained_bundle_for_roi: Path, glyph_data: Path,
                                                      tmp_path: Path) -> None:
    """``edgefs serve``'s settings page saves the region with the store; a later run without --roi uses it,
    an explicit region wins, and an unusable saved one falls back to the whole frame with a note."""
    source = [f"synthetic:{glyph_data}?seed=3&frames=2&size=320x240"]
    logs: list[str] = []
    with Classifier.open(trained_bundle_for_roi, tmp_path / "s.db",
                         options=EngineOptions(backend="onnxruntime", threads=1), log=lambda _: None) as clf:
        assert Pipeline(clf, RunConfig(sources=source), log=logs.append).cfg.roi == Roi()
        clf.save_settings(roi="0.5")
        assert Pipeline(clf, RunConfig(sources=source), log=logs.append).cfg.roi == Roi.parse("0.5")
        explicit = Roi(0.4, 0.5, 0.5, 0.6)
        assert Pipeline(clf, RunConfig(sources=source, roi=explicit), log=logs.append).cfg.roi == explicit
        clf.save_settings(roi="7,7,7,7", smooth="many")
        pipeline = Pipeline(clf, RunConfig(sources=source), log=logs.append)
        assert pipeline.cfg.roi == Roi() and pipeline.cfg.smooth == 5
    assert any("region of interest saved with the store is not usable" in line for line in logs)
    assert any("smoothing window saved with the store is not usable ('many')" in line for line in logs)


def test_cli_roi_is_checked_when_parsed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "bundle", "--store", "s.db", "--source", "0", "--roi", "1.7"])
    assert exc.value.code == 2
    assert "--roi" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_bundle_for_roi(glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgefs.export import export_bundle

    out = tmp_path_factory.mktemp("roi") / "model.edgefs"
    checkpoint = Path(__file__).parents[1] / "models" / "protonet-conv4-glyphs28.pt"
    export_bundle(checkpoint, out, data=str(glyph_data), parity_images=8, log=lambda _: None)
    return out
