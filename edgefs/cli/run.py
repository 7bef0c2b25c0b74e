"""edgefs run: classify camera streams in real time with a bundle and a class store."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from edgefs.cli import args as A

if TYPE_CHECKING:
    from edgefs.camera.loop import RunConfig
    from edgefs.service.options import EngineOptions

HELP = "classify camera streams in real time (window or JSONL), enroll live, record"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_loop_arguments(p)


def add_loop_arguments(p: argparse.ArgumentParser) -> None:
    """The camera loop's options, shared by ``edgefs run`` and ``edgefs serve`` (one loop, one set of flags)."""
    from edgefs.camera.limits import MAX_SMOOTH
    from edgefs.heads.spec import HEAD_TYPES
    from edgefs.runtime.select import backend_names  # torch-free; the registry finds the backend modules itself

    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder, e.g. models/glyphs.edgefs")
    p.add_argument("--store", required=True, help="class store file (created if missing)")
    p.add_argument("--source", action="append", required=True, metavar="URI", dest="sources",
                   help="camera index (0), /dev/videoN, gst:PIPELINE, rtsp://..., a video file, an image "
                        "folder or synthetic:DIR; repeat for several sources")
    p.add_argument("--jsonl", metavar="PATH", help="write one JSON event per frame ('-' for stdout)")
    p.add_argument("--record", metavar="PATH", help="write the annotated stream to a video file (.mp4)")
    p.add_argument("--display", action=argparse.BooleanOptionalAction, default=None,
                   help="show a window (default: when a display and OpenCV GUI exist)")
    p.add_argument("--frames", type=A.integer(1), dest="max_frames", help="stop after this many frames")
    p.add_argument("--duration", type=A.real(above=0), dest="duration_s", help="stop after this many seconds")
    p.add_argument("--open-timeout", type=A.real(above=0), default=10.0, dest="open_timeout_s", metavar="S",
                   help="give up on a source that has not opened after S seconds of attempts (default 10); "
                        "a source that opened once and then dropped is reconnected for as long as the run lasts")
    p.add_argument("--enroll", type=A.label, metavar="NAME", help="enroll NAME live from the first source at the start")
    p.add_argument("--shots", type=A.integer(1), default=5, help="shots per live enrollment (default 5)")
    p.add_argument("--enroll-delay", type=A.real(0), default=3.0, dest="enroll_delay_s",
                   help="countdown before the first shot in seconds (default 3)")
    p.add_argument("--commands", action="store_true",
                   help="read commands from stdin: enroll NAME [SHOTS] | remove NAME | quit")
    p.add_argument("-k", "--top", type=A.integer(1), default=3, dest="k", help="classes reported per frame (default 3)")
    p.add_argument("--smooth", type=A.integer(1, MAX_SMOOTH),
                   help="frames in the label smoothing window (default: the store's saved setting, else 5)")
    p.add_argument("--head", choices=HEAD_TYPES, help="device head (default: the bundle's)")
    p.add_argument("--threshold", type=A.threshold,
                   help="unknown threshold: auto, none or a cosine (default: the store's choice)")
    p.add_argument("--summary-json", metavar="PATH", help="write the end-of-run summary as JSON")
    p.add_argument("--shot-views", type=int, choices=A.VIEW_CHOICES, help=A.SHOT_VIEWS_HELP + " (live enrollment)")
    p.add_argument("--backend", choices=backend_names(),
                   help="engine backend (default: the profile 'edgefs tune' saved for this bundle here, else auto)")
    p.add_argument("--device", type=A.device, help="cpu, cuda or cuda:N (default: the backend's choice)")
    p.add_argument("--threads", type=A.integer(1),
                   help="CPU threads for the engine (default: the tuned profile's, else all cores but one)")
    p.add_argument("--batch-wait", type=A.real(0, 1000), dest="batch_wait_ms", metavar="MS",
                   help="with several sources: once a frame is ready, wait up to MS milliseconds for the other "
                        "sources' frames so one engine call takes them all (default: the tuned profile's, else 0: "
                        "embed what is ready at once; each millisecond adds to the first frame's latency)")
    A.add_cpu_engine_flags(p)
    p.add_argument("--no-profile", action="store_true",
                   help="ignore the profile 'edgefs tune' saved for this bundle on this machine (backend, threads, "
                        "batch wait, engine options); flags given on the command line win over it anyway")
    p.add_argument("--roi", type=A.roi, help=A.ROI_HELP + " (default: the one saved with the store by edgefs "
                   "serve's settings, else full); drawn in the window")


def loop_config(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` of parsed :func:`add_loop_arguments` flags."""
    from edgefs.camera.loop import RunConfig

    return RunConfig(
        sources=args.sources, k=args.k, smooth=args.smooth, jsonl=args.jsonl, record=args.record,
        display=args.display, max_frames=args.max_frames, duration_s=args.duration_s, enroll=args.enroll,
        shots=args.shots, enroll_delay_s=args.enroll_delay_s, commands=args.commands,
        summary_json=args.summary_json, open_timeout_s=args.open_timeout_s,
        batch_wait_ms=0.0 if args.batch_wait_ms is None else args.batch_wait_ms,
        roi=args.roi,
    )


def loop_options(args: argparse.Namespace) -> EngineOptions:
    """The :class:`EngineOptions` of parsed :func:`add_loop_arguments` flags (after the tuned profile)."""
    from edgefs.service.options import EngineOptions

    return EngineOptions(backend=args.backend, device=args.device, threads=args.threads, head_type=args.head,
                         threshold=args.threshold, engine_options=A.engine_options(args),
                         shot_views=args.shot_views)


def run(args: argparse.Namespace) -> int:
    from edgefs.camera.loop import run
    from edgefs.tune import apply_profile

    apply_profile(args, args.bundle)
    config = loop_config(args)
    run(args.bundle, args.store, config, options=loop_options(args))
    return 0
