"""The contract every few-shot method follows (after easyfsl's FewShotClassifier)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.heads import HeadSpec
from edgefs.registry import Registry

METHODS: Registry[type[FewShotMethod]] = Registry("method")


class FewShotMethod(nn.Module):
    """A backbone plus the rule that turns a support set into a classifier.

    Subclasses implement ``process_support_set``, ``forward``, ``head_spec`` and
    ``score_embeddings`` (the NumPy rule the device head runs, used for
    evaluation on cached embeddings). ``options`` are the constructor's keyword
    arguments, saved in checkpoints.
    """

    def __init__(self, backbone: Backbone, **options: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Args:
            support_images: uint8 ``(N*K, H, W, C)``.
            support_labels: int64 ``(N*K,)`` in 0..N-1, every class present.
        """
        raise NotImplementedError

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        """Args: query_images uint8 ``(Q, H, W, C)``. Returns: float32 logits ``(Q, N)``."""
        raise NotImplementedError

    def episode_loss(
        self,
        support_images: torch.Tensor,
        support_labels: torch.Tensor,
        query_images: torch.Tensor,
        query_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the queries; returns ``(loss scalar, accuracy scalar)``."""
        self.process_support_set(support_images, support_labels)
        logits = self(query_images)
        loss = nn.functional.cross_entropy(logits, query_labels)
        acc = (logits.argmax(1) == query_labels).float().mean()
        return loss, acc.detach()

    def head_spec(self) -> HeadSpec:
        """The device head this method's training prepared the backbone for."""
        raise NotImplementedError

    def score_embeddings(
        self, support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray, ways: int
    ) -> np.ndarray:
        """NumPy scores ``(Q, N)`` from embeddings: support ``(S, D)``, queries ``(Q, D)``."""
        raise NotImplementedError


def build_method(name: str, backbone: Backbone, **options: Any) -> FewShotMethod:
    return METHODS.get(name)(backbone, **options)
