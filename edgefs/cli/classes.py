"""edgefs classes: list, remove, rename, export and import the classes of an on-device store."""

from __future__ import annotations

import argparse
from types import ModuleType

HELP = "list, remove, rename, export, import or reembed (for another bundle) the enrolled classes of a class store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgefs.store.packs import ON_CONFLICT  # torch-free

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", required=True, help="class store file, e.g. classes.db")
    common.add_argument("--bundle", required=True, help="the bundle the store belongs to, e.g. models/glyphs.edgefs")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("list", parents=[common], help="show the classes with their shots and times")
    a.set_defaults(_action=lambda args: _commands().list_classes(args.store, args.bundle))

    a = actions.add_parser("remove", parents=[common], help="remove classes and their samples")
    a.add_argument("names", nargs="+", metavar="NAME")
    a.set_defaults(_action=lambda args: _commands().remove_classes(args.store, args.bundle, args.names))

    a = actions.add_parser("rename", parents=[common], help="rename a class")
    a.add_argument("old", metavar="OLD")
    a.add_argument("new", metavar="NEW")
    a.set_defaults(_action=lambda args: _commands().rename_class(args.store, args.bundle, args.old, args.new))

    a = actions.add_parser("export", parents=[common], help="write classes to a class pack file")
    a.add_argument("pack", metavar="PACK", help="pack file to write, e.g. kitchen.efpack")
    a.add_argument("names", nargs="*", metavar="NAME", help="classes to export (default: all)")
    a.set_defaults(_action=lambda args: _commands().export_classes(args.store, args.bundle, args.pack, args.names))

    a = actions.add_parser("import", parents=[common], help="add the classes of a pack file (all or nothing)")
    a.add_argument("pack", metavar="PACK")
    a.add_argument("--on-conflict", default="error", choices=ON_CONFLICT,
                   help="for a class already in the store: error (default), skip, replace or append")
    a.set_defaults(
        _action=lambda args: _commands().import_classes(args.store, args.bundle, args.pack, args.on_conflict)
    )

    from edgefs.service.reembed import MODES  # torch-free

    a = actions.add_parser("reembed", parents=[common],
                           help="write a new store for another bundle (e.g. an INT8 one) from this store's classes")
    a.add_argument("--to", required=True, metavar="BUNDLE", help="the bundle the new store is for")
    a.add_argument("--out", required=True, metavar="STORE", help="the new store file to write")
    a.add_argument("--mode", choices=MODES, default="auto",
                   help="carry the embeddings over (INT8 bundle of this store's bundle, measured cosine above the "
                        "floor), embed the stored thumbnails again, or auto (carry when allowed; default)")
    a.set_defaults(_action=lambda args: _reembed().reembed_store(args.store, args.bundle, args.to, args.out,
                                                                 args.mode))


def _reembed() -> ModuleType:
    from edgefs.service import reembed

    return reembed


def _commands() -> ModuleType:
    """``edgefs.service.classes``, imported only when an action runs."""
    from edgefs.service import classes as commands

    return commands


def run(args: argparse.Namespace) -> int:
    print(args._action(args))
    return 0
