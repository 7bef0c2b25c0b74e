"""edgefs: few-shot adaptation for edge devices.

Meta-train a backbone on a workstation, export it, then enroll new classes on the
device from a few images and classify a live camera stream, without retraining
the backbone. See DESIGN.md for the map of the package.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path

__version__ = "0.1.0"

#: Subpackages whose code sits in a top-level folder of the repository (the product's layout);
#: an install maps them through setuptools' package_dir (setup.py).
_TOP_LEVEL_PARTS = {"edgefs.export": "export", "edgefs.kernels": "kernels"}


class _CheckoutParts(MetaPathFinder):
    """Finds ``edgefs.export`` and ``edgefs.kernels`` in a source checkout that is not installed
    (``PYTHONPATH=<checkout>``, as on a board that runs edgefs from a clone, or CI's aarch64 lane).
    Installed copies never need it: a wheel holds the folders inside ``edgefs/``, and an editable
    install brings setuptools' own finder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        folder = _TOP_LEVEL_PARTS.get(fullname)
        if folder is None:
            return None
        init = self.root / folder / "__init__.py"
        return spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def _map_checkout_parts() -> None:
    here = Path(__file__).resolve().parent
    if (here / "export").exists() or not (here.parent / "export" / "__init__.py").exists():
        return  # installed (the folders are inside the package) or not a checkout
    if not any(isinstance(f, _CheckoutParts) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutParts(here.parent))


_map_checkout_parts()
