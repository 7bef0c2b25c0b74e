"""Device heads and the HeadSpec that every training method produces (no torch)."""

from edgefs.heads.spec import HEAD_TYPES, HeadSpec

__all__ = ["HEAD_TYPES", "HeadSpec"]

# Device heads register themselves in HEADS on import (NumPy only).
from edgefs.heads import (  # noqa: F401 - importing registers each head
    den,
    finetune,
    imprint,
    lstm_finetune,
    mann,
    matching,
    metanet,
    progressive,
    prototype_head,
    relation,
    siamese,
)
from edgefs.heads.base import HEADS, ClassifyResult, Head, build_head
from edgefs.heads.openset import auroc, calibrate_threshold

__all__ += ["HEADS", "ClassifyResult", "Head", "auroc", "build_head", "calibrate_threshold"]
