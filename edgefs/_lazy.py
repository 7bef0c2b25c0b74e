"""Lazy imports of heavy or optional stacks with an actionable message."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgefs.errors import MissingDependencyError


def require(module: str, install: str, why: str) -> ModuleType:
    """Import ``module`` or raise an error that names what to install.

    Args:
        module: dotted module name, e.g. ``"torch"``.
        install: what the user should install, e.g. ``"pip install 'edgefs[train]'"``.
        why: the feature that needs it, for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{why} needs the Python package '{module}', which is not installed "
            f"({exc}). Install it with: {install}"
        ) from exc
