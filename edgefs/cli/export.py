"""edgefs export: checkpoint -> device bundle (ONNX + head + manifest), after a parity check."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A

HELP = "export a checkpoint as a device bundle (ONNX backbone, head, manifest) after a parity check"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="edgefs checkpoint, e.g. runs/protonet-conv4/best.pt")
    p.add_argument("--out", required=True, help="bundle folder to create, e.g. models/glyphs.edgefs")
    p.add_argument("--data", help="images for the parity check (default: the checkpoint's training data)")
    p.add_argument("--split", default="test", help="split of --data to take parity images from (default test)")
    p.add_argument("--parity-images", type=A.integer(1), default=64, help="images in the parity check (default 64)")
    p.add_argument("--opset", type=A.integer(9), default=17, help="ONNX opset, 9 or later (default 17)")
    p.add_argument("--min-cosine", type=A.real(-1, 1), default=0.9999,
                   help="lowest ONNX Runtime vs PyTorch cosine similarity that passes (default 0.9999)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    from edgefs.export import export_bundle

    export_bundle(args.checkpoint, args.out, data=args.data, split=args.split, parity_images=args.parity_images,
                  opset=args.opset, min_cosine=args.min_cosine, overwrite=args.overwrite)
    return 0
