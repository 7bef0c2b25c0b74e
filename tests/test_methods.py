"""Every registered method trains, exports a head spec and runs on the device heads without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgefs.backbones import build_backbone
from edgefs.data.episodes import Protocol, fixed_episodes
from edgefs.data.images import open_split
from edgefs.errors import ConfigError, EdgefsError
from edgefs.eval.episodic import embedding_table, needed_indices
from edgefs.heads import HEADS, Head, HeadSpec, build_head
from edgefs.heads.relation import RELATION_ARRAYS, relation_scores
from edgefs.heads.siamese import siamese_scores
from edgefs.methods import METHODS, build_method
from edgefs.train import TrainConfig, load_checkpoint, train
from edgefs.train.trainer import embedder

D = 64  # conv4 at 28 px


def quick_config(data: Path, out: Path, method: str, **options: object) -> TrainConfig:
    """A few-second run on the stroke fixture: 45 episodes, validated every 15."""
    return TrainConfig(data=str(data), out=str(out), method=method, method_options=dict(options), ways=10,
                       shots=1, queries=3, episodes=45, warmup_episodes=5, val_every=15, val_episodes=30,
                       rotations=1, threads=2, seed=0)


@pytest.fixture(scope="module")
def teacher(stroke_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ProtoNet checkpoint for the distillation student (a wider conv4: 128 filters)."""
    config = quick_config(stroke_data, tmp_path_factory.mktemp("teacher"), "protonet")
    config.backbone_options = {"hidden": 128}
    return train(config, log=lambda _: None)


