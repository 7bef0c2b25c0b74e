"""Audit a built domain: contact sheets (one row per class) for counting outliers by eye.

Usage::

    python tools/domain_audit.py DIR --classes 20 --seed 0            # writes DIR/audit/sheet_*.png
    python tools/domain_audit.py DIR --classes 20 --seed 0 --record 3 --note "..."

Each row is one randomly sampled class (name on the left, then every instance, with the
instance name under it). Look at the sheets, count the images that do not show their
row's class (wrong object, placeholder, illegible), then run again with ``--record N``:
the manifest's ``audit`` entry then holds classes and images looked at, the count and
the outlier rate. The same seed gives the same sample.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

LABEL_W = 150
CAPTION_H = 12


def class_folders(root: Path) -> list[Path]:
    """Every ``<split>/<class>`` folder, sorted."""
    return sorted(p for s in ("train", "val", "test") for p in (root / s).glob("*") if p.is_dir())


def sample(root: Path, n_classes: int, seed: int) -> list[Path]:
    folders = class_folders(root)
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(folders), min(n_classes, len(folders)), replace=False))
    return [folders[i] for i in idx]


def draw_sheet(rows: list[Path], cols: int, cell: int) -> np.ndarray:
    """BGR sheet: a label column, then up to ``cols`` images per row with captions."""
    h = cell + CAPTION_H
    sheet = np.full((len(rows) * (h + 2), LABEL_W + cols * (cell + 2), 3), 160, np.uint8)
    for i, folder in enumerate(rows):
        y = i * (h + 2)
        sheet[y:y + h, :LABEL_W] = 255
        cv2.putText(sheet, folder.name[:24], (2, y + h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for j, f in enumerate(sorted(folder.glob("*.png"))[:cols]):
            x = LABEL_W + j * (cell + 2)
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            sheet[y:y + cell, x:x + cell] = cv2.resize(img, (cell, cell), interpolation=cv2.INTER_AREA)
            sheet[y + cell:y + h, x:x + cell] = 255
            cv2.putText(sheet, f.stem[:14], (1, y + h - 3) if False else (x + 1, y + h - 3),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.28, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="a built domain folder (with manifest.json)")
    ap.add_argument("--classes", type=int, default=20, help="classes to sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-sheet", type=int, default=10, help="rows per sheet")
    ap.add_argument("--cols", type=int, default=16, help="images per row at most")
    ap.add_argument("--cell", type=int, default=64, help="image side on the sheet")
    ap.add_argument("--out", type=Path, help="sheet folder (default ROOT/audit)")
    ap.add_argument("--record", type=int, metavar="N", help="store N outliers seen in the manifest's audit entry")
    ap.add_argument("--note", default="", help="what was seen (stored with --record)")
    args = ap.parse_args(argv)
    rows = sample(args.root, args.classes, args.seed)
    out = args.out or args.root / "audit"
    out.mkdir(parents=True, exist_ok=True)
    sheets = []
    for s in range(0, len(rows), args.per_sheet):
        path = out / f"sheet_{s // args.per_sheet:02d}.png"
        cv2.imwrite(str(path), draw_sheet(rows[s:s + args.per_sheet], args.cols, args.cell))
        sheets.append(str(path))
    shown = sum(min(args.cols, len(list(f.glob("*.png")))) for f in rows)
    print(f"{len(rows)} classes, {shown} images on {len(sheets)} sheet(s): " + ", ".join(sheets))
    if args.record is not None:
        manifest_path = args.root / "manifest.json"
        m = json.loads(manifest_path.read_text())
        m["audit"] = {"classes_looked_at": len(rows), "images_looked_at": shown, "outliers": args.record,
                      "outlier_rate": round(args.record / max(shown, 1), 4), "seed": args.seed,
                      "sampled_classes": [f"{f.parent.name}/{f.name}" for f in rows], "note": args.note}
        manifest_path.write_text(json.dumps(m, indent=1) + "\n")
        print(f"recorded {args.record} outliers in {shown} images ({100 * args.record / max(shown, 1):.1f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
