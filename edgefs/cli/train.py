"""edgefs train: episodic meta-training."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = "meta-train a backbone with a few-shot method on episodes"

# Read from the registries when help or a check needs them (importing PyTorch takes a second).
METHODS = A.RegistryChoices("edgefs.methods", "METHODS", "pip install 'edgefs[train]'")
BACKBONES = A.RegistryChoices("edgefs.backbones", "BACKBONES", "pip install 'edgefs[train]'")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of settings (flags override it)")
    p.add_argument("--method", choices=METHODS, metavar="METHOD",
                   help="few-shot method: %(choices)s (default protonet)")
    p.add_argument("--backbone", choices=BACKBONES, metavar="BACKBONE",
                   help="backbone: %(choices)s (default conv4)")
    p.add_argument("--input-size", type=A.integer(8, 1024), help="backbone input side in pixels, 8 to 1024")
    p.add_argument("--in-channels", type=int, choices=(1, 3), help="1 for grey, 3 for colour")
    p.add_argument("--data", help="data folder with train/ and val/ (e.g. from 'edgefs data glyphs')")
    p.add_argument("--out", help="run folder for checkpoints, config and log (default runs/protonet-conv4)")
    p.add_argument("--ways", type=A.integer(2), help="classes per training episode (default 60)")
    p.add_argument("--shots", type=A.integer(1), help="support images per class in training (default 1)")
    p.add_argument("--queries", type=A.integer(1), help="query images per class in training (default 5)")
    p.add_argument("--episodes", type=A.integer(1), help="training episodes (default 20000)")
    p.add_argument("--time-budget", type=A.real(0), dest="time_budget_min",
                   help="stop after this many minutes (the LR schedule anneals to fit; 0: no budget)")
    p.add_argument("--cpu-budget", type=A.real(0), dest="cpu_budget_min",
                   help="stop after this many minutes of the process's CPU time, all threads counted "
                        "(fair on a shared machine; the LR schedule anneals to fit; 0: no budget)")
    p.add_argument("--lr", type=A.real(above=0, maximum=10), help="peak learning rate (Adam, default 1e-3)")
    p.add_argument("--rotations", type=int, choices=(1, 2, 3, 4),
                   help="90-degree rotations as new classes (default 4)")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="turn off image augmentation")
    p.add_argument("--val-every", type=A.integer(1), help="validate every N episodes (default 500)")
    p.add_argument("--val-episodes", type=A.integer(1), help="fixed validation episodes (default 300)")
    p.add_argument("--seed", type=A.integer(0), help="default 0")
    p.add_argument("--device", type=A.device, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=A.integer(1), help="PyTorch CPU threads (default: all cores)")
    p.add_argument("--strict", dest="strict_data", action="store_true", default=None,
                   help="fail on an unreadable image instead of skipping it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUT that holds a run")


def run(args: argparse.Namespace) -> int:
    from edgefs.config import resolve
    from edgefs.fileio import check_output_not_input
    from edgefs.train import TrainConfig, train

    not_settings = ("config", "resume", "overwrite", "command", "_run", "debug", "input_size", "in_channels")
    flags = {k: v for k, v in vars(args).items() if k not in not_settings}
    backbone_options = {k: getattr(args, k) for k in ("input_size", "in_channels") if getattr(args, k)}
    config = resolve(TrainConfig, args.config, flags)
    config.backbone_options = {**config.backbone_options, **backbone_options}
    data = str(config.data or "")
    if data.startswith("fashion-mnist"):
        data = data.partition(":")[2]
    if config.out and data:  # checkpoints, config and log go into the run folder: never into the data
        check_output_not_input(config.out, {"the training data": data}, flag="--out")
    train(config, resume=args.resume, overwrite=args.overwrite)
    return 0
