"""Multi-task pretraining against episodic meta-training of the same backbone, at the same CPU time.

Usage::

    python tools/bench_multitask.py                         # train both (CPU budget from the configs), evaluate
    python tools/bench_multitask.py --reuse                 # evaluate runs already trained
    python tools/bench_multitask.py --cpu-budget-min 1 --episodes 100 --out runs/bench_multitask   # smoke run

Trains ``configs/multitask_conv4_domains.yaml`` (a trunk with one cosine head per colour domain,
trained jointly) and ``configs/protonet_conv4_domains.yaml`` (the same Conv-4 at 32 px, episodic
ProtoNet over the same train splits) with the same budget of *process CPU time*
(``cpu_budget_min``: on a shared machine wall time does not compare runs), then scores both
``best.pt`` with ``edgefs eval --domains`` on every domain's test split, on the same fixed
episodes (5w1s, 5w5s), each with its own device head. Writes ``OUT/multitask.md`` and
``OUT/multitask.json`` (accuracy per domain and mean, training steps, CPU and wall time).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = {"multi-task (head per domain)": "multitask_conv4_domains.yaml",
        "episodic ProtoNet": "protonet_conv4_domains.yaml"}


def train_or_reuse(name: str, config_file: str, args: argparse.Namespace) -> dict[str, Any]:
    from edgefs.config import resolve
    from edgefs.train import TrainConfig, train
    from edgefs.train.checkpoint import read_checkpoint

    config = resolve(TrainConfig, CONFIGS / config_file)
    config.data = str(args.domains)
    config.out = str(args.out / "runs" / Path(config_file).stem)
    if args.cpu_budget_min is not None:
        config.cpu_budget_min = args.cpu_budget_min
    last = Path(config.out) / "last.pt"
    wall = None
    if not (args.reuse and last.is_file()):
        print(f"[{name}] training {config.method} ({config.backbone}) for {config.cpu_budget_min} min of CPU time")
        t0 = time.perf_counter()
        train(config, overwrite=True, log=lambda m: print(f"[{name}] {m}"))
        wall = time.perf_counter() - t0
    doc = read_checkpoint(last)
    return {"name": name, "method": config.method, "config": config_file,
            "checkpoint": str(Path(config.out) / "best.pt"),
            "steps": int(doc["episode"]), "cpu_min": float(doc.get("cpu_s", float("nan"))) / 60,
            "loop_wall_min": float(doc["elapsed_s"]) / 60, "call_wall_min": None if wall is None else wall / 60,
            "cpu_budget_min": config.cpu_budget_min, "batch_images": config.ways * (config.shots + config.queries),
            "input_size": config.backbone_options.get("input_size")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", type=Path, default=Path("data/domains"))
    parser.add_argument("--out", type=Path, default=Path("reports/multitask"))
    parser.add_argument("--cpu-budget-min", type=float, help="override the configs' CPU budget")
    parser.add_argument("--episodes", type=int, default=600, help="fixed test episodes per protocol and domain")
    parser.add_argument("--reuse", action="store_true", help="evaluate existing runs in OUT/runs instead of training")
    args = parser.parse_args(argv)

    from edgefs.eval.run import EvalConfig, evaluate

    runs = [train_or_reuse(name, cfg, args) for name, cfg in RUNS.items()]
    report = evaluate(EvalConfig(models=[r["checkpoint"] for r in runs], domains=str(args.domains),
                                 protocols=["5w1s", "5w5s"], episodes=args.episodes, out=str(args.out / "eval")),
                      log=print)
    names = {Path(r["checkpoint"]).parent.name: r["name"] for r in runs}
    lines = [f"Conv-4 at {runs[0]['input_size']} px RGB, trained on the train splits of the colour domains in "
             f"`{args.domains}`, evaluated on their test splits ({args.episodes} fixed episodes per protocol and "
             "domain, the same in both rows; device head of each method). Machine shared with other jobs: budgets "
             "are process CPU time.", "",
             "| training | steps (images per step) | CPU min | wall min | 5w1s mean | 5w5s mean |",
             "|---|---|---|---|---|---|"]
    for model, means in report["mean"].items():
        run = next(r for r in runs if r["checkpoint"] in model or Path(r["checkpoint"]).parent.name in model)
        cells = [f"{100 * means[p]['mean']:.2f} ± {100 * means[p]['ci95']:.2f}" if p in means else "skipped"
                 for p in ("5w1s", "5w5s")]
        lines.append(f"| {run['name']} | {run['steps']} ({run['batch_images']}) | {run['cpu_min']:.1f} | "
                     f"{run['loop_wall_min']:.1f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nPer domain:\n\n" + (args.out / "eval" / "eval.md").read_text()
    for stem, name in names.items():
        text = text.replace(stem, name)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multitask.md").write_text(text)
    (args.out / "multitask.json").write_text(json.dumps(
        {"runs": runs, "eval": report, "machine": {"processor": platform.processor() or platform.machine()}},
        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
