"""The glyph benchmark renderer, on the DejaVu fonts every machine has (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.data import fonts as F
from edgefs.data import glyph_filters as GF
from edgefs.data import glyphs as G
from edgefs.errors import DataError

SMALL = {"dejavu_only": True, "max_classes_per_script": 3}


def tree_digest(root: Path) -> dict[str, str]:
    """sha1 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("glyphs") / "set"
    return out, G.render_glyph_benchmark(out, G.GlyphConfig(**SMALL), log=lambda s: None)


@pytest.fixture(scope="module")
def dejavu_font():
    from PIL import ImageFont

    path = next(p for p in F.dejavu_files() if p.name == "DejaVuSans.ttf")
    return ImageFont.truetype(str(path), 128, layout_engine=ImageFont.Layout.BASIC)


def test_same_seed_gives_identical_files(small: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = small
    again = G.render_glyph_benchmark(tmp_path / "again", G.GlyphConfig(**SMALL), log=lambda s: None)
    a, b = tree_digest(out), tree_digest(tmp_path / "again")
    a.pop("manifest.json"), b.pop("manifest.json")  # holds the wall time
    assert a == b and len(a) == again["totals"]["images"]


def test_layout_and_images(small: tuple[Path, dict]) -> None:
    out, manifest = small
    folders = sorted(p for p in out.glob("*/*/*") if p.is_dir())
    assert len(folders) == manifest["totals"]["classes"] >= 20
    for folder in folders:
        assert folder.parts[-3] in G.SPLITS
        assert re.fullmatch(r"U\+[0-9A-F]{4,6}", folder.name)
        names = sorted(int(p.stem) for p in folder.glob("*.png"))
        assert names == list(range(len(names))) and len(names) >= 3
    img = cv2.imread(str(next(out.rglob("0.png"))), cv2.IMREAD_UNCHANGED)
    assert img.shape == (28, 28) and img.dtype == np.uint8  # one grey channel
    assert img[0, 0] == 255 and img.min() < 64  # white background, black ink
    ys, xs = np.nonzero(img < 128)
    assert abs((ys.min() + ys.max()) / 2 - 13.5) <= 2 and abs((xs.min() + xs.max()) / 2 - 13.5) <= 2


def test_manifest_matches_files(small: tuple[Path, dict]) -> None:
    out, manifest = small
    assert json.loads((out / "manifest.json").read_text())["totals"] == manifest["totals"]
    assert manifest["config"]["dejavu_only"] is True and manifest["config"]["seed"] == 0
    assert all(f["family"].startswith("DejaVu") for f in manifest["fonts"])
    for split, info in manifest["splits"].items():
        on_disk = Counter(p.parent.name for p in (out / split).glob("*/*") if p.is_dir())
        assert dict(on_disk) == info["classes_per_script"]
        assert sorted(on_disk) == info["scripts"]
        assert info["images"] == len(list((out / split).rglob("*.png")))
    assert list(manifest["filters"]) == list(G.FILTERS)
    assert "pairs" in manifest["near_duplicates"] and "method" in manifest["outliers"]


def test_splits_are_disjoint_by_script(small: tuple[Path, dict]) -> None:
    out, _ = small
    scripts = {s: {p.name for p in (out / s).iterdir()} for s in G.SPLITS}
    assert all(scripts[s] for s in G.SPLITS)
    assert not (scripts["train"] & scripts["val"] or scripts["train"] & scripts["test"]
                or scripts["val"] & scripts["test"])
    assert len(set().union(*scripts.values())) >= 15  # DejaVu alone covers 15+ scripts


def test_min_designs_respected(small: tuple[Path, dict]) -> None:
    _, manifest = small
    weight = manifest["config"]["style_weight"]
    for name, font_ids in manifest["class_fonts"].items():
        designs = {manifest["fonts"][i]["design"] for i in font_ids}
        assert len(designs) + weight * (len(font_ids) - len(designs)) >= 3, name


def test_refuses_to_overwrite(small: tuple[Path, dict]) -> None:
    out, _ = small
    with pytest.raises(DataError, match="overwrite"):
        G.render_glyph_benchmark(out, G.GlyphConfig(**SMALL), log=lambda s: None)


def test_near_empty_notdef_and_repeated_images_are_removed(dejavu_font) -> None:
    good = G.Render(0x41, 0, G.render_ink(dejavu_font, "A", 28, 0.8)[0], raw_side=0.7)
    dot = np.zeros((28, 28), np.uint8)
    dot[13:15, 13:15] = 255
    empty = G.Render(0x42, 0, dot, raw_side=0.05)
    box = G.render_ink(dejavu_font, "\U0010fffd", 28, 0.8)[0]
    notdef = G.Render(0x43, 0, box.copy(), raw_side=0.7)
    # Font 1 draws five different letters as the same image: a placeholder, not letters.
    same = [G.Render(cp, 1, G.render_ink(dejavu_font, "Z", 28, 0.8)[0], raw_side=0.7)
            for cp in range(0x61, 0x66)]
    scripts = {cp: "latin" for cp in range(0x41, 0x67)}
    stats: Counter = Counter()
    kept = GF.basic_filters([good, empty, notdef, *same], {0: box, 1: None}, scripts, 28, stats)
    assert kept == [good]
    assert stats == Counter(near_empty=1, notdef=1, same_image_for_many_letters=5)


def test_exact_duplicates_in_a_class_are_removed(dejavu_font) -> None:
    ink = G.render_ink(dejavu_font, "A", 28, 0.8)[0]
    group = [G.Render(0x41, 0, ink), G.Render(0x41, 1, ink.copy()),
             G.Render(0x41, 2, G.render_ink(dejavu_font, "\u0391", 28, 0.6)[0])]
    stats: Counter = Counter()
    kept = GF.dedupe_class(group, stats)
    assert [r.font for r in kept] == [0, 2] and stats["exact_duplicate"] == 1


def test_box_render_detected(dejavu_font) -> None:
    assert GF.is_rectangle(G.render_ink(dejavu_font, "\U0010fffd", 28, 0.8)[0])
    assert not GF.is_rectangle(G.render_ink(dejavu_font, "O", 28, 0.8)[0])


def test_outlier_instance_is_flagged() -> None:
    from PIL import ImageFont

    fonts = [ImageFont.truetype(str(p), 128, layout_engine=ImageFont.Layout.BASIC) for p in F.dejavu_files()
             if "Condensed" not in p.name and "Math" not in p.name][:5]
    classes = {ord(ch): [G.Render(ord(ch), i, G.render_ink(f, ch, 28, 0.8)[0]) for i, f in enumerate(fonts)]
               for ch in "ABEHKMNT"}
    # A "C" drawn for class T by one font (like a Latin C drawn for Greek sigma).
    classes[ord("T")][2] = G.Render(ord("T"), 2, G.render_ink(fonts[2], "C", 28, 0.8)[0])
    flags = GF.outlier_flags(classes, dict.fromkeys(classes, "latin"), ratio=0.8, spread=1.75)
    assert flags[ord("T")].tolist() == [False, False, True, False, False]
    assert sum(int(f.sum()) for f in flags.values()) <= 2


def test_script_of() -> None:
    assert F.script_of(0x3B1) == "greek"          # GREEK SMALL LETTER ALPHA
    assert F.script_of(0x416) == "cyrillic"
    assert F.script_of(0x1401) == "canadian_syllabics"
    assert F.script_of(ord("7")) is None          # digit
    assert F.script_of(ord("é")) is None          # precomposed: near-duplicate of e
    assert F.script_of(0xFF21) is None            # FULLWIDTH LATIN CAPITAL LETTER A
    assert F.script_of(0x2B0) is None             # MODIFIER LETTER SMALL H (Lm)


def test_split_assignment_is_seeded_and_balanced() -> None:
    counts = {f"s{i}": n for i, n in enumerate([300, 120, 90, 80, 60, 50, 40, 40, 30, 30, 20, 20, 10])}
    cfg = G.GlyphConfig(seed=3)
    a, b = G.assign_splits(counts, cfg), G.assign_splits(counts, cfg)
    assert a == b
    total = sum(counts.values())
    for split, frac in zip(G.SPLITS, cfg.fractions, strict=True):
        assert len(a[split]) >= 3 and abs(sum(counts[s] for s in a[split]) / total - frac) < 0.1
    with pytest.raises(DataError, match="no classes"):
        G.assign_splits(counts, G.GlyphConfig(split_scripts={"train": ["klingon"]}))


def test_fetch_failure_is_an_error_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise F.FetchError("'apt-get download fonts-cardo' failed: no network")

    monkeypatch.setattr(F, "fetch_font_packages", fail)
    with pytest.raises(DataError) as err:
        G.load_fonts(G.GlyphConfig().resolved(), lambda _: None)
    text = str(err.value)
    assert "could not fetch the font packages: 'apt-get download fonts-cardo' failed: no network" in text
    assert "Nothing was rendered" in text and "apt-get update" in text and "--dejavu-only" in text


def test_fetch_without_apt_raises_fetch_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    with pytest.raises(F.FetchError, match="apt-get"):
        F.fetch_font_packages(tmp_path, ["fonts-cardo"], log=lambda s: None)
