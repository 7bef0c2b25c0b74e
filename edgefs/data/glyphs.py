"""The Omniglot-like glyph benchmark: one class per (script, letter), instances drawn by different fonts.

:func:`render_glyph_benchmark` fetches the fonts (:mod:`edgefs.data.fonts`), renders
every candidate letter with every font that claims it, removes bad renders, splits
the classes **by script** into train / val / test and writes
``DIR/<split>/<script>/U+XXXX/<n>.png`` plus ``DIR/manifest.json``.

Choices (documented here because they shape the benchmark):

* **Designs.** Styles of one family (Bold, Oblique, Condensed) are not independent
  drawings: a class counts one design per distinct font *design* (family with
  weight/width words removed) plus 0.5 per extra style render of a design already
  counted (1.0 with ``dejavu_only``: DejaVu has only Sans, Serif and Mono), and needs
  ``min_designs`` of those. At most ``styles_per_design`` styles of a design are
  rendered (Regular, Bold, Oblique first); true italics are skipped by default because
  they change letter forms.
* **Case.** Upper and lower case are separate classes, as Omniglot treats distinct
  characters, except that a capital whose mean render nearly equals its small
  letter's (c/C, o/O, s/S after scaling to fit) is dropped: the pair would be an
  unlearnable near-duplicate.
* **Rendering.** Ink is drawn at ``4 x size`` (at least 128 px font size), cropped
  to its ink box, scaled so the longer side is ``fit`` of the canvas, centred by the
  ink box and downsampled with area averaging: black ink on white, mode L PNG.
* **Outliers.** A render is an outlier when its chamfer distance (symmetric mean
  distance between ink pixels, robust to stroke width) to the rest of its class is
  large compared with its distance to the *other* classes of its script. A font that
  is an outlier in many classes of a script is dropped for that whole script (worst
  first, re-measuring after each round), and a class whose fonts disagree on the form
  altogether (two drawing traditions) is dropped. Measured by eye with
  ``tools/glyph_audit.py`` on contact sheets; the count is stored in the manifest.
* **Near-duplicates across splits** (Greek Alpha vs Latin A, Runic Isaz vs Old Italic I)
  are kept but listed in the manifest with their chamfer distance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgefs.data import fonts as F
from edgefs.data.glyph_filters import basic_filters, chamfer, clean_classes, fold_case, mean_descs
from edgefs.errors import DataError
from edgefs.fileio import replacing_dir

SPLITS = ("train", "val", "test")
# Every filter, in the order applied; the manifest counts what each removed (renders, or classes).
FILTERS = ("empty", "near_empty", "notdef", "same_image_for_many_letters", "box_placeholder",
           "exact_duplicate", "near_identical", "font_dropped_for_script", "outlier", "inconsistent_class",
           "classes_below_min_designs", "capital_like_small_letter")


@dataclass
class GlyphConfig:
    """Everything that decides the rendered benchmark; saved in ``manifest.json``.

    Attributes:
        size: image side in pixels.
        seed: seed for script-to-split assignment and per-script class sampling.
        font_cache: where font packages are downloaded and unpacked.
        dejavu_only: use only the DejaVu fonts on the machine (no fetching; what CI uses).
        packages: Debian font packages to fetch.
        min_designs: designs a class needs (extra styles of one design count ``style_weight``).
        style_weight: what an extra style of a counted design adds; None: 0.5, or 1.0 with
            ``dejavu_only`` (DejaVu has only Sans, Serif and Mono, so its styles must count).
        styles_per_design: at most this many styles (Regular, Bold, Italic first) per design;
            None: 3, or 6 with ``dejavu_only``.
        max_instances: at most this many images per class.
        max_classes_per_script: cap so big scripts (Latin, Egyptian) do not swamp a split.
        min_classes_per_script: scripts with fewer surviving classes are dropped.
        fractions: target share of classes for train / val / test.
        min_scripts_per_split: small scripts are moved so each split has at least this many.
        split_scripts: explicit ``{split: [script, ...]}``; overrides ``fractions``.
        scripts: render only these scripts (None: all).
        italics: also render true italic styles (they change letter forms; off by default).
        fit: share of the canvas the longer side of the ink box fills.
        outlier_ratio: own-class / other-class chamfer distance above which a render is an outlier.
        outlier_spread: a render whose own-class distance exceeds this multiple of its class's
            median is an outlier too.
        font_script_outlier_rate: drop a font for a script when at least this share of its
            renders there are outliers.
        near_duplicate_distance: val/test classes closer than this (chamfer, px at 32 px) to a
            train class of another script are listed in the manifest.
        workers: render processes.
        overwrite: replace an existing non-empty output folder.
    """

    size: int = 28
    seed: int = 0
    font_cache: Path = field(default_factory=F.default_font_cache)
    dejavu_only: bool = False
    packages: tuple[str, ...] = F.FONT_PACKAGES
    min_designs: float = 3
    style_weight: float | None = None
    styles_per_design: int | None = None
    max_instances: int = 20
    max_classes_per_script: int = 300
    min_classes_per_script: int = 5
    fractions: tuple[float, float, float] = (0.60, 0.15, 0.25)
    min_scripts_per_split: int = 3
    split_scripts: dict[str, list[str]] | None = None
    scripts: list[str] | None = None
    italics: bool = False
    fit: float = 0.8
    outlier_ratio: float = 0.8
    outlier_spread: float = 1.75
    font_script_outlier_rate: float = 0.2
    near_duplicate_distance: float = 0.15
    workers: int = 2
    overwrite: bool = False

    def resolved(self) -> GlyphConfig:
        """A copy with the ``None`` defaults filled in (what the manifest records)."""
        from dataclasses import replace

        return replace(self, style_weight=self.style_weight if self.style_weight is not None else
                       (1.0 if self.dejavu_only else 0.5),
                       styles_per_design=self.styles_per_design or (6 if self.dejavu_only else 3))


@dataclass
class Render:
    """One font's drawing of one letter: ``ink`` uint8 ``(size, size)``, 255 = full ink."""

    cp: int
    font: int  # index into the run's font list
    ink: np.ndarray
    digest: str = ""
    raw_side: float = 0.0  # longer side of the ink box before scaling, as a share of the font size
    desc: tuple[np.ndarray, ...] | None = field(default=None, repr=False)  # cache for _descs

    def __post_init__(self) -> None:
        self.digest = hashlib.sha1(self.ink.tobytes()).hexdigest()


