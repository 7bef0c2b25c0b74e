"""Multi-task pretraining over a multi-domain root, the CPU-time budget, and torch-free continual heads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgefs.backbones import build_backbone
from edgefs.data.images import open_split
from edgefs.methods import build_method
from edgefs.train import TrainConfig, load_checkpoint, train
from tests.conftest import write_stroke_classes


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/<domain>/{train,val,test}/...``: two stroke domains drawn with different seeds."""
    root = tmp_path_factory.mktemp("domains")
    for seed, name in enumerate(("alpha", "beta")):
        write_stroke_classes(root / name, {"train": 9, "val": 6, "test": 6}, seed=seed)
    return root


def test_a_domains_root_opens_as_one_split_grouped_by_domain(two_domains: Path) -> None:
    data = open_split(two_domains, "train", 1, 28)
    assert data.num_classes == 18 and sorted(set(data.class_groups)) == ["alpha", "beta"]
    assert data.class_names[0].startswith("alpha/") and data.class_names[-1].startswith("beta/")
    assert all(n.split("/", 1)[0] == g for n, g in zip(data.class_names, data.class_groups, strict=True))
    # Labels of the second domain follow the first's.
    assert data.labels.max() == 17 and (data.class_counts() == 6).all()


def test_multitask_scores_each_image_against_its_own_task_only() -> None:
    method = build_method("multitask", build_backbone("conv4"), num_classes=5, class_tasks=[0, 0, 1, 1, 1])
    torch.manual_seed(0)
    images = torch.randint(0, 255, (4, 28, 28, 1), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 4])
    logits = method.task_logits(method.backbone(images), labels)
    assert torch.isinf(logits[:2, 2:]).all() and torch.isinf(logits[2:, :2]).all()
    assert torch.isfinite(logits[:2, :2]).all() and torch.isfinite(logits[2:, 2:]).all()
    loss, _ = method.batch_loss(images, labels)
    # The summed task losses: cross-entropy of each image over its own task's classes.
    e = torch.nn.functional.normalize(method.backbone(images), dim=1)
    w = torch.nn.functional.normalize(method.classifier, dim=1)
    raw = method.log_scale.exp() * (e @ w.T)
    own = [torch.nn.functional.cross_entropy(raw[i : i + 1, s], (labels[i : i + 1] - s.start))
           for i, s in enumerate([slice(0, 2), slice(0, 2), slice(2, 5), slice(2, 5)])]
    assert torch.allclose(loss, torch.stack(own).mean(), atol=1e-5)
    with pytest.raises(Exception, match="one task index"):
        build_method("multitask", build_backbone("conv4"), num_classes=3, class_tasks=[0, 1])


def test_multitask_trains_on_domains_and_keeps_its_heads_on_resume(two_domains: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(two_domains), out=str(tmp_path / "run"), method="multitask", ways=6, shots=1,
                         queries=3, episodes=20, warmup_episodes=2, val_every=10, val_episodes=20, rotations=1,
                         threads=1, seed=0)
    train(config, log=lambda _: None)
    method, doc = load_checkpoint(tmp_path / "run" / "last.pt")
    assert doc["method"]["options"]["class_tasks"] == [0] * 9 + [1] * 9
    assert method.classifier is not None and method.classifier.shape[0] == 18 and method.num_tasks == 2
    assert doc["cpu_s"] > 0 and doc["head_spec"]["head_type"] == "imprint"
    config.episodes = 25
    messages: list[str] = []
    train(config, resume=True, log=messages.append)
    assert any("resumed" in m for m in messages)
    again, doc2 = load_checkpoint(tmp_path / "run" / "last.pt")
    assert doc2["episode"] == 25 and again.options["class_tasks"] == doc["method"]["options"]["class_tasks"]
    assert doc2["cpu_s"] >= doc["cpu_s"]


def test_cpu_budget_ends_training(stroke_data: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(stroke_data), out=str(tmp_path / "run"), ways=5, shots=1, queries=2,
                         episodes=10**6, warmup_episodes=1, val_every=10**6, val_episodes=10, rotations=1,
                         threads=1, cpu_budget_min=0.02)
    messages: list[str] = []
    train(config, log=messages.append)
    assert any("CPU budget of 0.02 min reached" in m for m in messages)
    _, doc = load_checkpoint(tmp_path / "run" / "last.pt")
    assert 0 < doc["episode"] < 10**6 and doc["cpu_s"] >= 0.02 * 60


def test_continual_heads_do_not_import_torch() -> None:
    code = "import sys; import edgefs.heads.den, edgefs.heads.progressive; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
