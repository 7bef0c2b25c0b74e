"""Knowledge distillation from a larger few-shot model into a small edge backbone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from edgefs.backbones import Backbone
from edgefs.errors import ConfigError
from edgefs.methods.base import METHODS, FewShotMethod
from edgefs.methods.protonet import ProtoNet

if TYPE_CHECKING:
    from edgefs.data.images import ImageSet


@METHODS.register("distill")
class DistilledProtoNet(ProtoNet):
    """A ProtoNet student trained towards a frozen teacher (Hinton, Vinyals & Dean 2015).

    Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS Deep Learning
    Workshop 2015, applied to episodes: the student (e.g. conv4) minimises

    ``(1 - logit_weight) * CE(student logits) + logit_weight * T^2 * KL(teacher_T || student_T)
    + embed_weight * (1 - cos(P s, t))``

    where ``*_T`` are the episode's softmax outputs at temperature ``T``
    (``kd_temperature``), the teacher's logits come from its own device rule
    (``score_embeddings``, so any method's checkpoint can teach), and ``P`` is a learned
    linear projection of the student embedding ``s`` onto the teacher's ``t`` (FitNets-
    style hint, Romero et al. 2015). Images are resized to the teacher's input size and
    converted to its channels. The teacher is loaded by :meth:`setup` (training only):
    it is not a submodule, so it is neither optimised nor saved, and a student
    checkpoint loads without the teacher's file. The device head is the student's
    prototype head; ``P`` is training-only.

    Args:
        backbone: the student's embedding network.
        teacher: path of the teacher's edgefs checkpoint.
        teacher_dim: the teacher's embedding size (set by :meth:`setup`; saved so a
            checkpoint rebuilds ``P``).
        distance: the student's ProtoNet distance, ``"euclidean"`` or ``"cosine"``.
        temperature: initial cosine-logit scale (cosine only).
        logit_weight: share of the KL term against the student's own cross-entropy.
        kd_temperature: softmax temperature of the KL term.
        embed_weight: weight of the embedding (hint) term; 0 turns it off.
    """

    def __init__(self, backbone: Backbone, teacher: str = "", teacher_dim: int = 0, distance: str = "euclidean",
                 temperature: float = 10.0, logit_weight: float = 0.5, kd_temperature: float = 4.0,
                 embed_weight: float = 1.0) -> None:
        if not 0.0 <= logit_weight <= 1.0 or kd_temperature <= 0 or embed_weight < 0 or teacher_dim < 0:
            raise ConfigError("distill needs 0 <= logit_weight <= 1, kd_temperature > 0, embed_weight >= 0 and "
                              f"teacher_dim >= 0; got {logit_weight}, {kd_temperature}, {embed_weight}, {teacher_dim}")
        super().__init__(backbone, distance=distance, temperature=temperature)
        self.options.update(teacher=str(teacher), teacher_dim=teacher_dim, logit_weight=logit_weight,
                            kd_temperature=kd_temperature, embed_weight=embed_weight)
        self.projection: nn.Linear | None = None
        if teacher_dim:
            self.projection = nn.Linear(backbone.spec.embedding_dim, teacher_dim, bias=False)
        # A list, not an attribute: the frozen teacher must stay out of parameters() and state_dict().
        self._teacher: list[FewShotMethod] = []

    def setup(self, train_data: ImageSet) -> None:
        """Load the frozen teacher and size the projection to its embedding."""
        from edgefs.train.checkpoint import load_checkpoint  # only a run that distils needs the training package

        path = self.options["teacher"]
        if not path:
            raise ConfigError("method 'distill' needs a teacher checkpoint: set method_options: {teacher: "
                              "path/to/best.pt} (train one with e.g. 'edgefs train --backbone resnet12')")
        if not Path(path).is_file():
            raise ConfigError(f"distill teacher checkpoint {path} does not exist; train the teacher first")
        teacher, _ = load_checkpoint(path)
        teacher.requires_grad_(False)
        device = self.log_temperature.device
        self._teacher = [teacher.to(device).eval()]
        dim = teacher.backbone.spec.embedding_dim
        if self.projection is None or self.projection.out_features != dim:
            self.projection = nn.Linear(self.backbone.spec.embedding_dim, dim, bias=False).to(device)
            self.options["teacher_dim"] = dim

    @torch.no_grad()
    def teacher_embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, C)`` at the student's size -> float32 ``(B, D_teacher)``."""
        backbone = self._teacher[0].backbone
        x = backbone.input(images)  # channel conversion and normalisation
        size = backbone.spec.input_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=x.shape[-1] > size)
        return backbone.features(x).float()

    def episode_loss(self, support_images, support_labels, query_images, query_labels):
        if not self._teacher or self.projection is None:
            raise RuntimeError("distill has no teacher loaded; the trainer calls setup() before training")
        images = torch.cat([support_images, query_images])
        n_support = len(support_images)
        emb = self.backbone(images)
        support, queries = emb[:n_support], emb[n_support:]
        ways = int(support_labels.max()) + 1
        onehot = nn.functional.one_hot(support_labels, ways).to(emb.dtype)
        logits = self.logits(queries, (onehot.T @ support) / onehot.sum(0)[:, None])
        ce = nn.functional.cross_entropy(logits, query_labels)

        t_emb = self.teacher_embed(images)
        t_scores = self._teacher[0].score_embeddings(
            t_emb[:n_support].cpu().numpy(), support_labels.cpu().numpy(), t_emb[n_support:].cpu().numpy(), ways)
        t_logits = torch.as_tensor(t_scores, device=logits.device)
        temp = float(self.options["kd_temperature"])
        kd = nn.functional.kl_div(torch.log_softmax(logits / temp, dim=1), torch.log_softmax(t_logits / temp, dim=1),
                                  reduction="batchmean", log_target=True) * temp**2
        hint = 1.0 - nn.functional.cosine_similarity(self.projection(emb), t_emb, dim=1).mean()
        alpha = float(self.options["logit_weight"])
        loss = (1.0 - alpha) * ce + alpha * kd + float(self.options["embed_weight"]) * hint
        return loss, (logits.argmax(1) == query_labels).float().mean().detach()
