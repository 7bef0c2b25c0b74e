"""The MAML family (MAML, first-order MAML, Reptile, Meta-SGD) with an inner loop the device can run.

All four share one inner loop: plain SGD on a linear softmax layer over L2-normalised
embeddings, ``logits = normalize(e) @ W.T + b``, mean cross-entropy over the support set,
``steps`` steps, no momentum, no penalty. That is exactly the rule of the device's
fine-tune head (:class:`edgefs.heads.finetune.FinetuneHead` running
:func:`edgefs.heads.reference.finetune`), so the device reproduces the training-time
adaptation behind a frozen backbone (ANIL, Raghu et al. ICLR 2020: adapting the last layer
only loses little).

Initial rows. N-way classes are interchangeable, so a meta-learned start can only be one
row ``w_init`` (and one bias ``b_init``) shared by every class. With no weight penalty such a
shared row adds the same ``q . w_init + b_init`` to every class's logit at every step: it
cancels in the softmax, so it changes neither the adapted predictions nor the gradients
(its own meta-gradient is exactly zero). Learning it is a no-op, so ``init="zero"`` starts
from ``W = 0, b = 0`` (ANIL's head; the "zero trick" of Kao et al., ICLR 2022), shipped as
zero ``w_init``/``b_init`` spec arrays so the device does not imprint. ``init="imprint"``
(the default) starts each row from ``temperature * normalize(mean of normalised shots)``
with a learned temperature -- the device head's default imprinting and, on unit
embeddings, the prototype initialisation of Proto-MAML (Triantafillou et al., ICLR 2020).
It is data-dependent, so unlike a shared row it does carry information, and it trains
faster: 98.0% vs 94.3% glyph 5w1s validation for ``maml`` after 90 s on one CPU thread.

``inner="full"`` adapts the whole backbone too (second order through ``torch.func``, or
first order), on the same episodes, for the head-only vs full-network comparison; its head
spec is still the device fine-tune head, which adapts the last layer only, so its
image-level accuracy (:func:`evaluate_on_images`, the network really adapted per episode)
is what a full-network MAML reaches and its device accuracy is what the device reaches.
Its batch-norm layers normalise with the support set's batch statistics under the adapted
weights, in training and evaluation alike, queries included (folded into the layers' scale
and shift): inner steps taken under batch statistics do not transfer to running statistics
(38% instead of 98% 5w1s in a quick glyph run), and query-batch statistics would let the
queries inform one another.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.heads import HeadSpec
from edgefs.methods.base import METHODS, FewShotMethod, device_head_scores

if TYPE_CHECKING:
    from edgefs.data.episodes import EpisodeList
    from edgefs.data.images import ImageSet
    from edgefs.eval.episodic import Accuracy

INNER_LOOPS = ("head", "full")
INITS = ("zero", "imprint")
ORDERS = ("second", "first")

#: The adapted tensors of an episode: ``"W"`` float ``(N, D)``, ``"b"`` float ``(N,)`` and, with
#: ``inner="full"``, ``"body.<name>"`` for every backbone parameter.
Fast = dict[str, torch.Tensor]


def _choice(method: str, option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{method} option {option}={value!r} is not valid; choose one of {', '.join(choices)}")


@contextmanager
def batchnorm_mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Put only the batch-norm layers of ``module`` in train (batch statistics) or eval mode."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [m.training for m in layers]
    for m in layers:
        m.training = training
    try:
        yield
    finally:
        for m, mode in zip(layers, before, strict=True):
            m.training = mode


def head_cross_entropy(fast: Fast, x_n: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the linear head ``fast`` on unit rows ``x_n`` float ``(S, D)``."""
    return nn.functional.cross_entropy(x_n @ fast["W"].T + fast["b"], labels)


