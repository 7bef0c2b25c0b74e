"""How enrollment, start-up, classification and the store grow with the number of enrolled classes.

Usage::

    nice -n 10 python tools/bench_scale.py                      # 10 .. 10,000 classes, D = 64 and 1280
    python tools/bench_scale.py --sizes 10,100 --dims 64 --heads prototype   # a quick look

For each embedding size (``64``: a Conv-4 bundle's; ``1280``: EfficientNet-Lite0's) and each
head (``prototype`` cosine, ``imprint``, ``matching``, ``finetune``, and ``prototype`` with the
automatic unknown threshold turned off, so that the open-set calibration's share shows), one
class store is grown through 10, 100, 1,000 and 10,000 classes of 5 shots. At each size:

* **bulk load** the classes missing to reach the size through
  :meth:`edgefs.service.classifier.Classifier.add_embedded_classes` (the enrollment commit path: head
  update on a copy, calibration, per-class head rows and samples in durable transactions of
  1,000 classes), timed separately;
* **enroll** ``--enrolls`` classes one at a time through ``Classifier.enroll_embedded`` (5 shots,
  quality gate on real images, 64 px JPEG thumbnails, durable commit): median ms;
* **classify** 1 and 32 queries (``Classifier.classify``, top-5): median ms;
* **reopen**: close the store, open it and build the Classifier again (SQLite ``quick_check``
  included): median of 3, ms;
* **store**: the database file after closing, the bytes of its sample embeddings and thumbnails,
  and the overhead per class beyond them; **memory**: the process's resident set after reopening
  and the bytes of the head's own arrays.

The embeddings are **synthetic** (a Gaussian centre per class, shots scattered around it, so the
leave-one-out threshold and the fine-tune head have real work to do); speed and sizes do not depend
on where the numbers come from, accuracy is not measured here (tools/bench_forgetting.py). Shot
images are random blocky colour pictures of the bundle's input size, so the blur gate and the
JPEG thumbnails do their usual work. Writes ``OUT/scale.json``, ``OUT/scale.md`` and
``OUT/scale.png`` (cost against classes, log-log; needs matplotlib). A benchmark is a program, not a test: on a
shared machine, read the figures as measured under that load.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.heads import HeadSpec
from edgefs.imagefile import thumbnail
from edgefs.runtime.bundle import Bundle, Manifest
from edgefs.service.classifier import Classifier
from edgefs.store import ClassStore

SHOTS = 5
BULK_CHUNK = 1000
#: name -> (head type, head params, threshold mode)
HEADS: dict[str, tuple[str, dict[str, Any], str]] = {
    "prototype": ("prototype", {"distance": "cosine"}, "auto"),
    "imprint": ("imprint", {}, "auto"),
    "matching": ("matching", {}, "auto"),
    "finetune": ("finetune", {}, "auto"),
    "prototype without threshold": ("prototype", {"distance": "cosine"}, "none"),
}
INPUT = {64: 28, 1280: 224}  # the bundle's input side for each embedding size (Conv-4, Lite0)


def bundle_for(dim: int, head: str, params: dict[str, Any], folder: Path) -> Bundle:
    """A bundle description with no engine: the store and the Classifier need its manifest and head."""
    side = INPUT.get(dim, 64)
    manifest = Manifest(backbone={"name": f"synthetic-{dim}"},
                        input={"height": side, "width": side, "channels": 3, "dtype": "uint8", "layout": "NHWC",
                               "color_order": "RGB"},
                        output={"dim": dim}, head={"type": head, "params": params}, fingerprint=f"{dim:064x}")
    return Bundle(folder, manifest, HeadSpec(head, dict(params)))


class Shots:
    """Synthetic shots: per class a centre, 5 embeddings around it and 5 blocky RGB images."""

    def __init__(self, dim: int, side: int, seed: int = 0) -> None:
        self.dim, self.side = dim, side
        self.rng = np.random.default_rng(seed)
        pool = [self._image() for _ in range(64)]
        self.thumbs = [thumbnail(im) for im in pool]
        self.images = np.stack(pool)

    def _image(self) -> np.ndarray:
        cells = self.rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        big = np.kron(cells, np.ones((self.side // 8 + 1, self.side // 8 + 1, 1), np.uint8))[: self.side, : self.side]
        noise = self.rng.integers(-12, 13, size=big.shape)
        return np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    def embeddings(self) -> np.ndarray:
        centre = self.rng.normal(size=self.dim).astype(np.float32)
        return (centre + 0.6 * self.rng.normal(size=(SHOTS, self.dim))).astype(np.float32)

    def batch(self) -> np.ndarray:
        return self.images[self.rng.choice(len(self.images), SHOTS, replace=False)]

    def thumbnails(self) -> list[bytes | None]:
        return [self.thumbs[int(i)] for i in self.rng.integers(0, len(self.thumbs), SHOTS)]


def median_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall-clock and median CPU (this process) milliseconds of ``repeat`` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def head_bytes(clf: Classifier) -> int:
    """Bytes of the head's arrays (row buffers at their capacity) and of the calibration sample."""
    from edgefs.heads.rows import Rows

    total = 0
    for value in vars(clf.head).values():
        if isinstance(value, Rows):
            total += value._buf.nbytes
        elif isinstance(value, np.ndarray):
            total += value.nbytes
    if clf._calib is not None:
        total += sum(r._buf.nbytes for r in (clf._calib._q, clf._calib._s) if r is not None)
    return total


