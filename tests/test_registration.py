"""A part of any kind is one module with one decorator: the registry finds it, no list names it.

Each test writes a toy part in a module of its own under ``tmp_path`` and, in a fresh
interpreter (registries look for their modules once), makes that folder a folder of the
part's package (``package.__path__``, as Python does for a package spread over folders),
then looks for the part where the CLI shows that kind's choices. Nothing else is
touched: no list of modules, no import of the toy module, no change to the source tree.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Run in a fresh interpreter: argv = package, folder, then the edgefs command line (or "-" and a snippet).
RUNNER = textwrap.dedent("""
    import importlib, sys
    package, folder, *rest = sys.argv[1:]
    importlib.import_module(package).__path__.append(folder)
    if rest[0] == "-":
        exec(rest[1])
    else:
        from edgefs.cli import main
        sys.exit(main(rest))
""")


def run_with(tmp_path: Path, package: str, module: str, source: str, *args: str) -> subprocess.CompletedProcess:
    """``edgefs ARGS`` (or ``-`` and Python code) with the toy ``module`` in a folder of ``package``."""
    folder = tmp_path / "parts"
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-c", RUNNER, package, str(folder), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "100"})


def flat(text: str) -> str:
    """Help text with its line wrapping undone."""
    return " ".join(text.split())


def test_backbone(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    toy = """
        from edgefs.backbones import BACKBONES

        @BACKBONES.register("toynet")
        def toynet(**options):
            raise NotImplementedError
    """
    # Help is printed only once argparse has taken --backbone toynet as one of the choices.
    shown = run_with(tmp_path, "edgefs.backbones", "toynet", toy, "train", "--backbone", "toynet", "--help")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"--backbone BACKBONE backbone: [^()]*\btoynet\b", flat(shown.stdout)), shown.stdout


def test_method(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    toy = """
        from edgefs.methods.base import METHODS, FewShotMethod

        @METHODS.register("toymethod")
        class ToyMethod(FewShotMethod):
            pass
    """
    shown = run_with(tmp_path, "edgefs.methods", "toymethod", toy, "train", "--method", "toymethod", "--help")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"--method METHOD few-shot method: [^()]*\btoymethod\b", flat(shown.stdout)), shown.stdout


HEAD = """
    from edgefs.heads.base import Head
    from edgefs.heads.spec import HEADS

    @HEADS.register("toyhead")
    class ToyHead(Head):
        head_type = "toyhead"

        def _scores(self, q):
            return q @ self.prototypes.T
"""


def test_head(tmp_path: Path) -> None:
    shown = run_with(tmp_path, "edgefs.heads", "toyhead", HEAD, "run", "--head", "toyhead", "--help")
    assert shown.returncode == 0, shown.stderr
    # Unranked, the toy comes after the built-in heads, which keep their order.
    assert "--head {prototype,imprint,matching,relation,siamese,finetune,mann,metanet,lstm_finetune,den," \
           "progressive,align,toyhead}" in shown.stdout, shown.stdout


def test_head_spec_and_build(tmp_path: Path) -> None:
    code = ("import numpy as np; from edgefs.heads import HeadSpec, build_head; "
            "h = build_head(HeadSpec('toyhead'), 4); h.add_class('a', np.ones((2, 4), np.float32)); "
            "print(type(h).__name__, h.classify(np.ones((1, 4), np.float32)).labels)")
    done = run_with(tmp_path, "edgefs.heads", "toyhead", HEAD, "-", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ToyHead", "['a']"]


ENGINE = """
    from edgefs.runtime.engine import ENGINES, Engine

    @ENGINES.register("toy")
    class ToyEngine(Engine):
        backend = "toy"

        def embed(self, images):
            raise NotImplementedError
