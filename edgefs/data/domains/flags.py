"""Flags: class = country (ISO 3166-1 alpha-2), instance = flag set.

Sets: npm ``flag-icons`` (4:3 SVG), ``circle-flags`` (round SVG), ``flagpack-core``
(large SVG), ``svg-country-flags`` (SVG), and Debian ``kgeography-data`` and
``freeciv-data`` (PNG, named by country or nation). The npm sets are keyed by ISO
code; the Debian ones by name, matched to ISO codes through flag-icons'
``country.json`` names plus a few aliases (``usa``, ``united_kingdom``, ...); names
that match no country (regions, historical nations, blurred quiz flags) are left
out and counted. Flags of one country look alike by nature: what differs between
sets is aspect ratio, shape (round), colours and drawing detail; copies within 4
bits of hash and 6 grey levels are removed by the shared near-duplicate filter.
``famfamfam-flag-png`` is not used: its flags are 16x11 px, too small to upscale.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgefs.data.debian import Package
from edgefs.data.domains.base import DOMAINS, Domain, Item, slug
from edgefs.data.domains.filters import to_canvas
from edgefs.data.domains.svg import read_rgba, render_svg

NAME_ALIASES = {
    "usa": "us", "unitedstates": "us", "uk": "gb", "unitedkingdom": "gb", "greatbritain": "gb",
    "korea": "kr", "southkorea": "kr", "northkorea": "kp", "drcongo": "cd", "congokinshasa": "cd",
    "rcongo": "cg", "congobrazzaville": "cg", "congo": "cg", "ivorycoast": "ci", "vatican": "va",
    "russia": "ru", "burkina": "bf", "bosniaherzegovina": "ba", "antigua": "ag", "czechrepublic": "cz",
    "czechia": "cz", "macedonia": "mk", "burma": "mm", "myanmar": "mm", "eastimor": "tl", "easttimor": "tl",
    "saotome": "st", "stkitts": "kn", "stlucia": "lc", "stvincent": "vc", "trinidad": "tt", "laos": "la",
    "syria": "sy", "iran": "ir", "vietnam": "vn", "moldova": "md", "tanzania": "tz", "bolivia": "bo",
    "venezuela": "ve", "micronesia": "fm", "brunei": "bn", "capeverde": "cv", "swaziland": "sz",
    "palestine": "ps", "taiwan": "tw", "netherlands": "nl", "holland": "nl", "gambia": "gm", "bahamas": "bs",
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower().replace("&", "and"))


def country_table(flag_icons_root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``({iso code: name}, {normalised name or alias: iso code})`` from flag-icons' ``country.json``."""
    rows = json.loads((flag_icons_root / "package" / "country.json").read_text())
    names = {r["code"]: r["name"] for r in rows if r.get("iso")}
    lookup: dict[str, str] = {}
    for code, name in names.items():
        base = re.split(r"[,(]", name)[0]
        for variant in (name, base, re.sub(r"\b(and|the|of)\b", "", base, flags=re.I)):
            lookup.setdefault(_norm(variant), code)
    for alias, code in NAME_ALIASES.items():
        if code in names:
            lookup[alias] = code
    return names, lookup


def npm_set(root: Path, pattern: str) -> dict[str, Path]:
    """``{iso code: file}`` from files matching ``pattern`` (glob) whose stem is a 2-letter code."""
    return {p.stem.lower(): p for p in sorted(root.glob(pattern)) if re.fullmatch(r"[A-Za-z]{2}", p.stem)}


def named_set(files: list[Path], lookup: dict[str, str], stats: Counter, label: str) -> dict[str, Path]:
    """``{iso code: file}`` for files named by country; unmatched names are counted."""
    out: dict[str, Path] = {}
    for p in files:
        code = lookup.get(_norm(p.stem.removesuffix("-large")))
        if code is None:
            stats[f"{label}_name_not_a_country"] += 1
        elif code not in out:
            out[code] = p
    return out


def load_flag(path: Path, size: int) -> object:
    return render_svg(path, size=size) if path.suffix == ".svg" else read_rgba(path)


@DOMAINS.register("flags")
class Flags(Domain):
    name = "flags"
    summary = "flags: class = country, instance = flag set (4 npm sets, kgeography, freeciv)"
    packages = ("npm:flag-icons", "npm:circle-flags", "npm:flagpack-core", "npm:svg-country-flags",
                "kgeography-data", "freeciv-data")
    size = 84
    background = "neutral grey 128 (flags often contain white), flag fitted to 84% of the side"
    background_level = 128
    class_definition = "a country (ISO 3166-1 alpha-2 code in flag-icons' country.json), folder <code>_<name>"
    instance_definition = ("one flag set: flag-icons (4x3), circle-flags, flagpack-core (svg/l), "
                           "svg-country-flags, kgeography-data flags, freeciv-data nation flags (-large)")
    min_instances = 4

    def extract(self, packages: dict[str, Package], stats: Counter, log: Callable[[str], None]) -> list[Item]:
        names, lookup = country_table(packages["npm:flag-icons"].root)
        freeciv = packages["freeciv-data"].root / "usr/share/games/freeciv/flags"
        kgeo = packages["kgeography-data"].root / "usr/share/kgeography/flags"
        sets = {
            "flag-icons": npm_set(packages["npm:flag-icons"].root, "package/flags/4x3/*.svg"),
            "circle-flags": npm_set(packages["npm:circle-flags"].root, "package/flags/*.svg"),
            "flagpack": npm_set(packages["npm:flagpack-core"].root, "package/svg/l/*.svg"),
            "svg-country-flags": npm_set(packages["npm:svg-country-flags"].root, "package/svg/*.svg"),
            "kgeography": named_set(sorted(kgeo.glob("*.png")), lookup, stats, "kgeography"),
            "freeciv": named_set(sorted(freeciv.glob("*-large.png")), lookup, stats, "freeciv"),
        }
        jobs = []
        for set_name, files in sets.items():
            for code, path in files.items():
                if code in names:
                    jobs.append((code, set_name, path))
                else:
                    stats["code_not_a_country"] += 1
            log(f"  flags: {set_name}: {len(files)} files")
        with ThreadPoolExecutor(max_workers=2) as pool:
            images = list(pool.map(lambda j: load_flag(j[2], 2 * self.size), jobs))
        items = []
        for (code, set_name, path), rgba in zip(jobs, images, strict=True):
            if rgba is None:
                stats["unreadable"] += 1
                continue
            items.append(Item(f"{code}_{slug(names[code])}", set_name,
                              to_canvas(rgba, self.size, background=self.background_level), path.name))
        return items
