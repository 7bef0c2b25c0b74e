"""Quality filters shared by all domains, and the canvas every image is placed on.

Order (each step counts what it removes):
1. ``blank``: under 2% of pixels differ from the background by more than 24 levels.
2. ``identical_across_classes``: the same pixels under two or more class names (an alias,
   a shared placeholder or fallback drawing): removed from every class, since no class
   can claim it. ``near_duplicate_across_classes``: the same test with the near-duplicate
   measure of step 3 (a placeholder rendered at two sizes, flags two countries share).
3. ``near_duplicate``: within a class, an image whose 64-bit difference hash is within
   ``bits`` of an earlier one (instances sorted by name) and whose 32x32 colour thumbnail
   differs from it by under 6 grey levels on average: one set copied another's drawing,
   so it is one instance, not two. (The hash alone merges different decks' plain pip
   cards; the thumbnail keeps them apart.)
4. ``too_few_instances``: classes left with fewer than ``min_instances`` images.
All steps are deterministic (sorted order, no randomness).
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from edgefs.data.domains.base import Item

BLANK_FRACTION = 0.02
BLANK_LEVEL = 24
THUMB_TOLERANCE = 6.0


def to_canvas(image: np.ndarray, size: int, margin: float = 0.08, background: int = 255,
              crop: bool = True) -> np.ndarray:
    """Place an RGB or RGBA image centred on a square ``size`` canvas of ``background`` grey.

    Args:
        image: ``(H, W, 3|4)`` uint8; alpha is composited on the background.
        size: canvas side in pixels.
        margin: free border on each side, as a fraction of ``size``.
        background: grey level of the canvas.
        crop: crop to the non-transparent bounding box first (RGBA only).

    Returns:
        ``(size, size, 3)`` uint8 RGB.
    """
    from PIL import Image

    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4 and crop:
        ys, xs = np.nonzero(image[:, :, 3] > 8)
        if len(ys):
            image = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = image.shape[:2]
    inner = max(1, round(size * (1 - 2 * margin)))
    scale = inner / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    mode = "RGBA" if image.shape[2] == 4 else "RGB"
    resized = np.asarray(Image.fromarray(image, mode).resize((nw, nh), Image.LANCZOS))
    canvas = np.full((size, size, 3), background, np.float32)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    if mode == "RGBA":
        a = resized[:, :, 3:4].astype(np.float32) / 255.0
        region = canvas[y0:y0 + nh, x0:x0 + nw]
        canvas[y0:y0 + nh, x0:x0 + nw] = resized[:, :, :3] * a + region * (1 - a)
    else:
        canvas[y0:y0 + nh, x0:x0 + nw] = resized
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def is_blank(image: np.ndarray, background: int = 255) -> bool:
    """True when almost nothing differs from the background."""
    diff = np.abs(image.astype(np.int16) - background).max(axis=2)
    return float((diff > BLANK_LEVEL).mean()) < BLANK_FRACTION


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash of the grey image resized to 9x8 (horizontal gradients' signs)."""
    from PIL import Image

    grey = np.asarray(Image.fromarray(image, "RGB").convert("L").resize((9, 8), Image.BILINEAR), np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def thumbnail(image: np.ndarray) -> np.ndarray:
    """32x32 RGB float thumbnail (area-averaged)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image, "RGB").resize((32, 32), Image.BOX), np.float32)


def near_duplicates_across_classes(items: list[Item], hashes: np.ndarray, thumbs: np.ndarray,
                                   bits: int) -> set[int]:
    """Indices of images with a near-duplicate (hash within ``bits``, thumbnail within tolerance) in another class.

    Such an image is a placeholder ("linked image not found"), a drawing filed under two
    names, or two classes that cannot be told apart from this image; no class can claim it.
    """
    out: set[int] = set()
    labels = np.array([it.cls for it in items])
    for k in range(len(items)):
        close = np.bitwise_count(hashes[k + 1:] ^ hashes[k]) <= bits
        for j in np.nonzero(close)[0] + k + 1:
            if labels[j] != labels[k] and float(np.abs(thumbs[j] - thumbs[k]).mean()) < THUMB_TOLERANCE:
                out.update((k, int(j)))
    return out


def apply_filters(items: list[Item], min_instances: int, bits: int, background: int = 255,
                  cross_class: bool = True) -> tuple[list[Item], Counter]:
    """Apply the module's filters in order; returns surviving items (sorted) and removal counts."""
    removed: Counter = Counter()
    items = sorted(items, key=lambda i: (i.cls, i.instance))
    seen: set[tuple[str, str]] = set()
    unique: list[Item] = []
    for it in items:
        if (it.cls, it.instance) in seen:
            raise ValueError(f"instance {it.instance!r} appears twice in class {it.cls!r}")
        seen.add((it.cls, it.instance))
        if is_blank(it.image, background):
            removed["blank"] += 1
        else:
            unique.append(it)
    digests = [hashlib.sha1(it.image.tobytes()).hexdigest() for it in unique]
    classes_of: dict[str, set[str]] = {}
    for it, d in zip(unique, digests, strict=True):
        classes_of.setdefault(d, set()).add(it.cls)
    shared = {d for d, c in classes_of.items() if len(c) > 1}
    kept = [it for it, d in zip(unique, digests, strict=True) if d not in shared]
    if len(kept) < len(unique):
        removed["identical_across_classes"] += len(unique) - len(kept)
    hashes = np.array([dhash(it.image) for it in kept], np.uint64)
    thumbs = np.stack([thumbnail(it.image) for it in kept]) if kept else np.zeros((0, 32, 32, 3), np.float32)
    cross = near_duplicates_across_classes(kept, hashes, thumbs, bits) if cross_class else set()
    if cross:
        removed["near_duplicate_across_classes"] += len(cross)
    by_class: dict[str, list[tuple[Item, int, np.ndarray]]] = {}
    for k, it in enumerate(kept):
        if k not in cross:
            by_class.setdefault(it.cls, []).append((it, int(hashes[k]), thumbs[k]))
    out: list[Item] = []
    for cls in sorted(by_class):
        chosen: list[tuple[Item, int, np.ndarray]] = []
        for it, h, c in by_class[cls]:
            if any(bin(h ^ h2).count("1") <= bits and float(np.abs(c - c2).mean()) < THUMB_TOLERANCE
                   for _, h2, c2 in chosen):
                removed["near_duplicate"] += 1
                continue
            chosen.append((it, h, c))
        if len(chosen) < min_instances:
            removed["too_few_instances"] += len(chosen)
            removed["classes_too_few_instances"] += 1
            continue
        out.extend(it for it, _, _ in chosen)
    return out, removed
