"""Continual-learning heads: DEN grows, splits and keeps old output rows; progressive columns never change
earlier domains; both go through the store, `edgefs enroll` and `edgefs run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgefs.cli import main
from edgefs.errors import EdgefsError
from edgefs.heads import Head, HeadSpec
from edgefs.heads.den import DENHead
from edgefs.heads.progressive import ProgressiveHead
from edgefs.runtime.bundle import read_bundle
from edgefs.store import ClassStore

D = 32


def clusters(seed: int, classes: int, shots: int, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(classes), shots)
    x = (centres[y] + spread * rng.normal(size=(len(y), D)) / np.sqrt(D)).astype(np.float32)
    return centres, x, y


# ---- DEN ------------------------------------------------------------------------------------
def test_den_expands_when_the_new_loss_stays_high_and_keeps_old_rows() -> None:
    _, x, y = clusters(0, 6, 5)
    head = DENHead(D, hidden=8, expand=4, max_hidden=64, loss_threshold=0.0, drift=10.0)
    head.add_classes({f"c{c}": x[y == c] for c in range(3)})
    assert head.units >= 8 and head.last_update["expanded"] == 4
    w2_old, b2_old = head.w2.copy(), head.b2.copy()
    units_before = head.units
    head.add_classes({f"c{c}": x[y == c] for c in range(3, 6)})
    # A loss threshold of 0 always expands; pruning may drop some of the new units again.
    assert head.last_update["expanded"] == 4 and head.units == units_before + 4 - head.last_update["pruned"]
    assert head.units > units_before
    # Earlier classes' output rows never change; their weights to the new units are zero.
    assert np.array_equal(head.w2[:3, :units_before], w2_old) and np.array_equal(head.b2[:3], b2_old)
    assert not head.w2[:3, units_before:].any()
    assert (head.born[units_before:] == head.updates).all()


def test_den_splits_drifting_units_and_restores_their_old_weights() -> None:
    _, x, y = clusters(1, 6, 5)
    head = DENHead(D, hidden=16, expand=0, loss_threshold=0.0, drift=0.0, select=0.5)
    head.add_classes({f"c{c}": x[y == c] for c in range(3)})
    w1_before, b1_before = head.w1.copy(), head.b1.copy()
    head.add_class("c3", x[y == 3])
    split = head.last_update["split"]
    assert split > 0 and head.units == 16 + split
    # Every old unit has its old incoming weights back (drift 0: each retrained unit was split).
    assert np.array_equal(head.w1[:16], w1_before) and np.array_equal(head.b1[:16], b1_before)
    # The copies serve the new class only.
    assert not head.w2[:3, 16:].any() and head.w2[3, 16:].any()


def test_den_stops_growing_at_max_hidden_and_classifies() -> None:
    centres, x, y = clusters(2, 8, 5, spread=0.3)
    head = DENHead(D, hidden=8, expand=8, max_hidden=12, loss_threshold=0.0, drift=0.0)
    for c in range(8):
        head.add_class(f"c{c}", x[y == c])
        assert head.units <= 12
    q = centres + 0.3 * np.random.default_rng(3).normal(size=centres.shape).astype(np.float32) / np.sqrt(D)
    assert (head.classify(q, k=1).top_idx[:, 0] == np.arange(8)).mean() >= 0.75


def test_den_is_deterministic_and_its_state_round_trips() -> None:
    _, x, y = clusters(4, 5, 4)
    a, b = DENHead(D, seed=3), DENHead(D, seed=3)
    for h in (a, b):
        for c in range(5):
            h.add_class(f"c{c}", x[y == c])
    q = np.random.default_rng(5).normal(size=(6, D)).astype(np.float32)
    assert np.array_equal(a.scores(q), b.scores(q))
    arrays, params = a.state()
    back = Head.from_spec(HeadSpec("den", {"seed": 3}), D)
    back.load_state(arrays, params)
    assert np.array_equal(back.scores(q), a.scores(q)) and back.units == a.units
    arrays["w2"] = arrays["w2"][:, :-1]
    with pytest.raises(EdgefsError, match="rebuild"):
        DENHead(D).load_state(arrays, params)


def test_den_refuses_bad_settings() -> None:
    with pytest.raises(EdgefsError, match="max_hidden"):
        DENHead(D, hidden=10, max_hidden=5)
    with pytest.raises(EdgefsError, match="select"):
        DENHead(D, select=0.0)


# ---- progressive columns -------------------------------------------------------------------
def test_progressive_new_domain_leaves_earlier_columns_bitwise_unchanged() -> None:
    _, x, y = clusters(6, 9, 5)
    head = ProgressiveHead(D, width=8)
    head.add_classes({f"a/{c}": x[y == c] for c in range(3)})
    col_w, col_b, out_w = head.col_w.copy(), head.col_b.copy(), head.out_w.copy()
    qa = x[y < 3]
    within_a = head.column_logits(qa)
    head.add_classes({f"b/{c}": x[y == c] for c in range(3, 6)})
    head.add_classes({f"c/{c}": x[y == c] for c in range(6, 9)})
    assert head.domains == ["a", "b", "c"] and head.col_w.shape == (3, 8, D)
    assert np.array_equal(head.col_w[0], col_w[0]) and np.array_equal(head.col_b[0], col_b[0])
    assert np.array_equal(head.out_w[:3], out_w)
    assert np.array_equal(head.column_logits(qa)[:, :3], within_a)  # domain a answers exactly as before
    # Later columns read the earlier ones.
    assert head.lateral[1, 0].any() and head.lateral[2, 1].any() and not head.lateral[0].any()
    # Each domain's shots are recognised within their domain and across all classes.
    within = head.column_logits(x)
    for k in range(3):
        rows = (y >= 3 * k) & (y < 3 * k + 3)
        assert (within[rows][:, 3 * k : 3 * k + 3].argmax(1) + 3 * k == y[rows]).mean() == 1.0
    assert (head.classify(x, k=1).top_idx[:, 0] == y).mean() >= 0.9


def test_progressive_enrolled_one_by_one_equals_rebuilt_from_samples() -> None:
    _, x, y = clusters(7, 6, 4)
    names = ["d1/x", "d1/y", "d2/x", "d2/y", "d1/z", "d3/x"]  # d1 grows after d2 exists: d2 is refitted
    inc = ProgressiveHead(D, width=8)
    for c, n in enumerate(names):
        inc.add_class(n, x[y == c][:2])
        inc.append(n, x[y == c][2:])
    joint = ProgressiveHead(D, width=8)
    joint.add_classes({n: x[y == c] for c, n in enumerate(names)})
    q = np.random.default_rng(8).normal(size=(5, D)).astype(np.float32)
    assert inc.domains == joint.domains == ["d1", "d2", "d3"]
    assert np.allclose(inc.scores(q), joint.scores(q), atol=1e-4)


def test_progressive_remove_drops_an_empty_domain_and_round_trips() -> None:
    _, x, y = clusters(9, 4, 4)
    head = ProgressiveHead(D, width=4, laterals=False)
    for c, n in enumerate(["a/0", "b/0", "b/1", "c/0"]):
        head.add_class(n, x[y == c])
    assert not head.lateral.any()  # separate heads: no lateral weights
    head.remove("a/0")
    assert head.domains == ["b", "c"] and head.col_w.shape[0] == 2
    arrays, params = head.state()
    back = ProgressiveHead(D, width=4, laterals=False)
    back.load_state(arrays, params)
    assert np.array_equal(back.scores(x), head.scores(x))
    assert head.domain_of("kitchen/mug/red") == "kitchen" and head.domain_of("mug") == ""


# ---- end to end: store, `edgefs enroll`, `edgefs run` ---------------------------------------------
@pytest.mark.parametrize("head_type", ["den", "progressive"])
def test_enroll_and_run_with_continual_heads(head_type: str, conv4_bundle: Path, glyph_data: Path,
                                             tmp_path: Path) -> None:
    bundle = tmp_path / "model.edgefs"
    shutil.copytree(conv4_bundle, bundle)
    store = tmp_path / "classes.db"
    scripts = sorted(p for p in (glyph_data / "test").iterdir() if p.is_dir())[:2]
    dirs = [
        d for s in scripts for d in sorted(p for p in s.iterdir() if len(list(p.glob("*.png"))) >= 4)[:2]]
    labels = [f"{d.parent.name}/{d.name}" for d in dirs]  # script/char: a progressive column per script
    assert len(labels) == 4 and len({d.parent for d in dirs}) == 2
    for label, d in zip(labels, dirs, strict=True):
        rc = main(["enroll", str(bundle), "--store", str(store), "--label", label, "--images", str(d),
                   "--head", head_type, "--backend", "onnxruntime", "--threads", "1"])
        assert rc == 0
    with ClassStore.open(store, read_bundle(bundle), create=False) as s:
        saved = s.load_head_state()
        assert saved.current and saved.params["head_type"] == head_type and saved.params["classes"] == labels
    events = tmp_path / "events.jsonl"
    rc = main(["run", str(bundle), "--store", str(store), "--source", str(dirs[0]), "--head", head_type,
               "--jsonl", str(events), "--no-display", "--threads", "1", "--backend", "onnxruntime"])
    assert rc == 0
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    frames = [r for r in rows if "raw_label" in r]
    assert len(frames) == len(list(dirs[0].glob("*.png")))
    # The enrolled shots of the first class come back as that class.
    assert np.mean([r["raw_label"] == labels[0] for r in frames]) >= 0.75
    if head_type == "progressive":
        with ClassStore.open(store, read_bundle(bundle), create=False) as s:
            saved = s.load_head_state()
            assert saved.arrays["col_w"].shape[0] == 2  # one column per script
