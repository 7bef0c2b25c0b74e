"""Device heads: NumPy references against brute force, incremental enrollment, open-set."""

from __future__ import annotations

import numpy as np
import pytest

from edgefs.errors import EdgefsError
from edgefs.heads import HEADS, Head, HeadSpec
from edgefs.heads.openset import auroc, calibrate_threshold, loo_scores
from edgefs.heads.reference import accumulate_normalize, classify

D = 32


def clusters(rng: np.random.Generator, classes: int, shots: int, dim: int = D,
             spread: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit centres and noisy shots around them: (centres (C,D), x (C*shots,D), y (C*shots,))."""
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(classes), shots).astype(np.int32)
    x = (centres[y] + spread * rng.normal(size=(len(y), dim)) / np.sqrt(dim)).astype(np.float32)
    return centres, x, y


def make(name: str, dim: int = D) -> Head:
    return HEADS.get(name).from_spec(HeadSpec(name), dim)  # type: ignore[return-value]


# ---- reference functions --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_accumulate_normalize_matches_brute_force_and_is_incremental(dtype: type) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, D)).astype(dtype)
    y = np.array([0, 1, 2, 0, 1, 0, 2, 2, 0, 1, 1, 0], np.int32)
    c = 4  # class 3 has no shots
    sums, counts = np.zeros((c, D), np.float32), np.zeros(c, np.int32)
    joint = accumulate_normalize(x, y, sums, counts)
    assert joint.dtype == np.float32 and counts.tolist() == [5, 4, 3, 0]
    for k in range(3):
        mean = x[y == k].astype(np.float64).mean(0)
        assert np.allclose(joint[k], mean / np.linalg.norm(mean), atol=1e-6)
    assert (joint[3] == 0).all()
    sums2, counts2 = np.zeros((c, D), np.float32), np.zeros(c, np.int32)
    for part in (slice(0, 5), slice(5, 6), slice(6, 12)):
        inc = accumulate_normalize(x[part], y[part], sums2, counts2)
    assert np.abs(inc - joint).max() < 1e-6 and (counts2 == counts).all()


@pytest.mark.parametrize("k", [1, 3, 9])
def test_classify_matches_brute_force(k: int) -> None:
    rng = np.random.default_rng(1)
    q = rng.normal(size=(6, D)).astype(np.float32)
    w = rng.normal(size=(5, D)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    w[4] = w[1]  # a tie: the lower index must come first
    top_idx, top_prob, best_sim, unknown = classify(q, w, 7.0, k, 0.1)
    kk = min(k, 5)
    assert top_idx.shape == (6, kk) and top_idx.dtype == np.int32 and top_prob.dtype == np.float32
    for i in range(6):
        cos = [float(q[i] @ w[c] / np.linalg.norm(q[i])) for c in range(5)]
        e = np.exp(7.0 * np.array(cos) - 7.0 * max(cos))
        p = e / e.sum()
        order = sorted(range(5), key=lambda c: (-round(p[c], 6), c))[:kk]
        assert top_idx[i].tolist() == order
        assert np.allclose(top_prob[i], p[order], atol=1e-6)
        assert abs(best_sim[i] - max(cos)) < 1e-6 and unknown[i] == (max(cos) < 0.1)


def test_classify_accepts_float16_queries() -> None:
    rng = np.random.default_rng(2)
    w = np.eye(3, D, dtype=np.float32)
    q = rng.normal(size=(4, D)).astype(np.float16)
    a = classify(q, w, 10.0, 2, 0.0)
    b = classify(q.astype(np.float32), w, 10.0, 2, 0.0)
    assert (a[0] == b[0]).all() and np.allclose(a[1], b[1], atol=1e-6)


# ---- heads ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HEADS.names())
def test_every_head_classifies_separated_clusters(name: str) -> None:
    rng = np.random.default_rng(3)
    centres, x, y = clusters(rng, 6, 5)
    head = make(name)
    for c in range(6):
        head.add_class(f"c{c}", x[y == c])
    _, q, qy = clusters(np.random.default_rng(4), 6, 4)
    q = (centres[qy] + 0.25 * rng.normal(size=q.shape) / np.sqrt(D)).astype(np.float32)
    res = head.classify(q, k=3)
    assert res.top_idx.shape == (len(q), 3) and res.top_prob.shape == (len(q), 3)
    assert (res.top_idx[:, 0] == qy).mean() == 1.0
    assert res.labels == [f"c{c}" for c in qy]
    assert np.all(np.diff(res.top_prob, axis=1) <= 1e-7)
    assert head.scores(q).shape == (len(q), 6)


@pytest.mark.parametrize("name", ["prototype", "imprint"])
def test_incremental_enrollment_equals_joint(name: str) -> None:
    rng = np.random.default_rng(5)
    _, x, y = clusters(rng, 4, 6)
    joint, inc = make(name), make(name)
    for c in range(4):
        joint.add_class(f"c{c}", x[y == c])
    for c in (2, 0, 3, 1):  # other class order, shots arriving in pieces
        shots = x[y == c][::-1]
        inc.add_class(f"c{c}", shots[:1])
        inc.append(f"c{c}", shots[1:4])
        inc.append(f"c{c}", shots[4:])
    q = rng.normal(size=(10, D)).astype(np.float32)
    order = [inc.classes.index(f"c{c}") for c in range(4)]
    assert np.abs(inc.scores(q)[:, order] - joint.scores(q)).max() < 1e-5 * max(1.0, joint.temperature)
    assert np.abs(inc.prototypes[order] - joint.prototypes).max() < 1e-6


@pytest.mark.parametrize("name", HEADS.names())
def test_remove_and_rename_touch_one_class(name: str) -> None:
    rng = np.random.default_rng(6)
    _, x, y = clusters(rng, 4, 3)
    head = make(name)
    for c in range(4):
        head.add_class(f"c{c}", x[y == c])
    q = rng.normal(size=(5, D)).astype(np.float32)
    before = head.scores(q)
    arrays_before, _ = head.state()
    head.rename("c1", "one")
    assert head.classes == ["c0", "one", "c2", "c3"] and np.array_equal(head.scores(q), before)
    head.remove("one")
    assert head.classes == ["c0", "c2", "c3"]
    arrays_after, _ = head.state()
    for key in ("sums", "counts"):
        assert np.array_equal(arrays_after[key], np.delete(arrays_before[key], 1, axis=0))
    if name in ("prototype", "imprint", "finetune"):
        # Per-class logits of the other classes are unchanged.
        assert np.allclose(head.scores(q), np.delete(before, 1, axis=1), atol=1e-6)
    with pytest.raises(EdgefsError, match="no class"):
        head.remove("one")


@pytest.mark.parametrize("name", HEADS.names())
def test_state_round_trips(name: str) -> None:
    rng = np.random.default_rng(7)
    _, x, y = clusters(rng, 3, 4)
    head = make(name)
    for c in range(3):
        head.add_class(f"c{c}", x[y == c])
    head.threshold = 0.3
    arrays, params = head.state()
    back = make(name)
    back.load_state(arrays, params)
    q = rng.normal(size=(4, D)).astype(np.float32)
    assert back.classes == head.classes and back.threshold == 0.3
    assert np.array_equal(back.scores(q), head.scores(q))
    with pytest.raises(EdgefsError, match="dim"):
        make(name, D + 1).load_state(arrays, params)
    arrays["sums"] = arrays["sums"][:2]
    with pytest.raises(EdgefsError, match="rebuild"):
        make(name).load_state(arrays, params)


@pytest.mark.parametrize("name", HEADS.names())
def test_bad_inputs_say_what_to_do(name: str) -> None:
    head = make(name)
    good = np.ones((2, D), np.float32)
    with pytest.raises(EdgefsError, match="no classes"):
        head.classify(good)
    with pytest.raises(EdgefsError, match=r"expected \(K, 32\)"):
        head.add_class("a", np.ones((2, D + 1), np.float32))
    with pytest.raises(EdgefsError, match="empty"):
        head.add_class("a", np.zeros((0, D), np.float32))
    bad = good.copy()
    bad[1, 3] = np.nan
    with pytest.raises(EdgefsError, match="NaN"):
        head.add_class("a", bad)
    head.add_class("a", good)
    with pytest.raises(EdgefsError, match="already enrolled"):
        head.add_class("a", good)
    with pytest.raises(EdgefsError, match="inf"):
        head.classify(np.full((1, D), np.inf, np.float32))
    with pytest.raises(EdgefsError, match="taken"):
        head.add_class("b", good)
        head.rename("a", "b")


def test_prototype_head_keeps_both_distances_from_the_spec() -> None:
    rng = np.random.default_rng(8)
    _, x, y = clusters(rng, 3, 4)
    q = rng.normal(size=(5, D)).astype(np.float32)
    eu = Head.from_spec(HeadSpec("prototype", {"distance": "euclidean", "temperature": 1.0}), D)
    co = Head.from_spec(HeadSpec("prototype", {"distance": "cosine", "temperature": 12.5}), D)
    for c in range(3):
        eu.add_class(f"c{c}", x[y == c])
        co.add_class(f"c{c}", x[y == c])
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    assert np.allclose(eu.scores(q), -((q[:, None] - means[None]) ** 2).sum(-1), atol=1e-4)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (means / np.linalg.norm(means, axis=1)[:, None]).T
    assert np.allclose(co.scores(q), 12.5 * cos, atol=1e-4)
    with pytest.raises(EdgefsError, match="does not understand"):
        Head.from_spec(HeadSpec("prototype", {"metric": "l1"}), D)
    unknown = HeadSpec("prototype")
    unknown.head_type = "nearest-star"  # past HeadSpec's own check: the head registry refuses it too
    with pytest.raises(EdgefsError, match="unknown head"):
        Head.from_spec(unknown, D)


# ---- open set ---------------------------------------------------------------------------
def test_calibrated_threshold_keeps_target_tpr_and_rejects_far_unknowns() -> None:
    rng = np.random.default_rng(9)
    centres, x, y = clusters(rng, 20, 20, dim=64, spread=1.0)
    t = calibrate_threshold(x, y, target_tpr=0.9)
    # Fresh queries of the enrolled classes: about 90 % accepted.
    qy = np.repeat(np.arange(20), 50)
    q = (centres[qy] + rng.normal(size=(len(qy), 64)) / 8.0).astype(np.float32)
    head = make("imprint", 64)
    for c in range(20):
        head.add_class(f"c{c}", x[y == c])
    head.threshold = t
    known = head.classify(q)
    assert 0.85 <= 1.0 - known.unknown.mean() <= 0.95
    unknown_centres, _, _ = clusters(np.random.default_rng(10), 20, 1, dim=64)
    u = (unknown_centres[np.repeat(np.arange(20), 50)] + rng.normal(size=(1000, 64)) / 8.0).astype(np.float32)
    unk = head.classify(u)
    assert unk.unknown.mean() > 0.95
    assert auroc(known.best_sim, unk.best_sim) > 0.99
    assert calibrate_threshold(x, y, method="youden") <= 1.0


def test_one_shot_classes_give_negatives_only() -> None:
    rng = np.random.default_rng(11)
    _, x, y = clusters(rng, 5, 1)
    known, negative = loo_scores(x, y)
    assert known.size == 0 and negative.size == 5
    t = calibrate_threshold(x, y, target_tpr=0.8)
    assert (negative < t).mean() >= 0.8 - 1e-9
    with pytest.raises(EdgefsError, match="one class"):
        calibrate_threshold(x[:1], y[:1])
    with pytest.raises(EdgefsError, match="method"):
        calibrate_threshold(x, y, method="oracle")


def test_auroc_is_rank_based() -> None:
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([2.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=300), rng.normal(size=200) - 0.5
    brute = np.mean([(x > z) + 0.5 * (x == z) for x in a for z in b])
    assert abs(auroc(a, b) - brute) < 1e-12
    with pytest.raises(EdgefsError):
        auroc(np.array([]), b)
