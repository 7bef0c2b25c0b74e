"""Prototypical Networks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec
from edgefs.heads.prototype import class_means, prototype_logits
from edgefs.methods.base import METHODS, FewShotMethod


@METHODS.register("protonet")
class ProtoNet(FewShotMethod):
    """Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

    A class is the mean of its support embeddings; a query's logits are negative
    squared Euclidean distances to the prototypes (or scaled cosine similarities
    with a learned temperature).

    Args:
        backbone: the embedding network.
        distance: ``"euclidean"`` (the paper) or ``"cosine"``.
        temperature: initial scale of the cosine logits (learned); ignored for
            Euclidean distance.
        centered: cosine on centred embeddings (SimpleShot's CL2N): the buffer
            ``center`` (a mean embedding over the training images, set by the trainer,
            saved with the weights) is subtracted from shots and queries, and the
            device head gets it as its ``center`` array.
    """

    def __init__(self, backbone: Backbone, distance: str = "euclidean", temperature: float = 10.0,
                 centered: bool = False) -> None:
        if distance not in ("euclidean", "cosine"):
            raise ConfigError(f"protonet distance must be 'euclidean' or 'cosine', got {distance!r}")
        if centered and distance != "cosine":
            raise ConfigError("protonet centered=True needs distance 'cosine'")
        options = {"distance": distance, "temperature": temperature}
        if centered:  # absent from older checkpoints, which mean False
            options["centered"] = True
        super().__init__(backbone, **options)
        self.distance = distance
        self.centered = bool(centered)
        self.log_temperature = nn.Parameter(
            torch.tensor(float(np.log(temperature))), requires_grad=distance == "cosine"
        )
        if self.centered:
            self.register_buffer("center", torch.zeros(backbone.spec.embedding_dim))
        self.prototypes: torch.Tensor | None = None

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        emb = self.backbone(support_images)
        ways = int(support_labels.max()) + 1
        onehot = nn.functional.one_hot(support_labels, ways).to(emb.dtype)
        self.prototypes = (onehot.T @ emb) / onehot.sum(0)[:, None]

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self.prototypes is None:
            raise RuntimeError("call process_support_set before classifying queries")
        return self.logits(self.backbone(query_images), self.prototypes)

    def logits(self, queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """float ``(Q, D)`` x ``(N, D)`` -> ``(Q, N)``; distances as matmuls (ONNX-friendly)."""
        if self.distance == "euclidean":
            d2 = (queries**2).sum(1, keepdim=True) - 2 * queries @ prototypes.T + (prototypes**2).sum(1)[None]
            return -d2
        if self.centered:
            queries, prototypes = queries - self.center, prototypes - self.center
        q = nn.functional.normalize(queries, dim=1)
        p = nn.functional.normalize(prototypes, dim=1)
        return self.log_temperature.exp() * (q @ p.T)

    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        # One backbone call for support and queries: one batch-norm batch, half the launches.
        emb = self.backbone(torch.cat([support_images, query_images]))
        support, queries = emb[: len(support_images)], emb[len(support_images) :]
        ways = int(support_labels.max()) + 1
        onehot = nn.functional.one_hot(support_labels, ways).to(emb.dtype)
        prototypes = (onehot.T @ support) / onehot.sum(0)[:, None]
        logits = self.logits(queries, prototypes)
        loss = nn.functional.cross_entropy(logits, query_labels)
        return loss, (logits.argmax(1) == query_labels).float().mean().detach()

    def temperature(self) -> float:
        return float(self.log_temperature.detach().exp()) if self.distance == "cosine" else 1.0

    def head_spec(self) -> HeadSpec:
        arrays = {"center": self.center.detach().numpy().astype(np.float32)} if self.centered else {}
        return HeadSpec("prototype", {"distance": self.distance, "temperature": self.temperature()}, arrays)

    def score_embeddings(self, support, support_labels, queries, ways):
        if self.centered:
            center = self.center.detach().numpy()
            support, queries = support - center, queries - center
        prototypes = class_means(support, support_labels, ways)
        return prototype_logits(queries, prototypes, self.distance, self.temperature())
