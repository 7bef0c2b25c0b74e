"""finetune (plain loop) vs finetune_gram, loss decrease, and the fine-tuned head."""

from __future__ import annotations

import numpy as np
import pytest

from edgefs.errors import EdgefsError
from edgefs.heads import Head, HeadSpec
from edgefs.heads.finetune import FinetuneHead
from edgefs.heads.reference import finetune, finetune_gram, l2_normalize, softmax

# float32 iterates of the two forms differ by summation order only.
GRAM_TOL = 1e-4


def problem(classes: int, dim: int, shots: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(classes, dim)))
    y = np.repeat(np.arange(classes), shots).astype(np.int32)
    x = l2_normalize(centres[y] + 0.5 * rng.normal(size=(len(y), dim)).astype(np.float32) / np.sqrt(dim))
    w0 = (5.0 * l2_normalize(centres + 0.3 * rng.normal(size=centres.shape) / np.sqrt(dim))).astype(np.float32)
    b0 = (0.1 * rng.normal(size=classes)).astype(np.float32)
    return x, y, w0, b0, rng


def loss(x, y, w, b, w0, l2) -> float:
    p = softmax(x @ w.T + b)
    return float(-np.log(p[np.arange(len(y)), y]).mean() + 0.5 * l2 * ((w - w0) ** 2).sum())


@pytest.mark.parametrize("classes", [1, 5, 100])
@pytest.mark.parametrize("dim", [64, 512, 1280])
@pytest.mark.parametrize("shots", [1, 5, 20])
def test_gram_equals_plain_loop(classes: int, dim: int, shots: int) -> None:
    x, y, w0, b0, _ = problem(classes, dim, shots)
    args = (x, y, w0, b0, 0.5, 0.5, 10, 0.9, 0.05)
    w_plain, b_plain = finetune(*args)
    w_gram, b_gram = finetune_gram(*args)
    assert w_gram.dtype == np.float32 and b_gram.dtype == np.float32
    assert np.abs(w_gram - w_plain).max() < GRAM_TOL and np.abs(b_gram - b_plain).max() < GRAM_TOL


@pytest.mark.parametrize(("classes", "dim", "shots", "steps"), [(5, 64, 5, 40), (5, 512, 20, 10), (100, 64, 1, 10)])
def test_gram_with_per_parameter_lr_is_exact_without_penalty(classes: int, dim: int, shots: int, steps: int) -> None:
    x, y, w0, b0, rng = problem(classes, dim, shots)
    lr = rng.uniform(0.1, 1.0, size=(classes, dim)).astype(np.float32)
    w_plain, b_plain = finetune(x, y, w0, b0, lr, 0.3, steps, 0.8, 0.0)
    w_gram, b_gram = finetune_gram(x, y, w0, b0, lr, 0.3, steps, 0.8, 0.0)
    assert np.abs(w_gram - w_plain).max() < GRAM_TOL and np.abs(b_gram - b_plain).max() < GRAM_TOL
    # Per-parameter lr with a penalty leaves the span: gram falls back to the plain loop.
    w_plain, _ = finetune(x, y, w0, b0, lr, 0.3, steps, 0.8, 0.1)
    w_gram, _ = finetune_gram(x, y, w0, b0, lr, 0.3, steps, 0.8, 0.1)
    assert np.array_equal(w_plain, w_gram)


def test_finetune_loss_decreases_and_penalty_keeps_weights_close() -> None:
    x, y, w0, b0, _ = problem(10, 64, 5)
    start = loss(x, y, w0, b0, w0, 0.0)
    w, b = finetune_gram(x, y, w0, b0, 0.5, 0.5, 50, 0.9, 0.0)
    assert loss(x, y, w, b, w0, 0.0) < 0.5 * start
    w_pen, b_pen = finetune_gram(x, y, w0, b0, 0.5, 0.5, 50, 0.9, 1.0)
    assert loss(x, y, w_pen, b_pen, w0, 1.0) < start
    assert np.linalg.norm(w_pen - w0) < np.linalg.norm(w - w0)
    same, _ = finetune(x, y, w0, b0, 0.5, 0.5, 0, 0.9, 0.0)
    assert np.array_equal(same, w0)


def test_finetune_rejects_mismatched_shapes() -> None:
    x, y, w0, b0, _ = problem(3, 16, 2)
    with pytest.raises(EdgefsError, match="shapes"):
        finetune_gram(x, y, w0[:, :8], b0, 0.5, 0.5, 5, 0.9, 0.0)
    with pytest.raises(EdgefsError, match="labels"):
        finetune(x, y + 5, w0, b0, 0.5, 0.5, 5, 0.9, 0.0)


@pytest.mark.parametrize("penalty", ["l2", "ewc", "none"])
def test_finetune_head_learns_and_keeps_old_classes(penalty: str) -> None:
    x, y, _, _, _ = problem(6, 32, 5, seed=3)
    head = FinetuneHead(32, penalty=penalty, steps=30)
    for c in range(6):
        head.add_class(f"c{c}", x[y == c])
    res = head.classify(x, k=2)
    assert (res.top_idx[:, 0] == y).mean() == 1.0
    before = head.weight.copy()
    head.append("c2", x[y == 2][:2])
    assert head.weight.shape == before.shape
    if penalty != "none":
        assert np.abs(head.weight - before).max() < 5.0


def test_finetune_head_uses_meta_learned_spec_arrays() -> None:
    x, y, _, _, rng = problem(3, 16, 4, seed=4)
    w_init = rng.normal(size=16).astype(np.float32)
    spec = HeadSpec("finetune", {"steps": 0, "l2": 0.0},
                    {"w_init": w_init, "b_init": np.array([0.5], np.float32),
                     "lr": np.full(16, 0.2, np.float32)})
    head = Head.from_spec(spec, 16)
    head.add_class("a", x[y == 0])
    assert isinstance(head, FinetuneHead)
    assert np.array_equal(head.weight[0], w_init) and head.bias[0] == np.float32(0.5)
    head.steps = 20
    head.add_class("b", x[y == 1])
    arrays, params = head.state()
    back = FinetuneHead(16)
    back.load_state(arrays, params)
    assert back.steps == 20 and np.array_equal(arrays["lr_param"], np.full(16, 0.2, np.float32))
    with pytest.raises(EdgefsError, match="w_init"):
        Head.from_spec(HeadSpec("finetune", {}, {"w_init": np.zeros(3, np.float32)}), 16)
    with pytest.raises(EdgefsError, match="penalty"):
        FinetuneHead(16, penalty="si")


@pytest.mark.parametrize("penalty", ["l2", "ewc"])
def test_refit_head_is_order_independent(penalty: str) -> None:
    """Enrolled one task at a time, the default (refit) head ends exactly where one fit of everything ends."""
    x, y, _, _, _ = problem(6, 32, 5, seed=4)
    joint = FinetuneHead(32, penalty=penalty, steps=20)
    joint.add_classes({f"c{c}": x[y == c] for c in range(6)})
    tasks = FinetuneHead(32, penalty=penalty, steps=20)
    for c in range(6):
        tasks.add_class(f"c{c}", x[y == c])
    np.testing.assert_array_equal(tasks.weight, joint.weight)
    np.testing.assert_array_equal(tasks.bias, joint.bias)
    drifting = FinetuneHead(32, penalty=penalty, steps=20, refit=False)
    for c in range(6):
        drifting.add_class(f"c{c}", x[y == c])
    assert np.abs(drifting.weight - joint.weight).max() > 1e-3  # continuing from old weights is not the same
