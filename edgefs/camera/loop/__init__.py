"""The real-time camera loop, split by job.

:mod:`~edgefs.camera.loop.loop` (:class:`Pipeline`: sources -> one batch -> engine -> head ->
smoothing -> outputs; :func:`open_pipeline`, :func:`run`), :mod:`~edgefs.camera.loop.enrollment`
(live enrollment and the stdin commands), :mod:`~edgefs.camera.loop.outputs` (window, video, JSONL),
:mod:`~edgefs.camera.loop.stats` (stage times, counters, the summary),
:mod:`~edgefs.camera.loop.smoothing` (each source's label smoothing) and
:mod:`~edgefs.camera.loop.signals` (stop on SIGTERM and SIGHUP). ``edgefs run`` runs the loop as it
is; ``edgefs serve`` runs it with the web app attached.

Device side: no torch (DESIGN.md rule 1).
"""

from edgefs.camera.loop.enrollment import (
    CLASS_ROI_SETTING,
    MAX_REFUSED_RECORDS,
    TOO_ALIKE,
    VIEWS_PER_CALL,
    LiveEnrollment,
    ShotRecord,
    classes_with_other_roi,
    too_alike,
)
from edgefs.camera.loop.loop import LOOP_ENGINE_DEFAULTS, Pipeline, RunConfig, loop_threads, open_pipeline, run
from edgefs.camera.loop.outputs import annotate, check_writable, display_available
from edgefs.camera.loop.signals import STOP_SIGNALS, stop_on_signals
from edgefs.camera.loop.smoothing import DEFAULT_SMOOTH, LabelSmoother
from edgefs.camera.loop.stats import STAGES, UNKNOWN, RunSummary, StageTimes

__all__ = [
    "CLASS_ROI_SETTING", "DEFAULT_SMOOTH", "LOOP_ENGINE_DEFAULTS", "MAX_REFUSED_RECORDS", "STAGES", "STOP_SIGNALS",
    "TOO_ALIKE", "UNKNOWN", "VIEWS_PER_CALL", "LabelSmoother", "LiveEnrollment", "Pipeline", "RunConfig",
    "RunSummary", "ShotRecord", "StageTimes", "annotate", "check_writable", "classes_with_other_roi",
    "display_available", "loop_threads", "open_pipeline", "run", "stop_on_signals", "too_alike",
]
