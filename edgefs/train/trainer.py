"""Episodic meta-training with validation, best-checkpoint selection and resume.

Batch-norm uses running statistics at validation (``model.eval()``), the same
as TensorRT's folded batch-norm on the device: no transductive test-batch
statistics in any reported number.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgefs import config as cfg
from edgefs.backbones import build_backbone
from edgefs.data.augment import Augment, AugmentConfig, expand_rotations
from edgefs.data.episodes import EpisodeSampler, Protocol, episode_list_path, fixed_episodes
from edgefs.data.images import ImageSet, open_split
from edgefs.device import check_device
from edgefs.errors import CheckpointError, ConfigError
from edgefs.eval.episodic import Accuracy, embedding_table, evaluate_episodes, needed_indices
from edgefs.methods import FewShotMethod, build_method
from edgefs.train import distributed as dist
from edgefs.train.checkpoint import read_checkpoint, save_checkpoint


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``config.yaml`` in ``out``.

    Training episodes are higher-way than test episodes (Snell et al. train
    Omniglot with 60 classes per episode). The learning rate follows a cosine
    from ``lr`` to ``lr * lr_final`` over ``episodes``, ``time_budget_min`` (wall
    time) or ``cpu_budget_min`` (this process's CPU time, every thread counted:
    sampling, augmentation and validation included), whichever runs out first, so
    a time-boxed run still anneals. A CPU budget makes runs comparable on a shared,
    loaded machine, where wall time depends on what else runs.
    """

    data: str = ""
    out: str = "runs/protonet-conv4"
    method: str = "protonet"
    method_options: dict[str, Any] = field(default_factory=dict)
    backbone: str = "conv4"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    ways: int = 60
    shots: int = 1
    queries: int = 5
    episodes: int = 20000
    time_budget_min: float = 0.0
    cpu_budget_min: float = 0.0
    lr: float = 1e-3
    lr_final: float = 0.01
    warmup_episodes: int = 100
    weight_decay: float = 0.0
    rotations: int = 4
    augment: bool = True
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)
    val_every: int = 500
    val_episodes: int = 300
    val_protocol: str = "5w1s"
    val_queries: int = 1
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    strict_data: bool = False


class _EpisodeFeeder:
    """Samples and augments episodes on a background thread (OpenCV releases the GIL).

    An exception on the thread ends it and is raised again by :meth:`get` in the training
    loop, so a failure in sampling or augmentation stops the run instead of leaving the
    loop waiting for an episode that will never come.

    Args:
        sampler: draws the episodes (default: an :class:`EpisodeSampler` over ``data``
            seeded from ``config.seed`` and ``start``).
    """

    def __init__(self, data: ImageSet, config: TrainConfig, start: int, rank: int = 0,
                 sampler: EpisodeSampler | None = None) -> None:
        protocol = Protocol(config.ways, config.shots, config.queries)
        # Seeded by the episode counter, so a resumed run continues a reproducible stream;
        # each distributed rank draws its own stream (rank 0's is the single-process one).
        offset = rank * 2**40
        self.sampler = sampler or EpisodeSampler(data, protocol, seed=config.seed * 1_000_003 + start + offset,
                                                 allow_repeats=True)
        self.augment = (Augment(config.augment_config, seed=config.seed * 7919 + start + offset)
                        if config.augment else None)
        self.data = data
        self.queue: queue.Queue[tuple[np.ndarray, ...]] = queue.Queue(maxsize=4)
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, name="episode feeder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._feed()
        except Exception as exc:  # handed to the training loop, which raises it
            self.error = exc

    def _feed(self) -> None:
        while not self.stop.is_set():
            ep = self.sampler.sample()
            idx = np.concatenate([ep.support, ep.query])
            images = self.data.images[idx]
            if self.augment is not None:
                images = self.augment(images)
            item = (images, ep.support_labels(), ep.query_labels(), np.int64(len(ep.support)), ep.classes)
            while not self.stop.is_set():
                try:
                    self.queue.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def get(self) -> tuple[np.ndarray, ...]:
        """The next episode; raises the feeder thread's exception if it died."""
        while True:
            try:
                return self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.error is not None:
                    raise self.error from None  # its own traceback shows where the feeder failed
                if not self.thread.is_alive():
                    raise RuntimeError("the episode feeder thread stopped without an error") from None

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)


def check_config(config: TrainConfig) -> None:
    """Refuse settings no run can use (from flags, which the CLI checks too, or from a YAML file).

    Raises:
        ConfigError: naming the setting and its valid range.
    """
    minimum = {"ways": 2, "shots": 1, "queries": 1, "episodes": 1, "val_every": 1, "val_episodes": 1,
               "val_queries": 1, "seed": 0, "threads": 0, "warmup_episodes": 0}
    for name, low in minimum.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
    for name in ("lr", "lr_final", "time_budget_min", "cpu_budget_min", "weight_decay"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if config.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {config.lr!r}")
    if config.rotations not in (1, 2, 3, 4):
        raise ConfigError(f"rotations must be 1, 2, 3 or 4, got {config.rotations!r}")
    for name, value in vars(config.augment_config).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"augment_config.{name} must be a finite number >= 0 (0 turns it off), got {value!r}")
    if config.augment_config.stroke > 1:
        raise ConfigError(f"augment_config.stroke is a probability, at most 1; got {config.augment_config.stroke!r}")


