"""The LSTM meta-learner: a learned coordinate-wise optimiser replaces SGD in the fine-tune head's inner loop."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec
from edgefs.heads.lstm_finetune import PREPROCESS_P
from edgefs.methods.base import METHODS, FewShotMethod, device_head_scores


def preprocess(v: torch.Tensor) -> torch.Tensor:
    """Andrychowicz et al.'s gradient scaling, ``(R,)`` -> ``(R, 2)``: :func:`edgefs.heads.lstm_finetune.preprocess`."""
    big = v.abs() >= math.exp(-PREPROCESS_P)
    safe = torch.where(big, v.abs(), torch.ones_like(v))
    first = torch.where(big, safe.log() / PREPROCESS_P, torch.full_like(v, -1.0))
    second = torch.where(big, torch.sign(v), math.exp(PREPROCESS_P) * v)
    return torch.stack([first, second], dim=1)


@METHODS.register("lstm_meta")
class LSTMMetaLearner(FewShotMethod):
    """LSTM meta-learner (Ravi & Larochelle, ICLR 2017; Andrychowicz et al., NeurIPS 2016).

    The inner loop of the device's fine-tune head (a linear softmax layer on unit
    embeddings, rows started imprinted with a learned temperature, mean cross-entropy over
    the support set) with its SGD steps replaced by a coordinate-wise two-layer LSTM: an
    LSTM cell over the preprocessed gradient and loss, then Ravi & Larochelle's cell whose
    state is the parameter, ``theta <- f * theta - scale * i * grad`` with learned input
    and forget gates (:func:`edgefs.heads.lstm_finetune.lstm_finetune`, the device's NumPy
    version). Meta-training backpropagates the query loss through the ``steps`` updates into
    the optimiser, the temperature and the backbone; as in Ravi & Larochelle, the
    optimiser's inputs (the preprocessed gradient and loss) are treated as constants, while
    the gradient in the update is differentiated. The optimiser starts as SGD with rate
    ``lr`` (forget gate ~1, input gate 1/2). The device head is
    :class:`edgefs.heads.lstm_finetune.LSTMFinetuneHead`.

    Args:
        backbone: the embedding network.
        steps: optimiser updates, in training and on the device.
        hidden: width of the LSTM cell (per coordinate).
        lr: the SGD rate the optimiser starts as.
        temperature: initial scale of the imprinted start rows (learned).
    """

    def __init__(self, backbone: Backbone, steps: int = 5, hidden: int = 8, lr: float = 10.0,
                 temperature: float = 10.0) -> None:
        for name, value, low in (("steps", steps, 1), ("hidden", hidden, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"lstm_meta option {name}={value!r} is not valid; give an integer >= {low}")
        for name, value in (("lr", lr), ("temperature", temperature)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"lstm_meta option {name}={value!r} is not valid; give a number > 0")
        super().__init__(backbone, steps=steps, hidden=hidden, lr=float(lr), temperature=float(temperature))
        self.steps = steps
        gen = torch.Generator().manual_seed(0)  # small random LSTM weights: the units must differ to learn
        self.lstm_wx = nn.Parameter(0.1 * torch.randn(4 * hidden, 4, generator=gen))
        self.lstm_wh = nn.Parameter(0.1 * torch.randn(4 * hidden, hidden, generator=gen))
        self.lstm_b = nn.Parameter(torch.zeros(4 * hidden))
        self.gate_w = nn.Parameter(torch.zeros(2, hidden + 2))
        self.gate_b = nn.Parameter(torch.tensor([0.0, 8.0]))  # input gate 1/2, forget gate ~1
        self.log_scale = nn.Parameter(torch.tensor([math.log(2.0 * lr)]))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self._fast: tuple[torch.Tensor, torch.Tensor] | None = None

    def adapt(self, support: torch.Tensor, support_labels: torch.Tensor,
              ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps`` optimiser updates from imprinted rows: float ``(S, D)`` support -> ``(W (N, D), b (N,))``."""
        x = nn.functional.normalize(support, dim=1)
        onehot = nn.functional.one_hot(support_labels, ways).to(x.dtype)
        w0 = self.log_temperature.exp() * nn.functional.normalize(onehot.T @ x, dim=1)
        n, d = x.shape[0], x.shape[1]
        theta = torch.cat([w0.reshape(-1), x.new_zeros(ways)])
        p = theta.numel()
        hdim = self.lstm_wh.shape[1]
        h, cell = x.new_zeros(p, hdim), x.new_zeros(p, hdim)
        gate_i, gate_f = x.new_zeros(p), x.new_zeros(p)
        scale = self.log_scale.exp()[0]
        for _ in range(self.steps):
            w, b = theta[: ways * d].reshape(ways, d), theta[ways * d :]
            logits = x @ w.T + b
            prob = torch.softmax(logits, dim=1)
            loss = nn.functional.cross_entropy(logits, support_labels)
            err = (prob - onehot) / n
            grad = torch.cat([(err.T @ x).reshape(-1), err.sum(0)])
            feats = torch.cat([preprocess(grad.detach()), preprocess(loss.detach().reshape(1)).expand(p, 2)], dim=1)
            z = feats @ self.lstm_wx.T + h @ self.lstm_wh.T + self.lstm_b
            zi, zf, zg, zo = z.chunk(4, dim=1)
            cell = torch.sigmoid(zf) * cell + torch.sigmoid(zi) * torch.tanh(zg)
            h = torch.sigmoid(zo) * torch.tanh(cell)
            gate_i = torch.sigmoid(torch.cat([h, theta[:, None], gate_i[:, None]], dim=1) @ self.gate_w[0]
                                   + self.gate_b[0])
            gate_f = torch.sigmoid(torch.cat([h, theta[:, None], gate_f[:, None]], dim=1) @ self.gate_w[1]
                                   + self.gate_b[1])
            theta = gate_f * theta - scale * gate_i * grad
        return theta[: ways * d].reshape(ways, d), theta[ways * d :]

    @staticmethod
    def head_logits(queries: torch.Tensor, fast: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """float ``(Q, D)`` embeddings -> ``(Q, N)`` logits of the adapted layer."""
        return nn.functional.normalize(queries, dim=1) @ fast[0].T + fast[1]

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        with torch.enable_grad():
            self._fast = self.adapt(self.backbone(support_images), support_labels, int(support_labels.max()) + 1)

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self._fast is None:
            raise RuntimeError("call process_support_set before classifying queries")
        return self.head_logits(self.backbone(query_images), self._fast)

    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        emb = self.backbone(torch.cat([support_images, query_images]))
        support, queries = emb[: len(support_images)], emb[len(support_images) :]
        logits = self.head_logits(queries, self.adapt(support, support_labels, int(support_labels.max()) + 1))
        loss = nn.functional.cross_entropy(logits, query_labels)
        return loss, (logits.argmax(1) == query_labels).float().mean().detach()

    def head_spec(self) -> HeadSpec:
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy().astype(np.float32)

        return HeadSpec("lstm_finetune", {"temperature": float(self.log_temperature.detach().exp()),
                                          "steps": self.steps}, {
            "lstm_wx": arr(self.lstm_wx), "lstm_wh": arr(self.lstm_wh), "lstm_b": arr(self.lstm_b),
            "gate_w": arr(self.gate_w), "gate_b": arr(self.gate_b), "log_scale": arr(self.log_scale),
        })

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)
