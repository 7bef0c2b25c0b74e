"""Export bundles for the three backbones and tabulate ONNX Runtime vs PyTorch parity on real images.

Usage::

    python tools/export_parity.py                      # data/glyphs28 test split -> runs/bundles, reports/export
    python tools/export_parity.py --parity-images 256 --data DIR

Backbones: conv4 (28 px, from the trained glyph run if it exists, else an
untrained seeded checkpoint), resnet12 (84 px, untrained) and efficientnet_lite0
(224 px, ImageNet-pretrained). The untrained ones get a ProtoNet checkpoint
around the freshly built backbone; parity does not need trained weights, only
real inputs. Writes ``parity.md`` and ``parity.json`` under ``--report``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from edgefs.export import export_bundle

from edgefs.backbones import build_backbone
from edgefs.methods import build_method
from edgefs.runtime.bundle import ONNX_FILE
from edgefs.train.checkpoint import save_checkpoint

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("conv4-28", "conv4", {"input_size": 28, "in_channels": 1}),
    ("resnet12-84", "resnet12", {"input_size": 84}),
    ("efficientnet_lite0-224", "efficientnet_lite0", {"input_size": 224, "pretrained": True}),
    ("efficientnet_lite1-240", "efficientnet_lite1", {"input_size": 240, "pretrained": True}),
    ("efficientnet_lite2-260", "efficientnet_lite2", {"input_size": 260, "pretrained": True}),
]


def checkpoint_for(label: str, backbone: str, options: dict[str, Any], args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint to export and a description of where it came from."""
    if backbone == "conv4" and Path(args.conv4_checkpoint).is_file():
        return Path(args.conv4_checkpoint), f"trained ({args.conv4_checkpoint})"
    path = Path(args.out) / "checkpoints" / f"{label}.pt"
    torch.manual_seed(0)
    method = build_method("protonet", build_backbone(backbone, **options))
    save_checkpoint(path, method, {"config": {"data": args.data}, "episode": 0, "best_val": None})
    return path, "ImageNet-pretrained, not meta-trained" if options.get("pretrained") else "untrained (seed 0)"


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# Export parity: ONNX Runtime (CPU) vs PyTorch, {args.parity_images} `{args.data}` {args.split} images",
        "",
        "| bundle | weights | batch | images | max abs diff | min cosine | 1 - min cosine | mean cosine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        parity = r["parity"]
        for row in [*parity["rows"], parity["summary"]]:
            lines.append(f"| {r['bundle']} | {r['weights']} | {row['batch']} | {row['images']} | "
                         f"{row['max_abs_diff']:.3g} | {row['min_cosine']:.7f} | {1.0 - row['min_cosine']:.2g} | "
                         f"{row['mean_cosine']:.7f} |")
    lines += ["", "| bundle | embedding | ONNX nodes (traced -> slimmed) | ONNX MB | export s |",
              "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['bundle']} | {r['embedding_dim']} | {r['graph']['nodes_traced']} -> "
                     f"{r['graph']['nodes_simplified']} | {r['onnx_mb']:.1f} | {r['export_s']:.1f} |")
    versions = results[0]["versions"] if results else {}
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/glyphs28", help="parity images (default data/glyphs28)")
    p.add_argument("--split", default="test")
    p.add_argument("--parity-images", type=int, default=64)
    p.add_argument("--conv4-checkpoint", default="models/protonet-conv4-glyphs28.pt")
    p.add_argument("--out", default="runs/bundles", help="where bundles (and fresh checkpoints) go")
    p.add_argument("--report", default="reports/export", help="where parity.md and parity.json go")
    args = p.parse_args()

    results = []
    for label, backbone, options in CASES:
        ckpt, weights = checkpoint_for(label, backbone, options, args)
        out = Path(args.out) / f"{label}.edgefs"
        start = time.perf_counter()
        bundle = export_bundle(ckpt, out, data=args.data, split=args.split, parity_images=args.parity_images,
                               overwrite=True)
        elapsed = time.perf_counter() - start
        m = bundle.manifest
        results.append({
            "bundle": label, "path": str(out), "weights": weights, "fingerprint": m.fingerprint,
            "embedding_dim": m.embedding_dim, "graph": m.export["graph"], "export_s": elapsed,
            "onnx_mb": (out / ONNX_FILE).stat().st_size / 1e6, "parity": m.export["parity"],
            "versions": m.export["versions"],
        })
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    text = markdown(results, args)
    (report / "parity.md").write_text(text)
    (report / "parity.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
