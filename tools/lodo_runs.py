"""Leave-one-domain-out over several training runs of one recipe: how much one run moves the table.

Usage::

    python tools/lodo_runs.py reports/lodo reports/lodo/replicates/run2 reports/lodo/replicates/run3 \
        --out reports/lodo/replicates

Each argument is a folder holding the ``lodo.json`` that ``tools/bench_lodo.py`` wrote for one
set of held-out models. The reports must score the same fixed episodes (same domains, protocols,
episode count and seed); the frozen rows, which do not depend on the run, must then agree to the
digit, and a report whose frozen rows differ is refused. Per held-out domain and protocol it
prints the frozen baseline, each run's meta-trained accuracy, their mean and its difference to
the frozen row, the spread between runs, and the lowest per-domain difference: the two figures
the colour recipe's goal is stated in (mean at least 4 points above frozen Lite0 at 5w1s, no
domain more than 1 below). Writes ``OUT/runs.md`` and ``OUT/runs.json``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FROZEN = "frozen 224 px"
TRAINED = "meta-trained"


def load(folder: Path) -> dict[str, Any]:
    path = folder / "lodo.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path} does not exist: run tools/bench_lodo.py --runs DIR --out {folder} first") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path} is not readable JSON ({e}); write it again with tools/bench_lodo.py") from None
    if FROZEN not in doc.get("rows", {}):
        raise SystemExit(f"{path} has no '{FROZEN}' row: not a tools/bench_lodo.py report")
    return doc


def trained_row(doc: dict[str, Any], path: Path) -> str:
    rows = [r for r in doc["rows"] if r.startswith(TRAINED) and "centring" not in r]
    if len(rows) != 1:
        raise SystemExit(f"{path}/lodo.json: expected one '{TRAINED} ...' row, found {rows}")
    return rows[0]


def summarise(docs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per protocol and domain (plus 'mean'): frozen, each run, mean of runs, difference, spread."""
    first = docs[0]
    keys = ("domains", "protocols", "episodes", "seed")
    for doc, name in zip(docs[1:], names[1:], strict=True):
        if any(doc[k] != first[k] for k in keys):
            raise SystemExit(f"{name} scores other episodes than {names[0]} ("
                             + ", ".join(f"{k} {doc[k]} vs {first[k]}" for k in keys if doc[k] != first[k])
                             + "): make every report with the same --episodes, --seed and domains")
        if doc["rows"][FROZEN] != first["rows"][FROZEN]:
            raise SystemExit(f"{name}'s frozen row differs from {names[0]}'s on the same episodes: the reports "
                             "were made from other data or code; make them again")
    rows = [doc["rows"][trained_row(doc, Path(name))] for doc, name in zip(docs, names, strict=True)]
    out: dict[str, Any] = {}
    for protocol in first["protocols"]:
        per: dict[str, Any] = {}
        for domain in [*first["domains"], "mean"]:
            frozen = first["rows"][FROZEN].get(domain, {}).get(protocol)
            runs = [r.get(domain, {}).get(protocol) for r in rows]
            if frozen is None or any(r is None for r in runs):
                continue  # the domain does not allow the protocol (bench_lodo skipped it)
            acc = [100 * r["mean"] for r in runs]
            mean = float(np.mean(acc))
            per[domain] = {"frozen": 100 * frozen["mean"], "runs": acc, "mean": mean,
                           "vs_frozen": mean - 100 * frozen["mean"], "spread": max(acc) - min(acc),
                           "runs_vs_frozen": [a - 100 * frozen["mean"] for a in acc]}
        domains = [d for d in per if d != "mean"]
        if domains:
            per["worst"] = {"domain": min(domains, key=lambda d: per[d]["vs_frozen"]),
                            "vs_frozen": min(per[d]["vs_frozen"] for d in domains)}
        out[protocol] = per
    return out


def table(summary: dict[str, Any], names: list[str]) -> str:
    lines = []
    for protocol, per in summary.items():
        lines += [f"### {protocol}", "",
                  "| held-out domain | frozen 224 px | " + " | ".join(names) + " | mean of runs | vs frozen | spread |",
                  "|---|---|" + "---|" * (len(names) + 3)]
        for domain, row in per.items():
            if domain == "worst":
                continue
            label = f"**{domain}**" if domain == "mean" else domain
            lines.append(f"| {label} | {row['frozen']:.2f} | " + " | ".join(f"{a:.2f}" for a in row["runs"])
                         + f" | {row['mean']:.2f} | {row['vs_frozen']:+.2f} | {row['spread']:.2f} |")
        if "mean" in per:
            each = ", ".join(f"{n} {d:+.2f}" for n, d in zip(names, per["mean"]["runs_vs_frozen"], strict=True))
            lines += ["", f"Mean over held-out domains vs frozen: {each}; mean of runs {per['mean']['vs_frozen']:+.2f}"
                      + (f"; lowest domain {per['worst']['domain']} {per['worst']['vs_frozen']:+.2f}"
                         if "worst" in per else "") + "."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", type=Path, help="folders with a tools/bench_lodo.py lodo.json, one per run")
    p.add_argument("--names", help="comma-separated run names (default: run 1, run 2, ...)")
    p.add_argument("--out", type=Path, help="write runs.md and runs.json here")
    args = p.parse_args(argv)
    names = args.names.split(",") if args.names else [f"run {i + 1}" for i in range(len(args.reports))]
    if len(names) != len(args.reports):
        p.error(f"--names gives {len(names)} names for {len(args.reports)} reports")
    docs = [load(f) for f in args.reports]
    summary = summarise(docs, [str(f) for f in args.reports])
    text = (f"Leave-one-domain-out, {len(docs)} training runs of one recipe, each scored on the same "
            f"{docs[0]['episodes']} fixed test episodes per protocol (seed {docs[0]['seed']}); accuracy %. "
            "'spread': best run minus worst run. Reports: "
            + ", ".join(f"{n} = `{f}`" for n, f in zip(names, args.reports, strict=True)) + ".\n\n"
            + table(summary, names))
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "runs.md").write_text(text)
        (args.out / "runs.json").write_text(json.dumps(
            {"reports": [str(f) for f in args.reports], "names": names, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
