"""Data-parallel training: 2 CPU ranks (gloo) stay in sync and take the averaged step."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from edgefs.train import TrainConfig
from edgefs.train.checkpoint import read_checkpoint

EPISODES = 3
SETTINGS = {"ways": 5, "shots": 1, "queries": 2, "episodes": EPISODES, "rotations": 1, "val_every": 1,
            "val_episodes": 5, "threads": 1, "warmup_episodes": 0, "lr": 1e-3, "seed": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, argv: list[str], dump: str) -> None:
    """One torchrun-like rank: the variables torchrun sets, then the real ``edgefs train`` CLI;
    afterwards the rank saves its own parameters and buffers for the test to compare."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from edgefs.cli import main
    from edgefs.train import trainer

    built: list[torch.nn.Module] = []
    build = trainer.build_method

    def capture(*args: Any, **kwargs: Any) -> Any:
        built.append(build(*args, **kwargs))
        return built[-1]

    trainer.build_method = capture
    assert main(argv) == 0
    torch.save(built[0].state_dict(), Path(dump) / f"rank{rank}.pt")


def _reference(data: Path, tmp: Path) -> tuple[dict[str, torch.Tensor], list[float], dict[str, torch.Tensor]]:
    """One process doing what 2 ranks should: per step the mean gradient of rank 0's and
    rank 1's episodes. Returns its parameters, rank 0's smoothed losses (as logged), and
    the parameters a single process training on rank 0's episodes alone reaches."""
    from edgefs.backbones import build_backbone
    from edgefs.data.augment import expand_rotations
    from edgefs.data.images import open_split
    from edgefs.methods import build_method
    from edgefs.train.trainer import _EpisodeFeeder, learning_rate

    config = TrainConfig(data=str(data), out=str(tmp), **SETTINGS)
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for ranks in ((0, 1), (0,)):
            torch.manual_seed(config.seed)
            method = build_method(config.method, build_backbone(config.backbone))
            spec = method.backbone.spec
            train_data = open_split(config.data, "train", spec.in_channels, spec.input_size, False, lambda _: None)
            train_data = expand_rotations(train_data, config.rotations)
            method.setup(train_data)
            optimizer = torch.optim.Adam(method.parameters(), lr=config.lr)
            feeders = [_EpisodeFeeder(train_data, config, 0, r) for r in ranks]
            method.train()
            losses, run_loss = [], 0.0
            try:
                for episode in range(EPISODES):
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate(config, episode, 0.0)
                    grads = []
                    for r, feeder in enumerate(feeders):
                        images, s_labels, q_labels, n_support, _ = feeder.get()
                        x = torch.from_numpy(images)
                        loss, _ = method.episode_loss(x[:n_support], torch.from_numpy(s_labels),
                                                      x[n_support:], torch.from_numpy(q_labels))
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        grads.append([None if p.grad is None else p.grad.clone() for p in method.parameters()])
                        if r == 0:
                            value = float(loss.detach())
                            run_loss = 0.98 * run_loss + 0.02 * value if episode else value
                            losses.append(run_loss)
                    for i, p in enumerate(method.parameters()):
                        # A gradient missing on one rank counts as zeros; missing on all, the step skips it.
                        present = [g[i] for g in grads if g[i] is not None]
                        p.grad = sum(present) / len(grads) if present else None
                    optimizer.step()
            finally:
                for feeder in feeders:
                    feeder.close()
            results.append(({k: v.detach().clone() for k, v in method.named_parameters()}, losses))
    finally:
        torch.set_num_threads(threads)
    return results[0][0], results[0][1], results[1][0]


def test_two_ranks_stay_in_sync_and_take_the_averaged_step(stroke_data: Path, tmp_path: Path) -> None:
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    (tmp_path / "train.yaml").write_text(json.dumps(SETTINGS))  # JSON is YAML
    argv = ["train", "--config", str(tmp_path / "train.yaml"), "--data", str(stroke_data), "--out", str(out)]
    mp.spawn(_rank_main, args=(_free_port(), argv, str(dump)), nprocs=2, join=True)

    # (a) Every rank ends with the same parameters and batch-norm statistics, bit for bit.
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    # Only rank 0 wrote the run folder, and its checkpoint is what the ranks hold.
    saved = read_checkpoint(out / "last.pt")
    assert saved["episode"] == EPISODES
    for name, value in saved["state_dict"].items():
        assert torch.equal(value, ranks[0][name]), name
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == list(range(1, EPISODES + 1))

    # (b) The distributed steps equal single-process steps on the mean gradient of both ranks' episodes.
    expected, losses, rank0_only = _reference(stroke_data, tmp_path / "ref")
    for name, value in expected.items():
        np.testing.assert_allclose(ranks[0][name].numpy(), value.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose([r["train_loss"] for r in rows], losses, rtol=1e-6)
    # ... and rank 1's episodes really counted: training on rank 0's alone ends elsewhere.
    moved = max(float((rank0_only[k] - expected[k]).abs().max()) for k in expected)
    assert moved > 1e-4


@pytest.mark.parametrize("names", [("RANK", "WORLD_SIZE")])
def test_without_torchrun_nothing_is_distributed(names: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefs.train import distributed as dist

    for name in names:
        monkeypatch.delenv(name, raising=False)
    assert not dist.launched() and dist.world() == 1 and dist.is_main()
    assert dist.init(torch.device("cpu")) == torch.device("cpu")
    assert dist.broadcast_float(1.5) == 1.5
