"""Device heads and the HeadSpec that every training method produces (no torch).

Each head is one module that registers its class with ``@HEADS.register(name)``;
:data:`HEADS` imports the modules of this package on its first lookup.
"""

from edgefs.heads.base import ClassifyResult, Head, build_head
from edgefs.heads.openset import auroc, calibrate_threshold
from edgefs.heads.spec import HEAD_TYPES, HEADS, HeadSpec

__all__ = ["HEADS", "HEAD_TYPES", "ClassifyResult", "Head", "HeadSpec", "auroc", "build_head", "calibrate_threshold"]
