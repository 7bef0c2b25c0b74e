"""Training to a CPU-time budget: it stops on the process's CPU clock and anneals over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefs.errors import ConfigError
from edgefs.train import TrainConfig, train
from edgefs.train.checkpoint import read_checkpoint
from edgefs.train.trainer import check_config, learning_rate


def test_learning_rate_anneals_over_cpu_time() -> None:
    config = TrainConfig(lr=1.0, lr_final=0.0, episodes=10**6, warmup_episodes=0, cpu_budget_min=1.0)
    assert learning_rate(config, 10, elapsed_s=1000.0, cpu_s=0.0) == pytest.approx(1.0, abs=1e-6)
    assert learning_rate(config, 10, elapsed_s=0.0, cpu_s=30.0) == pytest.approx(0.5)
    assert learning_rate(config, 10, elapsed_s=0.0, cpu_s=60.0) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="cpu_budget_min"):
        check_config(TrainConfig(cpu_budget_min=-1.0))


def test_training_stops_when_its_cpu_budget_is_spent(stroke_data: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    config = TrainConfig(data=str(stroke_data), out=str(tmp_path / "run"), method="protonet", ways=5, shots=1,
                         queries=2, episodes=10**6, warmup_episodes=0, val_every=10**6, val_episodes=10,
                         rotations=1, threads=1, cpu_budget_min=0.05)  # 3 CPU seconds
    train(config, log=messages.append)
    doc = read_checkpoint(tmp_path / "run" / "last.pt")
    assert any("CPU budget of 0.05 min reached" in m for m in messages), messages
    assert 3.0 <= doc["cpu_s"] < 30.0 and 0 < doc["episode"] < 10**6
