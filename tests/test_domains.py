"""The multi-domain benchmark builder on tiny package-shaped trees written at test time.

Each domain's extraction runs on real files laid out as its Debian/npm package
lays them out (icon themes, a freeciv tileset with a sprite sheet, an SVG card
deck, clip-art folders, flag sets). The fetch step is injected: a function
returning those trees, or one that raises as a failed download does. Nothing is
downloaded unless a test is marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.data import debian
from edgefs.data.domains import DOMAINS, Item, build_domain, split_classes
from edgefs.data.domains import clipart as C
from edgefs.data.domains import flags as FL
from edgefs.data.domains import icons as I
from edgefs.data.domains import units as U
from edgefs.data.domains.filters import apply_filters, is_blank, to_canvas
from edgefs.errors import DataError
from tests.conftest import load_tool

needs_rsvg = pytest.mark.skipif(shutil.which("rsvg-convert") is None,
                                reason="rsvg-convert not installed (apt-get install librsvg2-bin)")


def blob(seed: int, size: int = 48, alpha: bool = True) -> np.ndarray:
    """A distinct, colourful drawing: random filled rectangles and circles on transparent pixels."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 4), np.uint8)
    for _ in range(6):
        colour = [int(c) for c in rng.integers(0, 256, 3)] + [255]
        x, y = rng.integers(0, size - 8, 2)
        w, h = rng.integers(6, size // 2, 2)
        if rng.random() < 0.5:
            cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), colour, -1)
        else:
            cv2.circle(img, (int(x), int(y)), int(w // 2 + 2), colour, -1)
    return img if alpha else img[:, :, :3]


def write_png(path: Path, rgba: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA if rgba.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), bgr)
    return path


def fake_fetch(trees: dict[str, Path]):
    """A fetcher over already unpacked trees (what apt/npm would leave in the cache)."""
    def fetch(name: str) -> debian.Package:
        root = trees.get(name)
        if root is None:
            root = trees["_empty"]
        return debian.Package(name, "1.0", "test-licence", "0" * 64, root)
    return fetch


# --- icons ---------------------------------------------------------------------------------

def icon_trees(tmp: Path, n_themes: int = 5, names: tuple[str, ...] = ("printer", "camera", "folder")) -> dict:
    trees = {"_empty": tmp / "empty"}
    trees["_empty"].mkdir(parents=True)
    for t, (pkg, theme) in enumerate(list(I.THEMES.items())[:n_themes]):
        root = tmp / pkg
        base = root / "usr/share/icons" / theme
        for k, name in enumerate(names):
            write_png(base / "48x48/apps" / f"{name}.png", blob(100 * t + k))
            write_png(base / "16x16/apps" / f"{name}.png", blob(999))  # too small: never chosen
        write_png(base / "48x48/apps/printer-symbolic.png", blob(7))
        write_png(base / "48x48/emotes/face-smile.png", blob(8))
        mono = np.zeros((48, 48, 4), np.uint8)
        cv2.circle(mono, (24, 24), 18, (40, 40, 40, 255), -1)
        write_png(base / "48x48/apps/mono.png", mono)
        os.symlink("printer.png", base / "48x48/apps/printer-alias.png")
        trees[pkg] = root
    return trees


def test_theme_icons_skips_symbolic_emoji_small_and_aliases(tmp_path: Path) -> None:
    trees = icon_trees(tmp_path, n_themes=1)
    pkg, theme = next(iter(I.THEMES.items()))
    stats: Counter = Counter()
    icons = I.theme_icons(trees[pkg] / "usr/share/icons" / theme, stats)
    assert sorted(icons) == ["camera", "folder", "mono", "printer"]
    assert icons["printer"].parent.parent.name == "48x48"
    assert stats["symbolic"] == 1 and stats["emoji_or_emote_path"] == 1 and stats["alias_dropped"] == 1


def test_monochrome_check() -> None:
    mono = np.zeros((48, 48, 4), np.uint8)
    cv2.circle(mono, (24, 24), 18, (40, 40, 40, 255), -1)
    assert I.is_monochrome(mono)
    assert not I.is_monochrome(blob(3))


def test_nominal_size_forms() -> None:
    assert I.nominal_size(Path("48x48/apps/a.png")) == 48
    assert I.nominal_size(Path("apps/64/a.svg")) == 64
    assert I.nominal_size(Path("24x24@2x/apps/a.png")) == 48
    assert I.nominal_size(Path("scalable/apps/a.svg")) == I.MAX_SIZE
    assert I.nominal_size(Path("scalable-up-to-32/a.svg")) == 32
    assert I.nominal_size(Path("apps/a.png")) is None


def test_icons_domain_builds_imagefolder_and_manifest(tmp_path: Path) -> None:
    trees = icon_trees(tmp_path / "pkgs")
    out = tmp_path / "icons"
    m = build_domain("icons", out, fetch=fake_fetch(trees), log=lambda s: None)
    files = sorted(out.glob("*/*/*.png"))
    assert len(files) == 15  # 3 names x 5 themes; symbolic, emote, alias, monochrome gone
    assert {f.parent.name for f in files} == {"printer", "camera", "folder"}
    img = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (84, 84, 3)
    assert m["filters"]["extraction"]["monochrome"] == 5
    assert m["filters"]["extraction"]["symbolic"] == 5
    assert m["total"] == {"classes": 3, "images": 15, "instances_per_class": {"min": 5, "median": 5.0, "max": 5}}
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["packages"][0] == {"name": next(iter(I.THEMES)), "version": "1.0", "licence": "test-licence",
                                      "sha256": "0" * 64}
    assert on_disk["audit"] is None and on_disk["split"]["seed"] == 0
    assert sum(on_disk["splits"][s]["classes"] for s in ("train", "val", "test")) == 3


def test_icons_class_needs_min_themes(tmp_path: Path) -> None:
    trees = icon_trees(tmp_path / "pkgs", n_themes=4)
    with pytest.raises(DataError, match="fewer than 3 classes"):
        build_domain("icons", tmp_path / "out", fetch=fake_fetch(trees), log=lambda s: None)
    assert not (tmp_path / "out").exists()


# --- units ---------------------------------------------------------------------------------

SPEC = """[spec]
options = "+Freeciv-3.0-spec"
[file]
gfx = "{folder}/units"
[grid_main]
x_top_left = 1
y_top_left = 1
dx = 20
dy = 16
pixel_border = 1
tiles = {{ "row", "column", "tag"
  0, 0, "u.{a}"  ; comment
  0, 1, "u.{b}"
  1, 0, "u.{c}", "u.other"
}}
"""


def write_tileset(data: Path, name: str, folder: str, seed: int, orient: str | None = None) -> None:
    tags = ("warriors", "settlers", "workers")
    if orient:
        tags = tuple(f"{t}_{orient}" for t in tags)
    (data / folder).mkdir(parents=True, exist_ok=True)
    (data / folder / "units.spec").write_text(SPEC.format(folder=folder, a=tags[0], b=tags[1], c=tags[2]))
    sheet = np.zeros((1 + 2 * 17, 1 + 2 * 21, 4), np.uint8)
    for r, c in ((0, 0), (0, 1), (1, 0)):
        sheet[1 + r * 17:1 + r * 17 + 16, 1 + c * 21:1 + c * 21 + 20] = blob(seed + 10 * r + c, 20)[:16]
    write_png(data / f"{folder}/units.png", sheet)
    extra = f'unit_default_orientation = "{orient}"\n' if orient else ""
    (data / f"{name}.tilespec").write_text(f'[tilespec]\n{extra}files =\n  "{folder}/units.spec",\n  "misc/x.spec"\n\n')


def freeciv_tree(tmp: Path) -> Path:
    root = tmp / "freeciv-data"
    data = root / "usr/share/games/freeciv"
    write_tileset(data, "alpha", "alpha", 1)
    write_tileset(data, "beta", "beta", 50, orient="s")
    write_tileset(data, "gamma", "gamma", 90)
    (data / "reuse.tilespec").write_text('[tilespec]\nfiles =\n  "alpha/units.spec"\n\n')  # shares alpha's drawings
    return root


def test_parse_spec_coordinates_and_tags(tmp_path: Path) -> None:
    data = freeciv_tree(tmp_path) / "usr/share/games/freeciv"
    sprites = U.parse_spec(data / "alpha/units.spec", data)
    assert [(s.x, s.y, s.w, s.h) for s in sprites] == [(1, 1, 20, 16), (22, 1, 20, 16), (1, 18, 20, 16)]
    assert sprites[2].tags == ("u.workers", "u.other")
    assert sprites[0].sheet == data / "alpha/units.png"


def test_unit_sprites_default_orientation_and_shared_specs(tmp_path: Path) -> None:
    data = freeciv_tree(tmp_path) / "usr/share/games/freeciv"
    found = U.unit_sprites(data)
    assert sorted({d for _, d in found}) == ["alpha", "beta", "gamma"]  # 'reuse' adds no drawing
    assert {u for u, d in found if d == "beta"} == {"warriors", "settlers", "workers"}


def test_units_domain_build_crops_the_right_sprite(tmp_path: Path) -> None:
    trees = {"freeciv-data": freeciv_tree(tmp_path), "_empty": tmp_path}
    out = tmp_path / "units"
    m = build_domain("units", out, fetch=fake_fetch(trees), log=lambda s: None)
    assert m["total"]["classes"] == 3 and m["total"]["images"] == 9
    assert sorted(m["instances"]) == ["alpha", "beta", "gamma"]
    # The 'settlers' drawing of tileset alpha is the (0, 1) sprite: same colours as the source blob.
    path = next(out.glob("*/settlers/alpha.png"))
    got = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    src = blob(1 + 1, 20)[:16]
    expected = to_canvas(src, 84)
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < 1.0


# --- cards ---------------------------------------------------------------------------------

DECK = """<svg xmlns="http://www.w3.org/2000/svg" width="400" height="200">
<g id="1_club"><rect x="10" y="20" width="70" height="100" fill="#ff0000"/></g>
<g id="king_heart"><rect x="200" y="40" width="35" height="50" fill="#0000ff"/></g>
</svg>"""


@needs_rsvg
def test_card_elements_render_cropped(tmp_path: Path) -> None:
    from edgefs.data.domains import cards as K

    root = tmp_path / "kdegames-card-data-kf5"
    deck = root / "usr/share/carddecks/svg-tiny/tiny.svg"
    deck.parent.mkdir(parents=True)
    deck.write_text(DECK)
    assert K.deck_files(root) == {"tiny": deck}
    zoom = K.deck_zoom(deck, 200)
    assert zoom == pytest.approx(2.0, rel=0.02)
    ace = K.render_card(deck, "1_club", zoom)
    king = K.render_card(deck, "king_heart", zoom)
    assert ace.shape[:2] == pytest.approx((200, 140), abs=2)
    assert king.shape[:2] == pytest.approx((100, 70), abs=2)
    assert ace[100, 70, :3].tolist() == [255, 0, 0] and king[50, 35, :3].tolist() == [0, 0, 255]
    assert K.render_card(deck, "queen_spade", zoom) is None


# --- flags and clip-art --------------------------------------------------------------------

def test_flag_names_match_iso_codes(tmp_path: Path) -> None:
    pkg = tmp_path / "flag-icons" / "package"
    pkg.mkdir(parents=True)
    rows = [{"code": "gb", "name": "United Kingdom", "iso": True},
            {"code": "ba", "name": "Bosnia and Herzegovina", "iso": True},
            {"code": "kr", "name": "South Korea", "iso": True}]
    (pkg / "country.json").write_text(json.dumps(rows))
    names, lookup = FL.country_table(tmp_path / "flag-icons")
    files = [Path(f) for f in ("united_kingdom-large.png", "bosnia_herzegovina.png", "korea.png", "prussia.png")]
    stats: Counter = Counter()
    got = FL.named_set(files, lookup, stats, "x")
    assert got == {"gb": files[0], "ba": files[1], "kr": files[2]}
    assert stats["x_name_not_a_country"] == 1 and names["kr"] == "South Korea"


def test_clipart_categories_merge_styles_and_exclude(tmp_path: Path) -> None:
    root = tmp_path / "stamps"
    for rel in ("animals/birds/a.png", "animals/birds/cartoon/b.png", "animals/birds/owls/c.png",
                "people/faces/d.png", "town/flags/e.png", "people/f.png", "shapes/stars/g.png"):
        write_png(root / rel, blob(len(rel)))
    stats: Counter = Counter()
    cats = C.category_files(root, stats)
    assert {k: sorted(p.name for p in v) for k, v in cats.items()} == {"animals/birds": ["a.png", "b.png", "c.png"]}
    assert stats["emoji_like_folder"] == 1 and stats["flags_folder"] == 1
    assert stats["top_level_miscellany"] == 1 and stats["not_an_object_category"] == 1


# --- filters, split ------------------------------------------------------------------------

def canvas(seed: int) -> np.ndarray:
    return to_canvas(blob(seed), 84)


def test_filters_blank_duplicates_and_cross_class() -> None:
    shared = canvas(500)
    items = [Item("a", f"i{k}", canvas(k)) for k in range(5)]
    items += [Item("a", "blank", np.full((84, 84, 3), 255, np.uint8)),
              Item("a", "zcopy", np.clip(canvas(0).astype(int) + 2, 0, 255).astype(np.uint8)),
              Item("a", "shared", shared)]
    items += [Item("b", f"j{k}", canvas(100 + k)) for k in range(5)] + [Item("b", "shared", shared)]
    items += [Item("c", f"k{k}", canvas(200 + k)) for k in range(2)]
    kept, removed = apply_filters(items, min_instances=5, bits=4)
    assert removed == Counter({"blank": 1, "near_duplicate": 1, "identical_across_classes": 2,
                               "too_few_instances": 2, "classes_too_few_instances": 1})
    assert sorted({i.cls for i in kept}) == ["a", "b"] and len(kept) == 10
    again, _ = apply_filters(list(reversed(items)), min_instances=5, bits=4)
    assert [(i.cls, i.instance) for i in again] == [(i.cls, i.instance) for i in kept]


def test_blank_check_uses_background() -> None:
    grey = np.full((84, 84, 3), 128, np.uint8)
    assert is_blank(grey, 128) and not is_blank(grey, 255)


def test_split_is_class_disjoint_and_deterministic() -> None:
    names = [f"c{i:02d}" for i in range(30)]
    a, b = split_classes(names, (0.6, 0.2, 0.2), 0), split_classes(list(reversed(names)), (0.6, 0.2, 0.2), 0)
    assert a == b
    assert [len(a[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    assert split_classes(names, (0.6, 0.2, 0.2), 1) != a


# --- atomic build, fetch failures ----------------------------------------------------------

def test_failed_fetch_leaves_no_data_set(tmp_path: Path) -> None:
    trees = {"freeciv-data": freeciv_tree(tmp_path / "pkgs"), "_empty": tmp_path}

    def failing(name: str) -> debian.Package:
        raise debian.PackageFetchError(f"'apt-get download {name}' failed: network unreachable")

    out = tmp_path / "out" / "units"
    out.parent.mkdir()
    with pytest.raises(DataError, match=r"could not be fetched.*No data set was written"):
        build_domain("units", out, fetch=failing, log=lambda s: None)
    assert list(out.parent.iterdir()) == []  # neither the set nor a hidden partial folder
    # A crash after fetching (while extracting) leaves nothing either, and an existing set survives.
    good = build_domain("units", out, fetch=fake_fetch(trees), log=lambda s: None)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def broken(name: str) -> debian.Package:
        root = tmp_path / "broken"
        (root / "usr/share/games/freeciv").mkdir(parents=True, exist_ok=True)
        (root / "usr/share/games/freeciv/bad.tilespec").write_text('files =\n "x/units.spec"\n')
        (root / "usr/share/games/freeciv/x").mkdir(exist_ok=True)
        (root / "usr/share/games/freeciv/x/units.spec").write_text("[file]\ngfx = \"x/units\"\n[grid_main]\n"
                                                                   "tiles = { \"row\", \"column\", \"tag\"\n"
                                                                   " 0, 0, \"u.a\"\n}\n")
        return debian.Package(name, "1", "l", "0" * 64, root)

    with pytest.raises(KeyError):  # grid without dx/dy: extraction fails mid-way
        build_domain("units", out, fetch=broken, overwrite=True, log=lambda s: None)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in out.parent.iterdir()] == ["units"]
    assert good["total"]["images"] == 9


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    (tmp_path / "units").mkdir()
    with pytest.raises(DataError, match="--overwrite"):
        build_domain("units", tmp_path / "units", fetch=fake_fetch({}), log=lambda s: None)


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="not a Debian machine (no apt-cache)")
def test_unknown_debian_package_fails_clearly(tmp_path: Path) -> None:
    # apt-cache reads the local package lists: a real apt failure, offline and fast.
    with pytest.raises(debian.PackageFetchError, match=r"not known to apt.*apt-get update"):
        debian.fetch("edgefs-no-such-package", tmp_path)
    assert not list(tmp_path.rglob("*.deb"))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EDGEFS_NETWORK_TESTS") != "1",
                    reason="downloads a .deb from the Debian mirror; set EDGEFS_NETWORK_TESTS=1 to run")
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="not a Debian machine (no apt-get)")
def test_fetch_deb_verifies_and_refetches_a_damaged_cache(tmp_path: Path) -> None:
    try:
        pkg = debian.fetch("famfamfam-flag-png", tmp_path, log=lambda s: None)
    except debian.PackageFetchError as e:
        pytest.skip(f"apt cannot fetch here: {e}")
    deb = next((tmp_path / "debs").glob("*.deb"))
    assert debian._sha256(deb) == pkg.sha256 and (pkg.root / "usr/share/flags").is_dir()
    assert pkg.licence and pkg.version
    deb.write_bytes(b"damaged")
    (pkg.root / ".unpacked").unlink()
    again = debian.fetch("famfamfam-flag-png", tmp_path, log=lambda s: None)
    assert again.sha256 == pkg.sha256 and debian._sha256(deb) == pkg.sha256
    assert not [p for p in (tmp_path / "debs").iterdir() if p.name.startswith(".")]


