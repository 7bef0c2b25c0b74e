"""A running ``edgefs serve`` for tests: the real loop, the real web server on a free loopback port.

Built as :func:`edgefs.serve.server.serve` builds it (``open_pipeline`` + ``WebServer``), with the
loop on a thread of its own so the test can talk to it; ``tests/test_serve_api.py`` also runs the
command itself in a subprocess.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefs.camera.loop import Pipeline, RunConfig, open_pipeline
from edgefs.camera.sources import open_source
from edgefs.serve.auth import Guard
from edgefs.serve.server import WebServer
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions

TOKEN = "test-token-0123456789abcdef"


def synthetic(data: Path, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"seed": 3, "difficulty": 0.2, "object_size": 1.0, **options}.items())
    return f"synthetic:{data}?{query}"


def class_names(data: Path, n: int) -> list[str]:
    """``n`` class names of the glyph test split, in a fixed order."""
    with open_source(synthetic(data, n_classes=n, frames=1)) as src:
        return sorted(src.classes)


def enroll_from_camera(clf: Classifier, data: Path, names: list[str], shots: int = 4) -> None:
    for name in names:
        with open_source(synthetic(data, hold=3, frames=3 * shots, seed=7), classes=[name]) as src:
            frames = [f.image for i, f in enumerate(iter(src.read, None)) if i % 3 == 1]
        clf.enroll(name, frames)


@dataclass
class Served:
    url: str
    pipeline: Pipeline
    web: WebServer
    store: Path

    @property
    def clf(self) -> Classifier:
        return self.pipeline.clf

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN,
                headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; returns (status, headers, body) whatever the status."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if body is not None and raw is None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, dict(res.headers), res.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else None


@contextmanager
def running_server(bundle: Path, store: Path, sources: list[str], *, token: str | None = TOKEN,
                   max_upload_bytes: int = 1 << 20, view_fps: float = 10.0) -> Iterator[Served]:
    """The loop over ``sources`` and the web app on 127.0.0.1 (a free port); stopped at exit."""
    config = RunConfig(sources=sources, display=False, enroll_interval_s=0.0)
    with open_pipeline(bundle, store, config, options=EngineOptions(backend="onnxruntime", threads=1),
                       log=lambda _: None) as pipeline:
        web = WebServer(pipeline, host="127.0.0.1", port=0, guard=Guard.for_bind("127.0.0.1", token),
                        view_fps=view_fps, max_upload_bytes=max_upload_bytes, log=lambda _: None)
        web.start()
        loop = threading.Thread(target=pipeline.run, name="test-loop", daemon=True)
        loop.start()
        try:
            deadline = time.monotonic() + 30
            while not any(web.hub.frames) and time.monotonic() < deadline:
                time.sleep(0.05)
            yield Served(web.url, pipeline, web, store)
        finally:
            pipeline.stop()
            loop.join(timeout=20)
            web.stop()


def wait_for(predicate: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true; that value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout} s")
