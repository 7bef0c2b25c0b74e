"""edgefs train: episodic meta-training."""

from __future__ import annotations

import argparse

HELP = "meta-train a backbone with a few-shot method on episodes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of settings (flags override it)")
    p.add_argument("--method", help="few-shot method (default protonet)")
    p.add_argument("--backbone", help="backbone: conv4, resnet12, efficientnet_lite0 (default conv4)")
    p.add_argument("--input-size", type=int, help="backbone input side in pixels")
    p.add_argument("--in-channels", type=int, choices=(1, 3), help="1 for grey, 3 for colour")
    p.add_argument("--data", help="data folder with train/ and val/ (e.g. from 'edgefs data glyphs')")
    p.add_argument("--out", help="run folder for checkpoints, config and log (default runs/protonet-conv4)")
    p.add_argument("--ways", type=int, help="classes per training episode (default 60)")
    p.add_argument("--shots", type=int, help="support images per class in training (default 1)")
    p.add_argument("--queries", type=int, help="query images per class in training (default 5)")
    p.add_argument("--episodes", type=int, help="training episodes (default 20000)")
    p.add_argument("--time-budget", type=float, dest="time_budget_min",
                   help="stop after this many minutes (the LR schedule anneals to fit)")
    p.add_argument("--lr", type=float, help="peak learning rate (Adam, default 1e-3)")
    p.add_argument("--rotations", type=int, choices=(1, 2, 3, 4),
                   help="90-degree rotations as new classes (default 4)")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="turn off image augmentation")
    p.add_argument("--val-every", type=int, help="validate every N episodes (default 500)")
    p.add_argument("--val-episodes", type=int, help="fixed validation episodes (default 300)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, help="PyTorch CPU threads (default: all cores)")
    p.add_argument("--strict", dest="strict_data", action="store_true", default=None,
                   help="fail on an unreadable image instead of skipping it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUT that holds a run")


def run(args: argparse.Namespace) -> int:
    from edgefs.config import resolve
    from edgefs.train import TrainConfig, train

    flags = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "overwrite", "command", "_run",
                                                              "input_size", "in_channels")}
    backbone_options = {k: getattr(args, k) for k in ("input_size", "in_channels") if getattr(args, k)}
    config = resolve(TrainConfig, args.config, flags)
    config.backbone_options = {**config.backbone_options, **backbone_options}
    train(config, resume=args.resume, overwrite=args.overwrite)
    return 0
