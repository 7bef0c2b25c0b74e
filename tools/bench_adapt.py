"""Support-set adaptation on held-out domains: prototypes, today's fine-tune head, alignment, last-layer adaptation.

Usage::

    python tools/bench_adapt.py --domains data/domains --out reports/adapt
    python tools/bench_adapt.py --only cards,flags --episodes 200 --out /tmp/adapt
    python tools/bench_adapt.py --only cards,clipart,units --out /tmp/a & python tools/bench_adapt.py \
        --only flags,icons --out /tmp/b; wait; python tools/bench_adapt.py --merge /tmp/a/adapt.json \
        /tmp/b/adapt.json --out reports/adapt            # two cores: two runs, one table

Every row scores the same fixed test episodes as ``tools/bench_lodo.py`` (the seeded lists
``edgefs eval`` uses; 1 query per class) on each held-out domain's ``test`` split, with
EfficientNet-Lite0 at 224 px:

* ``frozen 224 px``: ImageNet weights, plain cosine prototypes, one view per shot: the
  leave-one-domain-out table's baseline row;
* ``frozen, device form``: the square root of the pooled feature, centred on the mean of
  the *other* domains' train images (the colour bundle's embedding), each shot the mean
  embedding of the device's 7 views (``edgefs.service.views.shot_views``), prototypes;
* ``+ fine-tune head``: today's device fine-tune head (defaults) on those shots;
* ``+ align head``: the device's ``align`` head (:mod:`edgefs.heads.align`) on those shots: the
  alignment fitted on the shots (each the mean of its views), as enrollment fits it;
* ``+ alignment``: :func:`edgefs.heads.adapt.align_fit` on the views' embeddings themselves (7 per
  shot), then prototypes of the aligned shots and aligned queries;
* ``+ last layer``: :func:`edgefs.heads.adapt.film_fit` of the 1x1 head convolution's per-channel
  scale and shift on the views' head-input features, then prototypes through the adapted layer;

Queries are one view (a camera frame is one view). The fits' settings are the device's
defaults (``--lr``, ``--steps`` override them for a sweep). Features at the head's input
are computed once per domain and kept as float16 in ``~/.cache/edgefs/adapt``.

Prints a markdown table (per domain and the mean over domains, accuracy % ± 95% CI, and
each row minus ``frozen 224 px`` episode by episode) and writes ``OUT/adapt.json`` and
``OUT/adapt.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_lodo import held_out, train_table

from edgefs.backbones import build_backbone
from edgefs.data.episodes import Protocol, cached_episodes
from edgefs.data.images import open_split
from edgefs.errors import DataError
from edgefs.eval.episodic import Accuracy
from edgefs.heads.adapt import LastLayer, align_fit, film_fit, film_fit_stats, layer_stats, stats_embed
from edgefs.heads.base import build_head
from edgefs.heads.spec import HeadSpec
from edgefs.runtime.bench import machine_info
from edgefs.service.views import shot_views
from edgefs.train.cached import LiteSplit

CACHE = Path(os.environ.get("EDGEFS_CACHE", Path.home() / ".cache" / "edgefs")) / "adapt"
TEMPERATURE = 10.0


def last_layer(backbone: Any, power: float, center: np.ndarray | None) -> LastLayer:
    """The backbone's 1x1 head conv with its batch-norm folded in, as a :class:`LastLayer`."""
    net = backbone.net
    conv, bn = net._conv_head, net._bn1
    w = conv.weight.detach().double()[:, :, 0, 0]
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = bn.bias.detach().double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    return LastLayer((w * scale[:, None]).float().numpy(), bias.float().numpy(), power=power, center=center)


def head_inputs(split: LiteSplit, images: np.ndarray, views: int, key: str, log: Callable[[str], None],
                batch: int = 64) -> np.ndarray:
    """float16 ``(N, views, P, K)``: the head conv's input for every image's ``shot_views``, cached."""
    digest = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    path = CACHE / f"{key}-{views}v-{digest}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    out = None
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            chunk = [v for im in images[start:start + batch] for v in shot_views(im, views)]
            x = split.trunk(torch.from_numpy(np.stack(chunk))).numpy()  # (b*views, K, h, w)
            x = x.reshape(-1, views, x.shape[1], x.shape[2] * x.shape[3]).transpose(0, 1, 3, 2)
            if out is None:
                out = np.empty((len(images), views, *x.shape[2:]), np.float16)
            out[start:start + len(x)] = x
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    log(f"  head inputs of {len(images)} images x {views} views in {time.perf_counter() - t0:.0f} s -> {path}")
    return out