class MAMLFamily(FewShotMethod):
    """Shared machinery of the MAML family (not registered itself).

    Subclasses set :attr:`outer` (``"maml"``: the query loss after adaptation, through the
    inner loop; ``"reptile"``: the sum of the inner-loop gradients), :attr:`order`
    (``"second"`` differentiates through the inner gradients, ``"first"`` treats them as
    constants) and :attr:`per_parameter_lr` (Meta-SGD).

    Args:
        backbone: the embedding network.
        inner: ``"head"`` (last layer only; what the device runs) or ``"full"`` (every
            backbone parameter and the last layer).
        init: ``"zero"`` or ``"imprint"`` initial rows (module docstring).
        steps: inner SGD steps, in training and on the device.
        lr: initial inner learning rate of ``W`` (one value, or Meta-SGD's start for each of
            the ``D`` rates; learned on a log scale when ``learn_lr``).
        lr_b: initial inner learning rate of ``b``; defaults to ``lr``.
        body_lr: initial inner learning rate of the backbone (``inner="full"`` only).
        learn_lr: meta-learn the inner learning rates.
        temperature: initial scale of imprinted rows (learned with ``init="imprint"``).
    """

    outer: ClassVar[str] = "maml"
    order: ClassVar[str] = "second"
    per_parameter_lr: ClassVar[bool] = False
    name: ClassVar[str] = "maml"

    def __init__(self, backbone: Backbone, inner: str = "head", init: str = "imprint", steps: int = 5,
                 lr: float = 10.0, lr_b: float | None = None, body_lr: float = 0.05, learn_lr: bool = True,
                 temperature: float = 10.0) -> None:
        _choice(self.name, "inner", inner, INNER_LOOPS)
        _choice(self.name, "init", init, INITS)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"{self.name} option steps={steps!r} is not valid; give an integer >= 1")
        lr_b = lr if lr_b is None else lr_b
        for option, value in (("lr", lr), ("lr_b", lr_b), ("body_lr", body_lr), ("temperature", temperature)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{self.name} option {option}={value!r} is not valid; give a number > 0")
        if self.outer == "reptile" and learn_lr:
            raise ConfigError("reptile cannot learn its inner learning rates (its update is the sum of the "
                              "inner-loop gradients, which gives them no gradient); set learn_lr: false, or "
                              "use maml, fomaml or metasgd")
        if self.per_parameter_lr and not learn_lr:
            raise ConfigError("metasgd learns its per-parameter rates by definition; set learn_lr: true, or "
                              "use maml for fixed rates")
        super().__init__(backbone, inner=inner, init=init, steps=steps, lr=float(lr), lr_b=float(lr_b),
                         body_lr=float(body_lr), learn_lr=bool(learn_lr), temperature=float(temperature))
        self.inner, self.init, self.steps = inner, init, int(steps)
        dim = backbone.spec.embedding_dim
        # Rates live on a log scale: positive, and Adam moves them by a ratio rather than an amount.
        shape = (dim,) if self.per_parameter_lr else ()
        self.log_lr = nn.Parameter(torch.full(shape, math.log(lr)), requires_grad=learn_lr)
        self.log_lr_b = nn.Parameter(torch.tensor(math.log(lr_b)), requires_grad=learn_lr)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=init == "imprint")
        self.log_body_lr: nn.ParameterDict | None = None
        if inner == "full":
            self.log_body_lr = nn.ParameterDict({
                self._body_key(name): nn.Parameter(torch.full(p.shape if self.per_parameter_lr else (),
                                                              math.log(body_lr)), requires_grad=learn_lr)
                for name, p in backbone.named_parameters()
            })
        self._fast: Fast | None = None
        self._norm: dict[str, torch.Tensor] | None = None

    # ---- the inner loop -------------------------------------------------------------------------
    @staticmethod
    def _body_key(name: str) -> str:
        return name.replace(".", "__")  # ParameterDict keys cannot hold dots

    def rates(self, fast: Fast) -> dict[str, torch.Tensor]:
        """Inner learning rate per adapted tensor: ``W`` () or ``(D,)`` (broadcast over rows), ``b`` ()."""
        out = {"W": self.log_lr.exp(), "b": self.log_lr_b.exp()}
        for key in fast:
            if key.startswith("body.") and self.log_body_lr is not None:
                out[key] = self.log_body_lr[self._body_key(key[5:])].exp()
        return out

    def initial_head(self, support_n: torch.Tensor, support_labels: torch.Tensor, ways: int) -> Fast:
        """Start rows ``W`` ``(N, D)`` and bias ``b`` ``(N,)`` from unit support rows ``(S, D)``.

        ``imprint`` is the device head's rule: ``temperature * normalize(mean_k normalize(e_k))``.
        """
        n, d = ways, support_n.shape[1]
        if self.init == "zero":
            return {"W": support_n.new_zeros(n, d), "b": support_n.new_zeros(n)}
        onehot = nn.functional.one_hot(support_labels, ways).to(support_n.dtype)
        means = nn.functional.normalize(onehot.T @ support_n, dim=1)  # the sum has the mean's direction
        return {"W": self.log_temperature.exp().to(support_n.dtype) * means, "b": support_n.new_zeros(n)}

    def inner_loop(self, fast: Fast, loss: Callable[..., torch.Tensor], args: tuple[Any, ...],
                   order: str) -> tuple[list[Fast], list[Fast]]:
        """``steps`` plain SGD steps ``fast <- fast - rate * grad loss(fast, *args)``.

        Args:
            fast: the start tensors (live: gradients flow back to what made them).
            loss: ``loss(fast, *args) -> scalar``.
            args: the support data; for ``order="first"`` the caller passes it detached.
            order: ``"second"``: the gradient is a differentiable function of ``fast`` and
                ``args`` (``torch.func.grad``, so the outer backward runs through it);
                ``"first"``: it is computed on detached copies and enters as a constant.

        Returns:
            ``(iterates, grads)``: ``steps + 1`` dicts ``fast_0..fast_k`` and the ``steps``
            gradients (detached).
        """
        grad_fn = grad(loss)
        iterates, grads = [fast], []
        for _ in range(self.steps):
            g = grad_fn(fast if order == "second" else {k: v.detach() for k, v in fast.items()}, *args)
            rate = self.rates(fast)
            fast = {k: v - rate[k].to(v.dtype) * (g[k] if order == "second" else g[k].detach())
                    for k, v in fast.items()}
            iterates.append(fast)
            grads.append({k: v.detach() for k, v in g.items()})
        return iterates, grads

    def _full_loss(self, fast: Fast, buffers: dict[str, torch.Tensor], images: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
        # Buffers come in as arguments: batch-norm updates its running statistics in place, which
        # torch.func allows for inputs but not for captured tensors.
        emb = functional_call(self.backbone, {**self._body(fast), **buffers}, (images,))
        return head_cross_entropy(fast, nn.functional.normalize(emb, dim=1), labels)

    @staticmethod
    def _body(fast: Fast) -> dict[str, torch.Tensor]:
        return {k[5:]: v for k, v in fast.items() if k.startswith("body.")}

    def _support_norm(self, fast: Fast, buffers: dict[str, torch.Tensor],
                      support_images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch-norm overrides that normalise any batch with the support set's statistics.

        Runs the support images through the adapted network with batch statistics and folds
        each layer's mean and (biased) variance into its scale and shift, with unit running
        statistics: eval-mode batch-norm then computes exactly the train-mode output of the
        support batch, for queries one at a time, and the statistics stay differentiable
        (eval batch-norm has no gradient for running statistics, but has one for its weights).

        Returns:
            ``{"<layer>.weight", "<layer>.bias", "<layer>.running_mean", "<layer>.running_var"}``
            for every batch-norm layer, to pass to ``functional_call`` after the parameters.
        """
        body = self._body(fast)
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = []
        for name, layer in self.backbone.named_modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                def capture(_: nn.Module, inputs: tuple[torch.Tensor, ...], name: str = name) -> None:
                    dims = [d for d in range(inputs[0].ndim) if d != 1]
                    stats[name] = (inputs[0].mean(dims), inputs[0].var(dims, unbiased=False))
                hooks.append(layer.register_forward_pre_hook(capture))
        try:
            with batchnorm_mode(self.backbone, True):
                functional_call(self.backbone, {**body, **buffers}, (support_images,))
        finally:
            for hook in hooks:
                hook.remove()
        overrides = {}
        for name, (mean, var) in stats.items():
            layer = self.backbone.get_submodule(name)
            scale = body[f"{name}.weight"] * torch.rsqrt(var + layer.eps)
            overrides[f"{name}.weight"] = scale * math.sqrt(1.0 + layer.eps)
            overrides[f"{name}.bias"] = body[f"{name}.bias"] - mean * scale
            overrides[f"{name}.running_mean"] = torch.zeros_like(mean)
            overrides[f"{name}.running_var"] = torch.ones_like(var)
        return overrides

    def _full_logits(self, fast: Fast, norm: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                     images: torch.Tensor) -> torch.Tensor:
        """Logits of the adapted network, batch-norm on the support statistics ``norm``."""
        with batchnorm_mode(self.backbone, False):
            emb = functional_call(self.backbone, {**self._body(fast), **buffers, **norm}, (images,))
        return self.head_logits(emb, fast)

    def _full_adapt(self, s_img: torch.Tensor, s_lab: torch.Tensor, ways: int, order: str,
                    buffers: dict[str, torch.Tensor], live: bool) -> tuple[Fast, list[Fast], list[Fast]]:
        """The full-network inner loop, batch-norm on the support batch's statistics.

        Returns:
            ``(fast_0, iterates, grads)`` as :meth:`inner_loop`, with the start tensors.
        """
        params = {f"body.{k}": v if live else v.detach() for k, v in self.backbone.named_parameters()}
        with batchnorm_mode(self.backbone, True):
            if self.init == "imprint":
                emb = functional_call(self.backbone, {**self._body(params), **buffers}, (s_img,))
                head0 = self.initial_head(nn.functional.normalize(emb, dim=1), s_lab, ways)
            else:
                dim = self.backbone.spec.embedding_dim
                head0 = {"W": self.log_lr.new_zeros(ways, dim), "b": self.log_lr.new_zeros(ways)}
            if not live:
                head0 = {k: v.detach() for k, v in head0.items()}
            fast0 = {**params, **head0}
            iterates, grads = self.inner_loop(fast0, self._full_loss, (buffers, s_img, s_lab), order)
        return fast0, iterates, grads

    # ---- head-only adaptation on embeddings (what the device runs) ------------------------------
    def adapt_head(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
                   order: str | None = None) -> Fast:
        """Adapt the last layer on support embeddings (not normalised) float ``(S, D)``.

        Args:
            support: float ``(S, D)`` raw embeddings.
            support_labels: int64 ``(S,)`` in ``0..ways-1``.
            ways: ``N``.
            order: ``"second"`` or ``"first"``; defaults to the method's.

        Returns:
            ``{"W": (N, D), "b": (N,)}`` after ``steps`` steps.
        """
        x_n = nn.functional.normalize(support, dim=1)
        order = order or self.order
        args = (x_n if order == "second" else x_n.detach(), support_labels)
        iterates, _ = self.inner_loop(self.initial_head(x_n, support_labels, ways), head_cross_entropy,
                                      args, order)
        return iterates[-1]

    @staticmethod
    def head_logits(queries: torch.Tensor, fast: Fast) -> torch.Tensor:
        """float ``(Q, D)`` raw query embeddings -> ``(Q, N)`` logits of the adapted head."""
        return nn.functional.normalize(queries, dim=1) @ fast["W"].T + fast["b"]

    # ---- training ---------------------------------------------------------------------------------
    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        ways = int(support_labels.max()) + 1
        if self.inner == "head":
            loss, logits = self._head_episode(support_images, support_labels, query_images, query_labels, ways)
        else:
            loss, logits = self._full_episode(support_images, support_labels, query_images, query_labels, ways)
        return loss, (logits.argmax(1) == query_labels).float().mean().detach()

    def _head_episode(self, s_img, s_lab, q_img, q_lab, ways):
        # One backbone call for support and queries: one batch-norm batch, as ProtoNet.
        emb = self.backbone(torch.cat([s_img, q_img]))
        return self.head_meta_loss(emb[: len(s_img)], s_lab, emb[len(s_img) :], q_lab, ways)

    def head_meta_loss(self, support: torch.Tensor, support_labels: torch.Tensor, queries: torch.Tensor,
                       query_labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The meta-training loss of one episode on embeddings, for ``inner="head"``.

        Args:
            support: float ``(S, D)`` raw support embeddings.
            support_labels: int64 ``(S,)`` in ``0..ways-1``.
            queries: float ``(Q, D)`` raw query embeddings.
            query_labels: int64 ``(Q,)``.
            ways: ``N``.

        Returns:
            ``(loss scalar, logits (Q, N))``: the query cross-entropy after adaptation, whose
            gradient is the method's meta-gradient (for Reptile the value is that loss and the
            gradient the Reptile direction).
        """
        if self.outer == "maml":
            logits = self.head_logits(queries, self.adapt_head(support, support_labels, ways))
            return nn.functional.cross_entropy(logits, query_labels), logits
        x_n = nn.functional.normalize(support, dim=1)
        fast0 = self.initial_head(x_n, support_labels, ways)
        iterates, _ = self.inner_loop(fast0, head_cross_entropy, (x_n.detach(), support_labels), "first")
        # Reptile: the loss of every step, each at its iterate (moved off the live start by a
        # constant), so the gradient is the sum of the inner-loop gradients plus a last step on
        # the queries; the backbone, not adapted here, gets its gradients along that trajectory.
        at = [{k: fast0[k] + (it[k] - fast0[k]).detach() for k in fast0} for it in iterates]
        surrogate = sum(head_cross_entropy(a, x_n, support_labels) for a in at[:-1])
        logits = self.head_logits(queries, at[-1])
        query = nn.functional.cross_entropy(logits, query_labels)
        return self._report(query, surrogate + query), logits

    def _full_episode(self, s_img, s_lab, q_img, q_lab, ways):
        # Batch-norm normalises every pass with the support set's batch statistics (the queries
        # too, through _support_norm): the same rule at evaluation, and no query sees another.
        buffers = dict(self.backbone.named_buffers())
        order = "first" if self.outer == "reptile" else self.order
        fast0, iterates, grads = self._full_adapt(s_img, s_lab, ways, order, buffers, live=True)
        if self.outer == "maml":
            fast = iterates[-1]
            logits = self._full_logits(fast, self._support_norm(fast, buffers, s_img), buffers, q_img)
            return nn.functional.cross_entropy(logits, q_lab), logits
        # Reptile: the query loss at the adapted point (a constant offset from the live start)
        # plus <start, sum of support gradients>, whose gradient is that sum: no extra forwards.
        at = {k: fast0[k] + (iterates[-1][k] - fast0[k]).detach() for k in fast0}
        logits = self._full_logits(at, self._support_norm(at, buffers, s_img), buffers, q_img)
        query = nn.functional.cross_entropy(logits, q_lab)
        summed = {k: sum(g[k] for g in grads) for k in fast0}
        surrogate = sum((fast0[k] * summed[k]).sum() for k in fast0 if fast0[k].requires_grad)
        return self._report(query, surrogate + query), logits

    @staticmethod
    def _report(value: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
        """A scalar equal to ``value`` whose gradient is ``objective``'s (Reptile logs the query loss)."""
        return objective + (value - objective).detach()

    # ---- the FewShotMethod contract on images -----------------------------------------------------
    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Adapt to a support set (uint8 ``(N*K, H, W, C)``, int64 ``(N*K,)``) without meta-gradients.

        ``inner="head"``: the device's rule on the backbone's embeddings (batch-norm as the module
        is set). ``inner="full"``: the whole network adapted, batch-norm on the support set's
        statistics as in training (running statistics untouched): the full variant's own accuracy.
        """
        ways = int(support_labels.max()) + 1
        self._norm = None
        if self.inner == "head":
            with torch.no_grad():
                emb = self.backbone(support_images)
            with torch.enable_grad():
                fast = self.adapt_head(emb, support_labels, ways, order="first")
        else:
            buffers = {k: v.clone() for k, v in self.backbone.named_buffers()}
            with torch.enable_grad():
                _, iterates, _ = self._full_adapt(support_images, support_labels, ways, "first", buffers, live=False)
            fast = {k: v.detach() for k, v in iterates[-1].items()}
            with torch.no_grad():
                self._norm = self._support_norm(fast, buffers, support_images)
        self._fast = {k: v.detach() for k, v in fast.items()}

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        if self._fast is None:
            raise RuntimeError("call process_support_set before classifying queries")
        if self.inner == "head":
            return self.head_logits(self.backbone(query_images), self._fast)
        return self._full_logits(self._fast, self._norm, dict(self.backbone.named_buffers()), query_images)

    # ---- the device head --------------------------------------------------------------------------
    def head_spec(self) -> HeadSpec:
        dim = self.backbone.spec.embedding_dim
        lr = self.log_lr.detach().exp().float().cpu().numpy().astype(np.float32)
        params = {"lr": float(lr.mean()), "lr_b": float(self.log_lr_b.detach().exp()), "steps": self.steps,
                  "momentum": 0.0, "l2": 0.0, "penalty": "none",
                  "temperature": float(self.log_temperature.detach().exp())}
        arrays: dict[str, np.ndarray] = {}
        if self.init == "zero":
            arrays["w_init"] = np.zeros(dim, np.float32)
            arrays["b_init"] = np.zeros(1, np.float32)
        if self.per_parameter_lr:
            arrays["lr"] = lr.reshape(dim)
        return HeadSpec("finetune", params, arrays)

    def score_embeddings(self, support, support_labels, queries, ways):
        return device_head_scores(self.head_spec(), support, support_labels, queries, ways)


@METHODS.register("maml")
class MAML(MAMLFamily):
    """Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), second order.

    The meta-loss is the query cross-entropy after ``steps`` inner SGD steps on the support
    set, differentiated through the inner loop (``torch.func.grad``); the inner learning rates
    are meta-learned too (as in Li et al.'s Meta-SGD, but one rate for ``W``, one for ``b``
    and, with ``inner="full"``, one per backbone tensor).
    See :class:`MAMLFamily` for the options and the module docstring for the device head.
    """

    name = "maml"


@METHODS.register("fomaml")
class FOMAML(MAMLFamily):
    """First-order MAML (Finn, Abbeel & Levine, ICML 2017, section 5.2).

    As :class:`MAML`, with the inner gradients treated as constants: the meta-gradient is the
    query-loss gradient at the adapted point (plus the learning rates' gradient, which needs no
    second derivative). With ``inner="head"`` and ``init="zero"`` the support embeddings then
    get no gradient; the backbone learns through the queries.
    """

    name = "fomaml"
    order = "first"


@METHODS.register("reptile")
class Reptile(MAMLFamily):
    """Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018).

    The meta-gradient is the sum of the inner-loop gradients, ``(theta - theta_k) / lr`` for
    the adapted parameters: ``steps`` steps on the support set, then one on the queries (a
    second mini-batch of the task, which gives Reptile its MAML-like term); that last term is
    exactly first-order MAML's gradient. With ``inner="head"`` the backbone is not adapted and
    receives its gradients along the same trajectory. Applied by the trainer's Adam (Nichol et
    al. also use Adam on this direction). Fixed inner rates (``learn_lr`` is refused).
    """

    name = "reptile"
    outer = "reptile"
    order = "first"

    def __init__(self, backbone: Backbone, inner: str = "head", init: str = "imprint", steps: int = 5,
                 lr: float = 10.0, lr_b: float | None = None, body_lr: float = 0.05, learn_lr: bool = False,
                 temperature: float = 10.0) -> None:
        super().__init__(backbone, inner=inner, init=init, steps=steps, lr=lr, lr_b=lr_b, body_lr=body_lr,
                         learn_lr=learn_lr, temperature=temperature)


@METHODS.register("metasgd")
class MetaSGD(MAMLFamily):
    """Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML with a learned learning rate per parameter.

    One rate per embedding dimension ``(D,)``, shared by the interchangeable class rows (the
    device head's ``lr`` spec array), one for the bias; with ``inner="full"`` one per backbone
    weight as well. The paper's rates are unconstrained; here they are ``exp`` of the learned
    values, so they stay positive and Adam scales them by ratios (their useful size, tens on
    unit embeddings, is far from Adam's step).
    """

    name = "metasgd"
    per_parameter_lr = True


def evaluate_on_images(method: FewShotMethod, data: ImageSet, episodes: EpisodeList,
                       device: torch.device | str = "cpu") -> Accuracy:
    """Accuracy from images, each episode adapted by ``process_support_set`` then ``forward``.

    For ``inner="full"`` this is the full-network variant's real accuracy (the backbone adapted
    per episode; batch-norm on running statistics, as everywhere in edgefs), to set beside its
    device accuracy from :meth:`score_embeddings`.

    Args:
        method: a trained method (put in eval mode here, restored after).
        data: the split the episodes index.
        episodes: fixed episodes.
        device: where to run.

    Returns:
        Mean accuracy and 95% CI over the episodes.
    """
    from edgefs.eval.episodic import Accuracy

    was_training = method.training
    method.eval()
    accs = np.empty(len(episodes.episodes))
    try:
        for i, ep in enumerate(episodes.episodes):
            images = torch.from_numpy(np.ascontiguousarray(data.images[np.concatenate([ep.support, ep.query])]))
            images = images.to(device)
            n = len(ep.support)
            method.process_support_set(images[:n], torch.from_numpy(ep.support_labels()).long().to(device))
            with torch.no_grad():
                pred = method(images[n:]).argmax(1).cpu().numpy()
            accs[i] = float((pred == ep.query_labels()).mean())
    finally:
        method.train(was_training)
    return Accuracy.from_episodes(accs)
