"""Benchmark table of built domains: classes per split, images, instances per class, licences, outliers.

Usage::

    python tools/bench_domains.py ROOT [--json ROOT/bench_domains.json]

ROOT holds one folder per domain (``edgefs data all --out ROOT``); each folder's
``manifest.json`` is read, and the image counts are checked against the files on
disk (a mismatch is reported, not hidden).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = ("train", "val", "test")


def row(folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    on_disk = {s: len(list((folder / s).glob("*/*.png"))) for s in SPLITS}
    audit = m.get("audit")
    return {
        "domain": m["domain"],
        "size": m["image"]["size"],
        "classes": {s: m["splits"][s]["classes"] for s in SPLITS},
        "images": m["total"]["images"],
        "images_on_disk": sum(on_disk.values()),
        "instances_per_class": m["total"]["instances_per_class"],
        "licences": sorted({p["licence"].split(",")[0].strip() for p in m["packages"]}),
        "packages": [f"{p['name']} {p['version']}" for p in m["packages"]],
        "outlier_rate": None if audit is None else audit["outlier_rate"],
        "audit": None if audit is None else f"{audit['outliers']}/{audit['images_looked_at']} in "
                                             f"{audit['classes_looked_at']} classes",
        "build_seconds": m.get("build_seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--json", type=Path, help="where to write the table as JSON (default ROOT/bench_domains.json)")
    args = ap.parse_args(argv)
    rows = [row(f) for f in sorted(args.root.iterdir()) if (f / "manifest.json").exists()]
    if not rows:
        raise SystemExit(f"no domain folders with manifest.json under {args.root}")
    head = (f"{'domain':9} {'px':>4} {'train/val/test classes':>22} {'images':>7} {'inst/class min/med/max':>23}"
            f" {'outliers':>16} {'build s':>8}  licences")
    print(head)
    print("-" * len(head))
    for r in rows:
        c, ipc = r["classes"], r["instances_per_class"]
        outl = ("not audited" if r["outlier_rate"] is None
                else f"{100 * r['outlier_rate']:.1f}% ({r['audit'].split()[0]})")
        print(f"{r['domain']:9} {r['size']:>4} {c['train']:>10}/{c['val']}/{c['test']:<7} {r['images']:>7} "
              f"{ipc['min']:>13}/{ipc['median']:g}/{ipc['max']:<4} {outl:>16} {r['build_seconds'] or 0:>8.0f}  "
              + "; ".join(r["licences"]))
        if r["images_on_disk"] != r["images"]:
            print(f"  ! {r['domain']}: manifest says {r['images']} images, {r['images_on_disk']} on disk")
    total = sum(r["images"] for r in rows)
    print(f"{len(rows)} domains, {sum(sum(r['classes'].values()) for r in rows)} classes, {total} images")
    out = args.json or args.root / "bench_domains.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
