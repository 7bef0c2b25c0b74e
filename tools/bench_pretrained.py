"""How much centring adds to a frozen ImageNet backbone: plain cosine vs SimpleShot CL2N, same episodes.

Usage::

    python tools/bench_pretrained.py                      # glyphs28 test split + every domain present
    python tools/bench_pretrained.py --episodes 200 --input-size 128
    python tools/bench_pretrained.py --data data/glyphs28 --data data/domains/flags

For each data set, fixed episodes are drawn once per protocol (the same seeded
lists ``edgefs eval`` uses), each needed test image is embedded once by the
frozen backbone, and every row scores the same episodes through the device's
``PrototypeHead`` (cosine):

* ``plain cosine``: no centring;
* ``centred (train mean)``: the mean feature of 256 images of the data set's
  ``train`` split (SimpleShot's CL2N: base-class mean) is subtracted;
* ``centred (procedural mean)``: the mean of 256 procedural colour images, what
  ``edgefs export --pretrained`` stores when no data is given.

Prints a markdown table and writes ``OUT/bench_pretrained.json`` and ``.md``.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from edgefs.export.pretrained import embed_images, mean_feature

from edgefs.backbones import build_backbone
from edgefs.data.episodes import Protocol, fixed_episodes
from edgefs.data.images import open_split
from edgefs.eval.episodic import Accuracy, embedding_table, needed_indices
from edgefs.heads import HeadSpec, build_head

DOMAINS = Path("data/domains")  # where `edgefs data all --out data/domains` builds them


def head_scores(center: np.ndarray | None):
    arrays = {} if center is None else {"center": center}

    def score(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, ways: int) -> np.ndarray:
        head = build_head(HeadSpec("prototype", {"distance": "cosine"}, arrays), support.shape[1])
        head.add_classes({str(c): support[labels == c] for c in range(ways)})
        return head.scores(queries)

    return score


def evaluate(table: np.ndarray, lst: Any, score: Any) -> Accuracy:
    accs = np.empty(len(lst.episodes))
    for i, ep in enumerate(lst.episodes):
        s = score(table[ep.support], ep.support_labels(), table[ep.query], len(ep.classes))
        accs[i] = float((s.argmax(1) == ep.query_labels()).mean())
    return Accuracy.from_episodes(accs)


def bench_one(data: str, args: argparse.Namespace, backbone: Any, log: Any) -> dict[str, Any]:
    size = backbone.spec.input_size
    t0 = time.perf_counter()
    test = open_split(data, args.split, 3, size)
    lists = {}
    for name in args.protocols.split(","):
        p = Protocol.parse(name, args.queries)
        try:
            lists[p.name] = fixed_episodes(test, p, args.episodes, args.seed, None)
        except Exception as exc:
            log(f"{data}: {p.name} skipped ({exc})")
    table = embedding_table(test, needed_indices(list(lists.values())),
                            lambda im: embed_images(backbone, im), batch=64)
    embed_s = time.perf_counter() - t0
    centers: dict[str, np.ndarray | None] = {"plain cosine": None}
    has_train = (Path(data) / "train").is_dir()
    if has_train:
        centers["centred (train mean)"], _ = mean_feature(backbone, data, "train", args.mean_images)
    centers["centred (procedural mean)"], _ = mean_feature(backbone, None, "train", args.mean_images)
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for row, center in centers.items():
        rows[row] = {}
        for pname, lst in lists.items():
            acc = evaluate(table, lst, head_scores(center))
            rows[row][pname] = {"mean": acc.mean, "ci95": acc.ci95, "episodes": acc.episodes}
            log(f"{Path(data).name:12s} {row:28s} {pname:6s} {acc}%")
    return {"data": data, "split": args.split, "classes": test.num_classes, "images": len(test.images),
            "embedded": len(needed_indices(list(lists.values()))), "embed_s": embed_s, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Frozen {report['backbone']} at {report['input_size']} px, ImageNet weights, cosine prototypes "
             f"(device PrototypeHead); {report['episodes']} fixed episodes per protocol, seed {report['seed']}, "
             f"{report['queries']} query/class. Accuracy % ± 95% CI.", ""]
    protocols = report["protocols"]
    lines += ["| data | head | " + " | ".join(protocols) + " |", "|---|---|" + "---|" * len(protocols)]
    for res in report["results"]:
        for row, accs in res["rows"].items():
            cells = [f"{100 * accs[p]['mean']:.2f} ± {100 * accs[p]['ci95']:.2f}" if p in accs else "skipped"
                     for p in protocols]
            lines.append(f"| {Path(res['data']).name} ({res['split']}) | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", help="data folder(s) (default: data/glyphs28 if built, "
                   "plus every data/domains/<name>)")
    p.add_argument("--split", default="test")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--input-size", type=int, help="default: the backbone's native size")
    p.add_argument("--protocols", default="5w1s,5w5s,20w1s")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--queries", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mean-images", type=int, default=256)
    p.add_argument("--out", default="reports/bench_pretrained")
    args = p.parse_args(argv)
    data = args.data
    if not data:
        glyphs = "data/glyphs28" if Path("data/glyphs28").is_dir() else None
        data = ([glyphs] if glyphs else []) + sorted(str(d) for d in DOMAINS.glob("*") if (d / "test").is_dir())
    if not data:
        print("no data: pass --data DIR", file=sys.stderr)
        return 2
    options = {} if args.input_size is None else {"input_size": args.input_size}
    backbone = build_backbone(args.backbone, **options).eval()
    t0 = time.perf_counter()
    results = [bench_one(d, args, backbone, print) for d in data]
    report = {"backbone": args.backbone, "input_size": backbone.spec.input_size, "episodes": args.episodes,
              "seed": args.seed, "queries": args.queries, "protocols": args.protocols.split(","),
              "mean_images": args.mean_images, "results": results, "wall_s": time.perf_counter() - t0,
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                         f"{len(__import__('os').sched_getaffinity(0))} cores"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_pretrained.json").write_text(json.dumps(report, indent=2))
    (out / "bench_pretrained.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'bench_pretrained.md'} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
