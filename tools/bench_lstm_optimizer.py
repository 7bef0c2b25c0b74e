"""The learned LSTM optimiser against SGD in the device fine-tune head, at equal steps and at equal time.

Usage::

    python tools/bench_lstm_optimizer.py --checkpoint runs/bench_methods_cpu/runs/lstm_meta/best.pt \\
        --maml-checkpoint runs/bench_methods_cpu/runs/maml/best.pt --data data/glyphs28

On the ``lstm_meta`` checkpoint's embeddings of the fixed glyph test episodes (the lists
``edgefs eval`` and ``tools/bench_methods.py`` use), every row starts from the same imprinted
rows (the checkpoint's learned temperature) and refits over the episode's shots in NumPy:

* ``lstm``: the device head ``lstm_finetune`` with the meta-trained optimiser, its trained
  step count;
* ``sgd, equal steps``: the device ``finetune`` head (plain SGD: no momentum, no penalty), as
  many steps, its rate the best of ``--sgd-lrs`` on fixed validation episodes;
* ``sgd, equal time``: the same SGD given as many steps as fit in the LSTM's median 5w1s
  enrollment time (measured here, side by side, and used for every protocol);
* ``imprint``: no steps (the start both share).

With ``--maml-checkpoint``, a MAML row: SGD whose rates were meta-trained with its own
backbone (a different embedding, so it compares the whole method, not only the optimiser).
Timing is the median over episodes of enrolling a 5-way episode in one update (``add_classes``)
and of classifying its queries, on one thread of this machine. Writes ``OUT/lstm_optimizer.md``
and ``OUT/lstm_optimizer.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOLS = ["5w1s", "5w5s", "20w1s"]


def embedded_episodes(method: Any, data_dir: Path, split: str, protocol_name: str, count: int,
                      queries: int) -> tuple[np.ndarray, Any, Any]:
    """``(embedding table, episode list, protocol)`` for the fixed ``split`` episodes of ``protocol_name``."""
    import torch

    from edgefs.data.episodes import Protocol, episode_list_path, fixed_episodes
    from edgefs.data.images import open_split
    from edgefs.eval.episodic import embedding_table, needed_indices
    from edgefs.train.trainer import embedder

    spec = method.backbone.spec
    data = open_split(data_dir, split, spec.in_channels, spec.input_size)
    protocol = Protocol.parse(protocol_name, queries)
    path = episode_list_path(data_dir / "episodes", split, protocol, count, 0)
    episodes = fixed_episodes(data, protocol, count, 0, path)
    table = embedding_table(data, needed_indices([episodes]), embedder(method, torch.device("cpu")))
    return table, episodes, protocol


def run_head(spec: Any, table: np.ndarray, episodes: Any, ways: int) -> dict[str, float]:
    """Accuracy, median enroll and classify milliseconds of the head ``spec`` over the episodes."""
    from edgefs.heads import build_head

    accs, enroll, classify = [], [], []
    for ep in episodes.episodes:
        support, labels, queries = table[ep.support], ep.support_labels(), table[ep.query]
        head = build_head(spec, table.shape[1])
        t0 = time.perf_counter()
        head.add_classes({f"c{c}": support[labels == c] for c in range(ways)})
        t1 = time.perf_counter()
        pred = head.classify(queries, k=1).top_idx[:, 0]
        t2 = time.perf_counter()
        enroll.append(t1 - t0)
        classify.append(t2 - t1)
        accs.append(float((pred == ep.query_labels()).mean()))
    n = len(accs)
    return {"acc": float(np.mean(accs)), "ci95": 1.96 * float(np.std(accs)) / max(np.sqrt(n), 1.0), "episodes": n,
            "enroll_ms": 1e3 * float(np.median(enroll)), "classify_ms": 1e3 * float(np.median(classify))}


def sgd_spec(temperature: float, lr: float, steps: int) -> Any:
    """The device fine-tune head as plain SGD from imprinted rows (MAML's inner loop)."""
    from edgefs.heads import HeadSpec

    return HeadSpec("finetune", {"temperature": temperature, "lr": lr, "lr_b": lr, "steps": int(steps),
                                 "momentum": 0.0, "l2": 0.0, "penalty": "none"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="an lstm_meta best.pt")
    parser.add_argument("--maml-checkpoint", type=Path, help="a maml best.pt for a meta-trained SGD row")
    parser.add_argument("--data", type=Path, default=Path("data/glyphs28"))
    parser.add_argument("--episodes", type=int, default=600, help="fixed test episodes per protocol")
    parser.add_argument("--val-episodes", type=int, default=200, help="validation episodes to pick SGD's rate")
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--sgd-lrs", default="0.5,1,2,5,10,20,50", help="SGD rates tried on validation")
    parser.add_argument("--out", type=Path, default=Path("reports/lstm_optimizer"))
    args = parser.parse_args(argv)

    import torch

    from edgefs.errors import ConfigError
    from edgefs.train.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    method, doc = load_checkpoint(args.checkpoint)
    if doc["method"]["name"] != "lstm_meta":
        raise ConfigError(f"{args.checkpoint} is a {doc['method']['name']!r} checkpoint; pass an lstm_meta one")
    method.eval()
    lstm = method.head_spec()
    steps, temperature = int(lstm.params["steps"]), float(lstm.params["temperature"])

    # SGD's rate: the best on validation episodes at the LSTM's step count.
    # 20-way: 5-way validation accuracy ties across most rates on glyphs.
    table, episodes, protocol = embedded_episodes(method, args.data, "val", "20w1s", args.val_episodes, args.queries)
    lrs = [float(x) for x in args.sgd_lrs.split(",")]
    val = {lr: run_head(sgd_spec(temperature, lr, steps), table, episodes, protocol.ways)["acc"] for lr in lrs}
    best_lr = max(lrs, key=lambda lr: (val[lr], -lr))
    print("SGD rate on validation 20w1s: " + ", ".join(f"{lr:g}: {100 * a:.2f}%" for lr, a in val.items())
          + f" -> {best_lr:g}")

    rows: dict[str, dict[str, Any]] = {}
    equal_time_steps = None
    maml = None
    if args.maml_checkpoint:
        maml, _ = load_checkpoint(args.maml_checkpoint)
        maml.eval()
    for name in PROTOCOLS:
        table, episodes, protocol = embedded_episodes(method, args.data, "test", name, args.episodes, args.queries)
        got = {"lstm": run_head(lstm, table, episodes, protocol.ways)}
        got["sgd, equal steps"] = run_head(sgd_spec(temperature, best_lr, steps), table, episodes, protocol.ways)
        if equal_time_steps is None:
            # Steps of SGD that fit in the LSTM's enrollment time, measured on these episodes side by side.
            per_step = [run_head(sgd_spec(temperature, best_lr, k), table, episodes, protocol.ways)["enroll_ms"]
                        for k in (steps, 4 * steps)]
            slope = max((per_step[1] - per_step[0]) / (3 * steps), 1e-6)
            extra = (got["lstm"]["enroll_ms"] - got["sgd, equal steps"]["enroll_ms"]) / slope
            equal_time_steps = max(steps, int(steps + extra))
        got["sgd, equal time"] = run_head(sgd_spec(temperature, best_lr, equal_time_steps), table, episodes,
                                          protocol.ways)
        got["imprint (0 steps)"] = run_head(sgd_spec(temperature, best_lr, 0), table, episodes, protocol.ways)
        if maml is not None:
            m_table, m_eps, _ = embedded_episodes(maml, args.data, "test", name, args.episodes, args.queries)
            got["maml (own backbone)"] = run_head(maml.head_spec(), m_table, m_eps, protocol.ways)
        for row, result in got.items():
            rows.setdefault(row, {})[name] = result

    step_of = {"lstm": steps, "sgd, equal steps": steps, "sgd, equal time": equal_time_steps,
               "imprint (0 steps)": 0}
    if maml is not None:
        step_of["maml (own backbone)"] = int(maml.head_spec().params["steps"])
    lines = [
        f"Learned LSTM optimiser vs SGD in the device fine-tune head, on `{args.checkpoint}`'s embeddings of the "
        f"fixed glyph test episodes ({args.episodes} per protocol, {args.queries} query per class); accuracy % "
        f"± 95% CI over episodes; NumPy, one thread, median ms to enroll a whole episode in one update and to "
        f"classify its queries ({platform.processor() or platform.machine()}, shared and loaded 2-core VM: read "
        f"times as ratios within this table). SGD rate {best_lr:g} (best of {args.sgd_lrs} on "
        f"{args.val_episodes} validation 20w1s episodes); equal time: the SGD step count whose 5w1s "
        "enrollment takes the LSTM's time.",
        "",
        "| optimiser | steps | " + " | ".join(f"{p} acc" for p in PROTOCOLS) + " | "
        + " | ".join(f"{p} enroll (ms)" for p in PROTOCOLS) + " | 5w5s classify (ms) |",
        "|" + "---|" * (3 + 2 * len(PROTOCOLS)),
    ]
    for row, by in rows.items():
        accs = [f"{100 * by[p]['acc']:.2f} ± {100 * by[p]['ci95']:.2f}" for p in PROTOCOLS]
        times = [f"{by[p]['enroll_ms']:.2f}" for p in PROTOCOLS]
        lines.append(f"| {row} | {step_of[row]} | " + " | ".join(accs) + " | " + " | ".join(times)
                     + f" | {by['5w5s']['classify_ms']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lstm_optimizer.md").write_text(text)
    (args.out / "lstm_optimizer.json").write_text(json.dumps({
        "checkpoint": str(args.checkpoint), "maml_checkpoint": str(args.maml_checkpoint or ""),
        "sgd_lr": best_lr, "sgd_val": {str(k): v for k, v in val.items()}, "steps": step_of, "rows": rows,
        "episodes": args.episodes, "queries": args.queries,
        "machine": {"processor": platform.processor() or platform.machine(), "numpy": np.__version__},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
