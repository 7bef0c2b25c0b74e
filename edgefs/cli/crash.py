"""Crash reports: what an unexpected error leaves for the bug report, instead of a traceback on screen.

A report holds the traceback, the edgefs and Python versions, the platform and the
command line. It is written atomically under ``$EDGEFS_CACHE/crash`` (default
``~/.cache/edgefs/crash``); the newest 20 are kept.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

KEEP = 20


def crash_dir() -> Path:
    """``$EDGEFS_CACHE/crash`` when ``EDGEFS_CACHE`` is set, else ``~/.cache/edgefs/crash``."""
    root = os.environ.get("EDGEFS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "edgefs") / "crash"


def describe(exc: BaseException) -> str:
    """One line: the exception type and message, and the innermost edgefs frame it came from."""
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if f"{os.sep}edgefs{os.sep}" in frame.filename:
            where = f" in {Path(frame.filename).name}:{frame.lineno} ({frame.name})"
            break
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{': ' + message if message else ''}{where}"


def report_text(exc: BaseException, argv: Sequence[str]) -> str:
    from edgefs import __version__

    lines = [
        f"edgefs {__version__} crash report, {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"command: edgefs {' '.join(argv)}",
        f"python: {sys.version.split()[0]} ({sys.executable})",
        f"platform: {platform.platform()}",
        "",
        *traceback.format_exception(type(exc), exc, exc.__traceback__),
    ]
    return "\n".join(line.rstrip("\n") for line in lines) + "\n"


def write_report(exc: BaseException, argv: Sequence[str], folder: Path | None = None) -> Path | None:
    """Write the report; returns its path, or None when no report could be written anywhere."""
    folder = crash_dir() if folder is None else folder
    text = report_text(exc, argv)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".crash-", suffix=".tmp")
    except OSError:
        return None
    path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return None
    _prune(folder)
    return path


def _prune(folder: Path) -> None:
    try:
        reports = sorted(folder.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime)
        for old in reports[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
