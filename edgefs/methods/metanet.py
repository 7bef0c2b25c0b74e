"""Meta Networks: a meta-learner turns the support set's loss gradients into fast weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec
from edgefs.methods.base import METHODS, FewShotMethod, device_head_scores


@METHODS.register("metanet")
class MetaNet(FewShotMethod):
    """Meta Networks (Munkhdalai & Yu, ICML 2017).

    Slow weights, learned across tasks by the outer loss: the backbone, a representation
    layer ``h(e) = relu(Q normalize(e) + q)`` and the meta-learner
    ``G(m) = g2 relu(g1 m + g1_b) + g_scale m``. Fast weights, made per task from the
    support set: each class's output row, the mean over its shots of ``G`` applied to the
    meta-information ``m_i``, the gradient of the shot's one-vs-rest logistic loss with
    respect to its class's row at a zero row, ``m_i = -h(e_i) / 2`` (closed form for a
    linear layer, so the device needs no backward pass). Logits:
    ``temperature * cos(h(q), w_c)``.

    The output layer has fast weights only: a slow output row would be shared by
    interchangeable classes and cancel in the softmax (as :mod:`edgefs.methods.maml`
    explains for a learned start row). The paper's representation-level fast weights and
    its per-example fast-weight memory are left out, so enrolling one class on the device
    changes that class's row only. The meta-learner starts as ``G(m) = -2m``: fast rows are
    then class means of ``h``, and training learns how far to move from there. The device
    head is :class:`edgefs.heads.metanet.MetaNetHead`.

    Args:
        backbone: the embedding network.
        hidden: width ``H`` of the representation layer.
        meta_hidden: hidden units of the meta-learner.
        temperature: initial logit scale (learned).
    """

    def __init__(self, backbone: Backbone, hidden: int = 64, meta_hidden: int = 64, temperature: float = 10.0) -> None:
        for name, value in (("hidden", hidden), ("meta_hidden", meta_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"metanet option {name}={value!r} is not valid; give an integer >= 1")
        if not temperature > 0:
            raise ConfigError(f"metanet option temperature={temperature!r} is not valid; give a number > 0")
        super().__init__(backbone, hidden=hidden, meta_hidden=meta_hidden, temperature=float(temperature))
        dim = backbone.spec.embedding_dim
        self.rep = nn.Linear(dim, hidden)
        with torch.no_grad():  # start from the unit embedding itself (rectified)
            self.rep.weight.copy_(torch.eye(hidden, dim))
            self.rep.bias.zero_()
        self.g1 = nn.Linear(hidden, meta_hidden)
        self.g2 = nn.Linear(meta_hidden, hidden, bias=False)
        nn.init.zeros_(self.g2.weight)
        self.g_scale = nn.Parameter(torch.tensor([-2.0]))
        self.log_temperature = nn.Parameter(torch.tensor(float(np.log(temperature))))
        self._fast: torch.Tensor | None = None

    def features(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Slow representation: float ``(R, D)`` -> ``(R, H)``."""
        return torch.relu(self.rep(nn.functional.normalize(embeddings, dim=1)))

    def fast_rows(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
        """Fast output rows ``(N, H)`` from float ``(S, D)`` support embeddings and int64 ``(S,)`` labels."""
        m = -0.5 * self.features(support)  # gradient of softplus(-w . h) at w = 0
        per_shot = self.g_scale * m + self.g2(torch.relu(self.g1(m)))
        onehot = nn.functional.one_hot(support_labels, ways).to(per_shot.dtype)
        return (onehot.T @ per_shot) / onehot.sum(0)[:, None]

    def logits(self, queries: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        """float ``(Q, D)`` query embeddings x ``(N, H)`` fast rows -> ``(Q, N)``."""
        h = nn.functional.normalize(self.features(queries), dim=1)
        return self.log_temperature.exp() * (h @ nn.functional.normalize(fast, dim=1).T)

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        ways = int(support_labels.max()) + 1
        self._fast = self.fast_rows(self.backbone(support_images), support_labels, ways)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self._fast is None:
            raise RuntimeError("call process_support_set before classifying queries")
        return self.logits(self.backbone(query_images), self._fast)

    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        emb = self.backbone(torch.cat([support_images, query_images]))
        support, queries = emb[: len(support_images)], emb[len(support_images) :]
        logits = self.logits(queries, self.fast_rows(support, support_labels, int(support_labels.max()) + 1))
        loss = nn.functional.cross_entropy(logits, query_labels)
        return loss, (logits.argmax(1) == query_labels).float().mean().detach()

    def head_spec(self) -> HeadSpec:
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy().astype(np.float32)

        return HeadSpec("metanet", {"temperature": float(self.log_temperature.detach().exp())}, {
            "q_w": arr(self.rep.weight), "q_b": arr(self.rep.bias), "g1": arr(self.g1.weight),
            "g1_b": arr(self.g1.bias), "g2": arr(self.g2.weight), "g_scale": arr(self.g_scale).reshape(1),
        })

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)
