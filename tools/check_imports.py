"""Check the architecture contracts (.importlinter) and that no modules import each other in a circle.

Run by ``make lint``. The package is checked as pip installs it: a wheel is built into a temporary
folder (export/ and kernels/ inside edgefs/, as on a device), and import-linter and grimp read that
copy, so a contract holds for the package users get, not for a source tree a tool reads differently.

    python tools/check_imports.py            # contracts + circles; exit status 1 on any breach
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CYCLES = r"""
import json, sys
import grimp

graph = grimp.build_graph("edgefs", exclude_type_checking_imports=True)
edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i.startswith("edgefs")}
         for m in graph.modules if m.startswith("edgefs")}
# Tarjan's strongly connected components: every component of more than one module is a circle.
index, low, on, stack, found, counter = {}, {}, set(), [], [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            found.append(sorted(comp))
for v in sorted(edges):
    if v not in index:
        visit(v)
print(json.dumps({"modules": len(edges), "circles": found}))
"""


def install(target: Path) -> None:
    """The package as pip installs it (no dependencies, this interpreter's setuptools)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--target", str(target), str(ROOT)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"check_imports: could not install the package to check it:\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefs-imports-") as tmp:
        site = Path(tmp) / "site"
        install(site)
        env = {**os.environ, "PYTHONPATH": str(site)}
        # From an empty folder: the checkout's own edgefs/ must not shadow the installed copy.
        contracts = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), str(ROOT / ".importlinter")],
                                   cwd=tmp, env=env, capture_output=True, text=True)
        out = contracts.stdout
        print(out[out.find("Contracts"):] if "Contracts" in out else out + contracts.stderr)
        cycles = subprocess.run([sys.executable, "-c", _CYCLES], cwd=tmp, env=env, capture_output=True, text=True)
        if cycles.returncode != 0:
            print(cycles.stderr, file=sys.stderr)
            return 1
        import json

        result = json.loads(cycles.stdout)
        circles = result["circles"]
        print(f"import circles: {len(circles)} among {result['modules']} modules")
        for circle in circles:
            print("  " + " <-> ".join(circle))
    return 1 if contracts.returncode != 0 or circles else 0


if __name__ == "__main__":
    raise SystemExit(main())
