"""Checked number types for command lines: argparse ``type=`` functions that say the valid range.

A type function raises :class:`argparse.ArgumentTypeError`; argparse then prints
``edgefs CMD: error: argument --flag: <message>`` and exits with status 2. Here, not in
:mod:`edgefs.cli.args`, so that a library module that adds arguments to a parser (the data
domains' subcommands) need not import the CLI.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An integer in ``[minimum, maximum]`` (either end open when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"expected a whole number{_range(minimum, maximum)}, got {text!r}") \
                from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be{_range(minimum, maximum)}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid <type> value" messages
    parse.bounds = (minimum, maximum, None, None)  # type: ignore[attr-defined]  # for tests and docs
    return parse


def real(minimum: float | None = None, maximum: float | None = None, *, above: float | None = None,
         below: float | None = None) -> Callable[[str], float]:
    """A finite number in ``[minimum, maximum]``; ``above``/``below`` are exclusive bounds."""

    def describe() -> str:
        parts = []
        if minimum is not None:
            parts.append(f">= {minimum:g}")
        if above is not None:
            parts.append(f"> {above:g}")
        if maximum is not None:
            parts.append(f"<= {maximum:g}")
        if below is not None:
            parts.append(f"< {below:g}")
        return " a finite number" + (" " + " and ".join(parts) if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except (ValueError, AttributeError):
            raise argparse.ArgumentTypeError(f"expected{describe()}, got {text!r}") from None
        bad = (not math.isfinite(value) or (minimum is not None and value < minimum)
               or (maximum is not None and value > maximum) or (above is not None and value <= above)
               or (below is not None and value >= below))
        if bad:
            raise argparse.ArgumentTypeError(f"must be{describe()}, got {text.strip()}")
        return value

    parse.__name__ = "number"
    parse.bounds = (minimum, maximum, above, below)  # type: ignore[attr-defined]  # for tests and docs
    return parse


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
