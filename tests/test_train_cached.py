"""Cached-trunk meta-training of EfficientNet-Lite0 on colour domains, its delta checkpoint and its export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgefs.backbones import build_backbone
from edgefs.cli import main
from edgefs.errors import ConfigError
from edgefs.train.cached import CachedTrainConfig, LiteSplit, train_cached
from edgefs.train.cached_features import domain_features
from edgefs.train.cached_views import scene_view, scene_views_of, views_of
from edgefs.train.checkpoint import load_checkpoint, read_checkpoint

pytestmark = pytest.mark.slow

COLOURS = [(220, 40, 40), (40, 160, 40), (40, 60, 220), (230, 200, 30), (160, 40, 200), (30, 200, 200)]


def write_colour_domain(root: Path, classes: dict[str, int], per_class: int, seed: int) -> Path:
    """Classes = (shape, colour) drawn at jittered places and sizes on a light background, 64 px PNGs."""
    rng = np.random.default_rng(seed)
    k = 0
    for split, n in classes.items():
        for _ in range(n):
            shape, colour = k % 3, COLOURS[(k // 3) % len(COLOURS)]
            k += 1
            folder = root / split / f"c{k:02d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = np.full((64, 64, 3), 235, np.uint8)
                c = tuple(int(v) for v in np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255))
                x, y, r = (int(v) for v in (rng.integers(22, 42), rng.integers(22, 42), rng.integers(12, 20)))
                if shape == 0:
                    cv2.circle(img, (x, y), r, c, -1)
                elif shape == 1:
                    cv2.rectangle(img, (x - r, y - r), (x + r, y + r), c, -1)
                else:
                    pts = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], np.int32)
                    cv2.fillPoly(img, [pts], c)
                cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("colour")
    return [str(write_colour_domain(root / name, {"train": 9, "val": 6, "test": 5}, 4, seed))
            for seed, name in enumerate(("alpha", "beta"))]


@pytest.fixture(scope="module")
def run(domains: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CachedTrainConfig, list[str]]:
    out = tmp_path_factory.mktemp("run")
    config = CachedTrainConfig(data=domains, out=str(out / "run"), input_size=64, train_from=15, views=3, ways=4,
                               shots=2, queries=2, episodes=40, time_budget_min=0, lr=1e-3, val_every=20,
                               val_episodes=10, threads=2, cache=str(out / "features"))
    messages: list[str] = []
    train_cached(config, log=messages.append)
    return Path(config.out), config, messages


def test_views_keep_the_image_and_its_mirror_first() -> None:
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    v = views_of(images, 4, seed=1)
    assert v.shape == (3, 4, 32, 32, 3) and v.dtype == np.uint8
    assert np.array_equal(v[:, 0], images) and np.array_equal(v[:, 1], images[:, :, ::-1])
    assert not np.array_equal(v[:, 2], v[:, 3])
    assert np.array_equal(views_of(images, 4, seed=1), v)  # seeded


def test_a_scene_view_shows_the_image_as_a_smaller_card_in_front_of_the_clutter() -> None:
    card = np.zeros((64, 64, 3), np.uint8)
    card[..., 0] = 230  # red
    clutter = np.zeros((64, 64, 3), np.uint8)
    clutter[..., 2] = 230  # blue
    rng = np.random.default_rng(3)
    for _ in range(20):
        v = scene_view(card, clutter, rng).astype(int)
        assert v.shape == (64, 64, 3)
        red = (v[..., 0] > v[..., 2] + 40).mean()
        blue = (v[..., 2] > v[..., 0] + 40).mean()
        # The card covers 50-90% of the side (stretched, turned, tilted): a quarter to nine tenths
        # of the area; what is left is the clutter behind it.
        assert 0.15 < red < 0.92 and blue > 0.05 and red + blue > 0.9


def test_scene_views_are_seeded_and_take_their_clutter_from_the_other_images() -> None:
    images = np.zeros((2, 48, 48, 3), np.uint8)
    images[0, ..., 0] = 230
    images[1, ..., 1] = 230
    v = scene_views_of(images, 3, seed=5)
    assert v.shape == (2, 3, 48, 48, 3) and v.dtype == np.uint8
    assert np.array_equal(scene_views_of(images, 3, seed=5), v)
    assert not np.array_equal(scene_views_of(images, 3, seed=6), v)
    assert not np.array_equal(v[0, 0], v[0, 1])
    red, green = v[..., 0].astype(int), v[..., 1].astype(int)
    assert ((green[0] > red[0] + 40).mean(axis=(1, 2)) > 0.05).all()  # image 0 in front of image 1
    assert ((red[1] > green[1] + 40).mean(axis=(1, 2)) > 0.05).all()  # and the other way round


def test_scene_views_are_cached_beside_the_views_and_joined_after_them(run, domains: list[str],
                                                                       tmp_path: Path) -> None:
    _, config, _ = run
    scene = CachedTrainConfig(**{**vars(config), "scene_views": 2})
    split = LiteSplit(build_backbone("efficientnet_lite0", input_size=64).eval(), config.train_from)
    messages: list[str] = []
    plain = domain_features(split, domains[0], config, log=messages.append)
    assert messages == []  # the run cached these
    joined = domain_features(split, domains[0], scene, log=messages.append)
    assert joined.train.shape == (plain.train.shape[0], config.views + 2, *plain.train.shape[2:])
    assert np.array_equal(joined.train[:, : config.views], plain.train)
    assert len(messages) == 1 and "2 scene views" in messages[0]
    assert len(list(Path(config.cache).glob("*-scene2.npz"))) == 1
    again = domain_features(split, domains[0], scene, log=messages.append)
    assert len(messages) == 1 and np.array_equal(again.train, joined.train)  # read back, not recomputed


def test_a_damaged_feature_cache_is_said_removed_and_made_again(run, domains: list[str], tmp_path: Path) -> None:
    import shutil

    _, config, _ = run
    cache = tmp_path / "features"
    shutil.copytree(config.cache, cache)
    scene = CachedTrainConfig(**{**vars(config), "scene_views": 2, "cache": str(cache)})
    split = LiteSplit(build_backbone("efficientnet_lite0", input_size=64).eval(), config.train_from)
    good = domain_features(split, domains[0], scene, log=lambda _: None)
    name = Path(domains[0]).name
    files = sorted(cache.glob(f"{name}-*.npz"))
    assert len(files) == 2  # the views' and the scene views'
    for f in files:
        f.write_bytes(f.read_bytes()[:100])  # cut short
    messages: list[str] = []
    again = domain_features(split, domains[0], scene, log=messages.append)
    assert sum("cannot be read" in m for m in messages) == 2
    assert sum("cached trunk features" in m for m in messages) == 2
    assert np.allclose(again.train.astype(np.float32), good.train.astype(np.float32), atol=1e-3)
    assert np.allclose(again.val.astype(np.float32), good.val.astype(np.float32), atol=1e-3)
    messages.clear()
    domain_features(split, domains[0], scene, log=messages.append)
    assert messages == []  # made again: read back from now on


def test_split_trunk_then_tail_is_the_backbone() -> None:
    backbone = build_backbone("efficientnet_lite0", input_size=64).eval()
    split = LiteSplit(backbone, 11)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8))
    with torch.inference_mode():
        assert torch.allclose(split.tail(split.trunk(x)), backbone(x), atol=1e-5)
    assert all(not p.requires_grad for p in split.trunk_parameters())
    with pytest.raises(ConfigError, match="train_from"):
        LiteSplit(backbone, 0)


def test_training_logs_validation_and_writes_a_delta_checkpoint(run) -> None:
    out, _, messages = run
    assert {"best.pt", "last.pt", "config.yaml", "log.jsonl"} <= {p.name for p in out.iterdir()}
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [20, 40]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_mean"] <= 1 for r in rows)
    assert any("cached trunk features of alpha" in m for m in messages)
    doc = read_checkpoint(out / "last.pt")
    assert doc["state_dict_base"] == "imagenet-wheel"
    keys = set(doc["state_dict"])
    assert "log_temperature" in keys
    assert all(k == "log_temperature" or k.startswith(("backbone.net._blocks.15.", "backbone.net._conv_head.",
                                                        "backbone.net._bn1.")) for k in keys)
    assert doc["state_dict"]["backbone.net._conv_head.weight"].dtype == torch.float16


def test_delta_loads_onto_the_wheel_and_changed_only_the_tail(run) -> None:
    out, _, _ = run
    method, doc = load_checkpoint(out / "last.pt")
    imagenet = build_backbone("efficientnet_lite0", input_size=64)
    trained_sd, base_sd = method.backbone.state_dict(), imagenet.state_dict()
    frozen = "net._blocks.3._depthwise_conv.weight"
    assert torch.equal(trained_sd[frozen], base_sd[frozen])
    head = "net._conv_head.weight"
    assert not torch.equal(trained_sd[head], base_sd[head])  # training moved the tail
    stored = doc["state_dict"]["backbone." + head]
    assert torch.equal(trained_sd[head], stored.float())  # what is stored is what is loaded
    assert method.temperature() == pytest.approx(float(doc["state_dict"]["log_temperature"].exp()))


def test_second_run_reads_the_feature_cache_and_no_episode_list_lands_in_the_data(run, domains: list[str],
                                                                                   tmp_path: Path) -> None:
    _, config, _ = run
    messages: list[str] = []
    again = CachedTrainConfig(**{**vars(config), "out": str(tmp_path / "again"), "episodes": 5, "val_every": 5})
    train_cached(again, log=messages.append)
    assert not any("cached trunk features" in m for m in messages)
    for d in domains:
        assert not (Path(d) / "episodes").exists()
    with pytest.raises(ConfigError, match="already holds"):
        train_cached(again, log=messages.append)


def test_delta_checkpoint_exports_with_parity(run, domains: list[str], tmp_path: Path) -> None:
    from edgefs.export import export_bundle

    out, _, _ = run
    bundle = export_bundle(out / "best.pt", tmp_path / "colour.edgefs", data=domains[0], parity_images=8,
                           log=lambda _: None)
    assert bundle.manifest.input_size[0] == 64


def test_cli_and_library_refuse_what_no_run_can_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train-cached", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="EfficientNet-Lite"):
        train_cached(CachedTrainConfig(data=[str(tmp_path)], backbone="conv4"))
    with pytest.raises(ConfigError, match="no training data"):
        train_cached(CachedTrainConfig())
    with pytest.raises(ConfigError, match="scene_views must be a whole number >= 0"):
        train_cached(CachedTrainConfig(data=[str(tmp_path)], scene_views=-1))
    with pytest.raises(SystemExit) as exit_info:
        main(["train-cached", "--data", str(tmp_path), "--scene-views", "-1"])
    assert exit_info.value.code == 2
    assert "--scene-views: must be >= 0, got -1" in capsys.readouterr().err


def test_power_and_centring_are_trained_saved_and_exported(run, domains: list[str], tmp_path: Path) -> None:
    from edgefs.export import export_bundle

    from edgefs.heads import HeadSpec
    from edgefs.train.cached import LiteSplit, train_center
    from edgefs.train.cached_features import DomainFeatures, domain_features

    _, config, _ = run
    centred = CachedTrainConfig(**{**vars(config), "out": str(tmp_path / "centred"), "episodes": 10, "val_every": 5,
                                   "power": 0.5, "centered": True})
    train_cached(centred, log=lambda _: None)
    method, doc = load_checkpoint(tmp_path / "centred" / "best.pt")
    assert method.centered and method.backbone.power == 0.5
    assert doc["backbone"]["spec"]["options"]["power"] == 0.5 and doc["method"]["options"]["centered"] is True
    # the saved centre is the mean embedding of the training domains' clean train images under the tail (the
    # tail is saved as float16 and the centre was taken with its float32 weights: agreement to ~0.3%)
    split = LiteSplit(method.backbone, centred.train_from)
    feats: list[DomainFeatures] = [domain_features(split, d, centred, log=lambda _: None) for d in domains]
    np.testing.assert_allclose(method.center.numpy(), train_center(split, feats), rtol=1e-2, atol=5e-3)
    assert float(method.center.norm()) > 0
    bundle = tmp_path / "centred.edgefs"
    export_bundle(tmp_path / "centred" / "best.pt", bundle, data=domains[0], parity_images=8, log=lambda _: None)
    spec = HeadSpec.load(bundle / "head")
    np.testing.assert_allclose(spec.arrays["center"], method.center.numpy(), rtol=1e-6)
    with pytest.raises(ConfigError, match="power must be"):
        train_cached(CachedTrainConfig(**{**vars(centred), "power": 2.0}), overwrite=True, log=lambda _: None)


def test_weight_space_ensemble_mixes_the_best_tail_with_imagenet(run, tmp_path: Path) -> None:
    _, config, _ = run
    messages: list[str] = []
    base = {**vars(config), "episodes": 10, "val_every": 5, "power": 0.5, "centered": True}
    train_cached(CachedTrainConfig(**{**base, "out": str(tmp_path / "a0"), "wise_alpha": 0.0}), log=messages.append)
    assert any("weight-space ensemble 1 x ImageNet + 0 x best tail" in m for m in messages)
    imagenet = build_backbone("efficientnet_lite0", input_size=64).state_dict()
    doc = read_checkpoint(tmp_path / "a0" / "best.pt")
    assert doc["wise_alpha"] == 0.0
    head = "net._conv_head.weight"
    # alpha 0 gives back the ImageNet tail (stored as float16); last.pt keeps the trained one
    assert torch.equal(doc["state_dict"]["backbone." + head], imagenet[head].half())
    assert not torch.equal(read_checkpoint(tmp_path / "a0" / "last.pt")["state_dict"]["backbone." + head],
                           imagenet[head].half())
    train_cached(CachedTrainConfig(**{**base, "out": str(tmp_path / "a1"), "wise_alpha": 1.0}), log=lambda _: None)
    assert "wise_alpha" not in read_checkpoint(tmp_path / "a1" / "best.pt")
    with pytest.raises(ConfigError, match="wise_alpha must be"):
        train_cached(CachedTrainConfig(**{**base, "out": str(tmp_path / "bad"), "wise_alpha": 1.5}),
                     log=lambda _: None)


def test_a_run_that_makes_its_episodes_says_so_and_records_it(run) -> None:
    out, config, messages = run
    assert messages[-1].startswith(f"episode budget reached: {config.episodes} episodes in ")
    assert messages[-1].endswith("(no time cap); the learning rate annealed over episodes")
    for name in ("best.pt", "last.pt"):  # best.pt as saved during training (wise_alpha 1), then given the record
        budget = read_checkpoint(out / name)["budget"]
        assert budget["ended_by"] == "episodes" and budget["as_recipe"], (name, budget)
        assert budget["episodes_done"] == budget["episodes_planned"] == config.episodes
        assert budget["lr_followed_time_from_episode"] is None


def test_a_run_the_time_cap_stops_says_its_model_is_not_the_configs(run, tmp_path: Path) -> None:
    _, config, _ = run
    messages: list[str] = []
    capped = CachedTrainConfig(**{**vars(config), "out": str(tmp_path / "capped"), "time_budget_min": 1e-4,
                                  "wise_alpha": 0.5})  # a 6 ms cap: the run stops after an episode or a few
    train_cached(capped, log=messages.append)
    [stop] = [m for m in messages if m.startswith("time cap of ")]
    found = re.fullmatch(rf"time cap of 0.0001 min reached at episode (\d+) of {config.episodes}", stop)
    assert found, stop
    n = int(found.group(1))
    assert n < config.episodes
    assert messages[-1] == (
        f"WARNING: stopped by the time cap of 0.0001 min at episode {n} of {config.episodes}: this model differs "
        "from the recipe's (the config's episode count was not reached on this CPU); raise time_budget_min "
        "(--time-budget), or set it to 0 for no cap, to train the recipe's model")
    for name in ("best.pt", "last.pt"):
        budget = read_checkpoint(tmp_path / "capped" / name)["budget"]
        assert budget["ended_by"] == "time cap" and not budget["as_recipe"], (name, budget)
        assert (budget["episodes_done"], budget["episodes_planned"], budget["time_cap_min"]) == (n, config.episodes,
                                                                                                  1e-4)
        assert budget["note"] == messages[-1].removeprefix("WARNING: ")
