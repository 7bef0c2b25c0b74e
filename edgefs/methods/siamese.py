"""Siamese networks for one-shot recognition."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.heads import HeadSpec
from edgefs.methods.base import METHODS, FewShotMethod, device_head_scores


@METHODS.register("siamese")
class SiameseNet(FewShotMethod):
    """Siamese Neural Networks (Koch, Zemel & Salakhutdinov, ICML Deep Learning Workshop 2015).

    Two images are the same class with probability ``sigmoid(bias + sum_j weight_j
    |a_j - b_j|)`` (Koch et al.'s weighted L1 "distance layer", the ``alpha_j`` of the
    paper). Training is verification, as in the paper: every (query, support) pair of an
    episode is a same/different example, with a binary cross-entropy that weights the
    positive and the negative pairs equally. A query is then classified by the support
    shot it most likely matches; the device runs that rule:
    :class:`edgefs.heads.siamese.SiameseHead`.

    The weights start at ``-1/sqrt(D)`` (plain L1 nearest neighbour); the bias is set from
    the first training episode, halfway between the mean logits of its positive and
    negative pairs, because with Adam a scalar moves only about ``lr`` per step and the
    right offset depends on the backbone's embedding scale.

    Args:
        backbone: the embedding network.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__(backbone)
        dim = backbone.spec.embedding_dim
        self.weight = nn.Parameter(torch.full((dim,), -1.0 / math.sqrt(dim)))
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("bias_ready", torch.zeros((), dtype=torch.bool))
        self.support: torch.Tensor | None = None
        self.support_labels: torch.Tensor | None = None

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """float ``(A, D)`` x ``(B, D)`` -> float ``(A, B)`` verification logits."""
        return (a[:, None, :] - b[None, :, :]).abs() @ self.weight + self.bias

    @staticmethod
    def nearest_shot_scores(pair: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
        """float ``(Q, S)`` pair logits -> float ``(Q, N)``: each class's best shot."""
        ways = int(support_labels.max()) + 1
        member = nn.functional.one_hot(support_labels, ways).T.bool()  # (N, S)
        masked = torch.where(member[None], pair[:, None, :], torch.full_like(pair[:1, None, :1], float("-inf")))
        return masked.max(dim=2).values

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        self.support = self.backbone(support_images)
        self.support_labels = support_labels

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self.support is None or self.support_labels is None:
            raise RuntimeError("call process_support_set before classifying queries")
        pair = self.pair_logits(self.backbone(query_images), self.support)
        return self.nearest_shot_scores(pair, self.support_labels)

    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        emb = self.backbone(torch.cat([support_images, query_images]))
        support, queries = emb[: len(support_images)], emb[len(support_images) :]
        same = (query_labels[:, None] == support_labels[None, :]).to(emb.dtype)  # (Q, S)
        if self.training and not bool(self.bias_ready):
            with torch.no_grad():
                dist = (queries[:, None, :] - support[None, :, :]).abs() @ self.weight
                pos, neg = dist[same > 0].mean(), dist[same == 0].mean()
                self.bias.fill_(float(-(pos + neg) / 2))
                self.bias_ready.fill_(True)
        pair = self.pair_logits(queries, support)
        # Positive and negative pairs carry half the loss each (1 vs N-1 per query).
        weights = same / same.sum() + (1 - same) / (1 - same).sum()
        loss = 0.5 * nn.functional.binary_cross_entropy_with_logits(pair, same, weight=weights, reduction="sum")
        pred = self.nearest_shot_scores(pair.detach(), support_labels).argmax(1)
        return loss, (pred == query_labels).float().mean()

    def head_spec(self) -> HeadSpec:
        weight = self.weight.detach().float().cpu().numpy().astype(np.float32)
        bias = self.bias.detach().float().cpu().numpy().astype(np.float32).reshape(1)
        return HeadSpec("siamese", {"temperature": 1.0}, {"weight": weight, "bias": bias})

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)