def prototype_scores(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, ways: int) -> np.ndarray:
    head = build_head(HeadSpec("prototype", {"distance": "cosine"}, {}), support.shape[1])
    head.add_classes({str(c): support[labels == c] for c in range(ways)})
    return head.scores(queries)


def finetune_scores(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, ways: int) -> np.ndarray:
    head = build_head(HeadSpec("finetune", {}, {}), support.shape[1])
    head.add_classes({str(c): support[labels == c] for c in range(ways)})
    return head.scores(queries)


class Domain:
    """One held-out domain's test features through one model's last layer."""

    def __init__(self, layer: LastLayer, x: np.ndarray) -> None:
        self.layer = layer
        self.x = x  # float16 (N, V, P, K)
        self._stats: np.ndarray | None = None
        self._views: np.ndarray | None = None

    def _precompute(self) -> None:
        n, v = self.x.shape[:2]
        stats = np.empty((n, v, 3, self.layer.dim), np.float16)
        emb = np.empty((n, v, self.layer.dim), np.float32)
        for i in range(n):
            pre = self.layer.pre(np.asarray(self.x[i], np.float32))
            stats[i] = layer_stats(self.layer, pre)
            emb[i] = self.layer.embed_pre(pre)
        self._stats, self._views = stats, emb

    @property
    def stats(self) -> np.ndarray:
        """float16 ``(N, V, 3, D)``: :func:`edgefs.heads.adapt.layer_stats` of every view."""
        if self._stats is None:
            self._precompute()
        return self._stats

    def views(self, idx: np.ndarray) -> np.ndarray:
        """float32 ``(len(idx), V, D)``: the exported layer's embeddings of the images' views."""
        if self._views is None:
            self._precompute()
        return self._views[idx]


