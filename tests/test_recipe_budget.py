"""The colour recipe is budgeted in episodes: the same command trains the same episodes on the same learning-rate
schedule on any CPU, and its time cap is a guard the recipe does not reach at any plausible step time. And
``tools/bench_lodo.py --only``, which holds out and scores a subset of the domains."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from edgefs import config as cfgmod
from edgefs.train.cached import CachedTrainConfig, budget_record, learning_rate, schedule_follows_time
from tests.conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "protonet_lite0_colour.yaml"
COLOUR_MODEL = REPO / "models" / "protonet-lite0-colour.pt"
# Seconds per episode, validation included: ~0.23-0.32 on the machine that made the reports (750-1,043 episodes in
# 4 minutes), ~0.45-0.52 on a 2-core AVX2 machine (464-528), and slower machines up to 4x that.
STEP_TIMES = (0.23, 0.32, 0.52, 1.0, 2.0)


@pytest.fixture(scope="module")
def recipe() -> CachedTrainConfig:
    return cfgmod.resolve(CachedTrainConfig, str(RECIPE))


def test_the_recipe_is_an_episode_count_in_the_range_the_reports_ran(recipe: CachedTrainConfig) -> None:
    assert 750 <= recipe.episodes <= 1043
    # The cap, if any, leaves room for the slowest step time above.
    assert recipe.time_budget_min == 0 or 60 * recipe.time_budget_min > recipe.episodes * max(STEP_TIMES)


@pytest.mark.parametrize("step_s", STEP_TIMES)
def test_the_schedule_follows_episodes_only_at_any_plausible_step_time(recipe: CachedTrainConfig,
                                                                       step_s: float) -> None:
    for episode in range(recipe.episodes):
        elapsed = episode * step_s
        assert not schedule_follows_time(recipe, episode, elapsed), (episode, step_s)
        assert learning_rate(recipe, episode, elapsed) == learning_rate(recipe, episode, 0.0), (episode, step_s)
    # ...and anneals over them: the last episode is at the end of the cosine.
    last = learning_rate(recipe, recipe.episodes - 1, (recipe.episodes - 1) * step_s)
    assert last == pytest.approx(recipe.lr * recipe.lr_final, rel=1e-3)
    done = budget_record(recipe, recipe.episodes, recipe.episodes * step_s, None)
    assert done["ended_by"] == "episodes" and done["as_recipe"]
    assert done["note"].startswith(f"episode budget reached: {recipe.episodes} episodes in ")


def test_a_slow_cpu_is_told_its_model_is_not_the_recipes() -> None:
    c = CachedTrainConfig(episodes=900, time_budget_min=60, warmup_episodes=50)
    # 5 s an episode: 900 episodes would need 75 minutes, so the cap sets the schedule and then stops the run.
    assert not schedule_follows_time(c, 49, 49 * 5.0)  # warm-up follows episodes
    assert schedule_follows_time(c, 50, 50 * 5.0)
    assert learning_rate(c, 400, 400 * 5.0) < learning_rate(c, 400, 400 * 1.0)
    capped = budget_record(c, 720, 3600.0, 50)
    assert capped["ended_by"] == "time cap" and not capped["as_recipe"]
    assert capped["note"].startswith("stopped by the time cap of 60 min at episode 720 of 900: "
                                     "this model differs from the recipe's")
    slow_start = budget_record(c, 900, 3500.0, 120)  # all episodes ran, but part of the schedule followed time
    assert slow_start["ended_by"] == "episodes" and not slow_start["as_recipe"]
    assert slow_start["lr_followed_time_from_episode"] == 120
    assert "the learning rate followed the time cap of 60 min from episode 120" in slow_start["note"]
    assert "differs from the recipe's although all 900 episodes ran" in slow_start["note"]


# --- tools/bench_lodo.py --only: hold out and score a subset of the domains ---------------------------------------

def write_domain(root: Path, classes: int, per_class: dict[str, int], seed: int) -> Path:
    """An ImageFolder with train/val/test: each class a colour, its images that colour with a jittered square."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val", "test"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            colour = rng.integers(0, 255, 3)
            for i in range(per_class[split]):
                img = np.full((32, 32, 3), 230, np.uint8)
                x, y = (int(v) for v in rng.integers(4, 12, 2))
                img[y:y + 16, x:x + 16] = np.clip(colour + rng.integers(-15, 15, 3), 0, 255)
                cv2.imwrite(str(folder / f"{i}.png"), img)
    return root


@pytest.fixture(scope="module")
def lodo_domains(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("domains")
    for seed, name in enumerate(("cards", "flags", "units")):
        write_domain(root / name, classes=5, per_class={"train": 1, "val": 1, "test": 2}, seed=seed)  # 5w1s: 2 a class
    return root


@pytest.fixture(scope="module")
def bench_lodo() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO / "tools"))  # it imports bench_pretrained from beside it, as when run
        yield load_tool("bench_lodo")


@pytest.mark.parametrize(("only", "said"), [
    ("cards,flag", "--only: unknown domain 'flag'; the domains here are cards, flags, units"),
    ("nope,cards,other", "--only: unknown domains 'nope', 'other'; the domains here are cards, flags, units"),
    (" , ", "--only: no domain named; the domains here are cards, flags, units"),
])
def test_bench_lodo_refuses_an_unknown_domain_name(bench_lodo: ModuleType, lodo_domains: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], only: str, said: str) -> None:
    code = bench_lodo.main(["--domains", str(lodo_domains), "--runs", str(tmp_path / "runs"), "--train",
                            "--only", only, "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.strip() == said
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()  # nothing trained or written


def test_bench_lodo_needs_models_only_for_the_named_domains(bench_lodo: ModuleType, lodo_domains: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_lodo.main(["--domains", str(lodo_domains), "--runs", str(tmp_path / "runs"),
                            "--only", "units,cards", "--out", str(tmp_path / "out")])
    assert code == 2
    said = capsys.readouterr().err.strip()
    assert said == f"no held-out model for units, cards under {tmp_path / 'runs'}; pass --train"


@pytest.mark.slow
def test_bench_lodo_scores_only_the_named_domain(bench_lodo: ModuleType, lodo_domains: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A real held-out model (the committed colour model stands in for flags's) scored on flags alone."""
    monkeypatch.setenv("EDGEFS_CACHE", str(tmp_path / "cache"))  # the episode lists land here
    runs = tmp_path / "runs"
    (runs / "flags").mkdir(parents=True)
    shutil.copy(COLOUR_MODEL, runs / "flags" / "best.pt")
    code = bench_lodo.main(["--domains", str(lodo_domains), "--runs", str(runs), "--only", "flags",
                            "--protocols", "5w1s", "--episodes", "3", "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "lodo.json").read_text())
    assert report["domains"] == ["flags"] and report["training_domains"] == ["cards", "flags", "units"]
    assert report["train_s"] == {}
    for row, per in report["rows"].items():
        assert set(per) == {"flags", "mean"}, row
        assert per["flags"]["5w1s"]["episodes"] == 3 and per["mean"]["5w1s"]["domains"] == ["flags"]
    assert "Held out and scored: flags only (of cards, flags, units)." in (tmp_path / "out" / "lodo.md").read_text()
