"""How a :class:`edgefs.service.classifier.Classifier` is opened: one object for the engine and head choices.

``edgefs run``, ``edgefs serve``, ``edgefs enroll``, the demo and ``edgefs tune`` all pass the same few
choices (engine backend, device, threads, head, unknown threshold, engine options, shot views) from
their flags down to :meth:`Classifier.open`; :class:`EngineOptions` carries them in one piece, so that
the camera loop and the web app above the service pass it on without naming each.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EngineOptions:
    """The engine and head a classifier is opened with.

    Attributes:
        backend: engine backend (:func:`edgefs.runtime.select.open_engine`), ``"auto"`` to choose.
        device: ``cpu``, ``cuda`` or ``cuda:N``; None: the backend's choice.
        threads: CPU threads for the engine; None: the caller's default (the camera loop: all cores
            but one; elsewhere the backend's).
        head_type: a head type to use instead of the bundle's (e.g. ``"imprint"``); None: the bundle's.
        threshold: the unknown threshold (:data:`edgefs.service.classifier.THRESHOLD_MODES` or a cosine);
            None: the store's saved choice.
        engine_options: backend tuning (``open_engine``'s ``options``: ``allow_spinning``, ``on_mismatch``,
            ``hint``, ``streams``); None: none.
        shot_views: enroll each shot as the mean embedding of this many views (1, 5 or 7); None: the
            store's saved choice.
    """

    backend: str = "auto"
    device: str | None = None
    threads: int | None = None
    head_type: str | None = None
    threshold: str | float | None = None
    engine_options: Mapping[str, Any] | None = field(default=None, hash=False)
    shot_views: int | None = None
