"""``edgefs serve``: the camera loop of ``edgefs run`` with the device's own web app beside it.

The loop runs on the main thread exactly as ``edgefs run`` runs it (Ctrl-C, the
end of the sources and the summary behave the same); the web server (uvicorn,
one asyncio thread) and the view encoder (:class:`edgefs.serve.hub.ViewHub`)
run on their own threads and reach the loop only through its listener and
:meth:`Pipeline.submit`.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefs.camera.loop import Pipeline, RunConfig, RunSummary, open_pipeline
from edgefs.errors import EdgefsError, MissingDependencyError
from edgefs.serve.auth import Guard, is_loopback, resolve_token
from edgefs.service.options import EngineOptions

INSTALL = 'pip install "edgefs[serve]"'
DEFAULT_PORT = 8080


def require_web_stack() -> None:
    """Import the optional web stack or say what to install."""
    for module in ("starlette", "uvicorn", "jinja2"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependencyError(f"edgefs serve needs {module}, which is not installed; run: {INSTALL}") \
                from None


class WebServer:
    """The web app of a :class:`Pipeline`, served by uvicorn on a background thread.

    Args:
        pipeline: the camera loop (its :meth:`Pipeline.run` is called by the owner, not here).
        host, port: where to listen (port 0: a free port, see :attr:`port`).
        guard: the access checks (:class:`edgefs.serve.auth.Guard`).
        view_fps: the most view frames per second encoded per watched source.
        max_upload_bytes: the largest class pack accepted.
        log: receives status lines.
    """

    def __init__(self, pipeline: Pipeline, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 guard: Guard | None = None, view_fps: float = 15.0, max_upload_bytes: int = 64 << 20,
                 log: Callable[[str], None] = print) -> None:
        require_web_stack()
        import uvicorn

        from edgefs.serve.app import WebContext, build_app
        from edgefs.serve.hub import ViewHub

        self.host = host
        self.hub = ViewHub(pipeline, view_fps)
        self.ctx = WebContext(pipeline, self.hub, guard or Guard.for_bind(host, None), max_upload_bytes, log)
        self.app = build_app(self.ctx)
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False,
                                http="h11", ws="none", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="edgefs-web", daemon=True)
        self._error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # SystemExit from a failed bind included: reported by start()
            self._error = exc

    def start(self, timeout: float = 30.0) -> WebServer:
        """Listen; returns when the server accepts connections.

        Raises:
            EdgefsError: the address cannot be used (port taken, no such address).
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                why = self._error or "timeout"
                raise EdgefsError(f"cannot listen on {self.host}:{self.server.config.port} ({why}): is the port "
                                  "in use? Choose another with --port")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The address to open on this machine (loopback when listening on every address)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{self.port}"

    def urls(self) -> list[str]:
        """The addresses other machines can open: on ``0.0.0.0``/``::`` this machine's own addresses,
        else the one listened on. Empty when listening everywhere and none can be found."""
        if self.host not in ("0.0.0.0", "::"):
            return [self.url]
        return [f"http://{f'[{a}]' if ':' in a else a}:{self.port}" for a in machine_addresses(self.host == "::")]

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)
        self.hub.close()
        shutil.rmtree(self.ctx.upload_dir, ignore_errors=True)

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def machine_addresses(ipv6: bool = False) -> list[str]:
    """This machine's non-loopback addresses: its host name's, and the one its default route leaves
    from (found by connecting a UDP socket, which sends nothing). IPv4 first."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.append(str(info[4][0]))
    families = [(socket.AF_INET, "192.0.2.1")] + ([(socket.AF_INET6, "2001:db8::1")] if ipv6 else [])
    for family, probe in families:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            found.append(str(sock.getsockname()[0]))
    usable = []
    for address in dict.fromkeys(found):
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified) and (ipv6 or ip.version == 4):
            usable.append(str(ip))
    return sorted(usable, key=lambda a: (":" in a, a))


#: Views per shot the web app enrolls with on a store that has no choice saved yet (Settings changes it).
WEB_SHOT_VIEWS = 7


def serve(
    bundle: str | Path,
    store: str | Path,
    config: RunConfig,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token_file: str | Path | None = None,
    require_token: bool = False,
    rotate_token: bool = False,
    allow_hosts: tuple[str, ...] = (),
    view_fps: float = 15.0,
    max_upload_mb: int = 64,
    log: Callable[[str], None] = print,
    options: EngineOptions | None = None,
) -> RunSummary:
    """``edgefs serve``: run the camera loop with the web app until the sources end or Ctrl-C.

    Args:
        options: the engine and head, as for ``edgefs run`` (:func:`edgefs.camera.loop.open_pipeline`).

    Raises:
        EdgefsError: the web stack is missing, the token cannot be read or written, the address is in use;
            after the summary, a run that classified no frame.
    """
    require_web_stack()
    token, where = resolve_token(host, store, token_file=token_file, require=require_token, rotate=rotate_token)
    if config.display is None:
        config.display = False  # a headless device: the browser is the display
    hint = "Open the web app's Enroll page, or use --enroll NAME"
    with open_pipeline(bundle, store, config, options=options, log=log, empty_hint=hint) as pipeline:
        clf = pipeline.clf
        if (options is None or options.shot_views is None) and not clf.classes and "shot_views" not in clf.settings():
            clf.set_shot_views(WEB_SHOT_VIEWS)  # a fresh store: shots that cover more than one view
        web = WebServer(pipeline, host=host, port=port, guard=Guard.for_bind(host, token, allow_hosts),
                        view_fps=view_fps, max_upload_bytes=max_upload_mb << 20, log=log).start()
        urls = web.urls()
        log(f"edgefs serve: {web.url}/ ({where})")
        if host in ("0.0.0.0", "::"):
            log("  from other machines: " + (", ".join(f"{u}/" for u in urls) if urls else
                                             f"http://<this device's address>:{web.port}/ (no address found here)"))
        if token is not None:
            link = urls[0] if urls else web.url
            log(f"  open {link}/?token={token} once in a browser (the page keeps it in a cookie)")
        if not is_loopback(host):
            log("  plain HTTP: anyone on the network path can read the traffic; put a TLS proxy in front "
                "to cross a network you do not trust")
        try:
            summary = pipeline.run()
        finally:
            web.stop()
    log(summary.text())
    problem = pipeline.problem()
    if problem:
        raise EdgefsError(problem)
    return summary
