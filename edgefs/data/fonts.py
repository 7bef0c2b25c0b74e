"""Fonts for the glyph benchmark: fetch Debian font packages, find font files, read what they cover.

The benchmark's fonts come from about 30 Debian packages (see ``FONT_PACKAGES``),
fetched with ``apt-get download`` (into a temporary name, checked against the
package index's size and SHA256, then renamed) and unpacked with ``dpkg -x`` into
a cache folder, never installed system-wide. Where that fails, nothing is
rendered: the error says what failed and how to fix it, or to choose the
machine's DejaVu fonts explicitly (``--dejavu-only``), which builds a smaller,
different benchmark.

Script assignment: Python's :mod:`unicodedata` has names, not the Unicode Script
property, so the script of a letter is the prefix of its name before a word such
as ``LETTER``, ``SYLLABLE`` or ``CAPITAL`` ("GREEK SMALL LETTER ALPHA" -> greek).
Only letters (general category ``Lu Ll Lt Lo``; modifier letters ``Lm`` are mostly
diacritic- or punctuation-like) that are neither compatibility forms
(fullwidth, mathematical, modifier letters) nor precomposed letter+diacritic
(those are near-duplicates of their base letter) become candidate classes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgefs.data.debian import PackageFetchError, apt_record, default_cache, unpack_deb

FONT_PACKAGES: tuple[str, ...] = (
    "fonts-freefont-ttf", "fonts-mph-2b-damase", "fonts-sil-nuosusil", "fonts-denemo",
    "fonts-noto-core", "fonts-hosny-amiri", "fonts-lg-aboriginal", "fonts-dejavu-core",
    "fonts-sil-abyssinica", "fonts-ancient-scripts", "fonts-myanmar", "fonts-khmeros",
    "fonts-sil-shimenkan", "fonts-telu-extra", "fonts-sil-dai-banna", "fonts-lklug-sinhala",
    "fonts-gubbi", "fonts-lohit-knda", "fonts-lohit-orya", "fonts-lohit-gujr", "fonts-lohit-telu",
    "fonts-orya-extra", "fonts-samyak-orya", "fonts-navilu", "fonts-pagul",
    "fonts-sambhota-tsugring", "fonts-sambhota-yigchung", "fonts-georgewilliams",
    "fonts-manchufont", "fonts-cardo",
)
"""Debian packages that together give ~6,200 letters in ~45 scripts with >= 3 designs."""

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
# Pixel fonts claim many characters but draw blocky bitmaps; skip them by name too.
PIXEL_FONT_WORDS = ("unifont", "terminus", "fixedsys", "bitmap", "pixel", "phiksel")
# Fonts whose cmap does not follow Unicode (Zawgyi maps Myanmar code points to other glyphs).
NON_UNICODE_FONT_WORDS = ("zawgyi",)
SYSTEM_FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))

# Style words: preferred order when a family has more styles than we use. Oblique is a
# slanted upright; a true italic often changes letter forms (Cyrillic italic д looks like g),
# so italics come after other weights.
STYLE_PREFERENCE = ("regular", "book", "bold", "oblique", "boldoblique")
# Words removed from a family name to get its design key ("DejaVu Sans Condensed" -> "dejavu sans").
FAMILY_NOISE = re.compile(
    r"\b(condensed|semicondensed|extracondensed|expanded|narrow|wide|display|ui|text|"
    r"thin|extralight|ultralight|light|semilight|medium|semibold|demibold|bold|extrabold|"
    r"black|heavy|regular|book|italic|oblique)\b",
    re.IGNORECASE,
)

NAME_STOP_WORDS = {
    "LETTER", "CAPITAL", "SMALL", "SYLLABLE", "SYLLABICS", "IDEOGRAPH", "CHARACTER", "VOWEL",
    "CONSONANT", "INDEPENDENT", "LIGATURE", "SIGN", "FINAL", "MEDIAL", "INITIAL", "LOGOGRAM",
    "HIEROGLYPH", "SUBJOINED", "ABBREVIATION",
}
SKIP_NAME_WORDS = ("MATHEMATICAL", "MODIFIER", "FULLWIDTH", "HALFWIDTH", "CIRCLED", "PARENTHESIZED",
                   "SQUARED", "NEGATIVE", "SUPERSCRIPT", "SUBSCRIPT", "IDEOGRAM", "TAG ")
SCRIPT_RENAMES = {"canadian": "canadian_syllabics", "cjk_unified": "han", "cjk_compatibility": "han",
                  "latin_epigraphic": "latin", "lao_semivowel": "lao"}
# Name prefixes that are no script ("VEDIC SIGN ...", "TURNED ...").
NOT_SCRIPTS = {"vedic", "turned", "reversed", "inverted", "combining"}


FetchError = PackageFetchError
"""``apt-get download`` or ``dpkg -x`` failed; the message names the package and the cause."""


@dataclass(frozen=True)
class FontInfo:
    """One font face usable for rendering.

    Attributes:
        path: the font file.
        index: face index inside a ``.ttc`` collection (0 otherwise).
        package: Debian package it came from, ``"system"`` for machine fonts.
        family: family name as the font states it (typographic family when present).
        style: subfamily, e.g. ``"Bold Oblique"``.
        design: design key: the family with width/weight words removed; styles of
            one design are not independent designs.
        cmap: the code points the font claims (its best Unicode cmap).
    """

    path: Path
    index: int
    package: str
    family: str
    style: str
    design: str
    cmap: frozenset[int] = field(repr=False, compare=False, hash=False)

    @property
    def name(self) -> str:
        """Short unique label, e.g. ``"DejaVuSans-Bold.ttf"`` (``"#1"`` appended for a ttc face)."""
        return self.path.name + (f"#{self.index}" if self.index else "")


def default_font_cache() -> Path:
    """``$EDGEFS_CACHE/fonts`` when ``EDGEFS_CACHE`` is set, else ``~/.cache/edgefs/fonts``."""
    return default_cache() / "fonts"


def fetch_font_packages(cache: Path, packages: Iterable[str] = FONT_PACKAGES,
                        log: Callable[[str], None] = print) -> list[tuple[str, Path]]:
    """Download and unpack Debian font packages into ``cache`` (skipping those already unpacked).

    Each package goes through :func:`edgefs.data.debian.unpack_deb`: a ``.deb`` is
    downloaded into a temporary folder, checked against the package index (size and
    SHA256 from ``apt-cache show``) and only then renamed into ``debs/``, so an
    interrupted download never leaves a partial file under a real name. A cached
    ``.deb`` that fails the check or does not unpack is deleted and fetched again.
    Without an index entry the download is used as it comes, and only a file that
    does not unpack is caught.

    Args:
        cache: folder for ``debs/`` (the .deb files) and ``pkgs/<name>/`` (unpacked trees).
        packages: Debian package names.
        log: progress output.

    Returns:
        ``(package, unpacked folder)`` for every package.

    Raises:
        FetchError: ``apt-get``/``dpkg`` missing, or a download/unpack failed; the message
            says which package and how to fix it.
    """
    packages = list(packages)
    debs, pkgs = cache / "debs", cache / "pkgs"
    done: list[tuple[str, Path]] = []
    for i, name in enumerate(packages, 1):
        target = pkgs / name
        if (target / ".unpacked").exists():
            log(f"  [{i}/{len(packages)}] {name}: cached")
            done.append((name, target))
            continue
        deb = unpack_deb(name, debs, apt_record(name, required=False), target, log)
        log(f"  [{i}/{len(packages)}] {name}: {deb.stat().st_size / 1e6:.1f} MB unpacked")
        done.append((name, target))
    return done


def system_font_files() -> list[Path]:
    """Scalable font files on this machine (``fc-list`` when present, else the usual folders)."""
    files: set[Path] = set()
    if shutil.which("fc-list"):
        proc = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True)
        files.update(Path(line) for line in proc.stdout.splitlines() if line.strip())
    for root in SYSTEM_FONT_DIRS:
        if root.is_dir():
            files.update(p for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
    return sorted(p for p in files if p.suffix.lower() in FONT_SUFFIXES and p.is_file())


def dejavu_files() -> list[Path]:
    """The DejaVu fonts on this machine (``fonts-dejavu-core``)."""
    return [p for p in system_font_files() if p.name.lower().startswith("dejavu")]


def package_font_files(root: Path) -> list[Path]:
    """Font files inside an unpacked package tree."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())


