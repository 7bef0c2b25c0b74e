"""Try the web app's security cases against a real ``edgefs serve`` and write down each response.

Usage::

    python tools/serve_security_cases.py                 # writes reports/serve/security.md and .json

Starts the camera loop with the web app on 127.0.0.1 (a free port) with an access
token, over a store with two enrolled classes (the committed Conv-4 bundle, as
``tools/bench_serve.py`` makes it), sends each case as a raw HTTP request and
records the status and the message. After every refused case it checks that the
store's classes and shots did not change. Exits non-zero if a case gets another
status than expected or changes the store.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

from edgefs.camera.loop import RunConfig, open_pipeline
from edgefs.demo import camera_options, choose_classes
from edgefs.serve.auth import Guard
from edgefs.serve.server import WebServer
from edgefs.service.options import EngineOptions

TOKEN = "security-cases-token-0123456789"


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def cases(fp: str, dim: int, name: str, other: str, ids: list[int], port: int) -> list[dict[str, Any]]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    js = {"Content-Type": "application/json", **auth}
    pack = {"format": "edgefs-class-pack", "pack_version": 1, "fingerprint": fp, "embedding_dim": dim}
    body = json.dumps
    return [
        {"case": "no token, list classes", "method": "GET", "path": "/api/v1/classes", "headers": {}, "expect": 401},
        {"case": "no token, view stream", "method": "GET", "path": "/api/v1/stream/0", "headers": {}, "expect": 401},
        {"case": "no token, metrics", "method": "GET", "path": "/metrics", "headers": {}, "expect": 401},
        {"case": "wrong token, remove a class", "method": "POST", "path": "/api/v1/classes/remove",
         "headers": {"Content-Type": "application/json", "Authorization": "Bearer wrong-0123456789abcdef"},
         "body": body({"name": name}), "expect": 401},
        {"case": "wrong token in cookie, rename", "method": "POST", "path": "/api/v1/classes/rename",
         "headers": {"Content-Type": "application/json", "Cookie": "edgefs_token=wrong-0123456789"},
         "body": body({"name": name, "new_name": "x"}), "expect": 401},
        {"case": "token in the query of a POST (only GET links may carry it)", "method": "POST",
         "path": f"/api/v1/classes/remove?token={TOKEN}", "headers": {"Content-Type": "application/json"},
         "body": body({"name": name}), "expect": 401},
        {"case": "cross-site POST (Origin of another site), right cookie", "method": "POST",
         "path": "/api/v1/classes/remove", "headers": {"Content-Type": "application/json",
                                                      "Cookie": f"edgefs_token={TOKEN}",
                                                      "Origin": "http://evil.example"},
         "body": body({"name": name}), "expect": 403},
        {"case": "cross-site form post (Sec-Fetch-Site: cross-site)", "method": "POST",
         "path": "/api/v1/classes/remove", "headers": {**js, "Sec-Fetch-Site": "cross-site"},
         "body": body({"name": name}), "expect": 403},
        {"case": "Origin: null (sandboxed iframe)", "method": "POST", "path": "/api/v1/classes/remove",
         "headers": {**js, "Origin": "null"}, "body": body({"name": name}), "expect": 403},
        {"case": "DNS rebinding: Host attacker.example on the loopback bind", "method": "GET",
         "path": "/api/v1/classes", "headers": {**auth, "Host": f"attacker.example:{port}"}, "expect": 403},
        {"case": "pack upload declaring 10 GiB (Content-Length)", "method": "POST", "path": "/api/v1/classes/import",
         "headers": {**auth, "Content-Length": str(10 << 30)}, "body": b"", "expect": 413},
        {"case": "pack upload of 2 MiB (limit 1 MiB)", "method": "POST", "path": "/api/v1/classes/import",
         "headers": auth, "body": b"\0" * (2 << 20), "expect": 413},
        {"case": "JSON body of 70 KiB", "method": "POST", "path": "/api/v1/classes/rename", "headers": js,
         "body": b" " * (70 << 10), "expect": 413},
        {"case": "pack: not a zip", "method": "POST", "path": "/api/v1/classes/import", "headers": auth,
         "body": b"MZ this is not a zip", "expect": 400},
        {"case": "pack: member '../../evil.sh' (traversal)", "method": "POST", "path": "/api/v1/classes/import",
         "headers": auth, "body": _zip({"pack.json": body({**pack, "classes": []}).encode(),
                                        "../../evil.sh": b"rm -rf /"}), "expect": 400},
        {"case": "pack: a class declaring 10^11 shots", "method": "POST", "path": "/api/v1/classes/import",
         "headers": auth, "body": _zip({"pack.json": body({**pack, "classes": [
             {"name": "evil", "shots": 10**11, "thumbnails": [], "sources": []}]}).encode()}), "expect": 400},
        {"case": "pack: made with another bundle", "method": "POST", "path": "/api/v1/classes/import",
         "headers": auth, "body": _zip({"pack.json": body({**pack, "fingerprint": "0" * 64,
                                                           "classes": []}).encode()}), "expect": 400},
        {"case": "pack: class named 'unknown'", "method": "POST", "path": "/api/v1/classes/import",
         "headers": auth, "body": _zip({"pack.json": body({**pack, "classes": [{"name": "unknown", "shots": 1}]})
                                        .encode()}), "expect": 400},
        {"case": "rename to a name with control characters", "method": "POST", "path": "/api/v1/classes/rename",
         "headers": js, "body": body({"name": name, "new_name": "a\nb"}), "expect": 400},
        {"case": "rename to a 200-character name", "method": "POST", "path": "/api/v1/classes/rename",
         "headers": js, "body": body({"name": name, "new_name": "x" * 200}), "expect": 400},
        {"case": "rename onto another class", "method": "POST", "path": "/api/v1/classes/rename",
         "headers": js, "body": body({"name": name, "new_name": other}), "expect": 409},
        {"case": "remove an unknown class", "method": "POST", "path": "/api/v1/classes/remove", "headers": js,
         "body": body({"name": "../../etc/passwd"}), "expect": 404},
        {"case": "remove every shot of a class", "method": "POST", "path": "/api/v1/classes/remove-shots",
         "headers": js, "body": body({"name": name, "ids": ids}), "expect": 400},
        {"case": "remove a shot of another class", "method": "POST", "path": "/api/v1/classes/remove-shots",
         "headers": js, "body": body({"name": other, "ids": ids[:1]}), "expect": 400},
        {"case": "settings: threshold 2", "method": "PUT", "path": "/api/v1/settings", "headers": js,
         "body": body({"threshold": 2}), "expect": 400},
        {"case": "path traversal to a static file", "method": "GET", "path": "/static/../../../../etc/passwd",
         "headers": auth, "expect": 404},
        {"case": "encoded traversal in a thumbnail id", "method": "GET",
         "path": "/api/v1/samples/..%2f..%2fetc%2fpasswd/thumbnail", "headers": auth, "expect": 404},
        {"case": "stream of a source that does not exist", "method": "GET", "path": "/api/v1/stream/99",
         "headers": auth, "expect": 404},
    ]


def state(web: WebServer) -> list[tuple[str, int]]:
    return [(c.name, c.shots) for c in web.ctx.clf.store.classes()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/glyphs28"))
    p.add_argument("--work", type=Path, default=Path("runs/bench_serve"), help="bundle and store (made once)")
    p.add_argument("--out", type=Path, default=Path("reports/serve"))
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serve import prepare

    bundle, store, cfg = prepare(args.data, args.work)
    enrolled, unknown, _ = choose_classes(cfg)
    options = camera_options(cfg, classes=enrolled + unknown, fps=10.0, seed=11, live=True)
    config = RunConfig(sources=[f"synthetic:{cfg.data}"], display=False, source_options=options)
    results = []
    failed = 0
    with open_pipeline(bundle, store, config, options=EngineOptions(backend="onnxruntime", threads=1),
                       log=lambda _: None) as pipeline:
        web = WebServer(pipeline, host="127.0.0.1", port=0, guard=Guard.for_bind("127.0.0.1", TOKEN),
                        max_upload_bytes=1 << 20, log=lambda _: None).start()
        loop = threading.Thread(target=pipeline.run, daemon=True)
        loop.start()
        try:
            names = web.ctx.clf.classes
            store_ = web.ctx.clf.store
            ids = [r.id for r in store_.sample_rows(names[0])]
            for case in cases(store_.fingerprint, store_.dim, names[0], names[1], ids, web.port):
                before = state(web)
                conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=20)
                raw = case.get("body")
                data = raw.encode() if isinstance(raw, str) else raw
                conn.putrequest(case["method"], case["path"], skip_host="Host" in case["headers"])
                headers = dict(case["headers"])
                if data is not None and "Content-Length" not in headers:
                    headers["Content-Length"] = str(len(data))
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
                try:
                    if data and int(headers.get("Content-Length", "0")) == len(data):
                        conn.send(data)
                    res = conn.getresponse()
                    text = res.read(4096).decode("utf-8", "replace")
                    status = res.status
                except OSError as exc:  # the server may close a connection whose declared body it refused
                    status, text = 0, f"connection closed: {exc}"
                conn.close()
                try:
                    message = json.loads(text).get("error", text)
                except ValueError:
                    message = text.strip()[:160]
                unchanged = state(web) == before
                ok = status == case["expect"] and unchanged
                failed += not ok
                results.append({"case": case["case"], "request": f"{case['method']} {case['path'][:60]}",
                                "status": status, "expected": case["expect"], "store_unchanged": unchanged,
                                "message": message})
        finally:
            pipeline.stop()
            loop.join(timeout=20)
            web.stop()
    lines = ["| case | request | status | store unchanged | response |", "|---|---|---:|---|---|"]
    for r in results:
        msg = r["message"].replace("|", "\\|").replace("\n", " ")[:150]
        flag = "" if r["status"] == r["expected"] else f" (expected {r['expected']})"
        lines.append(f"| {r['case']} | `{r['request']}` | {r['status']}{flag} | "
                     f"{'yes' if r['store_unchanged'] else 'NO'} | {msg} |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "security.md").write_text(text + "\n")
    (args.out / "security.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{len(results) - failed} of {len(results)} cases as expected")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
