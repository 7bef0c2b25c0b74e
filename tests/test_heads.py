"""HeadSpec serialisation and the NumPy prototype head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefs.errors import EdgefsError
from edgefs.heads import HeadSpec
from edgefs.heads.prototype import class_means, prototype_logits


def test_head_spec_round_trips_without_pickle(tmp_path: Path) -> None:
    spec = HeadSpec("finetune", {"steps": 5, "lr": 0.1}, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    spec.save(tmp_path / "head")
    back = HeadSpec.load(tmp_path / "head")
    assert back.head_type == "finetune" and back.params == {"steps": 5, "lr": 0.1}
    assert (back.arrays["w"] == spec.arrays["w"]).all() and back.arrays["w"].dtype == np.float32


def test_head_spec_refuses_pickled_arrays_newer_schemas_and_unknown_types(tmp_path: Path) -> None:
    HeadSpec("prototype").save(tmp_path / "h")
    np.savez(tmp_path / "h.npz", w=np.array([{"evil": 1}], dtype=object))
    (tmp_path / "h.json").write_text(
        '{"head_type": "prototype", "schema_version": 1, "arrays": {"w": {"shape": [1], "dtype": "object"}}}'
    )
    with pytest.raises(EdgefsError, match="pickle"):
        HeadSpec.load(tmp_path / "h")
    with pytest.raises(EdgefsError, match="newer"):
        HeadSpec.from_json({"head_type": "prototype", "schema_version": 99}, {})
    with pytest.raises(EdgefsError, match="unknown head type"):
        HeadSpec("nearest-star")


def test_prototype_logits_match_direct_distances() -> None:
    rng = np.random.default_rng(0)
    support = rng.normal(size=(10, 16)).astype(np.float32)
    labels = np.repeat(np.arange(5), 2)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    protos = class_means(support, labels, 5)
    assert np.allclose(protos[2], support[4:6].mean(0), atol=1e-6)
    direct = -((queries[:, None, :] - protos[None]) ** 2).sum(-1)
    assert np.allclose(prototype_logits(queries, protos, "euclidean"), direct, atol=1e-4)
    cos = prototype_logits(queries, protos, "cosine", 10.0)
    expect = 10 * (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        protos / np.linalg.norm(protos, axis=1, keepdims=True)).T
    assert np.allclose(cos, expect, atol=1e-5)


def test_class_without_support_is_an_error() -> None:
    with pytest.raises(EdgefsError, match="no support"):
        class_means(np.zeros((2, 4), np.float32), np.array([0, 0]), 2)
