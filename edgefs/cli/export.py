"""edgefs export: checkpoint -> device bundle (ONNX + head + manifest), after a parity check."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = "export a checkpoint as a device bundle (ONNX backbone, head, manifest) after a parity check"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", nargs="?",
                   help="edgefs checkpoint, e.g. runs/protonet-conv4/best.pt (or --pretrained NAME)")
    p.add_argument("--pretrained", metavar="NAME",
                   help="export a backbone's ImageNet weights with no checkpoint: efficientnet_lite0/1/2")
    p.add_argument("--input-size", type=A.integer(32, 1024),
                   help="input side in pixels (default: the checkpoint's, or the backbone's native one with "
                        "--pretrained). A checkpoint exported smaller than it was trained at costs less per frame "
                        "and some accuracy: measure with edgefs eval, choose with edgefs tune")
    p.add_argument("--power", type=A.real(maximum=1, above=0),
                   help="with --pretrained: the embedding is the pooled feature to this power; 0.5 (square "
                   "root) usually scores better with cosine prototypes (default 1: plain)")
    p.add_argument("--head", help="device head: prototype, imprint, matching or finetune "
                   "(default: the checkpoint's; with --pretrained, prototype)")
    p.add_argument("--distance", choices=["cosine", "euclidean"],
                   help="prototype head distance (default: the checkpoint's; with --pretrained, cosine)")
    p.add_argument("--center", action=argparse.BooleanOptionalAction, default=True,
                   help="with --pretrained: subtract a stored mean feature before the head (default on)")
    p.add_argument("--mean-from", metavar="DIR",
                   help="with --pretrained: images for the mean feature (its train split if it has one; "
                   "default: --data, else procedural images drawn by edgefs)")
    p.add_argument("--mean-images", type=A.integer(1), default=256,
                   help="images the mean feature is taken over (default 256)")
    p.add_argument("--out", required=True, help="bundle folder to create, e.g. models/glyphs.edgefs")
    p.add_argument("--data", help="images for the parity check (default: the checkpoint's training data; "
                   "with --pretrained, procedural images)")
    p.add_argument("--split", default="test", help="split of --data to take parity images from (default test)")
    p.add_argument("--parity-images", type=A.integer(1), default=64, help="images in the parity check (default 64)")
    p.add_argument("--opset", type=A.integer(9), default=17, help="ONNX opset, 9 or later (default 17)")
    p.add_argument("--min-cosine", type=A.real(-1, 1), default=0.9999,
                   help="lowest ONNX Runtime vs PyTorch cosine similarity that passes (default 0.9999)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    from edgefs.errors import ConfigError
    from edgefs.export import export_bundle, export_pretrained

    if (args.checkpoint is None) == (args.pretrained is None):
        raise ConfigError("give a checkpoint or --pretrained NAME (one of them)")
    if args.power is not None and not args.pretrained:
        raise ConfigError("--power is for --pretrained exports; a checkpoint's backbone keeps the power it was "
                          "trained with")
    if args.pretrained:
        export_pretrained(args.pretrained, args.out, input_size=args.input_size, power=args.power, head_type=args.head,
                          distance=args.distance, center=args.center, mean_from=args.mean_from,
                          mean_images=args.mean_images, data=args.data, split=args.split,
                          parity_images=args.parity_images, opset=args.opset, min_cosine=args.min_cosine,
                          overwrite=args.overwrite)
        return 0
    export_bundle(args.checkpoint, args.out, data=args.data, split=args.split, parity_images=args.parity_images,
                  opset=args.opset, min_cosine=args.min_cosine, overwrite=args.overwrite, head_type=args.head,
                  distance=args.distance, input_size=args.input_size)
    return 0