def learning_rate(config: TrainConfig, episode: int, elapsed_s: float, cpu_s: float = 0.0) -> float:
    """Linear warm-up, then cosine to ``lr * lr_final`` by episodes, wall time or CPU time."""
    if episode < config.warmup_episodes:
        return config.lr * (episode + 1) / config.warmup_episodes
    progress = episode / max(config.episodes, 1)
    if config.time_budget_min > 0:
        progress = max(progress, elapsed_s / (60 * config.time_budget_min))
    if config.cpu_budget_min > 0:
        progress = max(progress, cpu_s / (60 * config.cpu_budget_min))
    progress = min(progress, 1.0)
    return config.lr * (config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))


def validate(method: FewShotMethod, data: ImageSet, episodes: Any, device: torch.device) -> Accuracy:
    """Accuracy on fixed episodes with batch-norm on running statistics."""
    was_training = method.training
    method.eval()
    embed = embedder(method, device)
    table = embedding_table(data, needed_indices([episodes]), embed)
    method.train(was_training)
    return evaluate_episodes(table, data, episodes, method.score_embeddings)


def embedder(method: FewShotMethod, device: torch.device, batch: int = 512) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 ``(B, H, W, C)`` -> float32 ``(B, D)`` with the method's backbone in eval mode."""

    def embed(images: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), batch):
                x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch])).to(device)
                out.append(method.backbone(x).float().cpu().numpy())
        return np.concatenate(out)

    return embed


