"""Audit a rendered glyph benchmark: contact sheets for counting outliers by eye, near-duplicate sheets.

Usage::

    python tools/glyph_audit.py data/glyphs28 --classes 200          # sheets + audit.json
    python tools/glyph_audit.py data/glyphs28 --record 3              # store "3 outliers seen" in manifest

Each sheet row is one randomly sampled class (label on the left, then its instances);
look at the sheets, count the renders that do not look like the rest of their row, and
record the count: the manifest's ``outliers.audit`` then holds the sample size, count and
percentage. ``near_duplicates.png`` shows each listed val/test class beside the train class
it nearly duplicates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

LABEL_W = 120


def class_folders(root: Path) -> list[Path]:
    """Every ``<split>/<script>/<U+XXXX>`` folder, sorted."""
    return sorted(p for p in root.glob("*/*/U+*") if p.is_dir())


def load_row(folder: Path) -> list[np.ndarray]:
    """The grey images of one class, in instance order."""
    files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def draw_sheet(rows: list[tuple[str, list[np.ndarray]]], cols: int, scale: int = 2) -> np.ndarray:
    """One image: a label column and up to ``cols`` instances per row, each scaled by ``scale``."""
    size = rows[0][1][0].shape[0] * scale
    gap = 2
    sheet = np.full((len(rows) * (size + gap), LABEL_W + cols * (size + gap)), 200, np.uint8)
    for i, (label, images) in enumerate(rows):
        y = i * (size + gap)
        sheet[y: y + size, :LABEL_W] = 255
        cv2.putText(sheet, label, (2, y + size // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, 0, 1, cv2.LINE_AA)
        for j, img in enumerate(images[:cols]):
            x = LABEL_W + j * (size + gap)
            sheet[y: y + size, x: x + size] = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)
    return sheet


def contact_sheets(root: Path, out: Path, n_classes: int, per_sheet: int, seed: int) -> dict:
    """Write sheets of ``n_classes`` random classes; returns what was sampled."""
    folders = class_folders(root)
    rng = np.random.default_rng(seed)
    pick = [folders[i] for i in sorted(rng.choice(len(folders), min(n_classes, len(folders)), replace=False))]
    out.mkdir(parents=True, exist_ok=True)
    sheets, images = [], 0
    for s in range(0, len(pick), per_sheet):
        rows = []
        for folder in pick[s: s + per_sheet]:
            imgs = load_row(folder)
            images += len(imgs)
            rows.append((f"{folder.parent.name[:10]} {folder.name}", imgs))
        name = out / f"sheet_{s // per_sheet:02d}.png"
        cv2.imwrite(str(name), draw_sheet(rows, cols=20))
        sheets.append(str(name))
    return {"classes": [str(p.relative_to(root)) for p in pick], "sample_classes": len(pick),
            "sample_images": images, "sheets": sheets}


def near_duplicate_sheet(root: Path, manifest: dict, out: Path, limit: int = 60) -> str | None:
    """Pairs (val/test class | nearest train class), the first instances of each, closest first."""
    pairs = manifest.get("near_duplicates", {}).get("pairs", [])[:limit]
    if not pairs:
        return None
    split_of = {s: split for split, v in manifest["splits"].items() for s in v["scripts"]}
    rows = []
    for p in pairs:
        a = load_row(root / split_of[p["class"].split("/")[0]] / p["class"])[:5]
        b = load_row(root / "train" / p["nearest_train"])[:5]
        blank = np.full_like(a[0], 160)
        rows.append((f"{p['class'][:16]} {p['distance']}", [*a, *[blank] * (5 - len(a)), blank, *b]))
    path = out / "near_duplicates.png"
    cv2.imwrite(str(path), draw_sheet(rows, cols=11))
    return str(path)


def main() -> None:
    """Parse arguments, write sheets and audit.json, optionally record a by-eye count."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="rendered benchmark folder (with manifest.json)")
    ap.add_argument("--out", type=Path, help="where sheets go (default DATA/../<name>_audit)")
    ap.add_argument("--classes", type=int, default=200, help="classes to sample")
    ap.add_argument("--per-sheet", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", type=int, metavar="COUNT",
                    help="outliers counted by eye on the sheets of the last run: store it in the manifest")
    args = ap.parse_args()
    out = args.out or args.data.with_name(args.data.name + "_audit")
    manifest_path = args.data / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if args.record is not None:
        audit = json.loads((out / "audit.json").read_text())
        audit.update(outliers_counted=args.record,
                     percent=round(100 * args.record / max(1, audit["sample_images"]), 2),
                     method="contact sheets of randomly sampled classes (tools/glyph_audit.py), "
                            "renders unlike the rest of their row counted by eye")
        audit.pop("classes", None)
        manifest["outliers"]["audit"] = audit
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"recorded {args.record} outliers in {audit['sample_images']} images "
              f"({audit['percent']}%) of {audit['sample_classes']} classes")
        return
    audit = contact_sheets(args.data, out, args.classes, args.per_sheet, args.seed)
    audit["near_duplicate_sheet"] = near_duplicate_sheet(args.data, manifest, out)
    (out / "audit.json").write_text(json.dumps(audit, indent=1) + "\n")
    print(f"{audit['sample_classes']} classes, {audit['sample_images']} images on "
          f"{len(audit['sheets'])} sheets in {out}")


if __name__ == "__main__":
    main()
