"""ProtoNet meta-training, checkpoints, resume and evaluation, end to end on a tiny fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgefs.cli import main
from edgefs.errors import CheckpointError
from edgefs.eval.run import EvalConfig, evaluate
from edgefs.train import TrainConfig, load_checkpoint, train
from edgefs.train.checkpoint import read_checkpoint
from edgefs.train.trainer import embedder


@pytest.fixture(scope="module")
def trained(glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(data=str(glyph_data), out=str(out), ways=10, queries=3, episodes=120,
                         val_every=40, val_episodes=40, threads=2)
    train(config, log=lambda _: None)
    return out


def test_training_writes_checkpoints_config_and_log(trained: Path) -> None:
    assert {"best.pt", "last.pt", "config.yaml", "log.jsonl"} <= {p.name for p in trained.iterdir()}
    rows = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [40, 80, 120]
    # Loss goes down and validation beats 5-way chance (20%) by far.
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_acc"] for r in rows) > 0.6


def test_validation_episodes_live_in_the_cache_not_in_the_data(trained: Path, glyph_data: Path) -> None:
    from edgefs.data.episodes import episodes_cache_dir
    from edgefs.data.images import open_split

    assert not list((glyph_data / "episodes").glob("val_*.json"))  # the user's data folder is not written
    val = open_split(glyph_data, "val", 1, 28)
    assert list((episodes_cache_dir() / val.fingerprint()).glob("val_5w1s1q_*_n40_seed0.json"))


def test_checkpoint_rebuilds_the_same_model(trained: Path, glyph_data: Path) -> None:
    method, doc = load_checkpoint(trained / "last.pt")
    assert doc["backbone"]["name"] == "conv4" and doc["head_spec"]["head_type"] == "prototype"
    assert not method.training
    images = np.full((4, 28, 28, 1), 255, np.uint8)
    images[:, 10:18, 5:20] = 0
    again, _ = load_checkpoint(trained / "last.pt")
    a, b = embedder(method, torch.device("cpu"))(images), embedder(again, torch.device("cpu"))(images)
    assert np.array_equal(a, b)
    # Running batch-norm statistics: an image's embedding does not depend on its batch.
    assert np.allclose(embedder(method, torch.device("cpu"))(images[:1]), a[:1], atol=1e-5)


def test_resume_continues_from_last(trained: Path, glyph_data: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    config = TrainConfig(data=str(glyph_data), out=str(run), ways=10, queries=3, episodes=160,
                         val_every=40, val_episodes=40, threads=2)
    messages: list[str] = []
    train(config, resume=True, log=messages.append)
    assert any("resumed" in m and "episode 120" in m for m in messages)
    assert read_checkpoint(run / "last.pt")["episode"] == 160


def test_unknown_backbone_in_checkpoint_is_named(trained: Path, tmp_path: Path) -> None:
    doc = torch.load(trained / "last.pt", weights_only=True)
    doc["backbone"]["name"] = "vit_giant"
    torch.save(doc, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="vit_giant"):
        load_checkpoint(tmp_path / "odd.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")


def test_eval_reports_every_protocol_on_shared_episodes(
    trained: Path, glyph_data: Path, tmp_path: Path
) -> None:
    config = EvalConfig(models=[str(trained / "best.pt"), "baseline:pixels"], data=str(glyph_data),
                        protocols=["5w1s", "4w1s-within"], episodes=30, out=str(tmp_path / "rep"))
    report = evaluate(config, log=lambda _: None)
    rows = report["results"]
    assert len(rows) == 2 and "pixels 1-NN" in rows
    for row in rows.values():
        assert set(row) == {"5w1s", "4w1s-within"}
        assert 0.0 <= row["5w1s"]["mean"] <= 1.0 and row["5w1s"]["episodes"] == 30
    model_row = next(iter(rows.values()))
    assert model_row["5w1s"]["mean"] > 0.5
    test_scripts = {p.name for p in (glyph_data / "test").iterdir()}
    assert set(model_row["4w1s-within"]["per_group"]) <= test_scripts
    md = (tmp_path / "rep" / "eval.md").read_text()
    assert "| model | 5w1s | 4w1s-within |" in md
    # The episode lists are cached outside the data folder (keyed by the data's fingerprint) and reused.
    assert not list((glyph_data / "episodes").glob("test_*.json"))
    from edgefs.data.episodes import episodes_cache_dir

    assert list(episodes_cache_dir().glob("*/test_5w1s1q_mixed_n30_seed0.json"))


def test_cli_eval_and_errors(trained: Path, glyph_data: Path, tmp_path: Path, capsys) -> None:
    rc = main(["eval", str(trained / "best.pt"), "--data", str(glyph_data), "--ways", "5", "--shots", "1",
               "--episodes", "20", "--out", str(tmp_path / "r")])
    assert rc == 0 and (tmp_path / "r" / "eval.json").is_file()
    assert main(["eval", str(tmp_path / "none.pt"), "--data", str(glyph_data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_run_folder_is_not_overwritten_by_accident(trained: Path, glyph_data: Path, tmp_path: Path) -> None:
    import shutil

    from edgefs.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "best.pt").read_bytes()
    config = TrainConfig(data=str(glyph_data), out=str(run), ways=10, queries=3, episodes=10,
                         val_every=10, val_episodes=10, threads=2)
    with pytest.raises(ConfigError, match="--resume"):
        train(config, log=lambda _: None)
    assert (run / "best.pt").read_bytes() == before
    train(config, overwrite=True, log=lambda _: None)
    assert read_checkpoint(run / "last.pt")["episode"] == 10