def _progress(total: int | None, initial: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="ep", dynamic_ncols=True, mininterval=1.0)


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] = print) -> Path:
    """Meta-train ``config.method`` on ``config.data``; returns the best checkpoint's path.

    Writes to ``config.out``: ``config.yaml``, ``last.pt`` (every validation and at
    the end), ``best.pt`` (best validation accuracy) and ``log.jsonl``.
    Ctrl-C stops after saving ``last.pt``; ``resume=True`` continues from it. A run
    folder that already holds a checkpoint is refused unless ``resume`` or
    ``overwrite`` says what to do with it.
    """
    if not config.data:
        raise ConfigError("no training data given; pass --data DIR (render one with 'edgefs data glyphs')")
    check_config(config)
    out = Path(config.out)
    device = dist.init(torch.device(check_device(config.device)))  # joins the torchrun group, if any
    if not dist.is_main():
        log = lambda _: None  # noqa: E731 - only rank 0 speaks
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    state: dict[str, Any] | None = None
    if not resume and (out / "last.pt").exists():
        if not overwrite:
            raise ConfigError(f"{out} already holds a training run; pass --resume to continue it, "
                              "--overwrite to start again, or another --out")
        for name in ("last.pt", "best.pt", "log.jsonl") if dist.is_main() else ():
            (out / name).unlink(missing_ok=True)
    if resume:
        last = out / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"--resume: no {last} to resume from; start without --resume")
        state = read_checkpoint(last)
        saved = state.get("config", {})
        if saved.get("backbone") != config.backbone or saved.get("method") != config.method:
            raise CheckpointError(f"--resume: {last} was trained with a different backbone or method")

    backbone = build_backbone(config.backbone, **config.backbone_options)
    method = build_method(config.method, backbone, **config.method_options).to(device)
    spec = backbone.spec
    say = log
    train_data = open_split(config.data, "train", spec.in_channels, spec.input_size, config.strict_data, say)
    val_data = open_split(config.data, "val", spec.in_channels, spec.input_size, config.strict_data, say)
    train_data = expand_rotations(train_data, config.rotations)
    val_protocol = Protocol.parse(config.val_protocol, config.val_queries)
    val_path = episode_list_path(Path(config.data) / "episodes", "val", val_protocol, config.val_episodes, 0)
    if not Path(config.data).is_dir():
        val_path = out / val_path.name
    with dist.main_first():  # rank 0 draws and saves the list; the others read it
        val_episodes = fixed_episodes(val_data, val_protocol, config.val_episodes, 0, val_path, say)
    log(
        f"train: {train_data.num_classes} classes ({config.rotations} rotations), {len(train_data.images)} images; "
        f"val: {val_data.num_classes} classes, {len(val_episodes.episodes)} fixed {val_protocol.name} episodes"
    )

    method.setup(train_data)
    optimizer = torch.optim.Adam(method.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    episode, elapsed, cpu, best = 0, 0.0, 0.0, -1.0
    history: list[dict[str, Any]] = []
    if state is not None:
        method.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        episode, elapsed, best = state["episode"], state["elapsed_s"], state["best_val"]
        cpu = float(state.get("cpu_s", 0.0))  # checkpoints written before CPU budgets have none
        log(f"resumed from {out / 'last.pt'} at episode {episode} (best val {100 * best:.2f}%)")
    dist.broadcast_module(method)  # every rank starts from rank 0's weights
    if dist.is_main():
        cfg.save(config, out / "config.yaml")

    def checkpoint(path: Path, val: Accuracy | None) -> None:
        if not dist.is_main():
            return
        save_checkpoint(path, method, {
            "config": cfg.to_dict(config), "optimizer": optimizer.state_dict(), "episode": episode,
            "elapsed_s": elapsed, "cpu_s": cpu, "best_val": best, "val": None if val is None else val.mean,
        })

    feeder = _EpisodeFeeder(train_data, config, episode, dist.rank())
    # With a time budget the episode count is not what ends the run; the bar shows time left instead.
    budgeted = config.time_budget_min > 0 or config.cpu_budget_min > 0
    bar = _progress(None if budgeted else config.episodes, episode) if dist.is_main() else None
    logf = (out / "log.jsonl").open("a") if dist.is_main() else open(os.devnull, "w")  # noqa: SIM115
    run_loss, run_acc = 0.0, 0.0
    started = time.monotonic() - elapsed
    cpu_started = time.process_time() - cpu
    method.train()
    try:
        while episode < config.episodes:
            elapsed = time.monotonic() - started
            if config.time_budget_min > 0:  # rank 0's clock: all ranks anneal and stop at the same episode
                elapsed = dist.broadcast_float(elapsed)
            if config.time_budget_min > 0 and elapsed >= 60 * config.time_budget_min:
                log(f"time budget of {config.time_budget_min} min reached at episode {episode}")
                break
            cpu = time.process_time() - cpu_started
            if config.cpu_budget_min > 0:  # rank 0's CPU clock, for the same reason
                cpu = dist.broadcast_float(cpu)
                if cpu >= 60 * config.cpu_budget_min:
                    log(f"CPU budget of {config.cpu_budget_min} min reached at episode {episode} "
                        f"({elapsed / 60:.1f} min wall)")
                    break
            lr = learning_rate(config, episode, elapsed, cpu)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, s_labels, q_labels, n_support, classes = feeder.get()
            x = torch.from_numpy(images).to(device)
            if method.batch_training:
                # Non-episodic methods see the episode as a class-balanced batch with global labels.
                labels = torch.from_numpy(classes[np.concatenate([s_labels, q_labels])]).to(device)
                loss, acc = method.batch_loss(x, labels)
            else:
                sl = torch.from_numpy(s_labels).to(device)
                ql = torch.from_numpy(q_labels).to(device)
                loss, acc = method.episode_loss(x[:n_support], sl, x[n_support:], ql)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_gradients(method)
            optimizer.step()
            episode += 1
            loss_value = float(loss.detach())
            run_loss = 0.98 * run_loss + 0.02 * loss_value if episode > 1 else loss_value
            run_acc = 0.98 * run_acc + 0.02 * float(acc) if episode > 1 else float(acc)
            if bar is not None:
                bar.update(1)
                extra = {}
                if config.time_budget_min > 0:
                    left = max(0.0, 60 * config.time_budget_min - elapsed)
                    extra["left"] = f"{int(left // 60)}:{int(left % 60):02d}"
                if config.cpu_budget_min > 0:
                    left = max(0.0, 60 * config.cpu_budget_min - cpu)
                    extra["cpu_left"] = f"{int(left // 60)}:{int(left % 60):02d}"
                bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{100 * run_acc:.1f}", lr=f"{lr:.1e}",
                                best=f"{100 * max(best, 0):.2f}", **extra, refresh=False)
            if episode % config.val_every == 0 and dist.is_main():  # the others run on into the next all-reduce
                elapsed = time.monotonic() - started
                cpu = time.process_time() - cpu_started
                val = validate(method, val_data, val_episodes, device)
                improved = val.mean > best
                best = max(best, val.mean)
                row = {"episode": episode, "elapsed_s": round(elapsed, 1), "cpu_s": round(cpu, 1), "lr": lr,
                       "train_loss": run_loss, "train_acc": run_acc, "val_acc": val.mean, "val_ci95": val.ci95}
                history.append(row)
                logf.write(json.dumps(row) + "\n")
                logf.flush()
                message = f"episode {episode}: val {val_protocol.name} {val}%{' (best)' if improved else ''}"
                (bar.write if bar is not None else log)(message)
                if improved:
                    checkpoint(out / "best.pt", val)
                checkpoint(out / "last.pt", val)
    except KeyboardInterrupt:
        log(f"interrupted at episode {episode}; saving {out / 'last.pt'} (continue with --resume)")
        checkpoint(out / "last.pt", None)
        raise
    finally:
        feeder.close()
        if bar is not None:
            bar.close()
        logf.close()

    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    if dist.is_main():
        val = validate(method, val_data, val_episodes, device)
        if val.mean > best:
            best = val.mean
            checkpoint(out / "best.pt", val)
        checkpoint(out / "last.pt", val)
        log(f"done: {episode} episodes in {elapsed / 60:.1f} min ({cpu / 60:.1f} CPU min); "
            f"best val {val_protocol.name} {100 * best:.2f}%; checkpoint {out / 'best.pt'}")
    dist.barrier()
    dist.cleanup()
    return out / "best.pt"
