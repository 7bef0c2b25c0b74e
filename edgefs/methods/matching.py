"""Matching Networks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.heads import HeadSpec
from edgefs.methods.base import METHODS, FewShotMethod, device_head_scores


@METHODS.register("matching")
class MatchingNet(FewShotMethod):
    """Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

    A query attends over every support embedding with ``softmax_s(temperature *
    cos(q, x_s))``; a class's probability is the attention summed over its shots. Plain
    embeddings (no full-context embeddings, which would tie a support embedding to the
    rest of the support set and so to the device's enrolled classes); the temperature
    is learned. The device runs the same rule: :class:`edgefs.heads.matching.MatchingHead`.

    Args:
        backbone: the embedding network.
        temperature: initial attention sharpness (learned).
    """

    def __init__(self, backbone: Backbone, temperature: float = 10.0) -> None:
        super().__init__(backbone, temperature=temperature)
        self.log_temperature = nn.Parameter(torch.tensor(float(np.log(temperature))))
        self.support: torch.Tensor | None = None
        self.support_onehot: torch.Tensor | None = None

    def log_probs(self, queries: torch.Tensor, support: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities.

        Args:
            queries: float ``(Q, D)``.
            support: float ``(S, D)``.
            onehot: float ``(S, N)`` support labels.

        Returns:
            float ``(Q, N)``: ``log(softmax_s(t cos(q, x_s)) @ onehot)``.
        """
        q = nn.functional.normalize(queries, dim=1)
        s = nn.functional.normalize(support, dim=1)
        attention = torch.softmax(self.log_temperature.exp() * (q @ s.T), dim=1)
        return torch.log((attention @ onehot).clamp_min(1e-30))

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        self.support = self.backbone(support_images)
        self.support_onehot = nn.functional.one_hot(support_labels).to(self.support.dtype)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self.support is None or self.support_onehot is None:
            raise RuntimeError("call process_support_set before classifying queries")
        return self.log_probs(self.backbone(query_images), self.support, self.support_onehot)

    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        # One backbone call for support and queries: one batch-norm batch.
        emb = self.backbone(torch.cat([support_images, query_images]))
        support, queries = emb[: len(support_images)], emb[len(support_images) :]
        onehot = nn.functional.one_hot(support_labels).to(emb.dtype)
        logp = self.log_probs(queries, support, onehot)
        loss = nn.functional.nll_loss(logp, query_labels)
        return loss, (logp.argmax(1) == query_labels).float().mean().detach()

    def head_spec(self) -> HeadSpec:
        return HeadSpec("matching", {"temperature": float(self.log_temperature.detach().exp())})

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)
