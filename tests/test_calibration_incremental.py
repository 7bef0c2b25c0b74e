"""The unknown threshold kept up to date per change equals the full leave-one-out recomputation.

Random class sets (hypothesis): classes of 1-6 shots added, appended to and removed in random
order; after every change :class:`edgefs.heads.calibration.LooCalibrator` gives the threshold
:func:`edgefs.heads.openset.calibrate_threshold` computes from every shot, within 1e-5 (float32
rounding), on every head kind that calibrates differently (raw shot sums, unit shot sums, a
centre feature). Beyond its capacity it keeps a uniform sample: the threshold then lies within
the full scores' quantiles at 3 standard errors of the sampled rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefs.heads import Head, HeadSpec, calibrate_threshold
from edgefs.heads.calibration import LooCalibrator
from edgefs.heads.openset import loo_scores

DIM = 12


def make_head(kind: str) -> Head:
    if kind == "centred imprint":
        head = Head.from_spec(HeadSpec("imprint"), DIM)
        head.set_center(np.linspace(-0.5, 0.5, DIM).astype(np.float32))
        return head
    return Head.from_spec(HeadSpec(kind, {"distance": "cosine"} if kind == "prototype" else {}), DIM)


def full_threshold(head: Head, shots: dict[str, np.ndarray]) -> float:
    x = np.concatenate([shots[n] for n in head.classes])
    y = np.concatenate([np.full(len(shots[n]), i) for i, n in enumerate(head.classes)])
    return calibrate_threshold(head.transform(x), y, normalize=head.normalize_shots)


ops = st.lists(st.tuples(st.sampled_from(["add", "add", "add", "append", "remove"]), st.integers(1, 6),
                         st.integers(0, 10**6)), min_size=3, max_size=25)


@pytest.mark.parametrize("kind", ["prototype", "imprint", "centred imprint"])
@settings(max_examples=25, deadline=None)
@given(steps=ops)
def test_incremental_threshold_equals_the_full_recomputation(kind: str, steps: list[tuple[str, int, int]]) -> None:
    head, calib = make_head(kind), LooCalibrator(capacity=10_000)
    shots: dict[str, np.ndarray] = {}
    made = 0
    for op, k, seed in steps:
        rng = np.random.default_rng(seed)
        if op == "add" or not head.classes:
            name = f"c{made}"
            made += 1
            centre = rng.normal(size=DIM)
            emb = (centre + 0.7 * rng.normal(size=(k, DIM))).astype(np.float32)
            head.add_class(name, emb)
            shots[name] = emb
            calib.added(head, head.index(name), emb)
        elif op == "append":
            name = head.classes[seed % len(head.classes)]
            emb = (shots[name].mean(0) + 0.7 * rng.normal(size=(k, DIM))).astype(np.float32)
            head.append(name, emb)
            shots[name] = np.concatenate([shots[name], emb])
            calib.appended(head, head.index(name), emb)
        else:
            name = head.classes[seed % len(head.classes)]
            idx = head.index(name)
            head.remove(name)
            calib.removed(head, idx, len(shots.pop(name)))
        if not head.classes:
            continue
        try:
            want = full_threshold(head, shots)
        except Exception:  # one class with one shot: neither can calibrate
            with pytest.raises(Exception):  # noqa: B017
                calib.threshold(head)
            continue
        assert abs(calib.threshold(head) - want) < 1e-5, (op, len(head.classes))


def test_beyond_capacity_the_sampled_threshold_stays_within_the_stated_band() -> None:
    rng = np.random.default_rng(7)
    head, calib = make_head("imprint"), LooCalibrator(capacity=256, seed=3)
    shots = {}
    for i in range(300):  # 1,500 shots, 256 kept
        emb = (rng.normal(size=DIM) + 0.7 * rng.normal(size=(5, DIM))).astype(np.float32)
        head.add_class(f"c{i}", emb)
        shots[f"c{i}"] = emb
        calib.added(head, i, emb)
    assert len(calib.ids) == 256
    x = np.concatenate(list(shots.values()))
    y = np.repeat(np.arange(300), 5)
    known, _ = loo_scores(x, y)
    sigma = np.sqrt(0.05 * 0.95 / 256)
    low, high = np.quantile(known, [0.05 - 3 * sigma, 0.05 + 3 * sigma])
    t = calib.threshold(head)
    assert low <= t <= high, (low, t, high)
    assert abs(t - calibrate_threshold(x, y)) < high - low


def test_a_failed_commit_leaves_the_threshold_of_the_last_commit(tmp_path: Path) -> None:
    """The calibration sample is updated inside the transaction; a failed write must not leave its change."""
    from edgefs.runtime.bundle import Bundle, Manifest
    from edgefs.service.classifier import Classifier
    from edgefs.store import ClassStore

    manifest = Manifest(backbone={}, input={"height": 8, "width": 8}, output={"dim": DIM},
                        head={"type": "imprint"}, fingerprint="cc" * 32)
    bundle = Bundle(tmp_path, manifest, HeadSpec("imprint"))
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 4, size=(4, 2, 2, 3)) * 60).astype(np.uint8).repeat(4, 1).repeat(4, 2)
    shots = {}
    with Classifier(bundle, None, ClassStore.open(tmp_path / "s.db", bundle), log=lambda _: None) as clf:
        for i in range(4):
            shots[f"c{i}"] = (rng.normal(size=DIM) + 0.6 * rng.normal(size=(4, DIM))).astype(np.float32)
            clf.enroll_embedded(f"c{i}", images, shots[f"c{i}"])
        before = clf.threshold
        bad = (rng.normal(size=DIM) + 0.6 * rng.normal(size=(4, DIM))).astype(np.float32)
        with pytest.raises(Exception, match="thumbnail"):
            clf._commit(lambda head: head.add_class("bad", bad),
                        lambda tx: tx.add_class("bad", bad, [b"not a jpeg"] * 4),
                        lambda calib, head, tx: calib.added(head, len(head.classes) - 1, bad), ["bad"])
        assert clf.threshold == before and clf.classes == ["c0", "c1", "c2", "c3"]
        shots["c4"] = (rng.normal(size=DIM) + 0.6 * rng.normal(size=(4, DIM))).astype(np.float32)
        clf.enroll_embedded("c4", images, shots["c4"])
        x = np.concatenate(list(shots.values()))
        y = np.repeat(np.arange(5), 4)
        assert abs(clf.threshold - calibrate_threshold(x, y)) < 1e-5