# --- CLI and audit -------------------------------------------------------------------------

@pytest.mark.parametrize("name", [*DOMAINS.names(), "all"])
def test_cli_has_a_subcommand_per_domain(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from edgefs.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["data", name, "--help"])
    help_text = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--out" in help_text and "--seed" in help_text


def test_audit_sheets_and_record(tmp_path: Path) -> None:
    trees = {"freeciv-data": freeciv_tree(tmp_path / "pkgs"), "_empty": tmp_path}
    out = tmp_path / "units"
    build_domain("units", out, fetch=fake_fetch(trees), log=lambda s: None)
    audit = load_tool("domain_audit")
    assert audit.main([str(out), "--classes", "2", "--seed", "3", "--record", "1", "--note", "one odd"]) == 0
    sheet = cv2.imread(str(out / "audit/sheet_00.png"))
    assert sheet.shape[0] == 2 * (64 + audit.CAPTION_H + 2)
    entry = json.loads((out / "manifest.json").read_text())["audit"]
    assert entry["classes_looked_at"] == 2 and entry["images_looked_at"] == 6
    assert entry["outlier_rate"] == pytest.approx(1 / 6, abs=1e-4) and entry["note"] == "one odd"
    first = entry["sampled_classes"]
    audit.main([str(out), "--classes", "2", "--seed", "3", "--record", "1"])
    assert json.loads((out / "manifest.json").read_text())["audit"]["sampled_classes"] == first


