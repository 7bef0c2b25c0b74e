"""edgefs serve without a browser: every endpoint's refusals (token, cross-site, Host, bad input, hostile
packs, oversized uploads) and what it does, over real HTTP against the real loop."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from edgefs.runtime.roi import Roi
from tests.conftest import sigint_default

pytest.importorskip("starlette", reason='the web stack is not installed: pip install "edgefs[serve]"')
pytest.importorskip("uvicorn", reason='the web stack is not installed: pip install "edgefs[serve]"')

from serve_support import TOKEN, Served, class_names, enroll_from_camera, running_server, synthetic, wait_for

from edgefs.errors import EdgefsError
from edgefs.serve.app import ENDPOINTS
from edgefs.serve.auth import Guard, is_loopback, resolve_token, token_path
from edgefs.service.classifier import Classifier
from edgefs.service.options import EngineOptions


@pytest.fixture(scope="module")
def served(trained_bundle: Path, glyph_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two enrolled classes; source 0 shows them, source 1 is a covered lens (flat grey frames: the gate
    refuses every one as too blurry)."""
    root = tmp_path_factory.mktemp("serve")
    store = root / "classes.db"
    covered = root / "covered"
    covered.mkdir()
    for i in range(3):
        cv2.imwrite(str(covered / f"{i}.png"), np.full((120, 160, 3), 90 + i, np.uint8))
    names = class_names(glyph_data, 2)
    with Classifier.open(trained_bundle, store, options=EngineOptions(backend="onnxruntime", threads=1),
                         log=lambda _: None) as clf:
        enroll_from_camera(clf, glyph_data, names)
    sources = [synthetic(glyph_data, fps=10, hold=20), f"folder:{covered}?fps=5&loop=1"]
    with running_server(trained_bundle, store, sources) as s:
        yield s


def state(s: Served) -> tuple[list[str], int]:
    """What a refused request must not change: the classes and their shots, from the store itself."""
    infos = s.clf.store.classes()
    return [c.name for c in infos], sum(c.shots for c in infos)


def concrete(path: str) -> str:
    return re.sub(r"\{[a-z]+:int\}", "0", path)


def test_every_api_endpoint_refuses_a_missing_or_wrong_token(served: Served) -> None:
    before = state(served)
    guarded = [e for e in ENDPOINTS if not e.public]
    assert len(guarded) >= 15  # status, history, stream, frame, enroll x3, classes x6, settings x2, metrics, index
    for e in guarded:
        for token in (None, "wrong-token-0123456789"):
            status, body = served.json(e.method, concrete(e.path), {} if e.method != "GET" else None, token=token)
            assert status == 401, (e.method, e.path, token, status)
            assert "access token" in body["error"]
    assert state(served) == before
    assert served.json("GET", "/api/v1/status")[0] == 200  # the right one works
    status, _, _ = served.request("GET", "/healthz", token=None)  # liveness probes need no token
    assert status == 200


def test_login_and_link_set_a_strict_httponly_cookie(served: Served) -> None:
    assert served.json("POST", "/api/v1/login", {"token": "nope"}, token=None)[0] == 401
    status, headers, _ = served.request("POST", "/api/v1/login", {"token": TOKEN}, token=None)
    cookie = headers["set-cookie"]
    assert status == 200 and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert served.request("GET", "/api/v1/status", token=None, headers={"Cookie": f"edgefs_token={TOKEN}"})[0] == 200
    assert served.request("GET", "/api/v1/status", token=None, headers={"Cookie": "edgefs_token=bad"})[0] == 401

    class NoRedirect(__import__("urllib.request").request.HTTPRedirectHandler):
        def redirect_request(self, *args: object) -> None:
            return None

    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as got:
        opener.open(f"{served.url}/classes?token={TOKEN}", timeout=10)
    assert got.value.code == 303 and got.value.headers["location"] == "/classes"  # the token leaves the address
    assert "HttpOnly" in got.value.headers["set-cookie"]
    assert served.request("GET", "/classes?token=wrong", token=None)[0] == 401
    status, headers, page = served.request("GET", "/classes", token=None)  # pages hold no data
    assert status == 200 and b"/static/app.js" in page and "default-src 'self'" in headers["content-security-policy"]