def score_episodes(dom: Domain, lst: Any, method: str, settings: dict[str, Any]) -> np.ndarray:
    accs = np.empty(len(lst.episodes))
    for i, ep in enumerate(lst.episodes):
        labels = ep.support_labels()
        ways = len(ep.classes)
        sup_idx, q_idx = np.asarray(ep.support), np.asarray(ep.query)
        if method == "one view":
            s = prototype_scores(dom.views(sup_idx)[:, 0], labels, dom.views(q_idx)[:, 0], ways)
        else:
            views = dom.views(sup_idx)  # (S, V, D)
            queries = dom.views(q_idx)[:, 0]
            if method == "prototypes":
                s = prototype_scores(views.mean(1), labels, queries, ways)
            elif method == "fine-tune head":
                s = finetune_scores(views.mean(1), labels, queries, ways)
            elif method == "align head":
                head = build_head(HeadSpec("align", {}, {}), views.shape[2])
                head.add_classes({str(c): views.mean(1)[labels == c] for c in range(ways)})
                s = head.scores(queries)
            elif method == "alignment":
                flat = views.reshape(-1, views.shape[2])
                a = align_fit(flat, np.repeat(labels, views.shape[1]), temperature=TEMPERATURE,
                              steps=settings["align_steps"], lr=settings["align_lr"])
                s = prototype_scores(a.apply(flat).reshape(views.shape).mean(1), labels, a.apply(queries), ways)
            elif method == "last layer":
                st = dom.stats[sup_idx]  # (S, V, 3, D)
                flat_s = st.reshape(-1, *st.shape[2:])
                gamma, beta = film_fit_stats(dom.layer, flat_s, np.repeat(labels, st.shape[1]),
                                             temperature=TEMPERATURE, steps=settings["film_steps"],
                                             lr_gamma=settings["film_lr"], lr_beta=settings["film_lr"])
                sv = stats_embed(dom.layer, flat_s, gamma, beta).reshape(len(sup_idx), st.shape[1], -1).mean(1)
                qx = np.asarray(dom.x[q_idx][:, 0], np.float32)
                s = prototype_scores(sv, labels, dom.layer.embed(qx, gamma, beta), ways)
            elif method == "last layer exact":
                x = np.asarray(dom.x[sup_idx], np.float32)
                flat_x = x.reshape(-1, *x.shape[2:])
                gamma, beta, _ = film_fit(dom.layer, flat_x, np.repeat(labels, x.shape[1]), temperature=TEMPERATURE,
                                          steps=settings["film_steps"], lr_gamma=settings["film_lr"],
                                          lr_beta=settings["film_lr"])
                sv = dom.layer.embed(flat_x, gamma, beta).reshape(len(sup_idx), x.shape[1], -1).mean(1)
                qx = np.asarray(dom.x[q_idx][:, 0], np.float32)
                s = prototype_scores(sv, labels, dom.layer.embed(qx, gamma, beta), ways)
            else:
                raise ValueError(method)
        accs[i] = float((s.argmax(1) == ep.query_labels()).mean())
    return accs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", default="data/domains", help="folder of domains, each with train/val/test")
    p.add_argument("--only", help="comma-separated domain names to hold out (default: every domain)")
    p.add_argument("--split", default="test", help="the held-out split scored (val: for choosing settings)")
    p.add_argument("--protocols", default="5w1s,5w5s,5w10s")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", type=int, default=7, help="shot views (the device's: 7)")
    p.add_argument("--methods", default="one view,prototypes,fine-tune head,align head,alignment,last layer",
                   help="comma-separated; 'last layer exact' fits on the full input maps (slow)")
    p.add_argument("--align-steps", type=int, default=20)
    p.add_argument("--align-lr", type=float, default=2.0)
    p.add_argument("--film-steps", type=int, default=20)
    p.add_argument("--film-lr", type=float, default=30.0)
    p.add_argument("--out", default="reports/adapt")
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="combine the adapt.json of runs over disjoint domains into OUT instead of running")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    root = Path(args.domains)
    domains = sorted(str(d) for d in root.iterdir() if (d / "train").is_dir() and (d / args.split).is_dir()) \
        if root.is_dir() else []
    if len(domains) < 2:
        print(f"{root} holds {len(domains)} domains with train/ and {args.split}/; build them with "
              "'edgefs data all --out data/domains'", file=sys.stderr)
        return 2
    try:
        held = held_out(domains, args.only)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = {"align_steps": args.align_steps, "align_lr": args.align_lr,
                "film_steps": args.film_steps, "film_lr": args.film_lr}
    t_start = time.perf_counter()
    frozen = build_backbone("efficientnet_lite0").eval()
    split = LiteSplit(frozen, len(frozen.net._blocks))
    protocols = [Protocol.parse(n, 1) for n in args.protocols.split(",")]
    powered_means = {d: (train_table(frozen, d).astype(np.float64) + 1e-6) ** 0.5 for d in domains}
    rows: dict[str, dict[str, Any]] = {}
    per_episode: dict[str, dict[str, dict[str, list[float]]]] = {}
    skipped: dict[str, list[str]] = {}
    timings: dict[str, list[float]] = {}
    for d in held:
        name = Path(d).name
        test = open_split(d, args.split, 3, 224)
        lists = {}
        for proto in protocols:
            try:
                lists[proto.name] = cached_episodes(test, proto, args.episodes, args.seed, args.split, Path(d))
            except DataError as exc:
                skipped.setdefault(name, []).append(f"{proto.name} ({exc})")
        x = head_inputs(split, test.images, args.views, f"{name}-{args.split}-lite0", print)
        center = np.mean([powered_means[o].mean(0) for o in domains if o != d], axis=0).astype(np.float32)
        plain = Domain(last_layer(frozen, 1.0, None), x)
        device = Domain(last_layer(frozen, 0.5, center), x)
        check = frozen(torch.from_numpy(test.images[:4])).detach().numpy()
        got = plain.layer.embed(np.asarray(x[:4, 0], np.float32))
        if not np.allclose(got, check, rtol=1e-3, atol=1e-3):
            raise SystemExit(f"the NumPy last layer does not reproduce the backbone ({np.abs(got - check).max():.2e})")
        for method in methods:
            row = "frozen 224 px" if method == "one view" else (
                "frozen, device form" if method == "prototypes" else f"frozen, device form + {method}")
            dom = plain if method == "one view" else device
            rows.setdefault(row, {})[name] = {}
            per_episode.setdefault(row, {})[name] = {}
            for pname, lst in lists.items():
                t0 = time.perf_counter()
                accs = score_episodes(dom, lst, method, settings)
                timings.setdefault(f"{row} {pname}", []).append((time.perf_counter() - t0) / len(accs))
                acc = Accuracy.from_episodes(accs)
                rows[row][name][pname] = {"mean": acc.mean, "ci95": acc.ci95, "episodes": acc.episodes}
                per_episode[row][name][pname] = accs.tolist()
                print(f"{name:8s} {row:44s} {pname:6s} {acc}%  ({1000 * timings[f'{row} {pname}'][-1]:.0f} ms/episode)",
                      flush=True)
    report = {"domains": [Path(d).name for d in held], "split": args.split, "protocols": [q.name for q in protocols],
              "episodes": args.episodes, "seed": args.seed, "views": args.views, "settings": settings,
              "rows": rows, "per_episode": per_episode, "skipped": skipped,
              "seconds_per_episode": {k: float(np.mean(v)) for k, v in timings.items()},
              "wall_s": time.perf_counter() - t_start,
              "machine": machine_text()}
    write_report(report, Path(args.out))
    return 0


