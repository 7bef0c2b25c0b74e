"""A source that fails on purpose: wraps a real one, drops it after N frames and refuses M reopens.

For resilience demos and tests: ``flaky:fail_after=50,fail_opens=2:synthetic:DIR?fps=30``
behaves like a camera that is unplugged after 50 frames and comes back on the
third attempt to reopen it. The frames are the wrapped source's (its labels too);
since sources resume on reopen, a flaky file still yields every frame once.
"""

from __future__ import annotations

import re

import numpy as np

from edgefs.camera.sources import Source, SourceError, SourceOptions, open_source, register_source

_OPTION_LIST = re.compile(r"^(\w+=[^,:/\\]*)(,\w+=[^,:/\\]*)*$")


@register_source
class FlakySource(Source):
    """Wraps ``inner``; after ``fail_after`` frames since an open, ``read()`` raises :class:`SourceError`.

    The next ``fail_opens`` calls to ``open()`` then raise too, and the one after opens
    the wrapped source again (resuming it). This happens ``repeat`` times (0: forever).

    Options (before the wrapped URI, ``flaky:KEY=V,KEY=V:URI``, or as keyword
    arguments): ``fail_after`` (default 100), ``fail_opens`` (default 2), ``repeat``
    (default 1). The wrapped URI keeps its own query string.
    """

    schemes = ("flaky",)
    uri_forms = ("flaky:fail_after=50,fail_opens=2,repeat=1:URI   URI that fails after 50 frames and then "
                 "2 reopens (resilience demos, tests)",)
    parses_query = False

    def __init__(self, inner: Source, *, name: str, uri: str, fail_after: int = 100, fail_opens: int = 2,
                 repeat: int = 1) -> None:
        super().__init__(name, live=inner.live, fps=inner.fps, uri=uri)
        self.inner = inner
        self.fail_after = fail_after
        self.fail_opens = fail_opens
        self.repeat = repeat
        self.failures = 0  # simulated disconnects so far
        self._since_open = 0
        self._opens_to_fail = 0

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> FlakySource:
        head, sep, rest = target.partition(":")
        if sep and _OPTION_LIST.match(head):
            for item in head.split(","):
                key, _, value = item.partition("=")
                options.setdefault(key, value)
            target = rest
        if not target:
            raise SourceError(f"{uri!r}: say which source to wrap, e.g. flaky:fail_after=50:synthetic:DIR",
                              retryable=False)
        fail_after = options.integer("fail_after", 100, minimum=0)
        fail_opens = options.integer("fail_opens", 2, minimum=0)
        repeat = options.integer("repeat", 1, minimum=0)
        inner = open_source(target)
        assert fail_after is not None and fail_opens is not None and repeat is not None
        return cls(inner, name=name or uri, uri=uri, fail_after=fail_after, fail_opens=fail_opens, repeat=repeat)

    def _open(self) -> None:
        if self._opens_to_fail > 0:
            self._opens_to_fail -= 1
            raise SourceError(f"{self.name}: simulated open failure ({self._opens_to_fail} more to come)")
        self.inner.open()
        self.fps = self.inner.fps
        self._since_open = 0

    def _next(self) -> tuple[np.ndarray, str | None] | None:
        if self._since_open >= self.fail_after and (self.repeat == 0 or self.failures < self.repeat):
            self.failures += 1
            self._opens_to_fail = self.fail_opens
            raise SourceError(f"{self.name}: simulated disconnect after {self._since_open} frames")
        frame = self.inner.read()
        if frame is None:
            return None
        self._since_open += 1
        return frame.image, frame.label

    def _close(self) -> None:
        self.inner.close()

    def interrupt(self) -> None:
        super().interrupt()
        self.inner.interrupt()
