"""tools/lodo_runs.py: several leave-one-domain-out reports of one recipe summarised side by side."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import load_tool


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return load_tool("lodo_runs")


def acc(mean: float) -> dict[str, Any]:
    return {"mean": mean, "ci95": 0.01, "episodes": 600}


def report(a: float, b: float) -> dict[str, Any]:
    """A bench_lodo.py report over two domains; domain 'b' does not allow 5w5s."""
    return {"domains": ["a", "b"], "protocols": ["5w1s", "5w5s"], "episodes": 600, "seed": 0,
            "rows": {"frozen 224 px": {"a": {"5w1s": acc(0.50), "5w5s": acc(0.70)}, "b": {"5w1s": acc(0.60)},
                                       "mean": {"5w1s": acc(0.55), "5w5s": acc(0.70)}},
                     "meta-trained 224 px": {"a": {"5w1s": acc(a), "5w5s": acc(0.72)}, "b": {"5w1s": acc(b)},
                                             "mean": {"5w1s": acc((a + b) / 2), "5w5s": acc(0.72)}}}}


def write(folder: Path, doc: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    (folder / "lodo.json").write_text(json.dumps(doc))
    return folder


def test_runs_are_averaged_per_domain_with_spread_and_worst_domain(tool: ModuleType, tmp_path: Path) -> None:
    one = write(tmp_path / "one", report(0.56, 0.59))
    two = write(tmp_path / "two", report(0.58, 0.57))
    assert tool.main([str(one), str(two), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out/runs.json").read_text())["summary"]
    a = summary["5w1s"]["a"]
    assert a["runs"] == pytest.approx([56.0, 58.0]) and a["mean"] == pytest.approx(57.0)
    assert a["vs_frozen"] == pytest.approx(7.0) and a["spread"] == pytest.approx(2.0)
    assert summary["5w1s"]["b"]["vs_frozen"] == pytest.approx(-2.0)
    assert summary["5w1s"]["worst"] == {"domain": "b", "vs_frozen": pytest.approx(-2.0)}
    assert summary["5w1s"]["mean"]["runs_vs_frozen"] == pytest.approx([2.5, 2.5])
    assert "b" not in summary["5w5s"]  # skipped by bench_lodo, so not in the table either
    text = (tmp_path / "out/runs.md").read_text()
    assert "| a | 50.00 | 56.00 | 58.00 | 57.00 | +7.00 | 2.00 |" in text


def test_reports_on_other_episodes_or_other_frozen_rows_are_refused(tool: ModuleType, tmp_path: Path) -> None:
    one = write(tmp_path / "one", report(0.56, 0.59))
    other = report(0.58, 0.57)
    other["seed"] = 1
    with pytest.raises(SystemExit, match=r"scores other episodes.*seed 1 vs 0"):
        tool.main([str(one), str(write(tmp_path / "seed", other))])
    changed = copy.deepcopy(other)
    changed["seed"] = 0
    changed["rows"]["frozen 224 px"]["a"]["5w1s"] = acc(0.51)
    with pytest.raises(SystemExit, match="frozen row differs"):
        tool.main([str(one), str(write(tmp_path / "frozen", changed))])


def test_a_missing_report_says_how_to_make_it(tool: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"bench_lodo\.py --runs DIR"):
        tool.main([str(tmp_path / "none")])
