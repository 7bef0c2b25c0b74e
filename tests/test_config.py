"""Config layering: defaults, then YAML, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgefs.config import resolve, save
from edgefs.errors import ConfigError
from edgefs.train import TrainConfig


def test_yaml_then_flags_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ways: 30\nlr: 0.002\naugment_config:\n  rotate: 5\n")
    config = resolve(TrainConfig, path, {"ways": 40, "shots": None})
    assert config.ways == 40 and config.lr == 0.002 and config.shots == 1
    assert config.augment_config.rotate == 5.0 and config.augment_config.noise == 4.0
    save(config, tmp_path / "out" / "config.yaml")
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["ways"] == 40


def test_unknown_keys_and_bad_values_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("wayz: 30\n")
    with pytest.raises(ConfigError, match="unknown setting 'wayz'"):
        resolve(TrainConfig, path)
    path.write_text("ways: many\n")
    with pytest.raises(ConfigError, match="expected int"):
        resolve(TrainConfig, path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve(TrainConfig, path)
    with pytest.raises(ConfigError, match="cannot read"):
        resolve(TrainConfig, tmp_path / "missing.yaml")