def read_fonts(files: Iterable[tuple[str, Path]]) -> list[FontInfo]:
    """Open font files and describe each scalable face; pixel/bitmap-only fonts are skipped.

    Args:
        files: ``(package, path)`` pairs; a ``.ttc`` yields one :class:`FontInfo` per face.

    Returns:
        Faces sorted by path and index, duplicates (same file content name) dropped.
    """
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    out: list[FontInfo] = []
    seen: set[tuple[str, str]] = set()
    for package, path in files:
        if any(w in path.name.lower() for w in PIXEL_FONT_WORDS + NON_UNICODE_FONT_WORDS):
            continue
        try:
            faces = (TTCollection(str(path), lazy=True).fonts if path.suffix.lower() == ".ttc"
                     else [TTFont(str(path), lazy=True)])
        except (TTLibError, OSError, ValueError, AssertionError):
            continue
        for index, font in enumerate(faces):
            info = _describe(font, path, index, package)
            if info is not None and (info.family, info.style) not in seen:
                seen.add((info.family, info.style))
                out.append(info)
    return sorted(out, key=lambda f: (str(f.path), f.index))


def _describe(font: object, path: Path, index: int, package: str) -> FontInfo | None:
    """A :class:`FontInfo` for one fontTools face, or None when it has no outlines or no cmap."""
    if not any(tag in font for tag in ("glyf", "CFF ", "CFF2")):  # bitmap-only (EBDT/sbix) face
        return None
    try:
        cmap = font.getBestCmap()  # type: ignore[attr-defined]
        names = font["name"]  # type: ignore[index]
    except (KeyError, AssertionError, ValueError):
        return None
    if not cmap:
        return None
    family = str(names.getDebugName(16) or names.getDebugName(1) or path.stem)
    style = str(names.getDebugName(17) or names.getDebugName(2) or "Regular")
    design = " ".join(FAMILY_NOISE.sub(" ", family).lower().split()) or family.lower()
    return FontInfo(path, index, package, family, style, design, frozenset(cmap))


