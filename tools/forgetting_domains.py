"""Domain-incremental forgetting: a new domain at each step, accuracy on every domain so far.

Used by ``tools/bench_forgetting.py --bundle B --domains ROOT`` (see there). One frozen
backbone serves every domain (an ImageNet EfficientNet-Lite0 bundle, say); each domain's
test-split images are embedded once with the bundle's ONNX Runtime engine and cached.
Per repeat, ``WAYS`` classes of each domain are enrolled as ``"<domain>/<class>"`` with
up to 5 shots (one image per class is always kept as a query), one domain after the
other; after each domain every head is scored on the queries of every domain so far:
*within the domain* (the query's domain is known, the usual progressive-network
setting) and *among all enrolled classes* (what the device does).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.heads import Head, HeadSpec
from edgefs.heads.den import DENHead
from edgefs.heads.finetune import FinetuneHead
from edgefs.heads.mlp import Momentum, imprint_rows, init_rows, softmax_cross_entropy
from edgefs.heads.progressive import ProgressiveHead, log_softmax
from edgefs.heads.reference import l2_normalize

WAYS, MAX_SHOTS, POOL = 10, 5, 30
COLUMN_WIDTH = 32


class SharedColumn:
    """Reference, not a device head: one hidden layer shared by every domain.

    ``continual=True`` fine-tunes it on each new domain's shots only, continuing from the
    current weights (the forgetting baseline of Rusu et al.); ``continual=False`` refits it
    from scratch on every domain so far at once (the joint-training reference). Softmax
    within the domain while training; across domains the same ``p(domain | x)`` factor as
    the progressive head.
    """

    def __init__(self, dim: int, width: int, continual: bool, steps: int = 60, lr: float = 0.05,
                 seed: int = 0, separator: str = "/") -> None:
        self.dim, self.width, self.continual, self.steps, self.lr, self.seed = dim, width, continual, steps, lr, seed
        self.separator = separator
        self.classes: list[str] = []
        self.shots: dict[str, np.ndarray] = {}
        self.w = init_rows(width, dim, seed)
        self.b = np.zeros(width, np.float32)
        self.v = np.zeros((0, width), np.float32)
        self.c = np.zeros(0, np.float32)

    def _x(self, rows: np.ndarray) -> np.ndarray:
        return (l2_normalize(rows) * np.float32(np.sqrt(self.dim))).astype(np.float32)

    def domain(self, name: str) -> str:
        return name.split(self.separator, 1)[0]

    def add_classes(self, items: dict[str, np.ndarray]) -> None:
        self.classes += list(items)
        self.shots.update(items)
        self.v = np.concatenate([self.v, np.zeros((len(items), self.width), np.float32)])
        self.c = np.concatenate([self.c, np.zeros(len(items), np.float32)])
        if not self.continual:
            self.w, self.b = init_rows(self.width, self.dim, self.seed), np.zeros(self.width, np.float32)
        train = list(items) if self.continual else self.classes
        idx = np.array([self.classes.index(n) for n in train])
        x = self._x(np.concatenate([self.shots[n] for n in train]))
        y = np.repeat(np.arange(len(train)), [len(self.shots[n]) for n in train])
        doms = np.array([self.domain(n) for n in train])
        masks = {d: np.where(doms == d, 0.0, -1e9).astype(np.float32) for d in set(doms)}
        ymask = np.stack([masks[doms[k]] for k in y])  # softmax within each shot's own domain
        params = {"w": self.w, "b": self.b, "v": np.zeros((len(train), self.width), np.float32),
                  "c": np.zeros(len(train), np.float32)}
        h = np.maximum(x @ self.w.T + self.b, 0)
        params["v"][:] = imprint_rows(h, y, list(range(len(train))),
                                      10.0 / max(float(np.median(np.linalg.norm(h, axis=1))), 1e-6))
        opt = Momentum(self.lr, 0.9)
        for _ in range(self.steps):
            pre = x @ params["w"].T + params["b"]
            h = np.maximum(pre, 0)
            _, dl = softmax_cross_entropy(h @ params["v"].T + params["c"] + ymask, y)
            dpre = (dl @ params["v"]) * (pre > 0)
            opt.step(params, {"v": (dl.T @ h).astype(np.float32), "c": dl.sum(0), "w": (dpre.T @ x).astype(np.float32),
                              "b": dpre.sum(0)})
        self.w, self.b = params["w"], params["b"]
        self.v[idx], self.c[idx] = params["v"], params["c"]

    def scores(self, q: np.ndarray) -> np.ndarray:
        h = np.maximum(self._x(q) @ self.w.T + self.b, 0)
        logits = h @ self.v.T + self.c
        doms = np.array([self.domain(n) for n in self.classes])
        protos = l2_normalize(np.stack([l2_normalize(self.shots[n]).mean(0) for n in self.classes]))
        sims = l2_normalize(q) @ protos.T
        order = list(dict.fromkeys(doms))
        best = np.stack([sims[:, doms == d].max(1) for d in order], 1)
        log_dom = log_softmax(20.0 * best)
        out = np.empty_like(logits)
        for k, d in enumerate(order):
            mine = doms == d
            out[:, mine] = log_softmax(logits[:, mine]) + log_dom[:, k : k + 1]
        return out


def domain_factories(dim: int, n_domains: int) -> dict[str, Callable[[], Any]]:
    return {
        "progressive columns": lambda: ProgressiveHead(dim, width=COLUMN_WIDTH),
        "separate columns (no laterals)": lambda: ProgressiveHead(dim, width=COLUMN_WIDTH, laterals=False),
        "den": lambda: DENHead(dim),
        "prototype (cosine)": lambda: Head.from_spec(HeadSpec("prototype", {"distance": "cosine"}), dim),
        "finetune (refit; = joint linear)": lambda: FinetuneHead(dim),
        "shared column, fine-tuned per domain": lambda: SharedColumn(dim, COLUMN_WIDTH * n_domains, True),
        "joint (shared column, all domains at once)": lambda: SharedColumn(dim, COLUMN_WIDTH * n_domains, False),
    }


def embed_domains(bundle_path: Path, roots: dict[str, Path], cache: Path, seed: int = 0
                  ) -> dict[str, dict[str, np.ndarray]]:
    """``{domain: {class: float32 (K, D)}}`` for up to ``POOL`` test classes of each domain, cached."""
    from edgefs.imagefile import read_image_file
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.preprocess import to_batch
    from edgefs.runtime.select import open_engine

    bundle = read_bundle(bundle_path)
    out: dict[str, dict[str, np.ndarray]] = {}
    engine = None
    for domain, root in roots.items():
        folders = sorted(p for p in root.rglob("*") if p.is_dir() and len(list(p.glob("*.png"))) >= 2)
        rng = np.random.default_rng(seed)
        folders = [folders[i] for i in sorted(rng.choice(len(folders), min(POOL, len(folders)), replace=False))]
        key = hashlib.sha256(json.dumps([bundle.manifest.fingerprint, *map(str, folders)]).encode()).hexdigest()[:16]
        path = cache / f"{domain}-{key}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                out[domain] = {k: z[k] for k in z.files}
            continue
        if engine is None:
            engine = open_engine(bundle, backend="onnxruntime", threads=1, log=lambda _: None)
        out[domain] = {}
        for f in folders:
            frames = [read_image_file(p) for p in sorted(f.glob("*.png"))]
            out[domain][str(f.relative_to(root))] = engine.embed(to_batch(frames, bundle, "resize", "RGB"))
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out[domain])
        print(f"embedded {domain}: {len(folders)} classes, {sum(len(v) for v in out[domain].values())} images")
    return out


def one_domain_repeat(emb: dict[str, dict[str, np.ndarray]], order: list[str], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    dim = next(iter(next(iter(emb.values())).values())).shape[1]
    factories = domain_factories(dim, len(order))
    heads = {name: make() for name, make in factories.items()}
    tasks: list[tuple[dict[str, np.ndarray], list[tuple[np.ndarray, str]]]] = []
    for domain in order:
        names = list(emb[domain])
        chosen = [names[i] for i in rng.choice(len(names), min(WAYS, len(names)), replace=False)]
        support, queries = {}, []
        for c in chosen:
            x = emb[domain][c][rng.permutation(len(emb[domain][c]))]
            k = min(MAX_SHOTS, len(x) - 1)
            support[f"{domain}/{c}"] = x[:k]
            queries.append((x[k:], f"{domain}/{c}"))
        tasks.append((support, queries))
    within = {n: np.full((len(order), len(order)), np.nan) for n in heads}
    across = {n: np.full((len(order), len(order)), np.nan) for n in heads}
    for step, (support, _) in enumerate(tasks):
        for head in heads.values():
            head.add_classes(support)
        for name, head in heads.items():
            classes = head.classes
            for j in range(step + 1):
                qs = tasks[j][1]
                q = np.concatenate([x for x, _ in qs])
                truth = np.array([classes.index(n) for x, n in qs for _ in x])
                scores = head.scores(q)
                mine = np.array([classes.index(n) for n in tasks[j][0]])
                within[name][step, j] = float(np.mean(mine[scores[:, mine].argmax(1)] == truth))
                across[name][step, j] = float(np.mean(scores.argmax(1) == truth))
    return {"within": within, "across": across,
            "den_units": heads["den"].units if isinstance(heads.get("den"), DENHead) else None}


def run(bundle: Path, domains: Path, glyphs: Path | None, order: list[str], repeats: int, cache: Path
        ) -> dict[str, Any]:
    roots = {d: (glyphs / "test" if d == "glyphs" and glyphs else domains / d / "test") for d in order}
    emb = embed_domains(bundle, roots, cache)
    runs = [one_domain_repeat(emb, order, seed) for seed in range(repeats)]
    out: dict[str, Any] = {"order": order, "repeats": repeats, "ways": WAYS, "max_shots": MAX_SHOTS,
                           "bundle": str(bundle), "column_width": COLUMN_WIDTH,
                           "den_units": [r["den_units"] for r in runs]}
    for kind in ("within", "across"):
        out[kind] = {n: np.nanmean([r[kind][n] for r in runs], axis=0).tolist() for n in runs[0][kind]}
    return out


def markdown(report: dict[str, Any]) -> str:
    order, n = report["order"], len(report["order"])
    lines = [f"Domain-incremental: {' -> '.join(order)}, {report['ways']} classes per domain (fewer where the "
             f"test split has fewer), up to {report['max_shots']} shots, mean of {report['repeats']} repeats; "
             f"bundle {report['bundle']}", ""]
    for kind, what in (("within", "the query's domain known"), ("across", "among all enrolled classes")):
        lines += [f"Mean accuracy over the domains so far, {what}:", "",
                  "| head | " + " | ".join(f"after {d}" for d in order) + f" | {order[0]} after each |",
                  "|---" * (n + 2) + "|"]
        for name, m in report[kind].items():
            a = np.asarray(m)
            means = [np.nanmean(a[s, : s + 1]) for s in range(n)]
            first = "/".join(f"{a[s, 0]:.2f}" for s in range(n))
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in means) + f" | {first} |")
        lines += ["", f"Final accuracy per domain, {what}:", "",
                  "| head | " + " | ".join(order) + " |", "|---" * (n + 1) + "|"]
        for name, m in report[kind].items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in np.asarray(m)[-1]) + " |")
        lines.append("")
    lines.append(f"DEN hidden units at the end, per repeat: {report['den_units']}")
    return "\n".join(lines)
