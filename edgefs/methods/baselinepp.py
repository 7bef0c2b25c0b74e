"""Baseline++: a cosine classifier over the base classes, no episodes."""

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


@METHODS.register("baselinepp")
class BaselinePlusPlus(FewShotMethod):
    """Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019).

    Pretraining is ordinary supervised learning over all base classes: logits are
    ``scale * cos(embedding, w_c)`` with one learned weight vector per training class
    (``batch_training``: the trainer feeds class-balanced batches with global labels).
    For new classes a cosine classifier needs one weight vector each; the device
    imprints it (Qi et al. 2018: the normalised mean of the normalised shots, head type
    ``imprint``) instead of the paper's fine-tuning of a new classifier on the support
    set, so enrollment is one running sum and no gradient steps. ``scale`` is learned.

    Args:
        backbone: the embedding network.
        num_classes: base classes of the classifier; set by :meth:`setup` from the
            training split and saved in checkpoints (0 before training).
        scale: initial cosine-logit scale (learned).
    """

    batch_training = True

    def __init__(self, backbone: Backbone, num_classes: int = 0, scale: float = 10.0) -> None:
        if num_classes < 0 or scale <= 0:
            raise ConfigError(f"baselinepp needs num_classes >= 0 and scale > 0, got {num_classes} and {scale}")
        super().__init__(backbone, num_classes=num_classes, scale=scale)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(scale))))
        self.classifier: nn.Parameter | None = None
        if num_classes:
            self._make_classifier(num_classes)
        self.weights: torch.Tensor | None = None

    def _make_classifier(self, num_classes: int) -> None:
        device = self.log_scale.device
        weight = torch.empty(num_classes, self.backbone.spec.embedding_dim, device=device)
        nn.init.normal_(weight, std=0.01)
        self.classifier = nn.Parameter(weight)
        self.options["num_classes"] = num_classes

    def setup(self, train_data: ImageSet) -> None:
        """Create the classifier over the ``train_data`` classes (rotations included)."""
        if self.classifier is None or self.classifier.shape[0] != train_data.num_classes:
            self._make_classifier(train_data.num_classes)

    def cosine_logits(self, embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """float ``(B, D)`` x ``(C, D)`` -> ``(B, C)``: ``scale * cos``."""
        e = nn.functional.normalize(embeddings, dim=1)
        w = nn.functional.normalize(weights, dim=1)
        return self.log_scale.exp() * (e @ w.T)

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classifier is None:
            raise RuntimeError("baselinepp has no base-class classifier; the trainer calls setup() first")
        logits = self.cosine_logits(self.backbone(images), self.classifier)
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, (logits.argmax(1) == labels).float().mean().detach()

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        shots = nn.functional.normalize(self.backbone(support_images), dim=1)
        onehot = nn.functional.one_hot(support_labels).to(shots.dtype)
        self.weights = onehot.T @ shots  # imprinted; cosine_logits normalises the rows

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            raise RuntimeError("call process_support_set before classifying queries")
        return self.cosine_logits(self.backbone(query_images), self.weights)

    def head_spec(self) -> HeadSpec:
        return HeadSpec("imprint", {"temperature": float(self.log_scale.detach().exp())})

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)