def pick_styles(fonts: list[FontInfo], per_design: int, italics: bool = False) -> list[FontInfo]:
    """Keep at most ``per_design`` styles of each design, preferring Regular, Bold, Oblique.

    Big families (Noto ships 9 weights x 4 widths) would otherwise swamp a class with
    renders that differ only in weight. True italics are skipped unless ``italics``: they
    often change letter forms (Cyrillic italic п looks like n), which makes outliers.
    """
    by_design: dict[str, list[FontInfo]] = {}
    for f in fonts:
        if not italics and "italic" in (f.style + " " + f.family).lower().replace(" ", ""):
            continue
        by_design.setdefault(f.design, []).append(f)
    kept: list[FontInfo] = []
    for group in by_design.values():
        group.sort(key=lambda f: (_style_rank(f), len(f.family), f.name))
        kept.extend(group[:per_design])
    return sorted(kept, key=lambda f: (str(f.path), f.index))


def _style_rank(font: FontInfo) -> int:
    """Lower is preferred: plain styles, then other weights, then italics, then widths."""
    key = font.style.lower().replace(" ", "")
    name = font.family.lower() + " " + key
    if any(w in name for w in ("condensed", "expanded", "narrow", "extra", "ultra", "black", "thin")):
        return len(STYLE_PREFERENCE) + 2
    if "italic" in key:
        return len(STYLE_PREFERENCE) + 1
    return STYLE_PREFERENCE.index(key) if key in STYLE_PREFERENCE else len(STYLE_PREFERENCE)


def script_of(cp: int) -> str | None:
    """Script name of a letter (``"greek"``), or None when the code point is no candidate class.

    Candidates are letters (``L*``) with no compatibility or canonical decomposition and
    a name whose script prefix we can read.
    """
    ch = chr(cp)
    # Lm (modifier letters: Lisu tone letters, length marks) are diacritic- or punctuation-like.
    if unicodedata.category(ch) not in ("Lu", "Ll", "Lt", "Lo") or unicodedata.decomposition(ch):
        return None
    name = unicodedata.name(ch, "")
    if not name or any(w in name for w in SKIP_NAME_WORDS):
        return None
    words = name.split()
    for i, w in enumerate(words[:4]):
        if w.split("-")[0] in NAME_STOP_WORDS:
            if i == 0:
                return None
            script = "_".join(words[:i]).lower()
            script = SCRIPT_RENAMES.get(script, script)
            return None if script in NOT_SCRIPTS else script
    return None
