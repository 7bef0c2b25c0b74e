"""Device heads and the HeadSpec that every training method produces (no torch)."""

from edgefs.heads.spec import HEAD_TYPES, HeadSpec

__all__ = ["HEAD_TYPES", "HeadSpec"]
