"""MANN, MetaNet and the LSTM meta-learner: the NumPy device heads run the PyTorch methods' rules,
and each goes train -> export -> enroll -> classify through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgefs.backbones import build_backbone
from edgefs.cli import main
from edgefs.config import resolve
from edgefs.errors import EdgefsError
from edgefs.heads import HeadSpec, build_head
from edgefs.heads.lstm_finetune import default_lstm_optimizer, lstm_finetune
from edgefs.heads.mann import MANNHead, choose_slot, memory_trace
from edgefs.heads.metanet import MetaNetHead
from edgefs.heads.reference import finetune, l2_normalize
from edgefs.methods import build_method
from edgefs.methods.lstm_meta import LSTMMetaLearner
from edgefs.methods.mann import MANN
from edgefs.methods.metanet import MetaNet
from edgefs.train import TrainConfig

D = 64  # conv4 at 28 px
NEW = ("mann", "metanet", "lstm_meta")
CONFIGS = Path(__file__).parents[1] / "configs"
# Torch and NumPy run the same float32 operations in different summation orders.
LOGIT_TOL = 1e-5


def assert_logits_close(got: np.ndarray, want: np.ndarray, rel: float = LOGIT_TOL) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= rel * scale, (float(np.abs(got - want).max()), scale)


def episode(seed: int, ways: int = 5, shots: int = 3, queries: int = 4):
    """Clustered non-negative raw embeddings (conv4 ends in a ReLU): support, labels, queries, labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ways, D))
    s_lab = np.repeat(np.arange(ways), shots)
    q_lab = np.repeat(np.arange(ways), queries)
    support = np.abs(centres[s_lab] + 0.8 * rng.normal(size=(len(s_lab), D))) * rng.uniform(0.5, 3, (len(s_lab), 1))
    query = np.abs(centres[q_lab] + 0.8 * rng.normal(size=(len(q_lab), D)))
    return support.astype(np.float32), s_lab, query.astype(np.float32), q_lab


def perturbed(name: str, **options: object) -> torch.nn.Module:
    """The method with its head parameters moved off their (identity-like) starting values."""
    torch.manual_seed(0)
    m = build_method(name, build_backbone("conv4"), **options)
    body = {id(p) for p in m.backbone.parameters()}
    with torch.no_grad():
        for p in m.parameters():
            if id(p) not in body:
                p.add_(0.05 * torch.randn_like(p))
    return m


def torch_logits(m: torch.nn.Module, support: np.ndarray, s_lab: np.ndarray, queries: np.ndarray) -> np.ndarray:
    s, lab, q = torch.from_numpy(support), torch.from_numpy(s_lab).long(), torch.from_numpy(queries)
    ways = int(s_lab.max()) + 1
    with torch.no_grad():
        if isinstance(m, MANN):
            m.write_support(s, lab)
            return m.memory_logits(q).numpy()
        if isinstance(m, MetaNet):
            return m.logits(q, m.fast_rows(s, lab, ways)).numpy()
        assert isinstance(m, LSTMMetaLearner)
        return m.head_logits(q, m.adapt(s, lab, ways)).numpy()


# ---- parity: the device head runs the method's rule ------------------------------------------
@pytest.mark.parametrize(("name", "options"), [("mann", {}), ("mann", {"capacity": 9, "key_dim": 32}),
                                               ("metanet", {"hidden": 48, "meta_hidden": 16}),
                                               ("lstm_meta", {"steps": 4, "hidden": 6})])
def test_numpy_head_equals_the_torch_method_on_the_same_episode(name: str, options: dict, tmp_path: Path) -> None:
    m = perturbed(name, **options)
    support, s_lab, queries, _ = episode(0)
    want = torch_logits(m, support, s_lab, queries)

    m.head_spec().save(tmp_path / "head")  # what the device reads: no torch, no pickle
    spec = HeadSpec.load(tmp_path / "head")
    head = build_head(spec, D)
    head.add_classes({f"c{c}": support[s_lab == c] for c in range(5)})
    assert_logits_close(head.scores(queries), want)
    assert_logits_close(m.score_embeddings(support, s_lab, queries, 5), want)

    # The enrolled state survives the store's round trip: a fresh head with it scores the same.
    arrays, params = head.state()
    again = build_head(spec, D)
    again.load_state(arrays, json.loads(json.dumps(params)))
    assert np.array_equal(again.scores(queries), head.scores(queries))


