"""The web app's HTTP side: pages, the JSON API under ``/api/v1``, the MJPEG stream, health and metrics.

Every endpoint is registered with :func:`endpoint` (method, path, one line of
documentation); ``GET /api/v1`` lists them, and the API table in docs/journeys/serve.md is this list.
Each request passes the :class:`edgefs.serve.auth.Guard` first (Host, token,
cross-site). Request bodies are read under a size limit before they are parsed;
class names are checked as the command line checks them; an uploaded class pack
goes to a private temporary folder and through the same checks as
``edgefs classes import``. No part of a request names a file: the pages and
assets are read from the package into memory once, and downloads are built in
memory.

State changes go through the same objects as the command line: the live
enrollment is the loop's own (``Pipeline.start_enrollment``, run on the loop's
thread), and class changes go through the :class:`edgefs.service.classifier.Classifier`,
whose head the loop reads at the next frame.

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from edgefs.camera.limits import MAX_LIVE_SHOTS, MAX_SMOOTH
from edgefs.camera.loop import Pipeline, classes_with_other_roi
from edgefs.errors import EdgefsError
from edgefs.imagefile import thumbnail
from edgefs.runtime.roi import Roi
from edgefs.serve.auth import COOKIE, Guard
from edgefs.serve.hub import ViewHub, quantiles
from edgefs.service.classes import remove as remove_classes
from edgefs.service.views import VIEW_CHOICES
from edgefs.store import StoreFull
from edgefs.store.packs import ON_CONFLICT
from edgefs.store.validate import check_name

API = "/api/v1"
#: a JSON request body (labels, settings): far above what any call needs
MAX_JSON_BYTES = 64 * 1024
#: /healthz fails when no frame was classified for this long
STALE_S = 10.0
#: The Enroll page's defaults. Shots a second and a half apart, the user moving or turning the
#: object in between, each enrolled as the mean of several views: a class made of nearly the same
#: view is recognised in that pose only (see :func:`enroll_defaults`).
ENROLL_SHOTS = 5
ENROLL_INTERVAL_S = 1.5
ENROLL_DELAY_S = 3.0
#: the pages (templates in edgefs/serve/templates) and assets (edgefs/serve/static) shipped in the
#: package, by URL path
PAGES = {"/": "live.html", "/enroll": "enroll.html", "/classes": "classes.html", "/settings": "settings.html"}
ASSETS = {"/static/app.js": ("app.js", "text/javascript"), "/static/style.css": ("style.css", "text/css")}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}


class HttpError(Exception):
    """A request refused with ``status`` and a message that says what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class WebContext:
    """What the handlers share: the loop, its view hub, the guard and the limits."""

    pipeline: Pipeline
    hub: ViewHub
    guard: Guard
    max_upload_bytes: int
    log: Callable[[str], None]
    upload_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edgefs-serve-")))
    shot_thumbs: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def clf(self) -> Any:
        return self.pipeline.clf


