"""edgefs serve: the camera loop of 'edgefs run' with the device's own web app (live view, enroll, classes)."""

from __future__ import annotations

import argparse

from edgefs.cli import args as A
from edgefs.cli.run import add_loop_arguments, loop_config, loop_options

HELP = "run the camera loop with a web app: live view, enroll by button, classes, settings, /metrics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_loop_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other address needs "
                        "the access token)")
    p.add_argument("--port", type=A.integer(0, 65535), default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--token-file", metavar="PATH",
                   help="read the access token from PATH (mode 0600) instead of the store's own STORE.token")
    p.add_argument("--require-token", action="store_true",
                   help="ask for the token on 127.0.0.1 too (always asked on other addresses)")
    p.add_argument("--rotate-token", action="store_true",
                   help="write a new token to STORE.token (the old one stops working) and ask for it")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME", dest="allow_hosts",
                   help="on a loopback address, also answer to this host name (e.g. a reverse proxy's)")
    p.add_argument("--view-fps", type=A.real(above=0, maximum=60), default=15.0,
                   help="most view frames per second sent to browsers per source (default 15)")
    p.add_argument("--max-upload-mb", type=A.integer(1, 4096), default=64,
                   help="largest class pack accepted by upload, in MiB (default 64)")


def run(args: argparse.Namespace) -> int:
    from edgefs.serve.server import serve
    from edgefs.tune import apply_profile

    apply_profile(args, args.bundle)
    serve(args.bundle, args.store, loop_config(args), host=args.host, port=args.port, token_file=args.token_file,
          require_token=args.require_token, rotate_token=args.rotate_token, allow_hosts=tuple(args.allow_hosts),
          view_fps=args.view_fps, max_upload_mb=args.max_upload_mb, options=loop_options(args))
    return 0
