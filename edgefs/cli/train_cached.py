"""edgefs train-cached: meta-train an ImageNet backbone's last stages on cached features of its frozen trunk."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = "meta-train the last stages of an ImageNet backbone on colour data, from cached trunk features (CPU-sized)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of settings (flags override); configs/protonet_lite0_colour.yaml is "
                   "the committed colour model's recipe (224 px, block 15 on, 4 scene views, square root, centring, "
                   "alpha 0.5); "
                   "the defaults named below apply where neither a config nor a flag sets a value")
    p.add_argument("--data", nargs="+", help="data folders with train/ and val/, one per domain "
                   "(built with 'edgefs data <domain>')")
    p.add_argument("--out", help="run folder for checkpoints, config and log")
    p.add_argument("--input-size", type=A.integer(32, 1024), help="input side in pixels (default 128)")
    p.add_argument("--train-from", type=A.integer(1), help="first trained block; earlier ones are frozen (default 11)")
    p.add_argument("--views", type=A.integer(1), help="cached views per training image (default 6)")
    p.add_argument("--scene-views", type=A.integer(0), dest="scene_views",
                   help="further cached views per training image showing it as a camera does: a smaller, turned "
                   "card in front of clutter, uneven light, blur, noise (default 0)")
    p.add_argument("--episodes", type=A.integer(1), help="training episodes (the budget: the same count gives the "
                   "same episodes and learning-rate schedule on any CPU)")
    p.add_argument("--time-budget", type=A.real(0), dest="time_budget_min",
                   help="a cap in minutes (0: none): a run it stops before --episodes, or that is too slow for it "
                   "(the LR schedule then anneals to fit), is not the config's model; the log says so and the "
                   "checkpoints record it")
    p.add_argument("--lr", type=A.real(above=0, maximum=10), help="peak learning rate (Adam)")
    p.add_argument("--power", type=A.real(maximum=1, above=0),
                   help="embedding = pooled feature to this power (0.5: square root; default 1)")
    p.add_argument("--centered", action=argparse.BooleanOptionalAction, default=None,
                   help="cosine on centred embeddings, the centre saved with the model (default off)")
    p.add_argument("--wise-alpha", type=A.real(0, 1), dest="wise_alpha",
                   help="best.pt = (1 - a) x ImageNet tail + a x best tail (default 1: as trained)")
    p.add_argument("--seed", type=A.integer(0), help="default 0")
    p.add_argument("--threads", type=A.integer(1), help="PyTorch CPU threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUT that holds a run")


def run(args: argparse.Namespace) -> int:
    from edgefs.config import resolve
    from edgefs.fileio import check_output_not_input
    from edgefs.train.cached import CachedTrainConfig, train_cached

    not_settings = ("config", "overwrite", "command", "_run", "debug")
    flags = {k: v for k, v in vars(args).items() if k not in not_settings}
    config = resolve(CachedTrainConfig, args.config, flags)
    if config.out:  # checkpoints, config and log go into the run folder: never into the data
        check_output_not_input(config.out, {f"the training data {d}": d for d in config.data or [] if d},
                               flag="--out")
    train_cached(config, overwrite=args.overwrite)
    return 0
