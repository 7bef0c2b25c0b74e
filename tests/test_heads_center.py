"""Centred heads (SimpleShot CL2N): a spec's ``center`` is subtracted from every shot and query."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from edgefs.errors import EdgefsError
from edgefs.heads import HEADS, HeadSpec, build_head
from edgefs.heads.reference import l2_normalize

DIM = 16
CENTRED = [name for name in HEADS.names() if HEADS.get(name).supports_center]
REFUSING = [name for name in HEADS.names() if not HEADS.get(name).supports_center]


def shifted_classes(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Three classes sitting on a large common offset (as ReLU features of a frozen backbone do):
    raw cosine sees them as almost identical, centred cosine separates them."""
    rng = np.random.default_rng(seed)
    offset = np.full(DIM, 10.0, np.float32)
    dirs = rng.normal(size=(3, DIM)).astype(np.float32)
    shots = {f"c{i}": offset + dirs[i] + 0.05 * rng.normal(size=(3, DIM)).astype(np.float32) for i in range(3)}
    queries = (offset + dirs + 0.05 * rng.normal(size=(3, DIM))).astype(np.float32)
    return offset, shots, queries, np.arange(3)


def spec_for(name: str, center: np.ndarray | None) -> HeadSpec:
    params = {"distance": "cosine"} if name == "prototype" else {}
    arrays = {} if center is None else {"center": center.astype(np.float32)}
    return HeadSpec(name, params, arrays)


@pytest.mark.parametrize("name", CENTRED)
def test_centred_head_equals_plain_head_on_centred_embeddings(name: str) -> None:
    offset, shots, queries, _ = shifted_classes()
    centred = build_head(spec_for(name, offset), DIM)
    plain = build_head(spec_for(name, None), DIM)
    centred.add_classes(shots)
    plain.add_classes({n: s - offset for n, s in shots.items()})
    a, b = centred.classify(queries, k=3), plain.classify(queries - offset, k=3)
    np.testing.assert_array_equal(a.top_idx, b.top_idx)
    np.testing.assert_allclose(a.top_prob, b.top_prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.best_sim, b.best_sim, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(centred.scores(queries), plain.scores(queries - offset), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["prototype", "imprint"])
def test_centring_separates_classes_on_a_common_offset(name: str) -> None:
    offset, shots, queries, labels = shifted_classes()
    centred = build_head(spec_for(name, offset), DIM)
    centred.add_classes(shots)
    result = centred.classify(queries, k=1)
    np.testing.assert_array_equal(result.top_idx[:, 0], labels)
    # best_sim is the cosine of centred features: high for the right class
    assert (result.best_sim > 0.9).all()
    plain = build_head(spec_for(name, None), DIM)
    plain.add_classes(shots)
    assert (plain.classify(queries, k=1).best_sim > 0.99).all()  # raw cosine: everything looks alike


@pytest.mark.parametrize("name", CENTRED)
def test_append_and_state_round_trip_keep_the_center(name: str) -> None:
    offset, shots, queries, _ = shifted_classes()
    head = build_head(spec_for(name, offset), DIM)
    head.add_classes({n: s[:2] for n, s in shots.items()})
    for n, s in shots.items():
        head.append(n, s[2:])
    arrays, params = head.state()
    np.testing.assert_array_equal(arrays["center"], offset)
    restored = build_head(spec_for(name, offset), DIM)
    restored.load_state(arrays, params)
    np.testing.assert_allclose(restored.scores(queries), head.scores(queries), rtol=1e-5, atol=1e-5)
    # a head built without the center adopts it from the state (how a CUDA copy is made)
    bare = copy.deepcopy(build_head(spec_for(name, None), DIM))
    bare.load_state(arrays, params)
    np.testing.assert_allclose(bare.scores(queries), head.scores(queries), rtol=1e-5, atol=1e-5)


def test_state_centred_with_another_mean_is_refused() -> None:
    offset, shots, _, _ = shifted_classes()
    head = build_head(spec_for("prototype", offset), DIM)
    head.add_classes(shots)
    arrays, params = head.state()
    other = build_head(spec_for("prototype", offset + 1.0), DIM)
    with pytest.raises(EdgefsError, match="another mean feature"):
        other.load_state(arrays, params)
    uncentred_state = build_head(spec_for("prototype", None), DIM)
    uncentred_state.add_classes(shots)
    with pytest.raises(EdgefsError, match="without the center"):
        build_head(spec_for("prototype", offset), DIM).load_state(*uncentred_state.state())


@pytest.mark.parametrize("name", REFUSING)
def test_heads_with_learned_arrays_refuse_a_center(name: str) -> None:
    with pytest.raises(EdgefsError, match="does not support a 'center'"):
        build_head(HeadSpec(name, {}, {"center": np.zeros(DIM, np.float32)}), DIM)


@pytest.mark.parametrize("bad", [np.zeros(DIM + 1, np.float32), np.full(DIM, np.nan, np.float32),
                                 np.zeros(DIM, np.int32)])
def test_malformed_center_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(EdgefsError, match="center"):
        build_head(HeadSpec("prototype", {"distance": "cosine"}, {"center": bad}), DIM)


def test_centred_cosine_prototype_is_simpleshot_cl2n() -> None:
    """Scores are temperature * cos(q - m, mean_k(x - m)) for the stored mean feature m."""
    offset, shots, queries, _ = shifted_classes(3)
    head = build_head(spec_for("prototype", offset), DIM)
    head.add_classes(shots)
    protos = l2_normalize(np.stack([(s - offset).mean(0) for s in shots.values()]))
    expected = head.temperature * l2_normalize(queries - offset) @ protos.T
    np.testing.assert_allclose(head.scores(queries), expected, rtol=1e-5, atol=1e-5)
