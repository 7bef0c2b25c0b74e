"""Copies of a bundle with one thing changed, for the tests that check what a device does with them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefs.runtime.bundle import MANIFEST_FILE


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``change`` to the parsed ``manifest.json`` of ``folder`` and write it back."""
    doc = json.loads((folder / MANIFEST_FILE).read_text())
    change(doc)
    (folder / MANIFEST_FILE).write_text(json.dumps(doc))