def machine_text() -> str:
    info = machine_info()
    return f"{info['cpu']}, {len(os.sched_getaffinity(0))} cores, {info['machine']}"


def mean_rows(report: dict[str, Any]) -> None:
    """Add the 'mean' entry of every row: domains averaged episode by episode, and the difference to
    'frozen 224 px' on the same episodes (with its 95% CI and the domains where the row is below it)."""
    base = "frozen 224 px"
    per_episode = report["per_episode"]
    for row, per in report["rows"].items():
        per["mean"] = {}
        for pname in report["protocols"]:
            have = [n for n in per_episode[row] if pname in per_episode[row][n]]
            if not have:
                continue
            stacked = np.mean([per_episode[row][n][pname] for n in have], axis=0)
            acc = Accuracy.from_episodes(stacked)
            entry: dict[str, Any] = {"mean": acc.mean, "ci95": acc.ci95, "episodes": acc.episodes, "domains": have}
            if base in per_episode and row != base:
                diff = stacked - np.mean([per_episode[base][n][pname] for n in have], axis=0)
                entry["minus_frozen"] = float(diff.mean())
                entry["minus_frozen_ci95"] = float(1.96 * diff.std(ddof=1) / np.sqrt(len(diff)))
                entry["domains_below_frozen"] = [n for n in have if np.mean(per_episode[row][n][pname])
                                                 < np.mean(per_episode[base][n][pname])]
            per["mean"][pname] = entry


def write_report(report: dict[str, Any], out: Path) -> None:
    mean_rows(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapt.json").write_text(json.dumps(report, indent=2))
    (out / "adapt.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / 'adapt.md'} ({report['wall_s']:.0f} s)")


def merge(paths: list[Path], out: Path) -> int:
    """One report from several runs over disjoint held-out domains with the same settings (runs in parallel)."""
    reports = [json.loads(p.read_text()) for p in paths]
    keys = ("split", "protocols", "episodes", "seed", "views", "settings")
    first = reports[0]
    for r, p in zip(reports, paths, strict=True):
        if any(r[k] != first[k] for k in keys) or list(r["rows"]) != list(first["rows"]):
            print(f"{p} was made with other settings or rows than {paths[0]}; not merged", file=sys.stderr)
            return 2
    domains = [d for r in reports for d in r["domains"]]
    if len(set(domains)) != len(domains):
        print(f"the runs hold out overlapping domains ({', '.join(domains)}); not merged", file=sys.stderr)
        return 2
    merged = {k: first[k] for k in keys}
    merged.update(domains=domains, machine=machine_text(), wall_s=max(r["wall_s"] for r in reports),
                  rows={row: {n: v for r in reports for n, v in r["rows"][row].items() if n != "mean"}
                        for row in first["rows"]},
                  per_episode={row: {n: v for r in reports for n, v in r["per_episode"][row].items()}
                               for row in first["rows"]},
                  skipped={n: v for r in reports for n, v in r["skipped"].items()},
                  seconds_per_episode={k: v for r in reports for k, v in r["seconds_per_episode"].items()},
                  merged_from=[str(p) for p in paths])
    write_report(merged, out)
    return 0


def markdown(report: dict[str, Any]) -> str:
    protocols = report["protocols"]
    lines = [f"Support-set adaptation, leave-one-domain-out, EfficientNet-Lite0 224 px; {report['episodes']} fixed "
             f"{report['split']} episodes per protocol (seed {report['seed']}, 1 query/class), every row on the same "
             f"episodes; shots as {report['views']} views where the row says device form, queries one view. "
             f"Accuracy % ± 95% CI; the mean rows add the difference to 'frozen 224 px' episode by episode. "
             f"Machine: {report['machine']}.", "",
             "| held-out domain | model | " + " | ".join(protocols) + " |",
             "|---|---|" + "---|" * len(protocols)]
    for name in [*report["domains"], "mean"]:
        for row, per in report["rows"].items():
            accs = per.get(name, {})
            cells = []
            for p in protocols:
                if p not in accs:
                    cells.append("skipped")
                    continue
                cell = f"{100 * accs[p]['mean']:.2f} ± {100 * accs[p]['ci95']:.2f}"
                if "minus_frozen" in accs[p]:
                    cell += f" ({100 * accs[p]['minus_frozen']:+.2f})"
                cells.append(cell)
            lines.append(f"| {'**mean**' if name == 'mean' else name} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