def store_payload(path: Path, dim: int) -> tuple[int, int]:
    """Bytes of the stored sample embeddings and thumbnails (what the store cannot do without)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        shots, thumbs = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(thumbnail)), 0) FROM samples").fetchone()
    return int(shots) * 4 * dim, int(thumbs)


def run_config(dim: int, name: str, sizes: list[int], enrolls: int, work: Path, log: Callable[[str], None]
               ) -> list[dict[str, Any]]:
    head, params, threshold = HEADS[name]
    folder = work / f"{dim}-{name.replace(' ', '_').replace(',', '')}"
    folder.mkdir(parents=True, exist_ok=True)
    bundle = bundle_for(dim, head, params, folder)
    db = folder / "classes.db"
    shots = Shots(dim, INPUT.get(dim, 64), seed=dim)
    quiet: Callable[[str], None] = lambda _: None  # noqa: E731 - a sink for the Classifier's progress lines
    clf = Classifier(bundle, None, ClassStore.open(db, bundle), threshold=threshold, log=quiet)
    queries = np.stack([shots.embeddings()[0] for _ in range(32)])
    rows = []
    made = 0
    try:
        for size in sizes:
            need = size - len(clf.classes)
            t0 = time.perf_counter()
            while need > 0:
                chunk = {f"c{made + i:06d}": (shots.embeddings(), shots.thumbnails()) for i in range(min(need,
                                                                                                      BULK_CHUNK))}
                clf.add_embedded_classes(chunk, source="bench")
                made += len(chunk)
                need -= len(chunk)
            bulk_s = time.perf_counter() - t0
            at = len(clf.classes)
            enroll_ms, enroll_cpu, commit_ms = [], [], []
            for _ in range(enrolls):
                c = time.process_time()
                result = clf.enroll_embedded(f"c{made:06d}", shots.batch(), shots.embeddings(), source="bench")
                enroll_cpu.append((time.process_time() - c) * 1e3)
                made += 1
                enroll_ms.append(result.timings_ms["total"])
                commit_ms.append(result.timings_ms["commit"])
            one, one_cpu = median_ms(functools.partial(clf.classify, queries[:1], k=5), 50)
            many, many_cpu = median_ms(functools.partial(clf.classify, queries, k=5), 10)
            clf.close()
            db_bytes = db.stat().st_size
            emb_bytes, thumb_bytes = store_payload(db, dim)
            reopen, reopen_cpu = [], []
            for _ in range(3):
                t, c = time.perf_counter(), time.process_time()
                clf = Classifier(bundle, None, ClassStore.open(db, bundle, create=False), threshold=threshold,
                                 log=quiet)
                reopen.append((time.perf_counter() - t) * 1e3)
                reopen_cpu.append((time.process_time() - c) * 1e3)
                if len(reopen) < 3:
                    clf.close()
            classes = len(clf.classes)
            rss = rss_mb()
            # The first change after opening restores the calibration sample (read back by row id).
            c = time.process_time()
            first = clf.enroll_embedded(f"c{made:06d}", shots.batch(), shots.embeddings(), source="bench")
            first_cpu = (time.process_time() - c) * 1e3
            made += 1
            row = {
                "dim": dim, "head": name, "classes": at, "classes_after": classes,
                "bulk_load_s": round(bulk_s, 3),
                "enroll_ms_median": round(statistics.median(enroll_ms), 3),
                "enroll_ms_all": [round(v, 3) for v in enroll_ms],
                "enroll_cpu_ms_median": round(statistics.median(enroll_cpu), 3),
                "commit_ms_median": round(statistics.median(commit_ms), 3),
                "classify_1_ms": round(one, 4), "classify_32_ms": round(many, 4),
                "classify_1_cpu_ms": round(one_cpu, 4), "classify_32_cpu_ms": round(many_cpu, 4),
                "reopen_ms_median": round(statistics.median(reopen), 2), "reopen_ms_all": [round(v, 2) for v in reopen],
                "reopen_cpu_ms_median": round(statistics.median(reopen_cpu), 2),
                "first_enroll_after_reopen_ms": round(first.timings_ms["total"], 2),
                "first_enroll_after_reopen_cpu_ms": round(first_cpu, 2),
                "store_bytes": db_bytes, "sample_embedding_bytes": emb_bytes, "thumbnail_bytes": thumb_bytes,
                "overhead_bytes_per_class": round((db_bytes - emb_bytes - thumb_bytes) / max(classes, 1), 1),
                "rss_mb_after_reopen": round(rss, 1), "head_bytes": head_bytes(clf),
                "threshold": clf.threshold,
            }
            rows.append(row)
            log(f"D={dim:5d} {name:24s} {at:6d} classes: bulk {bulk_s:7.2f} s, "
                f"enroll {row['enroll_ms_median']:8.2f} ms (CPU {row['enroll_cpu_ms_median']:.2f}), "
                f"classify 1/32 {one:7.3f}/{many:7.3f} ms (CPU {one_cpu:.3f}/{many_cpu:.3f}), "
                f"reopen {row['reopen_ms_median']:8.1f} ms (CPU {row['reopen_cpu_ms_median']:.1f}), first enroll "
                f"after {row['first_enroll_after_reopen_ms']:.1f} ms, store "
                f"{db_bytes / 2**20:7.1f} MiB ({row['overhead_bytes_per_class']:.0f} B/class over samples+thumbs), "
                f"RSS {row['rss_mb_after_reopen']:.0f} MiB")
    finally:
        clf.close()
        for f in folder.glob("classes.db*"):
            f.unlink()
    return rows


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [f"Machine: {machine}. Synthetic embeddings, 5 shots per class, durable commits. Wall-clock "
             "milliseconds, and in brackets this process's CPU milliseconds (the machine was shared).", "",
             "| D | head | classes | bulk load s | enroll one ms, median (CPU) | commit ms | classify 1 ms (CPU) "
             "| classify 32 ms (CPU) | reopen ms (CPU) | first enroll after reopen ms | store MiB "
             "| over samples+thumbs, B/class | RSS MiB | head MiB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dim']} | {r['head']} | {r['classes']:,} | {r['bulk_load_s']:.2f} | "
                     f"{r['enroll_ms_median']:.2f} ({r['enroll_cpu_ms_median']:.2f}) | {r['commit_ms_median']:.2f} | "
                     f"{r['classify_1_ms']:.3f} ({r['classify_1_cpu_ms']:.3f}) | "
                     f"{r['classify_32_ms']:.3f} ({r['classify_32_cpu_ms']:.3f}) | "
                     f"{r['reopen_ms_median']:.1f} ({r['reopen_cpu_ms_median']:.1f}) | "
                     f"{r['first_enroll_after_reopen_ms']:.1f} | {r['store_bytes'] / 2**20:.1f} | "
                     f"{r['overhead_bytes_per_class']:.0f} | {r['rss_mb_after_reopen']:.0f} | "
                     f"{r['head_bytes'] / 2**20:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> str:
    try:
        import matplotlib
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # CPU milliseconds: on a shared machine the wall clock mostly measures the other jobs.
    metrics = [("enroll_cpu_ms_median", "enroll one class, CPU ms"), ("reopen_cpu_ms_median", "reopen, CPU ms"),
               ("classify_1_cpu_ms", "classify 1 query, CPU ms"), ("store_bytes", "store, bytes")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for (dim, head) in sorted({(r["dim"], r["head"]) for r in rows}):
            pts = [(r["classes"], r[key]) for r in rows if r["dim"] == dim and r["head"] == head]
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"D={dim} {head}",
                    linestyle="-" if dim == 1280 else "--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes enrolled")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return f"wrote {out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,10000", help="class counts, ascending")
    parser.add_argument("--dims", default="64,1280", help="embedding sizes")
    parser.add_argument("--heads", default=",".join(HEADS), help=f"from: {', '.join(HEADS)}")
    parser.add_argument("--enrolls", type=int, default=10, help="single enrollments timed at each size")
    parser.add_argument("--work", type=Path, default=None, help="folder for the stores (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("reports/scale"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    unknown = sorted(set(heads) - set(HEADS))
    if unknown or sizes != sorted(sizes) or args.enrolls < 1:
        parser.error(f"unknown heads {unknown}; sizes must ascend; --enrolls >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
               f"{os.getloadavg()[0]:.1f} at start, Python {platform.python_version()}, numpy {np.__version__}, "
               f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for dim in dims:
            for name in heads:
                rows += run_config(dim, name, sizes, args.enrolls, Path(tmp), lambda s: print(s, flush=True))
                (args.out / "scale.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    table = markdown(rows, machine)
    (args.out / "scale.md").write_text(table)
    print(table)
    print(plot(rows, args.out / "scale.png"))
    print(f"wrote {args.out}/scale.json and scale.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
