"""Memory-Augmented Neural Network: episodes as sequences read from and written to a key memory."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec
from edgefs.heads.mann import memory_trace
from edgefs.methods.base import METHODS, FewShotMethod, device_head_scores


@METHODS.register("mann")
class MANN(FewShotMethod):
    """Memory-Augmented Neural Network (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML 2016).

    Training presents an episode as a sequence: its support and query images in a random
    order, each class bound to a label drawn afresh per episode (the sampler's shuffled
    labels), so nothing about a class can be stored in the weights. At each step the
    model predicts the item's label by reading memory (cosine attention of the item's key
    over the slots written so far, summed per label), then the label is revealed and the
    item is written; the loss is the cross-entropy of every prediction made while the
    item's label already had a slot (a first sight of a label can only be guessed, as in
    the paper's first-instance accuracy). Writes use the device head's least-recently-used
    rule (:func:`edgefs.heads.mann.memory_trace`), so a sequence longer than ``capacity``
    trains under eviction.

    Differences from the paper, for the device: the controller is feed-forward (one
    linear layer on the unit embedding, a variant the paper also reports) rather than an
    LSTM, and a slot stores its label explicitly (a key-value memory, Kaiser et al. 2017)
    instead of binding it through the controller's state, so enrolling is a write and
    classifying a read with no recurrent state to carry. The device head is
    :class:`edgefs.heads.mann.MANNHead`.

    Args:
        backbone: the embedding network.
        key_dim: width ``K`` of the memory keys.
        capacity: memory slots, in training sequences and on the device.
        temperature: initial read sharpness (learned).
    """

    def __init__(self, backbone: Backbone, key_dim: int = 64, capacity: int = 1024, temperature: float = 10.0) -> None:
        for name, value in (("key_dim", key_dim), ("capacity", capacity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"mann option {name}={value!r} is not valid; give an integer >= 1")
        if not temperature > 0:
            raise ConfigError(f"mann option temperature={temperature!r} is not valid; give a number > 0")
        super().__init__(backbone, key_dim=key_dim, capacity=capacity, temperature=float(temperature))
        dim = backbone.spec.embedding_dim
        self.capacity = capacity
        self.proj = nn.Linear(dim, key_dim)
        with torch.no_grad():  # start as cosine nearest-shot reading on the embedding itself
            self.proj.weight.copy_(torch.eye(key_dim, dim))
            self.proj.bias.zero_()
        self.log_temperature = nn.Parameter(torch.tensor(float(np.log(temperature))))
        self._memory: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def keys(self, embeddings: torch.Tensor) -> torch.Tensor:
        """float ``(R, D)`` -> float ``(R, K)`` unit keys (:func:`edgefs.heads.mann.mann_keys`)."""
        return nn.functional.normalize(self.proj(nn.functional.normalize(embeddings, dim=1)), dim=1)

    def read(self, sim: torch.Tensor, present: torch.Tensor, slot_labels: torch.Tensor, ways: int) -> torch.Tensor:
        """Per-label read logits ``log sum_{j in memory, label j = c} exp(beta * sim[t, j])``.

        Args:
            sim: float ``(T, M)`` key cosines of the readers to the items.
            present: bool ``(T, M)`` which items are in memory for each reader.
            slot_labels: int64 ``(M,)``.
            ways: ``N``.

        Returns:
            float ``(T, N)``; ``-1e4`` (not ``-inf``, so gradients stay finite) for labels with no slot.
        """
        a = self.log_temperature.exp() * sim
        mask = present[:, :, None] & (nn.functional.one_hot(slot_labels, ways).bool()[None])  # (T, M, N)
        scores = torch.where(mask, a[:, :, None], torch.full_like(a[:, :, None], -1e4))
        return torch.logsumexp(scores, dim=1).clamp_min(-1e4)

    def sequence_loss(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read-then-write over float ``(T, D)`` embeddings in sequence order with int64 ``(T,)`` labels."""
        ways = int(labels.max()) + 1
        k = self.keys(emb)
        sim = k @ k.T
        present = memory_trace(sim.detach().cpu().numpy(), labels.cpu().numpy(), self.capacity)
        present_t = torch.from_numpy(present).to(emb.device)
        logits = self.read(sim, present_t, labels, ways)
        onehot = nn.functional.one_hot(labels, ways).bool()
        seen = (present_t[:, :, None] & onehot[None]).any(1)  # (T, N): label has a slot at read time
        scored = seen[torch.arange(len(labels)), labels]
        if not bool(scored.any()):
            return logits.sum() * 0.0, torch.tensor(0.0)
        loss = nn.functional.cross_entropy(logits[scored], labels[scored])
        acc = (logits[scored].argmax(1) == labels[scored]).float().mean()
        return loss, acc.detach()

    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        emb = self.backbone(torch.cat([support_images, query_images]))
        labels = torch.cat([support_labels, query_labels])
        order = torch.randperm(len(labels), device=labels.device)  # the episode as one shuffled sequence
        return self.sequence_loss(emb[order], labels[order])

    def write_support(self, support: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Write float ``(S, D)`` support embeddings in order, class by class as the device head enrolls them."""
        ways = int(support_labels.max()) + 1
        order = torch.cat([torch.nonzero(support_labels == c).flatten() for c in range(ways)])
        k = self.keys(support[order])
        labels = support_labels[order]
        reads = np.zeros(len(labels) + 1, bool)
        reads[-1] = True  # one more reader after the last write: the memory as queries see it
        sim = np.zeros((len(labels) + 1, len(labels) + 1), np.float32)
        sim[: len(labels), : len(labels)] = (k @ k.T).detach().cpu().numpy()
        ext_labels = np.append(labels.cpu().numpy(), 0)
        present = memory_trace(sim, ext_labels, self.capacity, reads)[-1, : len(labels)]
        keep = torch.from_numpy(np.flatnonzero(present)).to(support.device)
        self._memory = (k[keep], labels[keep], ways)

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        self.write_support(self.backbone(support_images), support_labels)

    def memory_logits(self, queries: torch.Tensor) -> torch.Tensor:
        """float ``(Q, D)`` query embeddings -> ``(Q, N)`` read logits of the written memory."""
        if self._memory is None:
            raise RuntimeError("call process_support_set before classifying queries")
        slot_keys, slot_labels, ways = self._memory
        sim = self.keys(queries) @ slot_keys.T
        return self.read(sim, torch.ones_like(sim, dtype=torch.bool), slot_labels, ways)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        return self.memory_logits(self.backbone(query_images))

    def head_spec(self) -> HeadSpec:
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy().astype(np.float32)

        return HeadSpec("mann", {"temperature": float(self.log_temperature.detach().exp()),
                                 "capacity": self.capacity},
                        {"proj": arr(self.proj.weight), "proj_bias": arr(self.proj.bias)})

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)
