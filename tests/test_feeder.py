"""The training episode feeder: an exception on its thread reaches the training loop, which stops."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgefs.cli import main
from edgefs.data.augment import AugmentConfig
from edgefs.data.episodes import Episode, EpisodeSampler, Protocol
from edgefs.data.images import open_split
from edgefs.errors import ConfigError, DataError
from edgefs.train import TrainConfig, train
from edgefs.train.trainer import _EpisodeFeeder


class SamplerThatRunsDry(EpisodeSampler):
    """A real sampler over real data that cannot form an episode after ``good`` of them
    (as when the images behind it disappear): the failure is the sampler's own DataError."""

    def __init__(self, *args: object, good: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.left = good

    def sample(self) -> Episode:
        if self.left == 0:
            raise DataError("the data set cannot form another 5w1s episode")
        self.left -= 1
        return super().sample()


def test_feeder_error_reaches_the_loop(stroke_data: Path) -> None:
    data = open_split(stroke_data, "train", 1, 28)
    config = TrainConfig(data=str(stroke_data), ways=5, shots=1, queries=2, augment=False)
    sampler = SamplerThatRunsDry(data, Protocol(5, 1, 2), allow_repeats=True, good=3)
    feeder = _EpisodeFeeder(data, config, 0, sampler=sampler)
    try:
        got = [feeder.get() for _ in range(3)]
        assert [len(item[1]) for item in got] == [5, 5, 5]  # three real episodes first
        t0 = time.monotonic()
        with pytest.raises(DataError, match="cannot form another 5w1s episode"):
            feeder.get()
        assert time.monotonic() - t0 < 5
    finally:
        feeder.close()


def test_zero_ways_in_the_feeder_raises_instead_of_hanging(stroke_data: Path) -> None:
    """What `--ways 0` used to do: the sampler fails on the feeder thread (no classes to concatenate)."""
    data = open_split(stroke_data, "train", 1, 28)
    feeder = _EpisodeFeeder(data, TrainConfig(data=str(stroke_data), ways=0, augment=False), 0)
    try:
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="need at least one array"):
            feeder.get()
        assert time.monotonic() - t0 < 5
    finally:
        feeder.close()


def test_training_stops_when_augmentation_fails_on_the_feeder(stroke_data: Path, tmp_path: Path) -> None:
    """An augmentation setting that passes the checks (finite, >= 0) but that NumPy cannot draw from
    (a rotation range wider than a float holds) fails on the feeder thread; train() raises it
    promptly instead of waiting for an episode for ever."""
    config = TrainConfig(data=str(stroke_data), out=str(tmp_path / "run"), ways=5, queries=2, episodes=50,
                         val_every=1000, val_episodes=5, rotations=1, augment_config=AugmentConfig(rotate=1e308))
    t0 = time.monotonic()
    with pytest.raises(OverflowError, match="range exceeds valid bounds"):
        train(config, log=lambda _: None)
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing written as if trained


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("ways", 0, "ways must be a whole number >= 2, got 0"),
    ("queries", 0, "queries must be a whole number >= 1, got 0"),
    ("val_every", 0, "val_every must be a whole number >= 1, got 0"),
    ("lr", -1.0, "lr must be a finite number >= 0, got -1.0"),
    ("lr", float("nan"), "lr must be a finite number >= 0, got nan"),
    ("augment_config", AugmentConfig(noise=-1.0),
     r"augment_config.noise must be a finite number >= 0 \(0 turns it off\), got -1.0"),
])
def test_train_refuses_settings_no_run_can_use(stroke_data: Path, tmp_path: Path, setting: str, value: object,
                                               message: str) -> None:
    config = TrainConfig(data=str(stroke_data), out=str(tmp_path / "run"))
    setattr(config, setting, value)
    with pytest.raises(ConfigError, match=message):
        train(config, log=lambda _: None)


def test_cli_train_zero_ways_is_refused_at_parse_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--ways", "0", "--data", "nowhere"])
    assert exit_info.value.code == 2
    assert "edgefs train: error: argument --ways: must be >= 2, got 0" in capsys.readouterr().err