def test_images_through_each_method_equal_its_device_rule_on_embeddings() -> None:
    """process_support_set + forward on images (the PyTorch path) against the head on the embeddings."""
    rng = np.random.default_rng(4)
    images = torch.from_numpy(rng.integers(0, 256, (18, 28, 28, 1), dtype=np.uint8))
    labels = torch.arange(3).repeat_interleave(4)
    for name in NEW:
        m = perturbed(name).eval()
        with torch.no_grad():
            emb = m.backbone(images).numpy()
        m.process_support_set(images[:12], labels)
        with torch.no_grad():
            got = m(images[12:]).numpy()
        # The backbone runs on batches of 12 and 6 here, of 18 above: convolutions sum in other orders.
        assert_logits_close(got, m.score_embeddings(emb[:12], labels.numpy(), emb[12:], 3), rel=1e-4)


# ---- MANN: what capacity means --------------------------------------------------------------
def mann_head(capacity: int, dim: int = 4) -> MANNHead:
    return MANNHead(dim, capacity=capacity)


def test_mann_memory_writes_every_shot_while_it_fits_then_overwrites_the_least_recently_used() -> None:
    head = mann_head(capacity=4)
    e = np.eye(4, dtype=np.float32)
    head.add_class("a", e[[0]])
    head.add_class("b", e[[1]])
    head.append("a", e[[2]])
    head.append("b", e[[3]])
    assert head.memory_use() == {"slots": 4, "capacity": 4, "shots": 4}
    assert head.slot_class.tolist() == [0, 1, 0, 1]
    # Full. A new 'a' shot near slot 0 uses slot 0 (read before write); the least recently used
    # slot whose class keeps another one is then slot 1 ('b', written second) -> overwritten.
    head.append("a", (e[0] + 0.1 * e[2])[None])
    assert head.slot_class.tolist() == [0, 0, 0, 1]
    assert np.allclose(head.slot_keys[1], l2_normalize((e[0] + 0.1 * e[2])[None])[0])
    # 'b' now holds one slot: it is never evicted, so 'b' stays classifiable.
    for _ in range(3):
        head.append("a", e[[2]])
    assert head.slot_class.tolist().count(1) == 1
    assert head.classify(e[[3]], k=1).labels == ["b"]
    assert head.memory_use()["shots"] == 8 and head.memory_use()["slots"] == 4


def test_mann_refuses_more_classes_than_slots_and_removal_frees_them() -> None:
    head = mann_head(capacity=2)
    e = np.eye(4, dtype=np.float32)
    head.add_classes({"a": e[[0]], "b": e[[1]]})
    with pytest.raises(EdgefsError, match=r"at most 2 classes.*larger capacity"):
        head.add_class("c", e[[2]])
    assert head.classes == ["a", "b"]  # refused before anything changed
    head.remove("a")
    assert head.slot_class.tolist() == [0] and head.memory_use()["slots"] == 1
    head.add_class("c", e[[2]])
    assert head.classify(e[[2, 1]], k=1).labels == ["c", "b"]
    with pytest.raises(EdgefsError, match="each hold the last shot of a class"):
        choose_slot(np.array([0, 1]), np.array([5, 6]), 2, 2)


def test_mann_training_trace_is_the_head_writing_one_shot_at_a_time() -> None:
    """memory_trace (training, from similarities) and MANNHead.write (device) keep the same items."""
    rng = np.random.default_rng(5)
    emb = np.abs(rng.normal(size=(14, 6))).astype(np.float32)
    labels = np.array([0, 1, 0, 2, 1, 1, 0, 2, 2, 0, 1, 2, 0, 1])
    head = MANNHead(6, capacity=5)
    head.add_classes({"c0": emb[[0]], "c1": emb[[1]]})
    order = [0, 1]
    for t in range(2, len(labels)):
        if f"c{labels[t]}" in head.classes:
            head.append(f"c{labels[t]}", emb[[t]])
        else:
            head.add_class(f"c{labels[t]}", emb[[t]])
        order.append(t)
    keys = l2_normalize(l2_normalize(emb))
    reads = np.zeros(len(labels) + 1, bool)
    reads[-1] = True
    sim = np.zeros((len(labels) + 1,) * 2, np.float32)
    sim[:-1, :-1] = keys @ keys.T
    present = memory_trace(sim, np.append(labels, 0), 5, reads)
    kept = np.flatnonzero(present[-1, :-1])
    assert len(kept) == 5
    assert sorted(map(tuple, np.round(head.slot_keys, 5))) == sorted(map(tuple, np.round(keys[kept], 5)))
    # Reading never looks ahead: item t sees only earlier items.
    assert not np.triu(present[:-1, :-1]).any()