def test_cross_site_and_rebinding_requests_are_refused(served: Served) -> None:
    name = served.clf.classes[0]
    before = state(served)
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": served.url.replace("127.0.0.1", "localhost")}):
        status, body = served.json("POST", "/api/v1/classes/remove", {"name": name}, headers=headers)
        assert status == 403 and "cross-site" in body["error"], headers
    status, body = served.json("POST", "/api/v1/classes/remove", {"name": name},
                               headers={"Host": "attacker.example:80"})  # DNS rebinding to 127.0.0.1
    assert status == 403 and "host name" in body["error"]
    assert served.request("GET", "/", token=None, headers={"Host": "attacker.example"})[0] == 403
    assert state(served) == before
    same = {"Origin": served.url, "Sec-Fetch-Site": "same-origin"}  # the device's own page
    assert served.json("GET", "/api/v1/classes", headers=same)[0] == 200


def test_bad_json_and_bad_names(served: Served) -> None:
    before = state(served)
    name = served.clf.classes[0]
    for raw, why in ((b"{", "not JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "not JSON")):
        status, _, body = served.request("POST", "/api/v1/classes/rename", raw=raw,
                                         headers={"Content-Type": "application/json"})
        assert status == 400 and why in json.loads(body)["error"]
    status, _, _ = served.request("POST", "/api/v1/classes/rename", raw=b" " * (70 * 1024))
    assert status == 413
    for bad in ("unknown", "", " padded", "tab\there", "x" * 200, 42, None):
        status, body = served.json("POST", "/api/v1/classes/rename", {"name": name, "new_name": bad})
        assert status == 400, bad
        status, body = served.json("POST", "/api/v1/enroll", {"label": bad})
        assert status == 400, bad
    other = served.clf.classes[1]
    assert served.json("POST", "/api/v1/classes/rename", {"name": name, "new_name": other})[0] == 409
    assert state(served) == before


def test_unknown_class_is_404_everywhere(served: Served) -> None:
    before = state(served)
    ghost = "no such class"
    assert served.json("POST", "/api/v1/classes/rename", {"name": ghost, "new_name": "x"})[0] == 404
    assert served.json("POST", "/api/v1/classes/remove", {"name": ghost})[0] == 404
    assert served.json("POST", "/api/v1/classes/remove-shots", {"name": ghost, "ids": [1]})[0] == 404
    assert served.json("GET", "/api/v1/classes/export?name=no%20such%20class")[0] == 404
    assert served.json("POST", "/api/v1/enroll", {"label": ghost, "append": True})[0] == 404
    assert served.json("GET", "/api/v1/samples/999999/thumbnail")[0] == 404
    assert served.json("GET", "/api/v1/stream/7")[0] == 404
    assert served.json("GET", "/api/v1/frame/7")[0] == 404
    for path in ("/api/v1/stream/abc", "/static/../edgefs/serve/app.py", "/static/%2e%2e/app.py",
                 "/api/v1/samples/../../etc/passwd", "/static/app.js/../../../../etc/passwd"):
        status, _, body = served.request("GET", path)
        assert status == 404 and b"root:" not in body, path
    assert state(served) == before


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_hostile_and_oversized_packs_change_nothing(served: Served) -> None:
    before = state(served)
    fp = served.clf.store.fingerprint
    dim = served.clf.store.dim
    doc = {"format": "edgefs-class-pack", "pack_version": 1, "fingerprint": fp, "embedding_dim": dim,
           "classes": [{"name": "evil", "shots": 10**11, "thumbnails": [], "sources": []}]}
    hostile = {
        "not a zip": b"this is not a zip file",
        "traversal member": _zip({"pack.json": json.dumps({**doc, "classes": []}).encode(), "../../evil.sh": b"x"}),
        "10^11 shots": _zip({"pack.json": json.dumps(doc).encode()}),
        "another bundle": _zip({"pack.json": json.dumps({**doc, "fingerprint": "0" * 64, "classes": []}).encode()}),
        "bad class name": _zip({"pack.json": json.dumps({**doc, "classes": [
            {"name": "unknown", "shots": 1}]}).encode()}),
    }
    for what, data in hostile.items():
        status, _, body = served.request("POST", "/api/v1/classes/import", raw=data,
                                         headers={"Content-Type": "application/octet-stream"})
        assert status == 400, what
        assert str(served.web.ctx.upload_dir) not in json.loads(body)["error"]  # no server paths in answers
    assert served.request("POST", "/api/v1/classes/import", raw=b"")[0] == 400
    too_big = b"\0" * ((1 << 20) + 1)  # the fixture's upload limit is 1 MiB
    assert served.request("POST", "/api/v1/classes/import", raw=too_big)[0] == 413
    status, body = served.json("POST", "/api/v1/classes/import?on_conflict=explode", {})
    assert status == 400 and "on_conflict" in body["error"]
    assert state(served) == before
    assert list(served.web.ctx.upload_dir.iterdir()) == []  # every upload was deleted


def test_oversized_upload_is_refused_from_its_header(served: Served) -> None:
    import http.client

    host, port = served.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/api/v1/classes/import")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Length", str(10 << 30))  # claims 10 GiB, sends nothing
    conn.endheaders()
    res = conn.getresponse()
    assert res.status == 413 and b"over the limit" in res.read()
    conn.close()


def test_export_import_round_trip_and_single_shots(served: Served) -> None:
    name = served.clf.classes[0]
    status, headers, pack = served.request("GET", f"/api/v1/classes/export?name={quote(name, safe='')}")
    assert status == 200 and pack[:2] == b"PK"
    assert re.fullmatch(r'attachment; filename="[A-Za-z0-9._-]+\.efpack"', headers["content-disposition"])
    status, body = served.json("POST", "/api/v1/classes/import", raw=pack)
    assert status == 409 and "already in the store" in body["error"]
    shots = served.clf.head.shots(name)

    status, body = served.json("GET", "/api/v1/classes")
    entry = next(c for c in body["classes"] if c["name"] == name)
    ids = [s["id"] for s in entry["samples"]]
    assert len(ids) == shots >= 2
    status, headers, jpeg = served.request("GET", entry["samples"][0]["thumbnail"])
    assert status == 200 and jpeg[:3] == b"\xff\xd8\xff" and headers["content-type"] == "image/jpeg"
    for bad in ([], "1", [True], [1.5], [ids[0], 10**9]):
        assert served.json("POST", "/api/v1/classes/remove-shots", {"name": name, "ids": bad})[0] == 400, bad
    assert served.json("POST", "/api/v1/classes/remove-shots", {"name": name, "ids": ids})[0] == 400  # all
    status, body = served.json("POST", "/api/v1/classes/remove-shots", {"name": name, "ids": ids[:1]})
    assert status == 200 and body["removed"] == 1
    assert served.clf.head.shots(name) == shots - 1 and len(served.clf.store.sample_rows(name)) == shots - 1

    assert served.json("POST", "/api/v1/classes/remove", {"name": name})[0] == 200
    assert name not in served.clf.classes
    status, body = served.json("POST", "/api/v1/classes/import", raw=pack)
    assert status == 200 and body["added"] == [name]
    assert name in served.clf.classes and served.clf.head.shots(name) == shots  # live in the head, not only stored
    assert served.clf.store.load_head_state().current


def test_settings_validate_apply_live_and_persist(served: Served) -> None:
    for bad in ({"threshold": 2}, {"threshold": "maybe"}, {"threshold": True}, {"threshold": [0.5]},
                {"smooth": 0}, {"smooth": 10**6}, {"smooth": 2.5}, {"colour": "red"}):
        status, body = served.json("PUT", "/api/v1/settings", bad)
        assert status == 400, bad
    status, body = served.json("PUT", "/api/v1/settings", {"threshold": 0.5, "smooth": 7})
    assert status == 200 and body["threshold_mode"] == "manual" and body["threshold"] == pytest.approx(0.5)
    assert served.clf.head.threshold == pytest.approx(0.5)
    wait_for(lambda: served.pipeline.cfg.smooth == 7 and served.pipeline.smoothers[0].recent.maxlen == 7)
    assert served.clf.store.settings()["smooth"] == 7
    assert served.clf.store.load_head_state().params["threshold_mode"] == 0.5  # saved with the head
    status, body = served.json("PUT", "/api/v1/settings", {"threshold": "auto"})
    assert status == 200 and body["threshold_mode"] == "auto"
    assert served.clf.store.load_head_state().params["threshold_mode"] == "auto"
    # The region of interest: checked as --roi is, live from the next frame, saved with the store.
    assert body["roi"] == "full"
    for bad in ({"roi": "huge"}, {"roi": "0"}, {"roi": "0.5,0.5,2,1"}, {"roi": 0.6}, {"roi": "x" * 200}):
        status, refused = served.json("PUT", "/api/v1/settings", bad)
        assert status == 400 and "roi" in refused["error"].lower(), (bad, refused)
    status, body = served.json("PUT", "/api/v1/settings", {"roi": "0.6"})
    assert status == 200 and body["roi"] == Roi.parse("0.6").to_text()
    assert served.pipeline.cfg.roi == Roi.parse("0.6")
    assert served.clf.store.settings()["roi"] == body["roi"]
    # Views per enrolled shot: one of the choices, for enrollments from now on, saved with the store.
    assert body["shot_views"] == 1 and body["shot_view_choices"] == [1, 5, 7]
    for bad in ({"shot_views": 3}, {"shot_views": True}, {"shot_views": "7"}, {"shot_views": 7.5}):
        status, refused = served.json("PUT", "/api/v1/settings", bad)
        assert status == 400 and "shot_views" in refused["error"], (bad, refused)
    status, body = served.json("PUT", "/api/v1/settings", {"shot_views": 7})
    assert status == 200 and body["shot_views"] == 7 and served.clf.shot_views == 7
    assert served.clf.store.settings()["shot_views"] == 7


def test_live_enrollment_by_api_with_per_shot_verdicts(served: Served, glyph_data: Path) -> None:
    # Source 1 is a covered lens: every frame is refused, with the reason; cancelling writes nothing.
    before = state(served)
    status, body = served.json("POST", "/api/v1/enroll", {"label": "blurry", "source": 1, "shots": 2,
                                                          "delay_s": 0, "interval_s": 0.1})
    assert status == 202 and body["active"]
    assert served.json("POST", "/api/v1/enroll", {"label": "second"})[0] == 409  # one at a time
    doc = wait_for(lambda: (d := served.json("GET", "/api/v1/enroll")[1])["enrollment"]["records"] and d)
    shot = doc["enrollment"]["records"][0]
    assert shot["accepted"] is False and "too blurry" in shot["reason"]
    assert shot["thumbnail"].startswith("data:image/jpeg;base64,")
    assert served.json("POST", "/api/v1/enroll/cancel", {})[0] == 200
    assert served.json("POST", "/api/v1/enroll/cancel", {})[0] == 409
    assert state(served) == before

    # Source 0: append 2 shots to an enrolled class; the commit judges each.
    name = served.clf.classes[0]
    shots = served.clf.head.shots(name)
    for bad in ({"label": name}, {"label": name, "append": "yes"}, {"label": name, "append": True, "shots": 0},
                {"label": name, "append": True, "source": 9}, {"label": name, "append": True, "delay_s": -1}):
        assert served.json("POST", "/api/v1/enroll", bad)[0] in (400, 409), bad
    frames_before, t0 = served.web.hub.frames[0], time.monotonic()
    status, _ = served.json("POST", "/api/v1/enroll", {"label": name, "append": True, "shots": 2, "delay_s": 0,
                                                        "interval_s": 0.3})
    assert status == 202
    doc = wait_for(lambda: (d := served.json("GET", "/api/v1/enroll")[1])["enrollment"]["phase"] in
                   ("done", "failed") and d, timeout=60)["enrollment"]
    # Classification went on meanwhile: the 10 FPS source kept being classified (half its rate at least).
    assert served.web.hub.frames[0] - frames_before >= 5 * (time.monotonic() - t0) - 5
    verdicts = [r["accepted"] for r in doc["records"]]
    assert None not in verdicts and len(verdicts) == 2
    added = verdicts.count(True)
    assert doc["phase"] == ("done" if added else "failed")
    assert served.clf.head.shots(name) == shots + added


def test_stream_frame_status_history_and_metrics(served: Served) -> None:
    import urllib.request

    req = urllib.request.Request(f"{served.url}/api/v1/stream/0", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=20) as res:
        assert res.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=frame")
        parts: list[bytes] = []
        buf = b""
        while len(parts) < 3:
            buf += res.read1(65536)
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                size = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                if len(rest) < size + 2:
                    break
                parts.append(rest[:size])
                buf = rest[size + 2:]
    assert all(p[:3] == b"\xff\xd8\xff" for p in parts) and len(set(parts)) == 3  # three different frames
    status, _, jpeg = served.request("GET", "/api/v1/frame/0")
    assert status == 200 and jpeg[:3] == b"\xff\xd8\xff"
    status, doc = served.json("GET", "/api/v1/status")
    assert status == 200 and len(doc["sources"]) == 2 and doc["sources"][0]["result"]["label"]
    wait_for(lambda: served.json("GET", "/api/v1/history")[1]["points"], timeout=5)
    status, _, text = served.request("GET", "/metrics")
    body = text.decode()
    for name in ("edgefs_frames_total", "edgefs_dropped_frames_total", "edgefs_reconnects_total",
                 'edgefs_latency_seconds{stage="total",quantile="0.99"}', "edgefs_enrolled_classes",
                 "edgefs_viewers", "edgefs_view_frames_skipped_total"):
        assert name in body, name
    assert f"edgefs_enrolled_classes {len(served.clf.classes)}" in body
    status, doc = served.json("GET", "/api/v1")
    assert {e["path"] for e in doc["endpoints"]} == {e.path for e in ENDPOINTS}


def test_token_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEFS_SERVE_TOKEN", raising=False)
    store = tmp_path / "classes.db"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert resolve_token("127.0.0.1", store)[0] is None  # this machine only: no token asked
    token, where = resolve_token("0.0.0.0", store)  # any other address: generated, 0600, beside the store
    path = token_path(store)
    assert token and len(token) >= 30 and str(path) in where
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_token("0.0.0.0", store)[0] == token  # kept across restarts
    rotated, _ = resolve_token("0.0.0.0", store, rotate=True)
    assert rotated != token and path.read_text().strip() == rotated
    assert resolve_token("127.0.0.1", store, require=True)[0] == rotated
    path.chmod(0o644)
    with pytest.raises(EdgefsError, match="chmod 600"):
        resolve_token("0.0.0.0", store)
    short = tmp_path / "short"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(EdgefsError, match="shorter than 16"):
        resolve_token("0.0.0.0", store, token_file=short)
    monkeypatch.setenv("EDGEFS_SERVE_TOKEN", "from-the-environment-123")
    assert resolve_token("0.0.0.0", store)[0] == "from-the-environment-123"
    guard = Guard.for_bind("0.0.0.0", "t" * 20)
    assert guard.allowed_hosts is None and guard.check_token(None, None, None) is not None


def test_serve_command_starts_answers_and_stops_on_ctrl_c(trained_bundle: Path, glyph_data: Path,
                                                          tmp_path: Path) -> None:
    """The command itself: prints its address, serves, and on SIGINT prints the loop's summary and exits 0."""
    store = tmp_path / "classes.db"
    cmd = [sys.executable, "-m", "edgefs", "serve", str(trained_bundle), "--store", str(store), "--port", "0",
           "--threads", "1", "--require-token", "--source", synthetic(glyph_data, fps=10)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=sigint_default,
                            env={**os.environ, "EDGEFS_SERVE_TOKEN": ""})
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240  # generous: CI machines can be loaded
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"edgefs serve: (http://127\.0\.0\.1:\d+)/", line)
            url = m.group(1) if m else None
        assert url, "".join(lines)
        token = token_path(store).read_text().strip()
        assert stat.S_IMODE(token_path(store).stat().st_mode) == 0o600
        import urllib.request

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=5) as res:
                    return res.status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=120)
        req = urllib.request.Request(f"{url}/api/v1/status", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as res:
            assert json.loads(res.read())["sources"][0]["frames"] > 0
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert "stopped by Ctrl-C" in text and "p99" in text  # the same summary as edgefs run


@pytest.mark.parametrize("module", ["starlette", "uvicorn", "jinja2"])
def test_missing_web_stack_names_the_install(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    from edgefs.errors import MissingDependencyError
    from edgefs.serve import server

    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a module that is not installed
    with pytest.raises(MissingDependencyError, match=rf'needs {module}.*pip install "edgefs\[serve\]"'):
        server.require_web_stack()


def test_web_app_imports_no_torch() -> None:
    """Device side (DESIGN.md rule 1): the web app and its command load without PyTorch."""
    code = ("import sys\nsys.modules['torch'] = None\n"
            "import edgefs.serve.app, edgefs.serve.server, edgefs.serve.hub, edgefs.serve.auth, edgefs.cli.serve\n"
            "assert 'edgefs.backbones' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