def test_oversized_images_are_not_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefs.data.domains import svg

    small, big = write_png(tmp_path / "s.png", blob(1, 16)[:8, :8]), write_png(tmp_path / "b.png", blob(2, 20))
    monkeypatch.setattr(svg, "MAX_PIXELS", 100)
    assert svg.image_pixels(big) == 400 and svg.read_rgba(big) is None
    assert svg.read_rgba(small).shape == (8, 8, 4)
    assert svg.image_pixels(tmp_path / "missing.png") == 0


def test_clipart_build_merges_sources_and_same_named_files(tmp_path: Path) -> None:
    tp = tmp_path / "tp"
    oc = tmp_path / "oc"
    seed = 0
    for cat in ("animals/insects", "food/fruit", "plants/trees"):
        for i in range(4):
            seed += 1
            write_png(tp / "usr/share/tuxpaint/stamps" / cat / f"x{i}.png", blob(seed))
            seed += 1
            write_png(oc / "usr/share/openclipart/png" / cat / f"x{i}.png", blob(seed))
    write_png(tp / "usr/share/tuxpaint/stamps/animals/insects/cartoon/x0.png", blob(999))
    trees = {"tuxpaint-stamps-default": tp, "openclipart-png": oc, "_empty": tmp_path}
    m = build_domain("clipart", tmp_path / "out", fetch=fake_fetch(trees), log=lambda s: None)
    assert m["total"]["classes"] == 3 and m["total"]["images"] == 25
    names = {p.stem for p in (tmp_path / "out").glob("*/animals_insects/*.png")}
    assert {"tp-animals_insects_x0", "tp-animals_insects_cartoon_x0", "oc-animals_insects_x0"} <= names