def test_mann_sequence_loss_scores_only_labels_already_in_memory() -> None:
    m = perturbed("mann")
    emb = torch.from_numpy(episode(1, ways=3, shots=1, queries=0)[0])
    # Three different labels, each seen once: nothing can be predicted yet, nothing is scored.
    loss, acc = m.sequence_loss(emb, torch.tensor([0, 1, 2]))
    assert float(loss) == 0.0 and float(acc) == 0.0
    loss, _ = m.sequence_loss(torch.cat([emb, emb]), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert float(loss) > 0.0
    loss.backward()
    assert m.proj.weight.grad is not None and float(m.proj.weight.grad.abs().sum()) > 0


# ---- MetaNet: fast weights per class ---------------------------------------------------------
def test_metanet_fast_rows_are_per_class_and_incremental() -> None:
    spec = perturbed("metanet", hidden=32, meta_hidden=8).head_spec()
    support, s_lab, queries, _ = episode(2)
    at_once = build_head(spec, D)
    at_once.add_classes({f"c{c}": support[s_lab == c] for c in range(5)})
    piecewise = build_head(spec, D)
    for c in (3, 0, 4, 1, 2):
        piecewise.add_class(f"c{c}", support[s_lab == c][:1])
        piecewise.append(f"c{c}", support[s_lab == c][1:])
    order = [piecewise.classes.index(f"c{c}") for c in range(5)]
    assert np.allclose(piecewise.scores(queries)[:, order], at_once.scores(queries), atol=1e-5)
    assert isinstance(at_once, MetaNetHead)
    before = at_once.fast_rows.copy()
    at_once.remove("c2")
    assert np.array_equal(at_once.fast_rows, np.delete(before, 2, axis=0))
    # The untrained module is cosine to the class mean of the rectified unit embeddings.
    plain = build_head(HeadSpec("metanet"), D)
    plain.add_classes({f"c{c}": support[s_lab == c] for c in range(5)})
    means = np.stack([np.maximum(l2_normalize(support[s_lab == c]), 0).mean(0) for c in range(5)])
    want = 10.0 * l2_normalize(np.maximum(l2_normalize(queries), 0)) @ l2_normalize(means).T
    assert np.allclose(plain.scores(queries), want, atol=1e-5)


# ---- LSTM meta-learner: a learned optimiser that can be SGD ----------------------------------
def test_untrained_lstm_optimizer_with_a_closed_forget_gate_is_plain_sgd() -> None:
    support, s_lab, _, _ = episode(3)
    x = l2_normalize(support)
    w0 = 7.0 * l2_normalize(np.stack([x[s_lab == c].sum(0) for c in range(5)]))
    b0 = np.zeros(5, np.float32)
    opt = default_lstm_optimizer(hidden=4, lr=3.0)
    opt["gate_b"] = np.array([0.0, 60.0], np.float32)  # forget gate exactly 1 in float32
    got = lstm_finetune(x, s_lab, w0, b0, opt, 6)
    want = finetune(x, s_lab.astype(np.int32), w0, b0, 3.0, 3.0, 6, 0.0, 0.0)
    assert np.allclose(got[0], want[0], atol=1e-4) and np.allclose(got[1], want[1], atol=1e-5)


def test_lstm_head_refits_from_the_shots_so_update_order_does_not_matter() -> None:
    spec = perturbed("lstm_meta", steps=3, hidden=4).head_spec()
    support, s_lab, queries, _ = episode(4)
    at_once = build_head(spec, D)
    at_once.add_classes({f"c{c}": support[s_lab == c] for c in range(5)})
    piecewise = build_head(spec, D)
    for c in range(5):
        piecewise.add_class(f"c{c}", support[s_lab == c][:2])
    for c in range(5):
        piecewise.append(f"c{c}", support[s_lab == c][2:])
    # Same shots, other storage order: the loss is a mean over the same rows.
    assert np.allclose(piecewise.scores(queries), at_once.scores(queries), atol=1e-4)
    at_once.remove("c1")
    fresh = build_head(spec, D)
    fresh.add_classes({f"c{c}": support[s_lab == c] for c in (0, 2, 3, 4)})
    assert np.allclose(at_once.scores(queries), fresh.scores(queries), atol=1e-5)


@pytest.mark.parametrize("head_type", ["mann", "metanet", "lstm_finetune"])
def test_heads_refuse_damaged_spec_arrays_and_centring(head_type: str) -> None:
    spec = {"mann": perturbed("mann"), "metanet": perturbed("metanet"),
            "lstm_finetune": perturbed("lstm_meta")}[head_type].head_spec()
    build_head(spec, D)
    first = next(iter(spec.arrays))
    with pytest.raises(EdgefsError, match=r"needs exactly"):
        build_head(HeadSpec(head_type, spec.params, {k: v for k, v in spec.arrays.items() if k != first}), D)
    bad = {k: v.copy() for k, v in spec.arrays.items()}
    bad[first].flat[0] = np.nan
    with pytest.raises(EdgefsError, match="NaN"):
        build_head(HeadSpec(head_type, spec.params, bad), D)
    if head_type == "lstm_finetune":
        build_head(spec, D + 1)  # coordinate-wise: the optimiser fits any embedding size
    else:
        with pytest.raises(EdgefsError, match=r"does not fit|expected|do not fit"):
            build_head(spec, D + 1)
    with pytest.raises(EdgefsError, match="does not support a 'center'"):
        build_head(HeadSpec(head_type, spec.params, {**spec.arrays, "center": np.zeros(D, np.float32)}), D)


def test_new_heads_do_not_import_torch() -> None:
    code = ("import sys; import edgefs.heads.mann, edgefs.heads.metanet, edgefs.heads.lstm_finetune; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("name", NEW)
def test_shipped_config_names_the_method_and_builds_it(name: str) -> None:
    config = resolve(TrainConfig, CONFIGS / f"{name}_conv4_glyphs.yaml")
    assert config.method == name
    build_method(name, build_backbone(config.backbone, **config.backbone_options), **config.method_options)


# ---- end to end: train a few episodes -> export -> enroll -> classify --------------------------
@pytest.mark.parametrize("name", NEW)
def test_train_export_enroll_classify(name: str, glyph_data: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    config = CONFIGS / f"{name}_conv4_glyphs.yaml"
    if name == "lstm_meta":
        # Twelve episodes leave the backbone's embeddings nearly collinear (cosines ~0.99), where the
        # optimiser's starting rate of 10 (SGD's, before it learns its own) overshoots; start it at 2.
        doc = yaml.safe_load(config.read_text())
        doc["method_options"]["lr"] = 2.0
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(doc))
    assert main(["train", "--config", str(config), "--data", str(glyph_data),
                 "--out", str(run), "--ways", "5", "--episodes", "12", "--val-every", "6", "--val-episodes", "10",
                 "--rotations", "1", "--threads", "1", "--time-budget", "0"]) == 0
    bundle = tmp_path / "model.edgefs"
    assert main(["export", str(run / "best.pt"), "--out", str(bundle), "--data", str(glyph_data),
                 "--parity-images", "8"]) == 0
    head_json = json.loads((bundle / "manifest.json").read_text())
    assert head_json["head"]["type"] == {"mann": "mann", "metanet": "metanet", "lstm_meta": "lstm_finetune"}[name]

    # Enroll three test classes from two images each (balanced: a barely trained fine-tune head's bias
    # follows the shot counts); classify a folder of two other images of each.
    dirs = sorted(p for p in (glyph_data / "test").glob("*/*") if p.is_dir() and len(list(p.glob("*.png"))) >= 4)[:3]
    queries = tmp_path / "queries"
    store = tmp_path / "classes.db"
    for i, d in enumerate(dirs):
        images = sorted(d.glob("*.png"))[:4]
        shots, held = tmp_path / "shots" / f"c{i}", queries / f"c{i}"
        shots.mkdir(parents=True)
        held.mkdir(parents=True)
        for j, img in enumerate(images):
            shutil.copy(img, (shots if j % 2 == 0 else held) / img.name)
        assert main(["enroll", str(bundle), "--store", str(store), "--label", f"c{i}", "--images", str(shots),
                     "--backend", "onnxruntime", "--threads", "1", "--threshold", "none"]) == 0
    events = tmp_path / "events.jsonl"
    assert main(["run", str(bundle), "--store", str(store), "--source", str(queries), "--jsonl", str(events),
                 "--no-display", "--threads", "1", "--backend", "onnxruntime", "--smooth", "1"]) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(lines) == sum(len(list(p.glob("*.png"))) for p in queries.iterdir())
    correct = np.mean([e["raw_label"] == e["truth"] for e in lines])
    assert correct > 1 / 3, (correct, lines[:3])  # above chance on held-out images of enrolled classes
