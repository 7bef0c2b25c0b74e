"""The kernel tests' heavy emulated cases and their error report.

Heavy cases: a case of device_tests/test_kernels.py that its ``emu_heavy`` function names (with
the reason) gets the ``slow`` marker on the emulated backend, and is skipped unless the run
selects slow tests (``pytest -m slow``): the default run (CI) stays within its time budget.

Report: after the run, the largest error per kernel, quantity and backend against its
tolerance, from what test_kernels.py's ``measure`` recorded. Printed in the terminal summary
whenever kernel cases ran; written as JSON too when ``EDGEFS_KERNEL_REPORT`` names a file
(tools/emu_kernels.py does so).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

REPORT_ENV = "EDGEFS_KERNEL_REPORT"
_BACKEND = re.compile(r"\[(cuda|emu)[-\]]")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wants_slow = "slow" in (config.option.markexpr or "")
    for item in items:
        heavy = getattr(getattr(item, "module", None), "emu_heavy", None)
        callspec = getattr(item, "callspec", None)
        if heavy is None or callspec is None or callspec.params.get("launch") != "emu":
            continue
        reason = heavy(item.originalname, callspec.params)
        if reason:
            item.add_marker(pytest.mark.slow)
            if not wants_slow:
                why = f"slow under the CPU emulation ({reason}); run: pytest -m slow"
                item.add_marker(pytest.mark.skip(reason=why))


def kernel_errors(reports: list[pytest.TestReport]) -> list[dict[str, Any]]:
    """One row per (backend, kernel, quantity): cases, largest error, tolerance, worst case."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    cases: dict[str, set[str]] = {}
    for report in reports:
        if report.when != "call":
            continue
        match = _BACKEND.search(report.nodeid)
        backend = match.group(1) if match else "?"
        for name, value in report.user_properties:
            if name != "kernel_error":
                continue
            kernel, quantity, error, tol = value
            key = (backend, kernel, quantity)
            row = rows.setdefault(key, {"backend": backend, "kernel": kernel, "quantity": quantity, "cases": 0,
                                        "max_error": 0.0, "tolerance": tol, "worst_case": report.nodeid})
            cases.setdefault(str(key), set())
            if report.nodeid not in cases[str(key)]:
                cases[str(key)].add(report.nodeid)
                row["cases"] += 1
            if error > row["max_error"]:
                row["max_error"], row["worst_case"] = error, report.nodeid
            row["tolerance"] = max(row["tolerance"], tol)
    return sorted(rows.values(), key=lambda r: (r["backend"], r["kernel"], r["quantity"]))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
               if isinstance(r, pytest.TestReport)]
    rows = kernel_errors(reports)
    if not rows:
        return
    tr = terminalreporter
    tr.section("kernel errors against the tolerances")
    tr.write_line(f"{'backend':7} {'kernel':15} {'quantity':28} {'cases':>5} {'max error':>10} {'tolerance':>10}")
    for r in rows:
        tr.write_line(f"{r['backend']:7} {r['kernel']:15} {r['quantity']:28} {r['cases']:5d} "
                      f"{r['max_error']:10.3g} {r['tolerance']:10.3g}")
    target = os.environ.get(REPORT_ENV)
    if target:
        outcomes = {"passed": len(terminalreporter.stats.get("passed", [])),
                    "failed": len(terminalreporter.stats.get("failed", [])),
                    "skipped": len(terminalreporter.stats.get("skipped", []))}
        Path(target).write_text(json.dumps({"outcomes": outcomes, "errors": rows}, indent=2) + "\n")
