"""edgefs data: render or prepare data sets."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgefs.cli import args as A

HELP = "build data sets: 'edgefs data glyphs --out DIR' renders the glyph benchmark"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    g = sub.add_parser("glyphs", help="render the Omniglot-like glyph benchmark from Debian fonts")
    g.add_argument("--out", required=True, help="output folder (DIR/<split>/<script>/<char>/<n>.png)")
    g.add_argument("--size", type=A.integer(8, 512), default=28, help="image side in pixels, 8 to 512 (default 28)")
    g.add_argument("--seed", type=A.integer(0), default=0, help="default 0")
    g.add_argument("--fonts-cache", type=Path, help="where fetched font packages are unpacked "
                   "(default ~/.cache/edgefs/fonts, or $EDGEFS_CACHE/fonts)")
    g.add_argument("--dejavu-only", action="store_true",
                   help="do not fetch font packages; use the fonts already on this machine")
    g.add_argument("--max-classes-per-script", type=A.integer(1), help="cap classes per script (default 300)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    from edgefs.data.domains import DOMAINS, add_domain_parsers

    add_domain_parsers(sub, DOMAINS)


def run(args: argparse.Namespace) -> int:
    if args.dataset != "glyphs":
        from edgefs.data.domains import run_domain_command

        return run_domain_command(args)
    from edgefs.data.glyphs import GlyphConfig, render_glyph_benchmark

    options = {"size": args.size, "seed": args.seed, "dejavu_only": args.dejavu_only, "overwrite": args.overwrite}
    if args.fonts_cache:
        options["font_cache"] = args.fonts_cache
    if args.max_classes_per_script:
        options["max_classes_per_script"] = args.max_classes_per_script
    render_glyph_benchmark(Path(args.out), GlyphConfig(**options))
    return 0
