"""Multi-task pretraining: one shared trunk, one classifier head per domain (task), trained jointly."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec
from edgefs.methods.base import METHODS, FewShotMethod, device_head_scores

if TYPE_CHECKING:
    from edgefs.data.images import ImageSet


@METHODS.register("multitask")
class MultiTask(FewShotMethod):
    """Hard parameter sharing (Caruana, "Multitask Learning", Machine Learning 28, 1997): the
    backbone is a trunk shared by every task, each task has its own cosine classifier over its
    own classes, and the summed losses train trunk and heads together.

    A task is a class group of the training split: a domain of a multi-domain root
    (``edgefs train --method multitask --data data/domains``: ``<domain>/<class>``), a script
    of the glyph benchmark. Each image is scored against its own task's classes only (a
    softmax per task, ``scale * cos(embedding, w_c)`` with a learned scale), so tasks never
    compete for the trunk through a shared label space, unlike Baseline++'s one softmax
    over every base class. The trainer feeds class-balanced batches drawn across all tasks
    (``batch_training``). The heads are dropped after training: the trunk is the few-shot
    backbone and the device imprints a cosine row per enrolled class (head ``imprint``).

    Args:
        backbone: the shared trunk.
        num_classes: base classes over all tasks; set by :meth:`setup` (0 before training).
        class_tasks: task index of each base class (length ``num_classes``); set by :meth:`setup`.
        scale: initial cosine-logit scale (learned).
    """

    batch_training = True

    def __init__(self, backbone: Backbone, num_classes: int = 0, class_tasks: list[int] | None = None,
                 scale: float = 10.0) -> None:
        tasks = list(class_tasks or [])
        if num_classes < 0 or scale <= 0 or len(tasks) not in (0, num_classes) or any(t < 0 for t in tasks):
            raise ConfigError("multitask needs num_classes >= 0, scale > 0 and one task index >= 0 per class, "
                              f"got {num_classes} classes, {len(tasks)} task indices and scale {scale}")
        super().__init__(backbone, num_classes=num_classes, class_tasks=tasks, scale=scale)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(scale))))
        self.classifier: nn.Parameter | None = None
        self.register_buffer("class_tasks", torch.tensor(tasks, dtype=torch.int64), persistent=False)
        if num_classes:
            self._make_heads(num_classes, tasks or [0] * num_classes)
        self.weights: torch.Tensor | None = None

    def _make_heads(self, num_classes: int, tasks: list[int]) -> None:
        device = self.log_scale.device
        weight = torch.empty(num_classes, self.backbone.spec.embedding_dim, device=device)
        nn.init.normal_(weight, std=0.01)
        self.classifier = nn.Parameter(weight)  # the task heads' rows, one block of rows per task
        self.class_tasks = torch.tensor(tasks, dtype=torch.int64, device=device)
        self.options.update(num_classes=num_classes, class_tasks=list(tasks))

    @property
    def num_tasks(self) -> int:
        return int(self.class_tasks.max()) + 1 if len(self.class_tasks) else 0

    def setup(self, train_data: ImageSet) -> None:
        """One head per class group of ``train_data`` (rotated copies are groups of their own)."""
        names = list(dict.fromkeys(train_data.class_groups))
        index = {g: i for i, g in enumerate(names)}
        tasks = [index[g] for g in train_data.class_groups]
        if self.classifier is None or self.options.get("class_tasks") != tasks:
            self._make_heads(train_data.num_classes, tasks)

    def task_logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float ``(B, D)`` and int64 ``(B,)`` base labels -> ``(B, C)`` cosine logits, ``-inf`` outside
        each image's own task (so cross-entropy over them is the task head's softmax)."""
        assert self.classifier is not None
        e = nn.functional.normalize(embeddings, dim=1)
        w = nn.functional.normalize(self.classifier, dim=1)
        logits = self.log_scale.exp() * (e @ w.T)
        own = self.class_tasks[labels][:, None] == self.class_tasks[None, :]
        return logits.masked_fill(~own, float("-inf"))

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classifier is None:
            raise RuntimeError("multitask has no task heads; the trainer calls setup() first")
        logits = self.task_logits(self.backbone(images), labels)
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, (logits.argmax(1) == labels).float().mean().detach()

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        shots = nn.functional.normalize(self.backbone(support_images), dim=1)
        onehot = nn.functional.one_hot(support_labels).to(shots.dtype)
        self.weights = nn.functional.normalize(onehot.T @ shots, dim=1)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            raise RuntimeError("call process_support_set before classifying queries")
        e = nn.functional.normalize(self.backbone(query_images), dim=1)
        return self.log_scale.exp() * (e @ self.weights.T)

    def head_spec(self) -> HeadSpec:
        return HeadSpec("imprint", {"temperature": float(self.log_scale.detach().exp())})

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)
