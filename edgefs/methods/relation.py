"""Relation Networks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec
from edgefs.heads.relation import default_relation_module
from edgefs.methods.base import METHODS, FewShotMethod, device_head_scores


@METHODS.register("relation")
class RelationNet(FewShotMethod):
    """Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, CVPR 2018).

    A learned relation module scores each (query, class prototype) pair. The paper's
    module is a small CNN over concatenated feature maps; edgefs backbones end in 1-D
    embeddings, so the module here is an MLP over the pair features ``f = [|q - p|, q * p]``
    (which make "same or not" easy to express, unlike a plain concatenation), plus a
    linear term: ``r = linear . f + w2 . relu(W1 f + b1) + b2``. It starts as L1 distance
    to the class mean (``linear = [-1, 0]``, ``w2 = 0``), so early episodes already train
    the backbone on a sensible rule while the MLP learns its correction.

    The loss is cross-entropy over the relation scores of an episode rather than the
    paper's MSE on sigmoid outputs: the same argmax rule, and gradients that do not
    vanish when the starting scores (distances) are far from zero. The device runs the
    same module in NumPy: :class:`edgefs.heads.relation.RelationHead`.

    Args:
        backbone: the embedding network.
        hidden: hidden units of the relation MLP.
    """

    def __init__(self, backbone: Backbone, hidden: int = 64) -> None:
        if hidden < 1:
            raise ConfigError(f"relation hidden must be >= 1, got {hidden}")
        super().__init__(backbone, hidden=hidden)
        dim = backbone.spec.embedding_dim
        start = default_relation_module(dim)
        self.linear = nn.Parameter(torch.from_numpy(start["linear"]))
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.prototypes: torch.Tensor | None = None

    def relation(self, queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """float ``(Q, D)`` x ``(C, D)`` -> float ``(Q, C)`` relation scores."""
        q, p = queries[:, None, :], prototypes[None, :, :]
        feats = torch.cat([(q - p).abs(), q * p], dim=2)  # (Q, C, 2D)
        return feats @ self.linear + self.fc2(torch.relu(self.fc1(feats))).squeeze(2)

    @staticmethod
    def class_means(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(labels).to(embeddings.dtype)
        return (onehot.T @ embeddings) / onehot.sum(0)[:, None]

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        self.prototypes = self.class_means(self.backbone(support_images), support_labels)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self.prototypes is None:
            raise RuntimeError("call process_support_set before classifying queries")
        return self.relation(self.backbone(query_images), self.prototypes)

    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        emb = self.backbone(torch.cat([support_images, query_images]))
        support, queries = emb[: len(support_images)], emb[len(support_images) :]
        logits = self.relation(queries, self.class_means(support, support_labels))
        loss = nn.functional.cross_entropy(logits, query_labels)
        return loss, (logits.argmax(1) == query_labels).float().mean().detach()

    def head_spec(self) -> HeadSpec:
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy().astype(np.float32)

        return HeadSpec("relation", {"temperature": 1.0}, {
            "linear": arr(self.linear), "w1": arr(self.fc1.weight), "b1": arr(self.fc1.bias),
            "w2": arr(self.fc2.weight).reshape(-1), "b2": arr(self.fc2.bias).reshape(1),
        })

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)