def test_near_duplicates_across_classes_leave_both_classes() -> None:
    placeholder = canvas(7)
    items = [Item("a", f"i{k}", canvas(k + 10)) for k in range(5)] + [Item("a", "ph", placeholder)]
    items += [Item("b", f"j{k}", canvas(k + 20)) for k in range(5)]
    items += [Item("b", "ph", np.clip(placeholder.astype(int) - 3, 0, 255).astype(np.uint8))]
    items += [Item("c", f"k{k}", canvas(k + 30)) for k in range(5)]
    kept, removed = apply_filters(items, min_instances=5, bits=4)
    assert removed == Counter({"near_duplicate_across_classes": 2})
    assert "ph" not in {i.instance for i in kept} and len(kept) == 15


def test_cross_class_check_can_be_switched_off() -> None:
    base = canvas(7)
    items = [Item(c, f"i{k}", canvas(100 * n + k)) for n, c in enumerate("abc") for k in range(4)]
    items += [Item("a", "x", base), Item("b", "x", np.clip(base.astype(int) - 3, 0, 255).astype(np.uint8))]
    on, removed_on = apply_filters(items, min_instances=4, bits=4)
    off, removed_off = apply_filters(items, min_instances=4, bits=4, cross_class=False)
    assert removed_on["near_duplicate_across_classes"] == 2 and len(on) == 12
    assert not removed_off and len(off) == 14
