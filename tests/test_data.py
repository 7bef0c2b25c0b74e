"""Readers, episodic sampling, fixed episode lists and augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgefs.data.augment import Augment, AugmentConfig, expand_rotations
from edgefs.data.episodes import EpisodeList, EpisodeSampler, Protocol, fixed_episodes
from edgefs.data.images import load_fashion_mnist, load_image_folder, open_split
from edgefs.errors import DataError


def test_image_folder_reads_nested_classes_with_groups(stroke_data: Path) -> None:
    data = load_image_folder(stroke_data / "train")
    assert data.images.shape == (30 * 6, 28, 28, 1) and data.images.dtype == np.uint8
    assert data.num_classes == 30
    assert data.class_names[0] == "script0/char000"
    assert sorted(set(data.class_groups)) == ["script0", "script1", "script2"]
    assert (data.class_counts() == 6).all()


def test_image_folder_rgb_and_resize(stroke_data: Path) -> None:
    data = load_image_folder(stroke_data / "val", channels=3, size=40)
    assert data.images.shape == (12 * 6, 40, 40, 3)
    # Grey source read as RGB: all three channels equal.
    assert (data.images[..., 0] == data.images[..., 2]).all()


def test_unreadable_image_is_skipped_with_warning_or_fails_strict(stroke_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(stroke_data / "test", root)
    bad = root / "script0" / "char000" / "9.png"
    bad.write_bytes(b"not a png at all")
    warnings: list[str] = []
    data = load_image_folder(root, warn=warnings.append)
    assert len(data.images) == 12 * 6
    assert len(warnings) == 1 and str(bad) in warnings[0]
    with pytest.raises(DataError, match=r"9\.png"):
        load_image_folder(root, strict=True)


def test_missing_and_empty_folders_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="no 'val' split"):
        (tmp_path / "splits" / "train" / "c").mkdir(parents=True)
        open_split(tmp_path / "splits", "val", 1, 28)


def test_mixed_sizes_need_a_resize(tmp_path: Path) -> None:
    import cv2

    for name, side in (("a", 28), ("b", 32)):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "0.png"), np.zeros((side, side), np.uint8))
    with pytest.raises(DataError, match="pass a size"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=28).images.shape == (2, 28, 28, 1)


def test_fashion_mnist_idx_reader(tmp_path: Path) -> None:
    import gzip

    imgs = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes(16) + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(8) + bytes([7, 0, 9]))
    data = load_fashion_mnist(tmp_path)
    assert data.images.shape == (3, 28, 28, 1)
    assert (data.images[1, :, :, 0] == imgs[1]).all()
    assert data.labels.tolist() == [7, 0, 9]
    assert data.class_names[9] == "ankle-boot"
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "missing")


def test_sampler_is_seeded_and_episodes_are_well_formed(stroke_data: Path) -> None:
    data = load_image_folder(stroke_data / "train")
    protocol = Protocol(5, 2, 3)
    a = EpisodeSampler(data, protocol, seed=3).sample()
    b = EpisodeSampler(data, protocol, seed=3).sample()
    assert (a.support == b.support).all() and (a.query == b.query).all()
    assert len(set(a.classes.tolist())) == 5
    assert len(a.support) == 10 and len(a.query) == 15
    # Support and query images are distinct and belong to the episode's classes, class-major.
    assert not set(a.support.tolist()) & set(a.query.tolist())
    assert (data.labels[a.support] == np.repeat(a.classes, 2)).all()
    assert (data.labels[a.query] == np.repeat(a.classes, 3)).all()
    assert a.support_labels().tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_within_group_episodes_stay_in_one_group(stroke_data: Path) -> None:
    data = load_image_folder(stroke_data / "train")
    sampler = EpisodeSampler(data, Protocol(5, 1, 1, within_group=True), seed=0)
    for _ in range(20):
        ep = sampler.sample()
        assert len({data.class_groups[c] for c in ep.classes}) == 1


def test_classes_too_small_are_left_out_with_a_message(stroke_data: Path) -> None:
    data = load_image_folder(stroke_data / "train")
    messages: list[str] = []
    with pytest.raises(DataError, match="at least 7 images"):
        EpisodeSampler(data, Protocol(5, 2, 5), log=messages.append)
    assert "30 of 30 classes" in messages[0]
    # With repeats allowed (training with augmentation) small classes are usable.
    ep = EpisodeSampler(data, Protocol(5, 2, 5), allow_repeats=True).sample()
    assert len(ep.query) == 25


def test_fixed_episode_list_is_saved_reused_and_tied_to_its_data(stroke_data: Path, tmp_path: Path) -> None:
    data = load_image_folder(stroke_data / "test")
    path = tmp_path / "ep.json"
    first = fixed_episodes(data, Protocol(5, 1, 2), 10, 0, path)
    again = fixed_episodes(data, Protocol(5, 1, 2), 10, 0, path)
    loaded = EpisodeList.load(path)
    for x, y, z in zip(first.episodes, again.episodes, loaded.episodes, strict=True):
        assert x.query.tolist() == y.query.tolist() == z.query.tolist()
    other = load_image_folder(stroke_data / "val")
    other.class_names[0] = "renamed"
    with pytest.raises(DataError, match="different data"):
        fixed_episodes(other, Protocol(5, 1, 2), 10, 0, path)
    path.write_text("{truncated")
    with pytest.raises(DataError, match="delete it to redraw"):
        EpisodeList.load(path)


def test_protocol_parsing() -> None:
    assert Protocol.parse("20w5s", 1) == Protocol(20, 5, 1, False)
    assert Protocol.parse("5w1s-within", 2) == Protocol(5, 1, 2, True)
    assert Protocol.parse("5w1s-within", 2).name == "5w1s-within"
    with pytest.raises(DataError):
        Protocol.parse("five-way", 1)


def test_augment_changes_images_reproducibly(stroke_data: Path) -> None:
    images = load_image_folder(stroke_data / "test").images[:16]
    a = Augment(AugmentConfig(), seed=1)(images)
    b = Augment(AugmentConfig(), seed=1)(images)
    assert a.shape == images.shape and a.dtype == np.uint8
    assert (a == b).all()
    assert np.abs(a.astype(int) - images).mean() > 1.0
    off = AugmentConfig(rotate=0, scale=0, shear=0, shift=0, stroke=0, elastic=0, noise=0)
    assert (Augment(off)(images) == images).all()


def test_rotations_make_new_classes(stroke_data: Path) -> None:
    data = load_image_folder(stroke_data / "test")
    rot = expand_rotations(data, 4)
    assert rot.num_classes == 4 * data.num_classes
    c = 3
    first = np.flatnonzero(rot.labels == c + data.num_classes)[0]
    src = np.flatnonzero(data.labels == c)[0]
    assert (rot.images[first] == np.rot90(data.images[src], 1, axes=(0, 1))).all()
