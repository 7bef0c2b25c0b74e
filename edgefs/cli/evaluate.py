"""edgefs eval: accuracy over fixed episodes, with baselines."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = "evaluate checkpoints (and baselines) on fixed few-shot episodes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", help="checkpoint files (.pt) or baseline:NAME")
    p.add_argument("--config", help="YAML file of settings (flags override it)")
    p.add_argument("--data", help="data folder (with a test/ split) or fashion-mnist[:DIR]")
    p.add_argument("--split", help="split to evaluate (default test)")
    p.add_argument("--ways", type=A.integer(2), help="with --shots: evaluate this one protocol")
    p.add_argument("--shots", type=A.integer(1), help="with --ways: evaluate this one protocol")
    p.add_argument("--within", action="store_true", help="with --ways/--shots: classes from one script")
    p.add_argument("--protocols", type=A.protocols, help="comma-separated, e.g. 5w1s,20w5s,5w1s-within "
                   "(default: 5w1s,5w5s,20w1s,20w5s,5w1s-within,5w5s-within)")
    p.add_argument("--episodes", type=A.integer(1), help="episodes per protocol (default 600)")
    p.add_argument("--queries", type=A.integer(1), help="queries per class (default 1)")
    p.add_argument("--baselines", type=A.baselines,
                   help=f"comma-separated baselines to add: {', '.join(A.baseline_names())}")
    p.add_argument("--seed", type=A.integer(0), help="episode-list seed (default 0)")
    p.add_argument("--out", help="report folder (default reports/eval)")
    p.add_argument("--device", type=A.device, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--strict", dest="strict_data", action="store_true", default=None)


def run(args: argparse.Namespace) -> int:
    from edgefs.config import resolve
    from edgefs.errors import ConfigError
    from edgefs.eval.run import EvalConfig, evaluate

    models = list(args.models) + [f"baseline:{b}" for b in args.baselines or []]
    protocols = args.protocols
    if (args.ways is None) != (args.shots is None):
        raise ConfigError("give --ways and --shots together (or --protocols)")
    if args.ways is not None:
        protocols = [f"{args.ways}w{args.shots}s" + ("-within" if args.within else "")]
    flags = {"data": args.data, "split": args.split, "protocols": protocols, "episodes": args.episodes,
             "queries": args.queries, "seed": args.seed, "out": args.out, "device": args.device,
             "strict_data": args.strict_data}
    config = resolve(EvalConfig, args.config, flags)
    if models:
        config.models = models
    evaluate(config)
    return 0
