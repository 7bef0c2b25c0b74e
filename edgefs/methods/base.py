"""The contract every few-shot method follows (after easyfsl's FewShotClassifier)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec, build_head
from edgefs.registry import Registry

if TYPE_CHECKING:
    from edgefs.data.images import ImageSet

#: Methods by name: each module of :mod:`edgefs.methods` with ``@METHODS.register(name)`` on its
#: class; they are imported on the first lookup.
METHODS: Registry[type[FewShotMethod]] = Registry("method", package="edgefs.methods")


class FewShotMethod(nn.Module):
    """A backbone plus the rule that turns a support set into a classifier.

    Subclasses implement ``process_support_set``, ``forward``, ``head_spec`` and
    ``score_embeddings`` (the NumPy rule the device head runs, used for
    evaluation on cached embeddings). ``options`` are the constructor's keyword
    arguments, saved in checkpoints.

    Attributes:
        supported_backbones: registry names of the backbones this method can train;
            ``None`` (the default) accepts every backbone. :func:`build_method` refuses others.
        batch_training: the trainer calls :meth:`batch_loss` on class-balanced batches of
            base-class images with their global labels instead of :meth:`episode_loss`
            (non-episodic pretraining such as Baseline++).
    """

    supported_backbones: ClassVar[tuple[str, ...] | None] = None
    batch_training: ClassVar[bool] = False

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

    def setup(self, train_data: ImageSet) -> None:
        """Hook called once by the trainer with the training split, before the optimizer is built.

        Methods whose parameters depend on the data (a classifier over the base classes)
        or on other files (a distillation teacher) create them here and record what a
        checkpoint needs to rebuild them in ``options``.
        """

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on a batch of base-class images (only for ``batch_training`` methods).

        Args:
            images: uint8 ``(B, H, W, C)``.
            labels: int64 ``(B,)`` global class ids of the training split.

        Returns:
            ``(loss scalar, accuracy scalar)``.
        """
        raise NotImplementedError

    def head_spec(self) -> HeadSpec:
        """The device head this method's training prepared the backbone for."""
        raise NotImplementedError

    def score_embeddings(
        self, support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray, ways: int
    ) -> np.ndarray:
        """NumPy scores ``(Q, N)`` from embeddings: support ``(S, D)``, queries ``(Q, D)``."""
        raise NotImplementedError


def device_head_scores(
    spec: HeadSpec, support: np.ndarray, support_labels: np.ndarray, queries: np.ndarray, ways: int
) -> np.ndarray:
    """Scores of the device head ``spec`` names, enrolled with class ``i`` = support rows labelled ``i``.

    A ``score_embeddings`` built on this runs exactly the device's rule.

    Args:
        spec: the head spec.
        support: float32 ``(S, D)``.
        support_labels: int ``(S,)`` in ``0..ways-1``, every class present.
        queries: float32 ``(Q, D)``.
        ways: ``N``.

    Returns:
        float32 ``(Q, N)``.
    """
    head = build_head(spec, support.shape[1])
    head.add_classes({str(c): support[support_labels == c] for c in range(ways)})
    return head.scores(queries)


def build_method(name: str, backbone: Backbone, **options: Any) -> FewShotMethod:
    """Build method ``name`` on ``backbone``.

    Raises:
        EdgefsError: an unknown method (the message lists the registered ones), a
            backbone the method does not support (the message lists the ones it does), or
            an option the method does not take (the message lists the ones it does).
    """
    cls = METHODS.get(name)
    params = inspect.signature(cls.__init__).parameters.values()
    accepted = [p.name for p in params if p.name not in ("self", "backbone")
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params):
        raise ConfigError(f"method {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(accepted) or 'none'}")
    allowed = cls.supported_backbones
    if allowed is not None and backbone.spec.name not in allowed:
        others = [m for m in METHODS if METHODS.get(m).supported_backbones is None
                  or backbone.spec.name in METHODS.get(m).supported_backbones]
        raise ConfigError(f"method {name!r} cannot train backbone {backbone.spec.name!r}; its backbones: "
                          f"{', '.join(allowed)}. Methods for {backbone.spec.name!r}: {', '.join(others)}")
    return cls(backbone, **options)
