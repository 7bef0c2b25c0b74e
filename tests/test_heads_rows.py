"""Row buffers and head forks: the copy being updated never changes what the live head's readers see."""

from __future__ import annotations

import numpy as np
import pytest

from edgefs.heads import HEADS, Head, HeadSpec
from edgefs.heads.reference import topk
from edgefs.heads.rows import Rows

DIM = 8


def shots(seed: int, k: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(k, DIM)).astype(np.float32)


def test_rows_grow_by_doubling_and_forks_share_until_written() -> None:
    rows = Rows((DIM,), np.float32)
    caps = set()
    for i in range(100):
        rows.extend(np.full((1, DIM), i, np.float32))
        caps.add(rows.capacity)
    assert rows.n == 100 and caps == {16, 32, 64, 128}  # amortised: 4 reallocations for 100 rows
    fork = rows.fork()
    fork.extend(np.full((1, DIM), 100, np.float32))  # past the original's rows: shared buffer
    assert fork._buf is rows._buf and rows.n == 100 and fork.view[-1, 0] == 100
    again = rows.fork()  # a second fork of the original must not write over the first one's row
    again.extend(np.full((1, DIM), -1, np.float32))
    assert fork.view[-1, 0] == 100 and again.view[-1, 0] == -1 and again._buf is not rows._buf
    fork.writable()[0] = 7  # an existing row: copied first
    assert rows.view[0, 0] == 0 and fork.view[0, 0] == 7


@pytest.mark.parametrize("name", sorted(set(HEADS.names()) - {"relation", "siamese"}))
def test_a_fork_leaves_the_original_head_as_it_was(name: str) -> None:
    head = Head.from_spec(HeadSpec(name), DIM)
    for i in range(5):
        head.add_class(f"c{i}", shots(i))
    q = shots(99, 4)
    before = head.classify(q, k=3)
    state = {k: v.copy() for k, v in head.state()[0].items()}
    for change in (lambda h: h.add_class("new", shots(50)), lambda h: h.append("c2", shots(51)),
                   lambda h: h.remove("c1"), lambda h: h.rename("c3", "renamed")):
        fork = head.fork()
        change(fork)
        after = head.classify(q, k=3)
        np.testing.assert_array_equal(after.top_idx, before.top_idx)
        np.testing.assert_array_equal(after.top_prob, before.top_prob)
        assert head.classes == ["c0", "c1", "c2", "c3", "c4"]
        for k, v in head.state()[0].items():
            np.testing.assert_array_equal(v, state[k], err_msg=f"{name} {k}")
    # A fork's changes equal the same changes applied to a fresh head.
    fork = head.fork()
    fork.add_class("new", shots(50))
    fork.append("c2", shots(51))
    fresh = Head.from_spec(HeadSpec(name), DIM)
    for i in range(5):
        fresh.add_class(f"c{i}", shots(i))
    fresh.add_class("new", shots(50))
    fresh.append("c2", shots(51))
    np.testing.assert_allclose(fork.classify(q, k=3).top_prob, fresh.classify(q, k=3).top_prob, atol=1e-6)


def test_topk_by_partition_equals_a_full_stable_sort() -> None:
    rng = np.random.default_rng(3)
    prob = rng.integers(0, 20, size=(50, 400)).astype(np.float32)  # many ties
    for k in (1, 3, 7, 50, 400):
        idx, val = topk(prob, k)
        want = np.argsort(-prob, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(val, np.take_along_axis(prob, want, axis=1))
