"""edgefs eval: accuracy over fixed episodes, with baselines."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = "evaluate checkpoints (and baselines) on fixed few-shot episodes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", help="checkpoint files (.pt), bundles (model.edgefs) or baseline:NAME")
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
    p.add_argument("--support", dest="support_data", metavar="DIR",
                   help="cross-set protocol: support images from DIR (with --query-set; classes matched by name)")
    p.add_argument("--query-set", dest="query_data", metavar="DIR",
                   help="cross-set protocol: query images from DIR (--queries stays the count per class)")
    p.add_argument("--domains", metavar="ROOT",
                   help="evaluate each ROOT/<domain>/ and report per domain and the mean (leave-one-domain-out)")
    p.add_argument("--domain-split", help="split evaluated in each domain (default test)")
    p.add_argument("--model-per-domain", action="append", metavar="DOMAIN=MODEL",
                   help="with --domains: a model trained without DOMAIN, evaluated on DOMAIN only (repeat per domain)")
    p.add_argument("--episodes-cache", metavar="DIR",
                   help="where fixed episode lists are kept (default ~/.cache/edgefs/episodes)")


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
    per_domain = None
    if args.model_per_domain:
        pairs = [item.partition("=") for item in args.model_per_domain]
        if any(not d or not sep or not m for d, sep, m in pairs):
            raise ConfigError("write --model-per-domain as DOMAIN=MODEL, e.g. flags=runs/no-flags/best.pt")
        per_domain = {d: m for d, _, m in pairs}
    flags = {"data": args.data, "split": args.split, "protocols": protocols, "episodes": args.episodes,
             "queries": args.queries, "seed": args.seed, "out": args.out, "device": args.device,
             "strict_data": args.strict_data, "support_data": args.support_data, "query_data": args.query_data,
             "domains": args.domains, "domain_split": args.domain_split, "model_per_domain": per_domain,
             "episodes_cache": args.episodes_cache}
    config = resolve(EvalConfig, args.config, flags)
    if models:
        config.models = models
    evaluate(config)
    return 0