Handler = Callable[[WebContext, Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    doc: str
    handler: Handler
    public: bool = False


ENDPOINTS: list[Endpoint] = []


def endpoint(method: str, path: str, doc: str, *, public: bool = False) -> Callable[[Handler], Handler]:
    """Register a handler; a second registration of the same method and path is refused."""

    def register(fn: Handler) -> Handler:
        if any(e.method == method and e.path == path for e in ENDPOINTS):
            raise ValueError(f"endpoint {method} {path} is registered twice")
        ENDPOINTS.append(Endpoint(method, path, doc, fn, public))
        return fn

    return register


# ---- request helpers ---------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body in chunks; 413 as soon as it is (or declares to be) over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HttpError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise HttpError(413, f"the body is {int(declared)} bytes, over the limit of {limit}")
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise HttpError(413, f"the body is over the limit of {limit} bytes")
        yield chunk


async def json_body(request: Request) -> dict[str, Any]:
    data = b"".join([chunk async for chunk in read_body(request, MAX_JSON_BYTES)])
    try:
        doc = json.loads(data or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HttpError(400, "the body must be a JSON object")
    return doc


def text_field(doc: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise HttpError(400, f"field {key!r} must be text")
    return value


def int_field(doc: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HttpError(400, f"field {key!r} must be a whole number from {low} to {high}, got {value!r}")
    return value


def number_field(doc: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise HttpError(400, f"field {key!r} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def class_name(ctx: WebContext, name: str | None, *, enrolled: bool = True) -> str:
    """A valid class name (as the command line checks it); with ``enrolled``, one that exists (else 404)."""
    if name is None:
        raise HttpError(400, "a class name is needed")
    try:
        check_name(name)
    except EdgefsError as exc:
        raise HttpError(400, str(exc)) from None
    if enrolled and name not in ctx.clf.classes:
        raise HttpError(404, f"class {name!r} is not enrolled")
    return name


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ---- pages and health ----------------------------------------------------------------------------
def _asset(name: str) -> bytes:
    return resources.files("edgefs.serve").joinpath("static", name).read_bytes()


def _templates() -> Jinja2Templates:
    """The pages' templates: ``base.html`` (the head and navigation) and one per page extending it."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("edgefs.serve", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    return Jinja2Templates(env=env)


@endpoint("GET", "/healthz", f"200 'ok' while a frame was classified in the last {STALE_S:g} s, else 503 "
          "(also before the first frame)", public=True)
async def healthz(ctx: WebContext, request: Request) -> Response:
    if ctx.hub.last_frame_at is None:
        return PlainTextResponse("no frame classified yet; see /api/v1/status\n", status_code=503)
    age = time.monotonic() - ctx.hub.last_frame_at
    if ctx.hub.closed or age > STALE_S:
        return PlainTextResponse(f"no frame classified for {age:.0f} s; see /api/v1/status\n", status_code=503)
    return PlainTextResponse("ok\n")


@endpoint("GET", "/metrics", "Prometheus text: frames, dropped, reconnects, latency quantiles, classes, viewers")
async def metrics(ctx: WebContext, request: Request) -> Response:
    return PlainTextResponse(render_metrics(ctx), media_type="text/plain; version=0.0.4")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(ctx: WebContext) -> str:
    hub, p = ctx.hub, ctx.pipeline
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{labels} {value:.6g}" if isinstance(value, float) else f"{name}{labels} {value}"
                     for labels, value in samples)

    caps = list(zip(hub.names, p.captures, strict=True))

    def src(i: int, name: str) -> str:  # two sources may have the same URI: the index tells them apart
        return f'{{source="{i}",uri="{_label(name)}"}}'

    metric("edgefs_frames_total", "counter", "Frames classified, per source.",
           [(src(i, n), hub.frames[i]) for i, (n, _) in enumerate(caps)])
    metric("edgefs_dropped_frames_total", "counter", "Stale camera frames dropped before classification.",
           [(src(i, n), int(c.stats.dropped)) for i, (n, c) in enumerate(caps)])
    metric("edgefs_reconnects_total", "counter", "Source reconnections.",
           [(src(i, n), int(c.stats.reconnects)) for i, (n, c) in enumerate(caps)])
    metric("edgefs_source_up", "gauge", "1 while the source delivers frames.",
           [(src(i, n), int(c.status.startswith("running"))) for i, (n, c) in enumerate(caps)])
    samples: list[tuple[str, float]] = []
    counts: list[tuple[str, float]] = []
    for stage in ("preprocess", "embed", "head", "total"):
        q = quantiles(p.times.recent(stage, 1000))
        for key, quantile in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")):
            if q:
                samples.append((f'{{stage="{stage}",quantile="{quantile}"}}', q[key] / 1e3))
        counts.append((f'{{stage="{stage}"}}', int(p.times.count[stage])))
    metric("edgefs_latency_seconds", "summary",
           "Per-stage latency over the last 1000 frames (total: capture to result).", samples)
    lines.extend(f"edgefs_latency_seconds_count{labels} {n}" for labels, n in counts)
    metric("edgefs_enrolled_classes", "gauge", "Classes in the live head.", [("", len(ctx.clf.classes))])
    metric("edgefs_viewers", "gauge", "Open view streams.", [("", sum(hub.viewers))])
    metric("edgefs_view_frames_skipped_total", "counter", "View frames a slow viewer skipped (never queued).",
           [("", hub.view_skipped)])
    metric("edgefs_view_frames_encoded_total", "counter", "JPEG view frames encoded.", [("", hub.view_encoded)])
    return "\n".join(lines) + "\n"


# ---- session -------------------------------------------------------------------------------------
@endpoint("POST", f"{API}/login", "{token}: check the token and set the session cookie (HttpOnly, SameSite=Strict)",
          public=True)
async def login(ctx: WebContext, request: Request) -> Response:
    token = text_field(await json_body(request), "token") or ""
    if not ctx.guard.matches(token):
        raise HttpError(401, "wrong access token")
    response = JSONResponse({"ok": True})
    if ctx.guard.token is not None:
        response.set_cookie(COOKIE, ctx.guard.token, httponly=True, samesite="strict", path="/")
    return response


@endpoint("POST", f"{API}/logout", "forget the session cookie", public=True)
async def logout(ctx: WebContext, request: Request) -> Response:
    response = JSONResponse({"ok": True})
    response.delete_cookie(COOKIE, path="/")
    return response


@endpoint("GET", API, "this list of endpoints")
async def index(ctx: WebContext, request: Request) -> Response:
    return JSONResponse({"version": 1, "endpoints": [
        {"method": e.method, "path": e.path, "doc": e.doc, "token": not e.public} for e in ENDPOINTS]})


# ---- live ----------------------------------------------------------------------------------------
@endpoint("GET", f"{API}/status", "per source: label, confidence, top-k, best cosine, FPS; per-stage latency")
async def status(ctx: WebContext, request: Request) -> Response:
    doc = ctx.hub.status()
    doc["threshold"] = ctx.clf.threshold
    return JSONResponse(doc)


@endpoint("GET", f"{API}/history", "one point a second (FPS, per-stage latency quantiles) for the live chart")
async def history(ctx: WebContext, request: Request) -> Response:
    points = list(ctx.hub.history)[-120:]
    return JSONResponse({"sources": ctx.hub.names, "points": [
        {"t": pt["t"], "fps": pt["fps"], "stages": {s: q for s, q in pt["stages"].items() if q}} for pt in points]})


@endpoint("GET", f"{API}/stream/{{source:int}}", "MJPEG of the annotated view of a source (newest frame only)")
async def stream(ctx: WebContext, request: Request) -> Response:
    source = int(request.path_params["source"])
    hub = ctx.hub
    if not 0 <= source < len(hub.names):
        raise HttpError(404, f"no source {source}; there are {len(hub.names)}")

    async def frames() -> AsyncIterator[bytes]:
        hub.viewers[source] += 1
        # The newest frame at once, if there is one (version 0 is "none yet": never sent).
        last = max(hub.published[source].version - 1, 0)
        try:
            while not hub.closed:
                got = await hub.next_jpeg(source, last, timeout=2.0)
                if got.version <= last or not got.jpeg:
                    continue
                if last >= 0 and got.version > last + 1:
                    hub.view_skipped += got.version - last - 1
                last = got.version
                yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                       + str(len(got.jpeg)).encode() + b"\r\n\r\n" + got.jpeg + b"\r\n")
        finally:
            hub.viewers[source] -= 1

    return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame",
                             headers={"Cache-Control": "no-store"})


@endpoint("GET", f"{API}/frame/{{source:int}}", "one JPEG of the annotated view of a source (waits up to 2 s)")
async def frame(ctx: WebContext, request: Request) -> Response:
    source = int(request.path_params["source"])
    hub = ctx.hub
    if not 0 <= source < len(hub.names):
        raise HttpError(404, f"no source {source}; there are {len(hub.names)}")
    hub.viewers[source] += 1
    try:
        got = await hub.next_jpeg(source, hub.published[source].version, timeout=2.0)
    finally:
        hub.viewers[source] -= 1
    if not got.jpeg:
        raise HttpError(503, "no frame yet; is the source running? See /api/v1/status")
    return Response(got.jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


# ---- enrollment ------------------------------------------------------------------------------------
async def on_loop(ctx: WebContext, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the camera loop's thread (between two batches) and wait for it."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(ctx.pipeline.submit(fn)), timeout=10.0)
    except asyncio.TimeoutError:
        raise HttpError(503, "the camera loop did not answer in 10 s; is it running?") from None


def enrollment_doc(ctx: WebContext) -> dict[str, Any]:
    e = ctx.pipeline.last_enrollment
    if e is None:
        return {"active": False, "enrollment": None}
    now = time.monotonic()
    phase = e.phase
    if phase == "countdown" and now >= e.start_at:
        phase = "collecting"
    shots = []
    for r in list(e.records):  # a copy: the loop appends meanwhile
        key = (id(e), r.index)
        if key not in ctx.shot_thumbs:
            ctx.shot_thumbs[key] = "data:image/jpeg;base64," + base64.b64encode(thumbnail(r.image, 96)).decode()
        shots.append({"index": r.index, "accepted": r.accepted, "reason": r.reason, "thumbnail": ctx.shot_thumbs[key],
                      "time": r.time})
    next_shot = max(0.0, e.last_shot + e.interval_s - now) if e.images else max(0.0, e.start_at - now)
    return {"active": ctx.pipeline.enrollment is e, "enrollment": {
        "label": e.name, "append": e.append, "source": e.source, "shots": e.shots, "taken": len(e.images),
        "phase": phase, "countdown_s": max(0.0, e.start_at - now), "next_shot_s": round(next_shot, 2),
        "interval_s": e.interval_s, "held_out": len(e.checks), "too_alike": e.too_alike,
        "threshold_note": e.threshold_note, "message": e.message, "records": shots}}


@endpoint("GET", f"{API}/enroll/defaults", "the Enroll page's defaults: shots, seconds between shots, countdown, "
          "views per shot")
async def enroll_defaults(ctx: WebContext, request: Request) -> Response:
    return JSONResponse({"shots": ENROLL_SHOTS, "interval_s": ENROLL_INTERVAL_S, "delay_s": ENROLL_DELAY_S,
                         "shot_views": ctx.clf.shot_views})


@endpoint("POST", f"{API}/enroll", "{label, shots?, append?, source?, delay_s?, interval_s?}: start a live enrollment "
          "(countdown, K shots through the quality gate, commit)")
async def enroll_start(ctx: WebContext, request: Request) -> Response:
    doc = await json_body(request)
    append = doc.get("append", False)
    if not isinstance(append, bool):
        raise HttpError(400, "field 'append' must be true or false")
    label = class_name(ctx, text_field(doc, "label"), enrolled=append)
    shots = int_field(doc, "shots", ENROLL_SHOTS, 1, MAX_LIVE_SHOTS)
    source = int_field(doc, "source", 0, 0, len(ctx.hub.names) - 1)
    delay = number_field(doc, "delay_s", ENROLL_DELAY_S, 0.0, 30.0)
    interval = number_field(doc, "interval_s", ENROLL_INTERVAL_S, 0.0, 10.0)
    if not append and label in ctx.clf.classes:
        raise HttpError(409, f"class {label!r} is already enrolled; tick 'append' to add shots to it")
    if ctx.pipeline.enrollment is not None:
        raise HttpError(409, f"already enrolling {ctx.pipeline.enrollment.name!r}; wait for it or cancel it")
    try:
        await on_loop(ctx, lambda: ctx.pipeline.start_enrollment(label, shots, source, delay, append=append,
                                                                   interval_s=interval))
    except EdgefsError as exc:
        raise HttpError(409, str(exc)) from None
    ctx.shot_thumbs.clear()
    return JSONResponse(enrollment_doc(ctx), status_code=202)


@endpoint("GET", f"{API}/enroll", "the current (or last) enrollment: phase, countdown, each shot accepted or "
          "rejected with the reason, the commit's result")
async def enroll_status(ctx: WebContext, request: Request) -> Response:
    return JSONResponse(enrollment_doc(ctx))


@endpoint("POST", f"{API}/enroll/cancel", "stop collecting shots; nothing is written")
async def enroll_cancel(ctx: WebContext, request: Request) -> Response:
    cancelled = await on_loop(ctx, ctx.pipeline.cancel_enrollment)
    if not cancelled:
        raise HttpError(409, "no enrollment is collecting shots (a commit under way finishes)")
    return JSONResponse(enrollment_doc(ctx))


# ---- classes ---------------------------------------------------------------------------------------
def classes_doc(ctx: WebContext) -> list[dict[str, Any]]:
    store = ctx.clf.store
    out = []
    for info in store.classes():
        rows = store.sample_rows(info.name)
        out.append({"name": info.name, "shots": info.shots, "created": info.created, "updated": info.updated,
                    "samples": [{"id": r.id, "created": r.created, "source": r.source,
                                 "thumbnail": f"{API}/samples/{r.id}/thumbnail" if r.thumbnail else None}
                                for r in rows]})
    return out


@endpoint("GET", f"{API}/classes", "every class: shots, dates, and each shot's id, source and thumbnail URL")
async def classes(ctx: WebContext, request: Request) -> Response:
    return JSONResponse({"classes": await run_in_threadpool(classes_doc, ctx)})


@endpoint("GET", f"{API}/samples/{{sample:int}}/thumbnail", "the stored JPEG thumbnail of one shot")
async def sample_thumbnail(ctx: WebContext, request: Request) -> Response:
    try:
        data = await run_in_threadpool(ctx.clf.store.thumbnail, int(request.path_params["sample"]))
    except EdgefsError as exc:
        raise HttpError(404, str(exc)) from None
    if data is None:
        raise HttpError(404, "this shot has no thumbnail")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@endpoint("POST", f"{API}/classes/rename", "{name, new_name}: rename a class (store and live head together)")
async def rename(ctx: WebContext, request: Request) -> Response:
    doc = await json_body(request)
    old = class_name(ctx, text_field(doc, "name"))
    new = class_name(ctx, text_field(doc, "new_name"), enrolled=False)
    if new in ctx.clf.classes:
        raise HttpError(409, f"class {new!r} is already enrolled; choose another name or remove it first")
    await run_in_threadpool(ctx.clf.rename, old, new)
    ctx.log(f"web: renamed {old!r} to {new!r}")
    return JSONResponse({"renamed": [old, new]})


@endpoint("POST", f"{API}/classes/remove", "{name}: remove a class with all its shots")
async def remove(ctx: WebContext, request: Request) -> Response:
    name = class_name(ctx, text_field(await json_body(request), "name"))
    try:
        removed, summary = await run_in_threadpool(remove_classes, ctx.clf, [name])
    except StoreFull as exc:  # the disk is full and the space reserve beside the store could not make room
        raise HttpError(507, str(exc)) from None
    ctx.log(f"web: {summary}")
    return JSONResponse({"removed": name, "shots": removed[name], "summary": summary})


@endpoint("POST", f"{API}/classes/remove-shots", "{name, ids}: remove single shots of a class (not all of them)")
async def remove_shots(ctx: WebContext, request: Request) -> Response:
    doc = await json_body(request)
    name = class_name(ctx, text_field(doc, "name"))
    ids = doc.get("ids")
    if not isinstance(ids, list) or not ids or len(ids) > 10_000 or \
            not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise HttpError(400, "field 'ids' must be a non-empty list of shot ids (whole numbers)")
    n = await run_in_threadpool(ctx.clf.remove_shots, name, ids)
    return JSONResponse({"name": name, "removed": n})


def pack_file_name(names: list[str]) -> str:
    """A download name made only of safe characters (a class name is no file name)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", names[0] if len(names) == 1 else "classes").strip("._")[:60]
    return f"{stem or 'classes'}.efpack"


@endpoint("GET", f"{API}/classes/export", "?name=A&name=B (default all): download a class pack")
async def export(ctx: WebContext, request: Request) -> Response:
    names = [class_name(ctx, n) for n in request.query_params.getlist("name")]
    chosen = names or ctx.clf.classes
    if not chosen:
        raise HttpError(404, "no classes to export; enroll some first")

    def build() -> bytes:
        with tempfile.TemporaryDirectory(dir=ctx.upload_dir) as tmp:
            path = ctx.clf.store.export_pack(Path(tmp) / "pack.efpack", chosen)
            return path.read_bytes()

    data = await run_in_threadpool(build)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{pack_file_name(chosen)}"'})


@endpoint("POST", f"{API}/classes/import", "?on_conflict=error|skip|replace|append, body: a class pack "
          "(untrusted: size-limited, checked whole before anything is written)")
async def import_(ctx: WebContext, request: Request) -> Response:
    on_conflict = request.query_params.get("on_conflict", "error")
    if on_conflict not in ON_CONFLICT:
        raise HttpError(400, f"on_conflict must be one of {', '.join(ON_CONFLICT)}")
    with tempfile.TemporaryDirectory(dir=ctx.upload_dir) as tmp:
        path = Path(tmp) / "upload.efpack"
        with path.open("wb") as f:
            async for chunk in read_body(request, ctx.max_upload_bytes):
                f.write(chunk)
        if path.stat().st_size == 0:
            raise HttpError(400, "the body is empty; send the pack file as the request body")
        try:
            result = await run_in_threadpool(ctx.clf.import_pack, path, on_conflict)
        except EdgefsError as exc:
            message = str(exc).replace(f"class pack {path}", "the uploaded class pack").replace(
                "choose --on-conflict skip, replace or append",
                "choose skip, replace or append under 'if a class exists' and import again")
            raise HttpError(409 if "already in the store" in message else 400,
                            message.replace(str(path), "the uploaded class pack")) from None
    ctx.log(f"web: imported a class pack: {result.summary()}")
    return JSONResponse({"added": result.added, "appended": result.appended, "replaced": result.replaced,
                         "skipped": result.skipped, "summary": result.summary()})


# ---- settings ---------------------------------------------------------------------------------------
def settings_doc(ctx: WebContext) -> dict[str, Any]:
    mode = ctx.clf.threshold_mode
    return {"threshold_mode": mode if isinstance(mode, str) else "manual", "threshold": ctx.clf.threshold,
            "smooth": ctx.pipeline.cfg.smooth, "max_smooth": MAX_SMOOTH,
            "roi": ctx.pipeline.cfg.roi.to_text() if ctx.pipeline.cfg.roi is not None else "full",
            "shot_views": ctx.clf.shot_views, "shot_view_choices": list(VIEW_CHOICES)}


@endpoint("GET", f"{API}/settings", "unknown threshold (mode and value in force), smoothing window, region "
          "of interest and views per enrolled shot")
async def settings_get(ctx: WebContext, request: Request) -> Response:
    return JSONResponse(settings_doc(ctx))


@endpoint("PUT", f"{API}/settings", "{threshold?: 'auto'|'none'|cosine, smooth?, roi?: 'full'|'0.6'|'cx,cy,w,h', "
          "shot_views?: 1|5|7}: change them live; saved with the store")
async def settings_put(ctx: WebContext, request: Request) -> Response:
    doc = await json_body(request)
    unknown = sorted(set(doc) - {"threshold", "smooth", "roi", "shot_views"})
    if unknown:
        raise HttpError(400, f"unknown settings {unknown}; there are 'threshold', 'smooth', 'roi' and 'shot_views'")
    views = doc.get("shot_views")
    if "shot_views" in doc and (isinstance(views, bool) or views not in VIEW_CHOICES):
        raise HttpError(400, f"field 'shot_views' must be one of {', '.join(map(str, VIEW_CHOICES))}")
    threshold = doc.get("threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, str | int | float):
            raise HttpError(400, "field 'threshold' must be 'auto', 'none' or a cosine from -1 to 1")
        if not isinstance(threshold, str):
            threshold = number_field(doc, "threshold", 0.0, -1.0, 1.0)
        elif threshold not in ("auto", "none"):
            raise HttpError(400, "field 'threshold' must be 'auto', 'none' or a cosine from -1 to 1")
    smooth = int_field(doc, "smooth", 0, 1, MAX_SMOOTH) if "smooth" in doc else None
    roi = None
    if "roi" in doc:
        text = doc["roi"]
        if not isinstance(text, str) or len(text) > 100:
            raise HttpError(400, "field 'roi' must be text: 'full', '0.6' (centred, 60% of each side) or 'cx,cy,w,h'")
        try:
            roi = Roi.parse(text)
        except EdgefsError as exc:
            raise HttpError(400, str(exc)) from None
    if threshold is not None:
        await run_in_threadpool(ctx.clf.set_threshold, threshold)
    if smooth is not None:
        await on_loop(ctx, lambda: ctx.pipeline.set_smoothing(smooth))
        await run_in_threadpool(lambda: ctx.clf.save_settings(smooth=smooth))
    doc_out: dict[str, Any] = {}
    if roi is not None:
        ctx.pipeline.set_roi(roi)
        saved = await run_in_threadpool(lambda: ctx.clf.save_settings(roi=roi.to_text()))
        other = classes_with_other_roi(saved, ctx.clf.classes, roi)
        if other:
            listed = ", ".join(f"{name!r} ({text})" for name, text in list(other.items())[:8])
            doc_out["roi_note"] = (f"{len(other)} class{'es were' if len(other) > 1 else ' was'} enrolled with another "
                                   f"region of interest: {listed}{' ...' if len(other) > 8 else ''}. Enroll "
                                   "them again (remove, then Enroll) if they are recognised less well now")
    if views is not None:
        await run_in_threadpool(ctx.clf.set_shot_views, int(views))
    return JSONResponse({**settings_doc(ctx), **doc_out})


# ---- the application ---------------------------------------------------------------------------------
def _wrap(ctx: WebContext, spec: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        guard = ctx.guard
        host = request.headers.get("host")
        refusal = guard.check_host(host) or guard.check_same_origin(
            request.method, request.headers.get("origin"), request.headers.get("sec-fetch-site"),
            request.url.scheme, host)
        if refusal is None and not spec.public:
            bearer = request.headers.get("authorization", "")
            refusal = guard.check_token(bearer[7:].strip() if bearer.lower().startswith("bearer ") else None,
                                        request.cookies.get(COOKIE),
                                        request.query_params.get("token") if request.method == "GET" else None)
        if refusal is not None:
            response: Response = error(refusal.status, refusal.message)
        else:
            try:
                response = await spec.handler(ctx, request)
            except HttpError as exc:
                response = error(exc.status, exc.message)
            except EdgefsError as exc:
                response = error(400, str(exc))
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return handle


def _page(ctx: WebContext, body: bytes, media_type: str, page: bool) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        refusal = ctx.guard.check_host(request.headers.get("host"))
        if refusal is not None:
            return error(refusal.status, refusal.message)
        given = request.query_params.get("token")
        if page and given is not None:
            # The link printed at start: keep the token in a cookie, and take it out of the address bar.
            if not ctx.guard.matches(given):
                # The page itself, with its sign-in form and the reason (the script reads ?token= left
                # in the address): a wrong link is a person at a browser, not an API client.
                response = Response(body, status_code=401, media_type=media_type)
                response.headers.update(SECURITY_HEADERS)
                return response
            response: Response = RedirectResponse(request.url.path, status_code=303)
            if ctx.guard.token is not None:
                response.set_cookie(COOKIE, ctx.guard.token, httponly=True, samesite="strict", path="/")
        else:
            response = Response(body, media_type=media_type)
        response.headers.update(SECURITY_HEADERS)
        return response

    return handle


def build_app(ctx: WebContext) -> Starlette:
    """The Starlette application over a running (or about to run) loop."""
    # The pages hold nothing per request: each is rendered once, here, so that a broken template stops
    # the start rather than a visit.
    templates = _templates()
    routes = [Route(path, _page(ctx, templates.get_template(name).render().encode(), "text/html; charset=utf-8", True))
              for path, name in PAGES.items()]
    routes += [Route(path, _page(ctx, _asset(name), f"{media}; charset=utf-8", False))
               for path, (name, media) in ASSETS.items()]
    routes += [Route(e.path, _wrap(ctx, e), methods=[e.method]) for e in ENDPOINTS]
    routes.append(Route("/favicon.ico", lambda request: Response(status_code=204)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.hub.attach(asyncio.get_running_loop())
        yield

    return Starlette(routes=routes, lifespan=lifespan)
