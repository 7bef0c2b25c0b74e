"""What the head-only inner loop costs against the full-network one: MAML trained both ways, same budget.

Usage::

    python tools/bench_maml_inner.py --budget-min 3

Trains ``configs/maml_conv4_glyphs.yaml`` (last-layer inner loop, what the device runs)
and ``configs/maml_full_conv4_glyphs.yaml`` (every weight adapted) for the same wall
time, then scores both on the same fixed glyph test episodes in two ways: the device
rule (the fine-tune head on frozen embeddings, :meth:`score_embeddings`, what a Jetson
would do) and, for the full variant, its own full-network adaptation per episode
(:func:`edgefs.methods.maml.evaluate_on_images`). Prints a markdown table and writes
``REPORT/maml_inner.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from edgefs.data.episodes import Protocol, episode_list_path, fixed_episodes
from edgefs.data.images import open_split
from edgefs.eval.episodic import embedding_table, evaluate_episodes, needed_indices
from edgefs.methods.maml import evaluate_on_images
from edgefs.train.checkpoint import load_checkpoint
from edgefs.train.trainer import TrainConfig, embedder, train

CONFIGS = {"head": Path("configs/maml_conv4_glyphs.yaml"), "full": Path("configs/maml_full_conv4_glyphs.yaml")}


def main(argv: list[str] | None = None) -> int:
    from edgefs.config import resolve

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/glyphs28"))
    p.add_argument("--budget-min", type=float, default=3.0)
    p.add_argument("--episodes", type=int, default=300, help="test episodes per protocol")
    p.add_argument("--out", type=Path, default=Path("runs/bench_maml_inner"))
    p.add_argument("--report", type=Path, default=Path("reports/methods"))
    args = p.parse_args(argv)
    rows = []
    for inner, path in CONFIGS.items():
        cfg: TrainConfig = resolve(TrainConfig, path)
        cfg.data, cfg.out, cfg.time_budget_min = str(args.data), str(args.out / inner), args.budget_min
        t = time.perf_counter()
        train(cfg, overwrite=True)
        minutes = (time.perf_counter() - t) / 60
        method, _ = load_checkpoint(Path(cfg.out) / "best.pt")
        spec = method.backbone.spec
        split = open_split(args.data, "test", spec.in_channels, spec.input_size)
        row = {"inner": inner, "train_min": minutes}
        for name in ("5w1s", "20w1s"):
            protocol = Protocol.parse(name, 1)
            path = episode_list_path(args.data / "episodes", "test", protocol, args.episodes, 0)
            eps = fixed_episodes(split, protocol, args.episodes, 0, path)
            table = embedding_table(split, needed_indices([eps]), embedder(method, torch.device("cpu")))
            dev = evaluate_episodes(table, split, eps, method.score_embeddings)
            row[f"{name} device"] = [dev.mean, dev.ci95]
            if inner == "full":
                own = evaluate_on_images(method, split, eps)
                row[f"{name} own"] = [own.mean, own.ci95]
        rows.append(row)
    lines = ["| inner loop | train min | 5w1s, device rule | 5w1s, own adaptation | 20w1s, device rule "
             "| 20w1s, own adaptation |", "|---|---:|---|---|---|---|"]
    for r in rows:
        cells = [f"{100 * r[k][0]:.2f} ± {100 * r[k][1]:.2f}" if k in r else "= device rule"
                 for k in ("5w1s device", "5w1s own", "20w1s device", "20w1s own")]
        lines.append(f"| {r['inner']} | {r['train_min']:.1f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "maml_inner.md").write_text(
        f"MAML, head-only vs full-network inner loop, {args.budget_min:g} min CPU each, glyph test split, "
        f"{args.episodes} fixed episodes per protocol.\n\n{text}\n")
    (args.report / "maml_inner.json").write_text(json.dumps(rows, indent=2))
    return 0 if np.isfinite([v[0] for r in rows for k, v in r.items() if isinstance(v, list)]).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
