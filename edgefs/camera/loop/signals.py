"""The camera loop stops on SIGTERM and SIGHUP as it does on Ctrl-C.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefs.camera.loop.loop import Pipeline

#: Signals that end a run as Ctrl-C does: SIGTERM (systemd's, Docker's and Kubernetes' stop) and
#: SIGHUP (the terminal or SSH session went away).
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


@contextmanager
def stop_on_signals(pipeline: Pipeline) -> Iterator[None]:
    """While the loop runs, SIGTERM and SIGHUP ask it to stop after the current batch, as Ctrl-C does:
    capture threads stopped, a started enrollment commit finished, the JSONL and video closed, the
    summary printed and ``--summary-json`` written, exit status 0. A second such signal ends the
    process at once (the store is power-cut safe, so that loses at most the enrollment in flight).

    A signal the process was told to ignore stays ignored (``nohup`` ignores SIGHUP). Signal handlers
    belong to the main thread; called on another thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)  # the next one is not caught: a stuck stop can still be ended
        pipeline.stop(signal.Signals(signum).name)

    previous: dict[int, Any] = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is None or signal.getsignal(sig) is signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
