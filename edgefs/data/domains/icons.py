"""Desktop icons: class = freedesktop icon name, instance = Debian icon theme.

One theme per package (colour variants such as Papirus-Dark, Yaru-blue or
Obsidian-Aqua copy their base theme's drawings and are not used). For each
(theme, icon name) one file is chosen: the largest nominal size from 48 px up
(``48x48``, ``48``, ``48x48@2x`` = 96, ``scalable`` = 256), PNG preferred over SVG at
equal size; SVGs are rendered with ``rsvg-convert``.

Left out, with counts in the manifest:
- ``-symbolic`` icons and folders named ``symbolic`` (monochrome by design);
- anything whose path or name mentions ``emoji`` or ``emote`` (emoji sets are reserved
  for an independent check; the freedesktop ``emotes`` context holds smileys);
- aliases: a name whose file is a symlink to the drawing of another name the theme
  has, or one of several names sharing one drawing, is dropped, so one theme's drawing
  is never counted twice;
- monochrome drawings: at most two colour bins (4 levels per channel) each holding
  2% or more of the opaque pixels (a one-colour glyph plus its anti-aliasing).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgefs.data.debian import Package
from edgefs.data.domains.base import DOMAINS, Domain, Item, slug
from edgefs.data.domains.filters import to_canvas
from edgefs.data.domains.svg import read_rgba, render_svg

THEMES: dict[str, str] = {
    "adwaita-icon-theme": "Adwaita",
    "breeze-icon-theme": "breeze",
    "deepin-icon-theme": "bloom",
    "elementary-xfce-icon-theme": "elementary-xfce",
    "faenza-icon-theme": "Faenza",
    "gnome-colors-common": "gnome-colors-common",
    "lxde-icon-theme": "nuoveXT2",
    "moka-icon-theme": "Moka",
    "numix-icon-theme": "Numix",
    "obsidian-icon-theme": "Obsidian",
    "oxygen-icon-theme": "oxygen",
    "paper-icon-theme": "Paper",
    "papirus-icon-theme": "Papirus",
    "suru-icon-theme": "suru",
    "tango-icon-theme": "Tango",
    "yaru-theme-icon": "Yaru",
}
"""Debian package -> the one theme folder used from it."""

FORKS: dict[str, str] = {
    "mate-icon-theme": "a fork of the GNOME icons: 58% of the names it shares with gnome and 42% of those "
                       "it shares with Adwaita were near-copies (difference hash <= 12 bits, thumbnail < 12 levels)",
    "gnome-icon-theme": "Adwaita 43's full-colour icons are the GNOME 3.12 drawings re-exported: a contact sheet "
                        "showed Adwaita/gnome near-copies in 8 of 20 sampled classes that the hash test missed",
    "elementary-icon-theme": "elementary-xfce is its fork: 38% of their shared names were near-copies; the "
                             "larger theme (elementary-xfce) is kept",
}
"""Themes left out because another theme used here copies or derives from them (measured on this build)."""

SUFFIXES = (".png", ".svg", ".svgz")
MIN_SIZE = 48
MAX_SIZE = 256
SIZE_DIR = re.compile(r"^(\d+)(?:x(\d+))?(?:@(\d)x)?$")
EXCLUDE_WORDS = ("emoji", "emote")


def nominal_size(rel: Path) -> int | None:
    """Nominal pixel size from a path inside a theme (``48x48``, ``48``, ``24x24@2x``, ``scalable``)."""
    for part in rel.parts[:-1]:
        m = SIZE_DIR.match(part)
        if m:
            return int(m.group(1)) * int(m.group(3) or 1)
        if part == "scalable":
            return MAX_SIZE
        if part.startswith("scalable-up-to-"):
            return int(part.rsplit("-", 1)[1])
    return None


def theme_icons(theme: Path, stats: Counter) -> dict[str, Path]:
    """``{icon name: chosen file}`` for one theme folder (see the module docstring)."""
    best: dict[str, tuple[tuple[int, int], Path]] = {}
    for path in sorted(theme.rglob("*")):
        if path.suffix not in SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(theme)
        name = path.name[: -len(path.suffix)]
        low = str(rel).lower()
        if name.endswith("-symbolic") or "symbolic" in (p.lower() for p in rel.parts[:-1]):
            stats["symbolic"] += 1
            continue
        if any(w in low for w in EXCLUDE_WORDS):
            stats["emoji_or_emote_path"] += 1
            continue
        size = nominal_size(rel)
        if size is None or size < MIN_SIZE or size > MAX_SIZE * 2:
            continue
        key = (min(size, MAX_SIZE), 1 if path.suffix == ".png" else 0)
        if name not in best or key > best[name][0]:
            best[name] = (key, path)
    chosen = {name: path for name, (_, path) in best.items()}
    # Aliases: a name whose file is a symlink to a drawing made for another name that this
    # theme also has is dropped; aliases of a drawing whose own name is absent are kept only
    # when a single name points at it. So one theme's drawing is used at most once.
    def own_name(path: Path) -> str:
        real = path.resolve()
        return real.name[: -len(real.suffix)] if real.suffix in SUFFIXES else real.name

    targets = Counter(path.resolve() for path in chosen.values())
    out: dict[str, Path] = {}
    for name, path in chosen.items():
        own = own_name(path)
        if own == name:
            out[name] = path
        elif own in chosen or targets[path.resolve()] > 1:
            stats["alias_dropped"] += 1
        else:
            out[name] = path
    return out


def is_monochrome(rgba: np.ndarray) -> bool:
    """At most two colour bins (4 levels per channel) with >= 2% of the opaque pixels."""
    opaque = rgba[rgba[:, :, 3] > 128][:, :3]
    if len(opaque) == 0:
        return True
    q = (opaque // 64).astype(np.int32)
    bins = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64)
    return int((bins >= 0.02 * len(opaque)).sum()) <= 2


def load_icon(path: Path, size: int) -> np.ndarray | None:
    if path.suffix == ".png":
        return read_rgba(path)
    return render_svg(path, size=size)


@DOMAINS.register("icons")
class Icons(Domain):
    name = "icons"
    summary = "desktop icons: class = freedesktop icon name, instance = Debian icon theme"
    packages = tuple(THEMES)
    size = 84
    background = "white (icon alpha composited on white), icon fitted to 84% of the side"
    class_definition = ("a freedesktop icon name (e.g. printer, folder-music) present, full-colour, in at "
                        "least min_instances themes; -symbolic, monochrome, emoji/emote icons excluded")
    instance_definition = ("one Debian icon theme (one theme per package: " + ", ".join(THEMES.values()) +
                           "); its largest 48-256 px PNG, else its SVG rendered with rsvg-convert. Left out as "
                           "copies: " + "; ".join(f"{k}: {v}" for k, v in FORKS.items()))
    min_instances = 5

    def extract(self, packages: dict[str, Package], stats: Counter, log: Callable[[str], None]) -> list[Item]:
        per_theme: dict[str, dict[str, Path]] = {}
        for pkg, theme in THEMES.items():
            folder = packages[pkg].root / "usr" / "share" / "icons" / theme
            per_theme[theme] = theme_icons(folder, stats) if folder.is_dir() else {}
            log(f"  icons: {theme}: {len(per_theme[theme])} icon names at >= {MIN_SIZE} px")
        names = Counter(n for icons in per_theme.values() for n in icons)
        wanted = sorted(n for n, c in names.items() if c >= self.min_instances)
        stats["names_in_fewer_than_min_themes"] = sum(1 for c in names.values() if c < self.min_instances)
        jobs = [(n, theme, icons[n]) for n in wanted for theme, icons in sorted(per_theme.items()) if n in icons]
        log(f"icons: loading {len(jobs)} icons of {len(wanted)} names")
        with ThreadPoolExecutor(max_workers=2) as pool:
            images = list(pool.map(lambda j: load_icon(j[2], 2 * self.size), jobs))
        items = []
        for (name, theme, path), rgba in zip(jobs, images, strict=True):
            if rgba is None:
                stats["unreadable"] += 1
            elif is_monochrome(rgba):
                stats["monochrome"] += 1
            else:
                items.append(Item(slug(name), theme, to_canvas(rgba, self.size), str(path).split("/icons/", 1)[-1]))
        return items
