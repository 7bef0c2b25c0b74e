"""Clip-art: class = object category (a leaf folder), instance = one drawing or photo-like stamp.

Sources: Tux Paint stamps (``tuxpaint-stamps-default``, many photo-like) and
Open Clip Art (``openclipart-png``). A leaf folder such as ``animals/mammals`` or
``food/fruit`` holds different objects of one category (style subfolders such
as ``cartoon`` and deeper sub-folders are merged into their second-level
parent, and a few folders naming one concept twice are merged), so classes here are
category-level (harder and broader than the other domains' object-level classes);
folders with the same path in both sources are one class. At most
``MAX_PER_CLASS`` files per class are used, chosen by a hash of their names;
files over ``MAX_PIXELS`` (a few PNGs are 13000 px wide) are not decoded.

Folders left out (counted in the manifest): emoji-like faces and smileys (emoji
sets are reserved for an independent check), flags and playing cards (the flags and cards domains),
files directly in a top-level folder (``people``, ``office``: miscellany), and
folders that are no object category (unsorted, duplicates, patterns, gradients,
examples, shapes, arrows, callouts, flowcharts, alphabets, LED digits, diagrams,
buttons, logos).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgefs.data.debian import Package
from edgefs.data.domains.base import DOMAINS, Domain, Item, slug
from edgefs.data.domains.filters import to_canvas
from edgefs.data.domains.svg import MAX_PIXELS, image_pixels, read_rgba

EMOJI_WORDS = ("smil", "faces", "emot", "emoji")
OVERLAP_WORDS = ("flags", "cards", "cardbacks")
STYLE_FOLDERS = ("cartoon", "toys", "plastic")
NOT_A_CATEGORY = (
    "unsorted", "duplicates", "special", "patterns", "gradients", "examples", "shapes", "arrows", "callouts",
    "flowchart", "alphabets", "led", "diagrams", "buttons", "logos", "icons", "math", "map_symbols",
    "aiga-symbols", "00_symbols",
    # Contact sheets showed these as topics, not object categories: religion (mostly digits),
    # holiday (vacation scenes mixed with Christmas and Valentine images), boating (sailing
    # diagrams and knots).
    "religion", "holiday", "boating",
)
MAX_PER_CLASS = 40
# Two folders for one concept (in one source or across the two) are one class.
SAME_CONCEPT = {
    "recreation/games": "symbols/chess", "transportation/roadsigns": "town/roadsigns",
    "space/planets": "science/astronomy", "geography/astronomy": "science/astronomy",
    "symbols/money": "signs_and_symbols/money", "town/houses": "buildings/homes",
    "vehicles/locomotive": "transportation/vehicles",
}
SOURCES = {
    "tuxpaint-stamps-default": ("tp", "usr/share/tuxpaint/stamps"),
    "openclipart-png": ("oc", "usr/share/openclipart/png"),
}


def exclusion(rel: Path) -> str | None:
    """Why a category folder is left out, or None."""
    parts = [p.lower() for p in rel.parts]
    if any(w in p for p in parts for w in EMOJI_WORDS):
        return "emoji_like_folder"
    if any(p in OVERLAP_WORDS for p in parts):
        return "flags_folder"
    if any(p in NOT_A_CATEGORY for p in parts):
        return "not_an_object_category"
    return None


def category_files(root: Path, stats: Counter) -> dict[str, list[Path]]:
    """``{category path: image files}`` for leaf folders (files directly inside; PNG preferred to SVG)."""
    out: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        files = {}
        for p in sorted(folder.iterdir()):
            if p.suffix == ".png" or (p.suffix == ".svg" and p.stem not in files):
                files[p.stem] = p
        pngs = [p for p in files.values() if p.suffix == ".png"]
        if not pngs:
            continue
        rel = folder.relative_to(root)
        why = exclusion(rel)
        parts = list(rel.parts)
        while parts and parts[-1].lower() in STYLE_FOLDERS:
            parts.pop()  # a style subfolder ("cartoon") draws its parent's category
        if why is None and len(parts) < 2:
            why = "top_level_miscellany"
        # Sub-categories join their second-level parent, so no class contains another.
        parts = parts[:2]
        parts = SAME_CONCEPT.get("/".join(parts), "/".join(parts)).split("/")
        if why:
            stats[why] += len(pngs)
            continue
        stats["svg_only_skipped"] += len(files) - len(pngs)
        out.setdefault("/".join(parts), []).extend(pngs)
    return out


def _rank(path: Path) -> str:
    return hashlib.sha1(path.name.encode()).hexdigest()


@DOMAINS.register("clipart")
class Clipart(Domain):
    name = "clipart"
    summary = "clip-art and photo-like stamps: class = object category folder, instance = one image"
    packages = tuple(SOURCES)
    size = 84
    class_definition = ("a leaf category folder (e.g. animals/mammals, food/fruit) of Tux Paint stamps or "
                        "Open Clip Art; same path in both = one class; category-level, not object-level")
    instance_definition = (f"one PNG file (a different object of the category); at most {MAX_PER_CLASS} per "
                           "class, chosen by SHA1 of the file name")
    min_instances = 8

    def extract(self, packages: dict[str, Package], stats: Counter, log: Callable[[str], None]) -> list[Item]:
        classes: dict[str, list[tuple[str, Path]]] = {}
        for pkg, (prefix, sub) in SOURCES.items():
            root = packages[pkg].root / sub
            for cat, files in category_files(root, stats).items():
                # Named by path: merged folders (animals/insects and its cartoon/) reuse file names.
                classes.setdefault(cat, []).extend(
                    (f"{prefix}-{slug(str(p.relative_to(root).with_suffix('')))}", p) for p in files)
        jobs = []
        for cat, files in sorted(classes.items()):
            sizes = {p: image_pixels(p) for _, p in files}
            stats["over_max_pixels"] += sum(1 for n in sizes.values() if n > MAX_PIXELS)
            files = sorted((f for f in files if 0 < sizes[f[1]] <= MAX_PIXELS), key=lambda f: _rank(f[1]))
            stats["over_class_cap"] += max(0, len(files) - MAX_PER_CLASS)
            jobs.extend((slug(cat.replace("/", "_")), inst, p) for inst, p in files[:MAX_PER_CLASS])
        log(f"clipart: reading {len(jobs)} images of {len(classes)} categories")
        with ThreadPoolExecutor(max_workers=2) as pool:
            images = list(pool.map(lambda j: read_rgba(j[2]), jobs))
        items = []
        for (cls, inst, path), rgba in zip(jobs, images, strict=True):
            if rgba is None:
                stats["unreadable"] += 1
                continue
            items.append(Item(cls, inst, to_canvas(rgba, self.size), path.name))
        return items
