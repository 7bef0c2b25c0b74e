"""Game units: class = freeciv unit type, instance = tileset drawing (sprite sheets + .spec files).

A tileset (``<name>.tilespec``) lists ``.spec`` files; a spec names a sprite sheet
(``[file] gfx``) and grids (``[grid_*]``: ``x_top_left``, ``y_top_left``, ``dx``,
``dy``, ``pixel_border``, and a ``tiles`` table of ``row, column, "tag"...``).
Unit sprites carry tags ``u.<unit>``; oriented tilesets draw ``u.<unit>_<dir>`` and
the tileset's ``unit_default_orientation`` picks the one used. Several tilesets
share one spec file (isotrident, hex2t and isophex use trident's units): a
sprite is taken once per (spec file, tag), and the instance is named after the
folder of the spec file that draws it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefs.data.debian import Package
from edgefs.data.domains.base import DOMAINS, Domain, Item, slug
from edgefs.data.domains.filters import to_canvas
from edgefs.data.domains.svg import read_rgba


@dataclass(frozen=True)
class Sprite:
    """One tagged rectangle of a sprite sheet."""

    sheet: Path
    x: int
    y: int
    w: int
    h: int
    tags: tuple[str, ...]


def _strip_comment(line: str) -> str:
    out, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            break
        out.append(ch)
    return "".join(out)


def parse_spec(spec: Path, data_root: Path) -> list[Sprite]:
    """Every grid sprite of a freeciv ``.spec`` file.

    Args:
        spec: the spec file.
        data_root: the freeciv data folder that ``gfx`` paths are relative to.

    Returns:
        Sprites in file order; grids without a ``tiles`` table give none.
    """
    sections: list[tuple[str, dict[str, str], list[list[str]]]] = []
    gfx = None
    table: list[list[str]] | None = None
    for raw in spec.read_text(errors="replace").splitlines():
        line = _strip_comment(raw).strip()
        if not line:
            continue
        m = re.match(r"^\[(\w+)\]$", line)
        if m:
            sections.append((m.group(1), {}, []))
            table = None
            continue
        if not sections:
            continue
        name, fields, rows = sections[-1]
        if table is not None:
            if line.startswith("}"):
                table = None
                continue
            cells = [c.strip().strip('"') for c in line.split(",") if c.strip()]
            rows.append(cells)
            continue
        m = re.match(r'^(\w+)\s*=\s*(.*)$', line)
        if m:
            key, value = m.group(1), m.group(2).strip()
            if key == "tiles" and value.startswith("{"):
                table = rows  # the header line ("row", "column", "tag") is on this line
                continue
            fields[key] = value.strip('"')
            if name == "file" and key == "gfx":
                gfx = fields[key]
    if gfx is None:
        return []
    sheet = data_root / f"{gfx}.png"
    sprites = []
    for name, fields, rows in sections:
        if not name.startswith("grid") or not rows:
            continue
        x0, y0 = int(fields.get("x_top_left", 0)), int(fields.get("y_top_left", 0))
        dx, dy = int(fields["dx"]), int(fields["dy"])
        border = int(fields.get("pixel_border", 0))
        for cells in rows:
            if len(cells) < 3 or not cells[0].isdigit() or not cells[1].isdigit():
                continue
            r, c = int(cells[0]), int(cells[1])
            tags = tuple(t for t in cells[2:] if t and not t.lstrip("-").isdigit())
            sprites.append(Sprite(sheet, x0 + c * (dx + border), y0 + r * (dy + border), dx, dy, tags))
    return sprites


def tileset_specs(tilespec: Path) -> tuple[list[str], str | None]:
    """The spec files a tileset lists, and its default unit orientation (None if unoriented)."""
    text = "\n".join(_strip_comment(line) for line in tilespec.read_text(errors="replace").splitlines())
    files = re.search(r"\bfiles\s*=\s*(.*?)(?:\n\s*\n|\Z)", text, re.S)
    specs = re.findall(r'"([^"]+\.spec)"', files.group(1)) if files else []
    orient = re.search(r'^\s*unit_default_orientation\s*=\s*"(\w+)"', text, re.M)
    return specs, (orient.group(1) if orient else None)


def unit_sprites(data_root: Path) -> dict[tuple[str, str], Sprite]:
    """``{(unit, drawing folder): sprite}`` across every tileset under ``data_root``."""
    found: dict[tuple[str, str], Sprite] = {}
    for tilespec in sorted(data_root.glob("*.tilespec")):
        specs, orient = tileset_specs(tilespec)
        for rel in specs:
            spec = data_root / rel
            if not spec.exists() or "unit" not in spec.name:
                continue
            drawer = Path(rel).parent.name
            for sp in parse_spec(spec, data_root):
                # Further tags on one row reuse the sprite for other units: it was drawn for the first.
                tag = next((t for t in sp.tags if t.startswith("u.")), None)
                if tag is None:
                    continue
                unit = tag[2:]
                if orient is not None:
                    if not unit.endswith("_" + orient):
                        continue
                    unit = unit[: -len(orient) - 1]
                found.setdefault((unit, drawer), sp)
    return found


@DOMAINS.register("units")
class Units(Domain):
    name = "units"
    summary = "game units: class = freeciv unit type, instance = tileset drawing"
    packages = ("freeciv-data",)
    size = 84
    class_definition = ("a freeciv unit type, from the sprite tag u.<unit> (u.<unit>_<default orientation> "
                        "in oriented tilesets)")
    instance_definition = ("the drawing of one unit-sprite source (amplio2, trident, cimpletoon); tilesets "
                           "that reuse another's spec file (hexemplio, hex2t, isotrident, isophex, alio, "
                           "toonhex) add no instance")
    # Only three independent unit drawings exist in freeciv-data, so a class has at most 3.
    min_instances = 3

    def extract(self, packages: dict[str, Package], stats: Counter, log: Callable[[str], None]) -> list[Item]:
        data_root = packages["freeciv-data"].root / "usr" / "share" / "games" / "freeciv"
        sprites = unit_sprites(data_root)
        sheets: dict[Path, np.ndarray | None] = {}
        items = []
        for (unit, drawer), sp in sorted(sprites.items()):
            if sp.sheet not in sheets:
                sheets[sp.sheet] = read_rgba(sp.sheet)
            sheet = sheets[sp.sheet]
            if sheet is None:
                stats["sheet_unreadable"] += 1
                continue
            crop = sheet[sp.y:sp.y + sp.h, sp.x:sp.x + sp.w]
            if crop.shape[0] != sp.h or crop.shape[1] != sp.w or crop[:, :, 3].max() <= 8:
                stats["sprite_empty_or_outside_sheet"] += 1
                continue
            items.append(Item(slug(unit), drawer, to_canvas(crop, self.size), f"{sp.sheet.name}@{sp.x},{sp.y}"))
        log(f"units: {len(items)} sprites from {len({d for _, d in sprites})} drawings")
        return items