@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_and_its_head_runs_on_numpy(name: str, stroke_data: Path, request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    # What a method needs beyond its defaults (the teacher is trained only if asked for).
    options = {"teacher": str(request.getfixturevalue("teacher"))} if name == "distill" else {}
    best = train(quick_config(stroke_data, tmp_path / "run", name, **options), log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [15, 30, 45]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], rows

    method, doc = load_checkpoint(best)
    spec = method.head_spec()
    assert doc["head_spec"]["head_type"] == spec.head_type and spec.head_type in HEADS
    spec.save(tmp_path / "head")
    back = HeadSpec.load(tmp_path / "head")
    assert back.head_type == spec.head_type and back.params == spec.params
    assert set(back.arrays) == set(spec.arrays)
    for key, a in spec.arrays.items():
        assert back.arrays[key].dtype == a.dtype and np.array_equal(back.arrays[key], a)

    # Held-out classes: the test split, never seen in training or validation.
    data = open_split(stroke_data, "test", 1, 28)
    episodes = fixed_episodes(data, Protocol(5, 1, 3), 40, seed=1, path=None)
    table = embedding_table(data, needed_indices([episodes]), embedder(method, torch.device("cpu")))
    accs, agree = [], []
    for ep in episodes.episodes:
        support, labels, queries = table[ep.support], ep.support_labels(), table[ep.query]
        head = build_head(back, table.shape[1])
        head.add_classes({f"class{c}": support[labels == c] for c in range(5)})
        pred = head.classify(queries, k=1).top_idx[:, 0]
        accs.append(float((pred == ep.query_labels()).mean()))
        agree.append(float((method.score_embeddings(support, labels, queries, 5).argmax(1) == pred).mean()))
    assert np.mean(accs) > 0.5, f"{name}: {np.mean(accs):.2f} on 5-way episodes (chance 0.20)"
    # score_embeddings is the device head's rule, so evaluation reports what the device does.
    assert np.mean(agree) >= 0.98


@pytest.mark.parametrize("name", ["baselinepp", "distill"])
def test_parameters_made_in_setup_survive_resume(name: str, stroke_data: Path, request: pytest.FixtureRequest,
                                                 tmp_path: Path) -> None:
    """Baseline++'s base-class classifier and distill's projection are built by setup(), from the data."""
    options = {"teacher": str(request.getfixturevalue("teacher"))} if name == "distill" else {}
    config = quick_config(stroke_data, tmp_path / "run", name, **options)
    config.episodes = 15
    train(config, log=lambda _: None)
    config.episodes = 20
    messages: list[str] = []
    train(config, resume=True, log=messages.append)
    assert any("resumed" in m and "episode 15" in m for m in messages)
    method, doc = load_checkpoint(tmp_path / "run" / "last.pt")
    assert doc["episode"] == 20 and doc["method"]["name"] == name
    if name == "baselinepp":
        assert method.classifier is not None and method.classifier.shape == (30, D)  # 30 train classes
    else:
        assert method.projection is not None and method.projection.out_features == 128  # the wide teacher


# ---- bad input --------------------------------------------------------------------------------
def test_unknown_method_lists_the_registered_ones(stroke_data: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgefsError, match="unknown method 'nope'") as err:
        build_method("nope", build_backbone("conv4"))
    assert all(name in str(err.value) for name in METHODS.names())
    with pytest.raises(EdgefsError, match="known: "):
        train(quick_config(stroke_data, tmp_path / "x", "nope"), log=lambda _: None)


def test_incompatible_backbone_is_refused_with_the_valid_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(METHODS.get("relation"), "supported_backbones", ("resnet12",))
    with pytest.raises(ConfigError, match="cannot train backbone 'conv4'") as err:
        build_method("relation", build_backbone("conv4"))
    message = str(err.value)
    assert "its backbones: resnet12" in message and "protonet" in message and "relation," not in message


def test_distill_without_a_teacher_says_what_to_do(stroke_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a teacher checkpoint"):
        train(quick_config(stroke_data, tmp_path / "a", "distill"), log=lambda _: None)
    with pytest.raises(ConfigError, match="does not exist"):
        train(quick_config(stroke_data, tmp_path / "b", "distill", teacher=str(tmp_path / "none.pt")),
              log=lambda _: None)


def test_newer_schema_and_mismatched_declared_shapes_name_both() -> None:
    with pytest.raises(EdgefsError, match=r"version 7 is newer .*\(1\)"):
        HeadSpec.from_json({"head_type": "siamese", "schema_version": 7}, {})
    doc = HeadSpec("siamese", {}, {"weight": np.zeros(4, np.float32), "bias": np.zeros(1, np.float32)}).to_json()
    with pytest.raises(EdgefsError, match=r"'weight' is float32\(5,\), declared .*\[4\]"):
        HeadSpec.from_json(doc, {"weight": np.zeros(5, np.float32), "bias": np.zeros(1, np.float32)})


# ---- relation and siamese device heads ---------------------------------------------------------
def random_relation_arrays(rng: np.random.Generator, dim: int, hidden: int = 8) -> dict[str, np.ndarray]:
    return {"linear": rng.normal(size=2 * dim).astype(np.float32),
            "w1": rng.normal(size=(hidden, 2 * dim)).astype(np.float32) / np.sqrt(dim),
            "b1": rng.normal(size=hidden).astype(np.float32),
            "w2": rng.normal(size=hidden).astype(np.float32),
            "b2": np.array([0.3], np.float32)}


@pytest.mark.parametrize(("head_type", "array", "shape", "message"), [
    ("relation", "w1", (8, 2 * D + 2), r"'w1' has shape \(8, 130\), but 64-d embeddings need \(H, 128\)"),
    ("relation", "b1", (7,), r"'b1' has shape \(7,\), but 64-d embeddings need \(8,\)"),
    ("relation", "linear", (D,), r"'linear' has shape \(64,\), but 64-d embeddings need \(128,\)"),
    ("siamese", "weight", (D + 1,), r"'weight' has shape \(65,\), but 64-d embeddings need \(64,\)"),
    ("siamese", "bias", (2,), r"'bias' has shape \(2,\), but 64-d embeddings need \(1,\)"),
])
def test_device_heads_refuse_spec_arrays_that_do_not_fit(head_type: str, array: str, shape: tuple[int, ...],
                                                         message: str) -> None:
    rng = np.random.default_rng(0)
    arrays = random_relation_arrays(rng, D) if head_type == "relation" else {
        "weight": -np.ones(D, np.float32), "bias": np.zeros(1, np.float32)}
    Head.from_spec(HeadSpec(head_type, {}, arrays), D)  # fits
    arrays[array] = np.zeros(shape, np.float32)
    with pytest.raises(EdgefsError, match=message):
        Head.from_spec(HeadSpec(head_type, {}, arrays), D)


@pytest.mark.parametrize("head_type", ["relation", "siamese"])
def test_device_heads_refuse_missing_unknown_or_non_finite_arrays(head_type: str) -> None:
    rng = np.random.default_rng(1)
    arrays = random_relation_arrays(rng, D) if head_type == "relation" else {
        "weight": -np.ones(D, np.float32), "bias": np.zeros(1, np.float32)}
    first = next(iter(arrays))
    with pytest.raises(EdgefsError, match="needs exactly"):
        Head.from_spec(HeadSpec(head_type, {}, {k: v for k, v in arrays.items() if k != first}), D)
    with pytest.raises(EdgefsError, match="needs exactly"):
        Head.from_spec(HeadSpec(head_type, {}, {**arrays, "extra": np.zeros(1, np.float32)}), D)
    arrays[first] = arrays[first].copy()
    arrays[first].flat[0] = np.nan
    with pytest.raises(EdgefsError, match="NaN"):
        Head.from_spec(HeadSpec(head_type, {}, arrays), D)


def test_relation_head_is_the_formula_and_the_method_rule() -> None:
    rng = np.random.default_rng(2)
    torch.manual_seed(0)
    method = build_method("relation", build_backbone("conv4"), hidden=8)
    with torch.no_grad():
        for p in (method.linear, method.fc1.weight, method.fc1.bias, method.fc2.weight, method.fc2.bias):
            p.copy_(torch.randn_like(p) * 0.3)
    spec = method.head_spec()
    assert tuple(spec.arrays) == RELATION_ARRAYS
    support = rng.normal(size=(12, D)).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    queries = rng.normal(size=(7, D)).astype(np.float32)

    head = build_head(spec, D)
    for c in (2, 0, 3, 1):  # any enrollment order, shots in pieces
        head.add_class(f"c{c}", support[labels == c][:1])
        head.append(f"c{c}", support[labels == c][1:])
    order = [head.classes.index(f"c{c}") for c in range(4)]
    got = head.scores(queries)[:, order]

    means = np.stack([support[labels == c].mean(0) for c in range(4)])
    a = spec.arrays
    brute = np.empty((7, 4), np.float32)
    for i in range(7):
        for c in range(4):
            f = np.concatenate([np.abs(queries[i] - means[c]), queries[i] * means[c]])
            brute[i, c] = a["linear"] @ f + a["w2"] @ np.maximum(a["w1"] @ f + a["b1"], 0) + a["b2"][0]
    assert np.allclose(got, brute, atol=1e-4)
    assert np.allclose(relation_scores(queries, means, *(a[k] for k in RELATION_ARRAYS)), brute, atol=1e-4)
    assert np.allclose(method.score_embeddings(support, labels, queries, 4), brute, atol=1e-4)
    with torch.no_grad():
        torch_scores = method.relation(torch.from_numpy(queries), torch.from_numpy(means)).numpy()
    assert np.allclose(torch_scores, brute, atol=1e-4)


def test_siamese_head_is_the_nearest_shot_rule_of_the_method() -> None:
    rng = np.random.default_rng(3)
    method = build_method("siamese", build_backbone("conv4"))
    with torch.no_grad():
        method.weight.copy_(-torch.rand(D))
        method.bias.fill_(1.5)
    spec = method.head_spec()
    support = rng.normal(size=(10, D)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 4])
    queries = rng.normal(size=(6, D)).astype(np.float32)

    head = build_head(spec, D)
    head.add_classes({f"c{c}": support[labels == c] for c in range(5)})
    got = head.scores(queries)
    w, b = spec.arrays["weight"], spec.arrays["bias"][0]
    pair = np.array([[b + w @ np.abs(q - s) for s in support] for q in queries])
    brute = np.stack([pair[:, labels == c].max(1) for c in range(5)], axis=1)
    assert np.allclose(got, brute, atol=1e-4)
    assert np.allclose(siamese_scores(queries, support, labels, 5, w, spec.arrays["bias"]), brute, atol=1e-4)
    assert np.allclose(method.score_embeddings(support, labels, queries, 5), brute, atol=1e-4)
    with torch.no_grad():
        pair_t = method.pair_logits(torch.from_numpy(queries), torch.from_numpy(support))
        torch_scores = method.nearest_shot_scores(pair_t, torch.from_numpy(labels)).numpy()
    assert np.allclose(torch_scores, brute, atol=1e-4)
    # A query equal to a stored shot picks that shot's class; removing a class drops its column only.
    res = head.classify(support[[0, 5, 9]], k=1)
    assert res.labels == ["c0", "c2", "c4"]
    head.remove("c1")
    assert np.allclose(head.scores(queries), np.delete(brute, 1, axis=1), atol=1e-4)


def test_new_device_heads_do_not_import_torch() -> None:
    code = ("import sys; import edgefs.heads.relation, edgefs.heads.siamese; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
