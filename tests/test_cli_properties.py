"""Property-based tests of every CLI flag: any value parses into the documented range or is an argparse error.

For each flag of each (sub)command that takes a value, hypothesis tries numbers
(huge, negative, nan, inf), numeric-looking text and arbitrary text. The outcome
must be a namespace whose value satisfies the flag's declared bounds, choices or
form, or ``SystemExit(2)`` with ``argument --flag:`` in the message; never another
exception. Derandomized and modest in size, so CI runs the same inputs every time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefs.cli import args as A
from edgefs.cli import build_parser, main
from edgefs.runtime.roi import Roi

PARSER = build_parser()
TRIED: Counter[str] = Counter()


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                          argparse.ArgumentParser]]:
    """Every leaf (sub)command: its words and its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*path, name))


def _base_argv(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """The command with its required options and positionals filled, so only the flag under test varies."""
    argv = list(path)
    for action in parser._actions:  # positionals first: an option taking several values would eat them
        positional = not action.option_strings and not isinstance(action, argparse._SubParsersAction)
        if positional and action.nargs not in ("*", "?"):
            argv.append(_valid_value(action))
    for action in parser._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[-1], _valid_value(action)]
    return argv


def _valid_value(action: argparse.Action) -> str:
    if action.choices is not None:
        return str(next(iter(action.choices)))
    return "x"


def _value_flags() -> list[tuple[tuple[str, ...], argparse.ArgumentParser, argparse.Action]]:
    found = []
    for path, parser in _commands(PARSER):
        for action in parser._actions:
            takes_value = action.nargs != 0 and action.option_strings and not isinstance(action, argparse._HelpAction)
            if takes_value and (action.type is not None or action.choices is not None):
                found.append((path, parser, action))
    return found


FLAGS = _value_flags()

values = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "0", "-0", "1", "-1", "2", "nan", "NaN", "-inf", "inf", "1e309", "1e-400", "0x10",
                     "1_000", "1.5", "cuda", "cuda:0", "CPU", "cuda:-1", "mps", "auto", "none", "5w1s",
                     "0w1s,5w5s", "pixels", "1,8", "0,1", "\u0663", "\x00", "9" * 5000]),
    st.text(max_size=16),
)


def _satisfies(action: argparse.Action, value: object) -> bool:
    """The parsed ``value`` is what the flag documents."""
    if action.choices is not None and value not in action.choices:
        return False
    bounds = getattr(action.type, "bounds", None)
    if bounds is not None:
        minimum, maximum, above, below = bounds
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return False
        return ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
                and (above is None or value > above) and (below is None or value < below))
    if action.type in (A.device, A.cuda_device):
        return isinstance(value, str) and re.fullmatch(r"cpu|cuda(:\d+)?", value) is not None
    if action.type is A.label:
        return isinstance(value, str) and value == value.strip() and value != ""
    if action.type is A.roi:
        return isinstance(value, Roi) and 0 < value.w <= 1 and 0 < value.h <= 1 and 0 <= value.cx <= 1 \
            and 0 <= value.cy <= 1
    if action.type is A.threshold:
        return value in ("auto", "none") or (-1.0 <= float(value) <= 1.0)  # type: ignore[arg-type]
    if action.type is A.protocols:
        return bool(value) and all(re.fullmatch(r"\d+w\d+s(-within)?", p) for p in value)  # type: ignore[union-attr]
    if action.type is A.compute_capabilities:
        return bool(value) and all(re.fullmatch(r"[1-9]\d?\.\d", t) for t in value)  # type: ignore[union-attr]
    if action.type is A.baselines:
        return set(value) <= set(A.baseline_names())  # type: ignore[arg-type]
    if getattr(action.type, "__name__", "") == "_batches":
        return bool(value) and all(isinstance(b, int) and b >= 1 for b in value)  # type: ignore[union-attr]
    if action.type is int:  # only with choices (checked above)
        return isinstance(value, int)
    return action.type in (None, str, Path)  # a new kind of type must say here what it accepts


def test_every_numeric_flag_has_a_checked_type() -> None:
    """A plain int/float flag without choices would accept 0, -3 or nan: refuse to add one."""
    plain = [f"{' '.join(path)} {action.option_strings[-1]}" for path, _, action in FLAGS
             if action.type in (int, float) and action.choices is None]
    assert plain == []
    assert len(FLAGS) >= 60  # every command's value flags are covered


@pytest.mark.parametrize(("path", "parser", "action"), FLAGS,
                         ids=[f"{' '.join(p)} {a.option_strings[-1]}" for p, _, a in FLAGS])
def test_any_value_parses_into_range_or_is_an_argparse_error(path: tuple[str, ...], parser: argparse.ArgumentParser,
                                                             action: argparse.Action) -> None:
    base = _base_argv(path, parser)
    flag = action.option_strings[-1]

    @settings(max_examples=40, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(values)
    def check(value: str) -> None:
        TRIED[flag] += 1
        argv = [*base, f"{flag}={value}"] if flag.startswith("--") else [*base, flag, value]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                namespace = PARSER.parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 2
            message = err.getvalue()
            assert "Traceback" not in message
            assert f"argument {'/'.join(action.option_strings)}:" in message or "expected one argument" in message \
                or "unrecognized arguments" in message, message
            return
        parsed = getattr(namespace, action.dest)
        assert _satisfies(action, parsed), (flag, value, parsed)

    check()


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(ways=values, episodes=values)
def test_eval_through_main_never_shows_a_traceback(ways: str, episodes: str) -> None:
    """End to end through ``main``: bad values stop at the parser (exit 2); good ones reach the
    library, which refuses the missing data with an EdgefsError (exit 2) -- never a traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(["eval", "baseline:pixels", "--data", "/nonexistent/edgefs", f"--ways={ways}", "--shots=1",
                       f"--episodes={episodes}"])
        except SystemExit as exc:
            rc = exc.code  # type: ignore[assignment]
    assert rc == 2, err.getvalue()
    assert "Traceback" not in err.getvalue() and "unexpected error" not in err.getvalue()