"""


def test_engine(tmp_path: Path) -> None:
    shown = run_with(tmp_path, "edgefs.runtime", "toy_backend", ENGINE, "run", "--backend", "toy", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "--backend {auto,onnxruntime,openvino,tensorrt,torch,toy}" in shown.stdout, shown.stdout


def test_engine_module_naming_rule(tmp_path: Path) -> None:
    """runtime/ also holds modules that are not backends: only ``*_backend`` modules are looked in."""
    shown = run_with(tmp_path, "edgefs.runtime", "toy_engine", ENGINE, "run", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "--backend {auto,onnxruntime,openvino,tensorrt,torch}" in shown.stdout, shown.stdout


def test_camera_source(tmp_path: Path) -> None:
    """A source's URI forms are what every source error lists ("valid sources: ..."), the one place
    the CLI shows them (``--source`` takes any text)."""
    toy = """
        from edgefs.camera.sources import Source, register_source

        @register_source
        class ToyCamera(Source):
            schemes = ("toycam",)
            uri_forms = ("toycam:N   a toy camera",)

            @classmethod
            def from_uri(cls, target, options, *, uri, name):
                return cls(name or uri, live=False, uri=uri)

            def _open(self):
                pass

            def _next(self):
                return None

            def _close(self):
                pass
    """
    code = textwrap.dedent("""
        from edgefs.camera.sources import SourceError, open_source, source_forms
        print(type(open_source("toycam:0")).__name__)
        try:
            open_source("nosuch:0")
        except SourceError as exc:
            print(exc)
    """)
    done = run_with(tmp_path, "edgefs.camera.sources", "toycam", toy, "-", code)
    assert done.returncode == 0, done.stderr
    first, *message = done.stdout.splitlines()
    assert first == "ToyCamera"
    assert "  toycam:N   a toy camera" in message
    assert any(line.startswith("  synthetic:DIR") for line in message)  # beside the built-in forms


def test_data_domain(tmp_path: Path) -> None:
    toy = """
        from edgefs.data.domains.base import DOMAINS, Domain

        @DOMAINS.register("toydomain")
        class ToyDomain(Domain):
            name = "toydomain"
            summary = "a toy domain"
    """
    shown = run_with(tmp_path, "edgefs.data.domains", "toydomain", toy, "data", "--help")
    assert shown.returncode == 0, shown.stderr
    assert " toydomain a toy domain " in flat(shown.stdout), shown.stdout  # its own subcommand
    assert re.search(r"build every domain: [^()]*\btoydomain\b", flat(shown.stdout)), shown.stdout


def test_lookups_find_parts_without_heavy_stacks() -> None:
    """The device registries import their packages' modules on first lookup and none pulls torch or an
    engine's stack (those are imported when an engine is opened); importing the registries imports no part."""
    code = textwrap.dedent("""
        import pkgutil, importlib, sys
        from edgefs.camera.sources import SOURCES
        from edgefs.heads.spec import HEADS
        from edgefs.runtime.engine import ENGINES
        parts = [m for r in (SOURCES, HEADS, ENGINES) for m in r.modules()]
        early = [m for m in parts if m in sys.modules and m not in ("edgefs.heads.base", "edgefs.heads.openset",
                 "edgefs.heads.reference", "edgefs.heads.rows", "edgefs.heads.spec")]
        print("early", early)
        print(len(SOURCES.names()), len(HEADS.names()), len(ENGINES.names()))
        import edgefs.runtime
        for info in pkgutil.iter_modules(edgefs.runtime.__path__):
            importlib.import_module("edgefs.runtime." + info.name)
        heavy = {"torch", "onnx", "onnxruntime", "openvino", "tensorrt", "tensorrt_rtx_bindings", "pycuda"}
        print("heavy", sorted(heavy & {m.split(".")[0] for m in sys.modules}))
        print("export", [m for m in sys.modules if m.startswith("edgefs.export")])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    early, counts, heavy, export = done.stdout.splitlines()
    assert early == "early []"
    assert all(int(n) > 1 for n in counts.split()), counts
    assert heavy == "heavy []"
    assert export == "export []"


def test_head_types_are_the_registry() -> None:
    from edgefs.heads import HEAD_TYPES, HEADS

    assert list(HEAD_TYPES) == HEADS.ranked() and sorted(HEAD_TYPES) == HEADS.names()
    assert list(HEAD_TYPES[:3]) == ["prototype", "imprint", "matching"]  # the order the CLI has always listed
