"""Camera side of the device runtime: sources (URIs -> frames), capture threads, the real-time loop
(:mod:`edgefs.camera.loop`).

Device side: NumPy and OpenCV only, no torch (DESIGN.md rule 1).
"""

from edgefs.camera.capture import CaptureStats, CaptureThread
from edgefs.camera.sources import SOURCES, Frame, Source, SourceError, open_source, source_forms

__all__ = ["SOURCES", "CaptureStats", "CaptureThread", "Frame", "Source", "SourceError", "open_source",
           "source_forms"]