# --------------------------------------------------------------------------- rendering


def render_ink(font: object, ch: str, size: int, fit: float) -> tuple[np.ndarray, float] | None:
    """Draw ``ch`` with a PIL FreeType font, scale its ink box to ``fit`` and centre it.

    Returns:
        ``(ink, raw_side)``: uint8 ``(size, size)`` with 255 = ink, and the ink box's longer
        side as a share of the font size; None when nothing is drawn.
    """
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = font.getbbox(ch)  # type: ignore[attr-defined]
    if x1 <= x0 or y1 <= y0:
        return None
    pad = 4
    canvas = Image.new("L", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - x0, pad - y0), ch, fill=255, font=font)
    arr = np.asarray(canvas)
    ys, xs = np.nonzero(arr > 16)
    if len(ys) == 0:
        return None
    crop = arr[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    side = max(crop.shape)
    hi = size * 4
    scale = fit * hi / side
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    big = np.zeros((hi, hi), np.uint8)
    top, left = (hi - h) // 2, (hi - w) // 2
    big[top: top + h, left: left + w] = cv2.resize(crop, (w, h), interpolation=interp)
    ink = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return ink, side / font.size  # type: ignore[attr-defined]


def _render_task(args: tuple[str, int, list[int], int, float]) -> tuple[np.ndarray | None, list]:
    """Worker: render code points with one font face; also its ``.notdef`` (placeholder) glyph."""
    from PIL import ImageFont

    path, index, cps, size, fit = args
    font = ImageFont.truetype(path, size=max(128, 4 * size), index=index,
                              layout_engine=ImageFont.Layout.BASIC)
    notdef = render_ink(font, "\U0010fffd", size, fit)  # private use: always the .notdef glyph
    out = []
    for cp in cps:
        try:
            r = render_ink(font, chr(cp), size, fit)
        except (OSError, ValueError):
            r = None
        out.append((cp, r))
    return (notdef[0] if notdef else None), out


def render_all(fonts: list[F.FontInfo], wanted: dict[int, list[int]], cfg: GlyphConfig,
               log: Callable[[str], None]) -> tuple[list[Render], dict[int, np.ndarray | None], Counter]:
    """Render ``wanted[font index] = [code points]``; returns renders, notdef inks and empty counts."""
    tasks, owners = [], []
    for fi, cps in wanted.items():
        for start in range(0, len(cps), 400):  # chunks keep both workers busy
            tasks.append((str(fonts[fi].path), fonts[fi].index, cps[start: start + 400], cfg.size, cfg.fit))
            owners.append(fi)
    renders: list[Render] = []
    notdefs: dict[int, np.ndarray | None] = {}
    stats: Counter = Counter()
    total = sum(len(t[2]) for t in tasks)
    done, t0 = 0, time.time()
    results = _map(_render_task, tasks, cfg.workers)
    try:
        for fi, (notdef, out) in zip(owners, results, strict=True):
            notdefs[fi] = notdef
            for cp, r in out:
                if r is None:
                    stats["empty"] += 1
                else:
                    renders.append(Render(cp, fi, r[0], raw_side=r[1]))
            done += len(out)
            if done % 10000 < len(out):
                log(f"  rendered {done}/{total} ({time.time() - t0:.0f} s)")
    finally:
        results.close()  # on Ctrl-C or an error: stop the workers now, not when the generator is collected
    return renders, notdefs, stats


def _map(fn: Callable, tasks: list, workers: int) -> Generator:  # type: ignore[type-arg]
    """Ordered map, in ``workers`` processes when more than one task and worker.

    The workers ignore SIGINT: Ctrl-C reaches the parent alone, which terminates the pool
    and raises KeyboardInterrupt once (instead of every worker printing a traceback).
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from (fn(t) for t in tasks)
        return
    import multiprocessing as mp

    pool = mp.get_context("fork").Pool(workers, initializer=_ignore_sigint)
    try:
        yield from pool.imap(fn, tasks, chunksize=1)
        pool.close()
    except BaseException:  # Ctrl-C, an error, or the consumer closing the generator
        pool.terminate()
        raise
    finally:
        pool.join()


def _ignore_sigint() -> None:
    """Pool initializer: the parent handles Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------- splitting


LATIN_GREEK_FAMILY = frozenset({"greek", "cyrillic", "coptic", "old_italic", "gothic", "cherokee", "glagolitic"})


def assign_splits(counts: dict[str, int], cfg: GlyphConfig) -> dict[str, list[str]]:
    """Scripts per split: explicit ``cfg.split_scripts`` or a seeded greedy fill of ``cfg.fractions``."""
    if cfg.split_scripts is not None:
        unknown = sorted(set().union(*cfg.split_scripts.values()) - set(counts))
        if unknown:
            raise DataError(f"split_scripts names scripts with no classes: {unknown}; "
                            f"available: {sorted(counts)}")
        return {s: sorted(cfg.split_scripts.get(s, [])) for s in SPLITS}
    if len(counts) < 3:
        raise DataError(f"only {len(counts)} scripts survived ({sorted(counts)}); need 3 to split by script. "
                        "Fetch the full font set (drop dejavu_only) or lower min_classes_per_script.")
    rng = np.random.default_rng(cfg.seed)
    names = sorted(counts)
    total = sum(counts.values())
    filled = dict.fromkeys(SPLITS, 0)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    # Scripts that reach the class cap (Latin, Canadian Syllabics, Ethiopic) train the backbone,
    # like Omniglot's background alphabets: in val or test one of them would outweigh the rest.
    # Scripts that borrowed Latin or Greek letter forms follow them into train, so test classes
    # are not renamed copies of training letters (Cyrillic o, Cherokee Ꭺ, Coptic ⲟ).
    capped = [s for s in names if counts[s] >= cfg.max_classes_per_script]
    if "latin" in capped:
        capped += [s for s in names if s in LATIN_GREEK_FAMILY and s not in capped]
    if len(capped) < len(names) - 1:
        for script in capped:
            out["train"].append(script)
            filled["train"] += counts[script]
        names = [s for s in names if s not in capped]
    # Big scripts first (in size bands of 50 classes, seeded order within a band) so they spread
    # over the splits, then the small ones fill what is left: every split gets several scripts.
    key = dict(zip(names, rng.permutation(len(names)), strict=True))
    order = sorted(names, key=lambda s: (-(counts[s] // 50), key[s]))
    for script in order:
        deficit = {s: (f * total - filled[s]) / (f * total) for s, f in zip(SPLITS, cfg.fractions, strict=True)}
        split = max(SPLITS, key=lambda s: deficit[s])
        out[split].append(script)
        filled[split] += counts[script]
    # Every split needs a few alphabets: move the smallest scripts from the split that has most.
    while True:
        short = [s for s in SPLITS if len(out[s]) < cfg.min_scripts_per_split]
        donor = max(SPLITS, key=lambda s: len(out[s]))
        if not short or len(out[donor]) <= cfg.min_scripts_per_split:
            break
        script = min(out[donor], key=lambda s: (counts[s], s))
        out[donor].remove(script)
        out[short[0]].append(script)
    return {s: sorted(v) for s, v in out.items()}


# --------------------------------------------------------------------------- pipeline


def load_fonts(cfg: GlyphConfig, log: Callable[[str], None]) -> tuple[list[F.FontInfo], str]:
    """The fonts to render with and a line saying where they came from."""
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # cmap range warnings are harmless
    if cfg.dejavu_only:
        files = [("fonts-dejavu-core", p) for p in F.dejavu_files()]
        source = "dejavu_only: DejaVu fonts on this machine"
    else:
        log(f"fetching {len(cfg.packages)} font packages into {cfg.font_cache}")
        try:
            pkgs = F.fetch_font_packages(Path(cfg.font_cache), cfg.packages, log)
            files = [(name, p) for name, root in pkgs for p in F.package_font_files(root)]
            source = f"Debian packages in {cfg.font_cache}"
        except F.FetchError as exc:
            # No silent fallback: the machine's fonts give a different, much smaller benchmark.
            raise DataError(
                f"could not fetch the font packages: {exc}. Nothing was rendered. To fix: on a Debian/Ubuntu "
                "machine with access to its package mirror run 'apt-get update', check that 'apt-get download "
                f"fonts-cardo' works, and run again (fetched packages are kept in {cfg.font_cache}). Or pass "
                "--dejavu-only to build the smaller DejaVu-only benchmark from this machine's fonts instead"
            ) from None
    fonts = F.pick_styles(F.read_fonts(files), cfg.styles_per_design or 3, cfg.italics)
    if not fonts:
        raise DataError("no usable fonts found; install fonts-dejavu-core ('apt-get install fonts-dejavu-core')")
    log(f"{len(fonts)} font faces, {len({f.design for f in fonts})} designs ({source})")
    return fonts, source


def candidates(fonts: list[F.FontInfo], cfg: GlyphConfig) -> tuple[dict[int, str], dict[int, list[int]]]:
    """Letters whose claimed coverage could reach ``min_designs``; capped per script before rendering."""
    cover: dict[int, list[int]] = defaultdict(list)
    scripts: dict[int, str] = {}
    for fi, f in enumerate(fonts):
        for cp in f.cmap:
            s = scripts.get(cp) or F.script_of(cp)
            if s is None or (cfg.scripts is not None and s not in cfg.scripts):
                continue
            scripts[cp] = s
            cover[cp].append(fi)
    per_script: dict[str, list[int]] = defaultdict(list)
    for cp in sorted(cover):
        d = len({fonts[fi].design for fi in cover[cp]})
        if d + cfg.style_weight * (len(cover[cp]) - d) >= cfg.min_designs:  # type: ignore[operator]
            per_script[scripts[cp]].append(cp)
    wanted: dict[int, list[int]] = defaultdict(list)
    for s, cps in sorted(per_script.items()):
        # Render twice the cap: filters remove some; the rest would never be used.
        for cp in sorted(_sample(cps, 2 * cfg.max_classes_per_script, cfg.seed, s)):
            for fi in cover[cp]:
                wanted[fi].append(cp)
    return scripts, dict(sorted(wanted.items()))


def _sample(items: list[int], k: int, seed: int, salt: str) -> list[int]:
    """A deterministic subset of ``k`` items (all when fewer), stable for a (seed, salt)."""
    if len(items) <= k:
        return list(items)
    key = int(hashlib.sha1(f"{seed}/{salt}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(key)
    return [items[i] for i in sorted(rng.choice(len(items), k, replace=False))]


def near_duplicates(classes: dict, scripts: dict[int, str], splits: dict[str, list[str]],
                    threshold: float) -> list[dict]:
    """Val/test classes whose mean render is within ``threshold`` of a train class's (by chamfer)."""
    train = [cp for cp in classes if scripts[cp] in splits["train"]]
    if not train:
        return []
    tdesc = mean_descs(classes, train)
    found = []
    for split in ("val", "test"):
        cps = [cp for cp in classes if scripts[cp] in splits[split]]
        if not cps:
            continue
        d = chamfer(mean_descs(classes, cps), tdesc)
        for i, cp in enumerate(cps):
            j = int(np.argmin(d[i]))
            if d[i, j] < threshold:
                found.append({"split": split, "class": class_name(scripts[cp], cp), "name": unicodedata.name(chr(cp)),
                              "nearest_train": class_name(scripts[train[j]], train[j]),
                              "nearest_name": unicodedata.name(chr(train[j])), "distance": round(float(d[i, j]), 3)})
    return sorted(found, key=lambda x: x["distance"])


def class_name(script: str, cp: int) -> str:
    """``"greek/U+03B1"``."""
    return f"{script}/U+{cp:04X}"


def render_glyph_benchmark(out: Path, config: GlyphConfig | None = None,
                           log: Callable[[str], None] = print) -> dict:
    """Render the glyph benchmark into ``out`` and return its manifest.

    Args:
        out: output folder; gets ``train/ val/ test/<script>/U+XXXX/<n>.png`` and ``manifest.json``.
        config: see :class:`GlyphConfig`; defaults when None.
        log: progress output.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        DataError: ``out`` exists and is not empty (without ``overwrite``), or too little survived.
    """
    cfg = (config or GlyphConfig()).resolved()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise DataError(f"{out} exists and is not empty; choose another folder or pass overwrite=True (--overwrite)")
    t0 = time.time()
    fonts, source = load_fonts(cfg, log)
    scripts, wanted = candidates(fonts, cfg)
    log(f"rendering {sum(map(len, wanted.values()))} glyphs with {len(wanted)} fonts at {cfg.size} px")
    renders, notdefs, stats = render_all(fonts, wanted, cfg, log)
    renders = basic_filters(renders, notdefs, scripts, cfg.size, stats)
    classes, report = clean_classes(renders, fonts, scripts, cfg, stats, log)
    classes = fold_case(classes, stats)
    by_script: dict[str, list[int]] = defaultdict(list)
    for cp in sorted(classes):
        by_script[scripts[cp]].append(cp)
    min_classes = min(cfg.min_classes_per_script, cfg.max_classes_per_script)
    by_script = {s: sorted(_sample(cps, cfg.max_classes_per_script, cfg.seed, s))
                 for s, cps in sorted(by_script.items()) if len(cps) >= min_classes}
    classes = {cp: _pick_instances(classes[cp], fonts, cfg.max_instances) for cps in by_script.values() for cp in cps}
    splits = assign_splits({s: len(v) for s, v in by_script.items()}, cfg)
    dups = near_duplicates(classes, scripts, splits, cfg.near_duplicate_distance)
    manifest = _manifest(cfg, fonts, source, classes, scripts, splits, stats, report, dups)
    manifest["wall_time_s"] = round(time.time() - t0, 1)  # up to the writing of the images
    _write(out, cfg, classes, scripts, splits, manifest)
    _summary(manifest, log)
    return manifest


def _pick_instances(group: list[Render], fonts: list[F.FontInfo], k: int) -> list[Render]:
    """At most ``k`` renders, one per design first (font order), then further styles."""
    seen: set[str] = set()
    first, rest = [], []
    for r in group:
        (rest if fonts[r.font].design in seen else first).append(r)
        seen.add(fonts[r.font].design)
    return (first + rest)[:k]


def _manifest(cfg: GlyphConfig, fonts: list[F.FontInfo], source: str, classes: dict, scripts: dict[int, str],
              splits: dict[str, list[str]], stats: Counter, report: dict, dups: list[dict]) -> dict:
    used = sorted({r.font for g in classes.values() for r in g})
    per_split = {}
    for split in SPLITS:
        cps = [cp for cp in classes if scripts[cp] in splits[split]]
        per_split[split] = {
            "scripts": splits[split], "classes": len(cps), "images": sum(len(classes[cp]) for cp in cps),
            "classes_per_script": dict(sorted(Counter(scripts[cp] for cp in cps).items())),
        }
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    return {
        "format": "edgefs-glyphs/1",
        "config": config,
        "font_source": source,
        "fonts": [{"file": str(fonts[i].path), "index": fonts[i].index, "package": fonts[i].package,
                   "family": fonts[i].family, "style": fonts[i].style, "design": fonts[i].design} for i in used],
        "splits": per_split,
        # Which font drew each image: instance n of a class is fonts[class_fonts[class][n]].
        "class_fonts": {class_name(scripts[cp], cp): [used.index(r.font) for r in g]
                        for cp, g in sorted(classes.items())},
        "totals": {"scripts": sum(len(v) for v in splits.values()), "classes": len(classes),
                   "images": sum(len(g) for g in classes.values()), "fonts": len(used)},
        "filters": {k: int(stats[k]) for k in FILTERS},
        "outliers": {"method": "chamfer distance on 32 px ink masks: own-class lower-median distance over "
                               "median distance to other classes' medoids of the same script",
                     "ratio_threshold": cfg.outlier_ratio, **report, "audit": None},
        "near_duplicates": {"method": "chamfer distance between mean renders, val/test class to nearest "
                                      "train class", "threshold": cfg.near_duplicate_distance, "pairs": dups},
    }


def _write(out: Path, cfg: GlyphConfig, classes: dict, scripts: dict[int, str],
           splits: dict[str, list[str]], manifest: dict) -> None:
    """Write images and manifest into a temporary folder, then move it into place.

    ``out`` is either the old folder, untouched, or the complete new one
    (:func:`edgefs.fileio.replacing_dir`). A run stopped while writing (Ctrl-C, an
    error) removes its temporary folder.
    """
    split_of = {s: split for split, ss in splits.items() for s in ss}
    with replacing_dir(out) as tmp:
        for cp, group in sorted(classes.items()):
            folder = tmp / split_of[scripts[cp]] / scripts[cp] / f"U+{cp:04X}"
            folder.mkdir(parents=True, exist_ok=True)
            for n, r in enumerate(group):
                if not cv2.imwrite(str(folder / f"{n}.png"), 255 - r.ink):
                    raise DataError(f"cannot write {folder / f'{n}.png'}; check the disk has room")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=_plain) + "\n")


def _plain(obj: object) -> object:
    """JSON for numpy scalars and paths."""
    return obj.item() if isinstance(obj, np.generic) else str(obj)


def _summary(m: dict, log: Callable[[str], None]) -> None:
    for split, s in m["splits"].items():
        log(f"{split:5s}: {len(s['scripts'])} scripts, {s['classes']} classes, {s['images']} images")
    log(f"fonts used: {m['totals']['fonts']}; removed by filters: {m['filters']}")
    pairs = m["near_duplicates"]["pairs"]
    log(f"{len(pairs)} val/test classes nearly duplicate a train class (chamfer < "
        f"{m['near_duplicates']['threshold']}): " + ", ".join(f"{p['class']}~{p['nearest_train']}" for p in pairs[:8]))
    log(f"wrote {m['totals']['classes']} classes, {m['totals']['images']} images in {m['wall_time_s']} s")
