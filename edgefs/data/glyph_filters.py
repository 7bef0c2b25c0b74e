"""The glyph benchmark's render filters, and the shape distances they judge renders by.

:func:`edgefs.data.glyphs.render_glyph_benchmark` passes every render through these, in the order
of :data:`edgefs.data.glyphs.FILTERS`: :func:`basic_filters` (near-empty renders, .notdef/tofu
boxes, fonts drawing many letters alike), then :func:`clean_classes` (duplicates within a class,
outlier renders and fonts by chamfer distance, classes whose fonts disagree, classes below
``min_designs``), then :func:`fold_case` (a capital drawn like its small letter). Each adds what
it removed to the run's ``stats`` counter, which the manifest records.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edgefs.data import fonts as F

if TYPE_CHECKING:
    from edgefs.data.glyphs import GlyphConfig, Render

DESC_SIZE = 32  # side of the binary masks used for shape distances


# --------------------------------------------------------------------------- shape distances


def masks_and_dts(inks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary masks, distance transforms and ink counts at ``DESC_SIZE`` for inks ``(N, S, S)``.

    Returns:
        masks float32 ``(N, P)``, dts float32 ``(N, P)`` (distance to the nearest ink pixel),
        counts float32 ``(N,)``; ``P = DESC_SIZE**2``.
    """
    n = len(inks)
    masks = np.zeros((n, DESC_SIZE * DESC_SIZE), np.float32)
    dts = np.zeros_like(masks)
    for i, ink in enumerate(inks):
        small = cv2.resize(ink, (DESC_SIZE, DESC_SIZE), interpolation=cv2.INTER_AREA)
        m = (small >= 96).astype(np.uint8)
        if not m.any():
            m[DESC_SIZE // 2, DESC_SIZE // 2] = 1
        masks[i] = m.ravel()
        dts[i] = cv2.distanceTransform((1 - m) * 255, cv2.DIST_L2, 3).ravel()
    return masks, dts, masks.sum(1)


def chamfer(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> np.ndarray:
    """Symmetric chamfer distance matrix ``(Na, Nb)`` in pixels between two ``masks_and_dts`` sets."""
    ma, da, ca = a
    mb, db, cb = b
    return 0.5 * ((ma @ db.T) / ca[:, None] + (da @ mb.T) / cb[None, :])


def mean_descs(classes: dict[int, list[Render]], cps: list[int]) -> tuple[np.ndarray, ...]:
    """Shape descriptors of each class's mean render."""
    means = np.stack([np.mean([r.ink.astype(np.float32) for r in classes[cp]], axis=0) for cp in cps])
    return masks_and_dts(means.astype(np.uint8))


# --------------------------------------------------------------------------- filters


def is_rectangle(ink: np.ndarray) -> bool:
    """True for a box-like render (tofu): all four edges of the ink box almost fully inked."""
    m = ink >= 96
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return False
    box = m[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    if min(box.shape) < 4:
        return False
    edges = [box[:2].any(0).mean(), box[-2:].any(0).mean(), box[:, :2].any(1).mean(), box[:, -2:].any(1).mean()]
    return min(edges) > 0.9


def basic_filters(renders: list[Render], notdefs: dict[int, np.ndarray | None],
                  scripts: dict[int, str], size: int, stats: Counter) -> list[Render]:
    """Remove near-empty renders, .notdef/tofu boxes and fonts drawing many letters identically."""
    kept = []
    for r in renders:
        ink = r.ink.astype(np.float32) / 255
        if r.raw_side < 0.2 or ink.sum() < 0.02 * size * size:
            stats["near_empty"] += 1
            continue
        nd = notdefs.get(r.font)
        if nd is not None and np.abs(ink - nd.astype(np.float32) / 255).mean() < 0.02:
            stats["notdef"] += 1
            continue
        kept.append(r)
    # One font giving the same image for different letters draws a placeholder, not letters.
    # Latin A / Greek Alpha / Cyrillic A legitimately share a drawing, so small groups stay.
    groups: dict[tuple[int, str], list[Render]] = defaultdict(list)
    for r in kept:
        groups[(r.font, r.digest)].append(r)
    bad = set()
    for key, group in groups.items():
        per_script = Counter(scripts[r.cp] for r in group)
        if len(group) >= 5 or max(per_script.values()) >= 3:
            bad.add(key)
    out = [r for r in kept if (r.font, r.digest) not in bad]
    stats["same_image_for_many_letters"] += len(kept) - len(out)
    # Box-like renders are dropped where most of their class is not box-like (tofu, not a real box).
    by_cp: dict[int, list[Render]] = defaultdict(list)
    for r in out:
        by_cp[r.cp].append(r)
    final = []
    for group in by_cp.values():
        rect = [is_rectangle(r.ink) for r in group]
        if sum(rect) * 2 < len(group):
            final.extend(r for r, is_r in zip(group, rect, strict=True) if not is_r)
            stats["box_placeholder"] += int(sum(rect))
        else:
            final.extend(group)
    return final


def dedupe_class(group: list[Render], stats: Counter) -> list[Render]:
    """Drop exact duplicates (same hash) and near-identical renders within one class."""
    kept: list[Render] = []
    seen: set[str] = set()
    inks = np.stack([r.ink for r in group]).astype(np.float32) / 255
    kept_idx: list[int] = []
    for i, r in enumerate(group):
        if r.digest in seen:
            stats["exact_duplicate"] += 1
            continue
        if kept_idx and np.abs(inks[kept_idx] - inks[i]).mean(axis=(1, 2)).min() < 0.01:
            stats["near_identical"] += 1
            continue
        seen.add(r.digest)
        kept.append(r)
        kept_idx.append(i)
    return kept


def outlier_flags(classes: dict[int, list[Render]], scripts: dict[int, str], ratio: float,
                  spread: float = 2.0, spread_floor: float = 0.6) -> dict[int, np.ndarray]:
    """Per class, a bool array marking outlier instances.

    An instance's *own* distance is the lower median of its chamfer distances to the other
    instances of its class; its *other* distance is the median of its distances to the medoids
    of the other classes of the same script. It is an outlier when own / other is above
    ``ratio`` (it looks no more like its class than like a different letter) or when its own
    distance is above ``spread`` times the class's median own distance and above
    ``spread_floor`` pixels (a variant form drawn by a few fonts, e.g. an f-shaped Armenian keh).
    """
    by_script: dict[str, list[int]] = defaultdict(list)
    for cp in classes:
        by_script[scripts[cp]].append(cp)
    flags: dict[int, np.ndarray] = {}
    for cps in by_script.values():
        descs = [_descs(classes[cp]) for cp in cps]
        within = [chamfer(d, d) for d in descs]
        medoid = [int(np.argmin(w.sum(1))) for w in within]
        med = tuple(np.stack([d[k][m] for d, m in zip(descs, medoid, strict=True)]) for k in range(3))
        everything = tuple(np.concatenate([d[k] for d in descs]) for k in range(3))
        to_meds = chamfer(everything, med)  # (all instances of the script, classes)
        start = 0
        for ci, (cp, d) in enumerate(zip(cps, within, strict=True)):
            n = len(d)
            rows = to_meds[start: start + n]
            start += n
            if n < 3 or len(cps) < 3:
                flags[cp] = np.zeros(n, bool)
                continue
            # Lower median of the distances to the other instances (diagonal excluded).
            off = np.sort(d + np.diag(np.full(n, np.inf)), axis=1)[:, :-1]
            own = off[:, (n - 2) // 2]
            other = np.median(np.delete(rows, ci, axis=1), axis=1)
            typical = max(spread_floor, spread * float(np.median(own)))
            flags[cp] = (own > ratio * other) | (own > typical)
    return flags


def _descs(group: list[Render]) -> tuple[np.ndarray, ...]:
    """Shape descriptors of a class's renders, computed once per render and cached on it."""
    for r in group:
        if r.desc is None:
            r.desc = tuple(a[0] for a in masks_and_dts(r.ink[None]))
    return tuple(np.stack([r.desc[k] for r in group]) for k in range(3))  # type: ignore[index]


def drop_inconsistent(classes: dict[int, list[Render]], scripts: dict[int, str], spread: float,
                      stats: Counter) -> dict[int, list[Render]]:
    """Drop classes whose fonts disagree on the letter's form (two drawing traditions, e.g. Greek san).

    A class's spread is the median chamfer distance between its instances; a class whose spread
    is above ``spread`` times the median spread of its script's classes has no single shape.
    """
    spreads: dict[int, float] = {}
    for cp, g in classes.items():
        if len(g) >= 2:
            d = chamfer(_descs(g), _descs(g))
            spreads[cp] = float(np.median(d[~np.eye(len(g), dtype=bool)]))
    by_script: dict[str, list[float]] = defaultdict(list)
    for cp, v in spreads.items():
        by_script[scripts[cp]].append(v)
    typical = {s: float(np.median(v)) for s, v in by_script.items()}
    out = {cp: g for cp, g in classes.items() if cp not in spreads or spreads[cp] <= spread * typical[scripts[cp]]}
    stats["inconsistent_class"] += len(classes) - len(out)
    return out


def designs_of(group: list[Render], fonts: list[F.FontInfo], style_weight: float) -> float:
    """Design count of a class: 1 per distinct design, ``style_weight`` per extra style of one."""
    distinct = len({fonts[r.font].design for r in group})
    return distinct + style_weight * (len(group) - distinct)


def drop_outlier_fonts(classes: dict[int, list[Render]], fonts: list[F.FontInfo], scripts: dict[int, str],
                       cfg: GlyphConfig, stats: Counter, log: Callable[[str], None],
                       rounds: int = 5) -> tuple[dict[int, list[Render]], list[dict]]:
    """Drop fonts for a whole script where they are outliers in many of its classes.

    Worst first: each round drops, per script, only the design with the highest outlier rate
    (when at or above ``cfg.font_script_outlier_rate``), then measures again, so a deviant
    font does not make the fonts it disagrees with look deviant too.
    """
    dropped: list[dict] = []
    todo = set(scripts[cp] for cp in classes)
    for _ in range(rounds):
        flags = outlier_flags({cp: g for cp, g in classes.items() if scripts[cp] in todo}, scripts,
                              cfg.outlier_ratio, cfg.outlier_spread)
        rate: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
        for cp, f in flags.items():
            for r, is_out in zip(classes[cp], f, strict=True):
                rate[(r.font, scripts[cp])][0] += int(is_out)
                rate[(r.font, scripts[cp])][1] += 1
        worst: dict[str, tuple[float, str]] = {}
        for (fi, s), (o, n) in rate.items():
            if n >= 4 and o / n >= cfg.font_script_outlier_rate:
                worst[s] = max(worst.get(s, (0.0, "")), (o / n, fonts[fi].design))
        drop = {(fi, s) for (fi, s), (o, n) in rate.items()
                if s in worst and fonts[fi].design == worst[s][1] and n >= 4 and o / n >= cfg.font_script_outlier_rate}
        if not drop:
            break
        for fi, s in sorted(drop):
            o, n = rate[(fi, s)]
            log(f"  dropping {fonts[fi].name} for {s}: outlier in {o}/{n} classes")
            dropped.append({"font": fonts[fi].name, "script": s, "outliers": o, "renders": n})
        before = sum(len(g) for g in classes.values())
        classes = {cp: [r for r in g if (r.font, scripts[cp]) not in drop] for cp, g in classes.items()}
        classes = {cp: g for cp, g in classes.items() if g}
        stats["font_dropped_for_script"] += before - sum(len(g) for g in classes.values())
        todo = set(worst)
    return classes, dropped


def clean_classes(renders: list[Render], fonts: list[F.FontInfo], scripts: dict[int, str],
                  cfg: GlyphConfig, stats: Counter, log: Callable[[str], None]) -> tuple[dict, dict]:
    """Dedupe, remove outliers (per render, then per font and script), enforce ``min_designs``."""
    classes: dict[int, list[Render]] = defaultdict(list)
    for r in renders:
        classes[r.cp].append(r)
    classes = {cp: dedupe_class(g, stats) for cp, g in sorted(classes.items())}
    classes = {cp: g for cp, g in classes.items() if len(g) >= 2}
    classes, dropped = drop_outlier_fonts(classes, fonts, scripts, cfg, stats, log)
    flags = outlier_flags(classes, scripts, cfg.outlier_ratio, cfg.outlier_spread)  # again, without the dropped fonts
    for cp in list(classes):
        f = flags.get(cp, np.zeros(len(classes[cp]), bool))
        stats["outlier"] += int(f.sum())
        classes[cp] = [r for r, is_out in zip(classes[cp], f, strict=True) if not is_out]
    classes = drop_inconsistent(classes, scripts, cfg.outlier_spread, stats)
    before = len(classes)
    classes = {cp: g for cp, g in classes.items() if designs_of(g, fonts, cfg.style_weight) >= cfg.min_designs}
    stats["classes_below_min_designs"] += before - len(classes)
    return classes, {"dropped_font_scripts": dropped}


def fold_case(classes: dict[int, list[Render]], stats: Counter) -> dict[int, list[Render]]:
    """Drop a capital whose mean render nearly equals its small letter's (c/C, o/O)."""
    def mean_desc(cp: int) -> tuple[np.ndarray, ...]:
        mean = np.mean([r.ink.astype(np.float32) for r in classes[cp]], axis=0).astype(np.uint8)
        return masks_and_dts(mean[None])

    out = dict(classes)
    for cp in classes:
        low = chr(cp).lower()
        pair = len(low) == 1 and ord(low) != cp and ord(low) in classes
        if pair and chamfer(mean_desc(cp), mean_desc(ord(low)))[0, 0] < 0.5:
            del out[cp]
            stats["capital_like_small_letter"] += 1
    return out
