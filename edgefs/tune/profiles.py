"""The profiles ``edgefs tune`` saves (per bundle and machine), and ``edgefs run``/``serve`` taking one.

Torch-free (the device side).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefs.errors import EdgefsError
from edgefs.fileio import FileRefused, read_limited

PROFILE_FORMAT = "edgefs-tune-profile"
PROFILE_VERSION = 1
MAX_PROFILE_BYTES = 1 << 20


class ProfileError(EdgefsError):
    """A profile file that cannot be used (damaged, another format, another bundle or machine)."""


# ---- where profiles live --------------------------------------------------------------------------
def config_root() -> Path:
    """``$EDGEFS_CONFIG`` when set, else ``~/.config/edgefs``."""
    root = os.environ.get("EDGEFS_CONFIG")
    return Path(root) if root else Path.home() / ".config" / "edgefs"


def profiles_dir() -> Path:
    return config_root() / "profiles"


def machine_identity() -> dict[str, Any]:
    """What a profile's machine is: CPU architecture, model, usable cores and instruction sets."""
    from edgefs.cpu import cpu_info

    cpu = cpu_info()
    return {"arch": cpu.arch, "model": cpu.model, "cores": cpu.cores, "features": sorted(cpu.features)}


def machine_key() -> str:
    """A short hash of :func:`machine_identity` (a profile is for one kind of machine)."""
    return hashlib.sha256(json.dumps(machine_identity(), sort_keys=True).encode()).hexdigest()[:16]


def profile_path(fingerprint: str, machine: str | None = None) -> Path:
    """Where the profile of the bundle with ``fingerprint`` on this machine (or ``machine``) lives."""
    return profiles_dir() / f"{fingerprint[:16]}-{machine or machine_key()}.json"


# ---- run and serve use the profile ----------------------------------------------------------------
def load_profile(path: Path, fingerprint: str) -> dict[str, Any]:
    """The profile at ``path`` for the bundle ``fingerprint`` on this machine.

    Raises:
        ProfileError: unreadable, not JSON, another format or version, another bundle or machine, or
            settings that are not what tune writes.
    """
    try:
        doc = json.loads(read_limited(path, MAX_PROFILE_BYTES, "tune profile"))
    except FileRefused as exc:
        raise ProfileError(str(exc)) from None
    except OSError as exc:
        raise ProfileError(f"profile {path} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ProfileError(f"profile {path} is damaged (not JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT or doc.get("version") != PROFILE_VERSION:
        raise ProfileError(f"profile {path} is not an edgefs tune profile of version {PROFILE_VERSION}")
    bundle, machine = doc.get("bundle"), doc.get("machine")
    if not isinstance(bundle, dict) or bundle.get("fingerprint") != fingerprint:
        raise ProfileError(f"profile {path} is for another bundle")
    if not isinstance(machine, dict) or machine.get("key") != machine_key():
        raise ProfileError(f"profile {path} is for another machine")
    best = doc.get("best_for_this_bundle")
    settings = [doc.get("choice"), *([] if best is None else [best]), *doc["for_this_bundle"].values()] \
        if isinstance(doc.get("for_this_bundle"), dict) else None
    if settings is None or not all(_valid_setting(s) for s in settings) \
            or not isinstance(doc.get("cameras"), int) or not isinstance(doc.get("fps"), int | float):
        raise ProfileError(f"profile {path} is damaged (its settings are not what edgefs tune writes)")
    return doc


def _valid_setting(s: Any) -> bool:
    from edgefs.runtime.select import backend_names

    if not isinstance(s, dict):
        return False
    threads, wait, options = s.get("threads"), s.get("batch_wait_ms"), s.get("engine_options")
    return (s.get("backend") in backend_names() and isinstance(s.get("device"), str)
            and isinstance(s.get("fingerprint"), str) and isinstance(s.get("bundle"), str)
            and (threads is None or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1))
            and isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 1000
            and isinstance(options, dict))


# engine option -> the flag's dest in edgefs.cli.args.add_cpu_engine_flags
_OPTION_FLAGS = {"allow_spinning": ("spin", "--spin"), "hint": ("ov_hint", "--ov-hint"),
                 "streams": ("ov_streams", "--ov-streams")}


def _fill_defaults(args: argparse.Namespace) -> None:
    """The loop's own defaults for what neither the command line nor a profile set."""
    if getattr(args, "backend", None) is None:
        args.backend = "auto"
    if getattr(args, "batch_wait_ms", None) is None:
        args.batch_wait_ms = 0.0


def apply_profile(args: argparse.Namespace, bundle_path: str | Path,
                  log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Take the engine settings of this bundle's profile on this machine into parsed ``edgefs run``/``serve``
    flags: ``backend``, ``device``, ``threads``, ``batch_wait_ms`` and the engine options, each only where the
    command line left it unset (None). Says what it took in one line. A profile whose choice is another
    bundle (e.g. the INT8 one) never switches bundle: the best setting measured for this one is taken, and
    the other bundle is advised. A damaged profile is reported and ignored. ``--no-profile`` (``no_profile``)
    skips it. Leaves ``backend`` and ``batch_wait_ms`` at the loop's defaults when nothing set them.

    Returns:
        the profile taken, or None.
    """
    try:
        return _apply_profile(args, bundle_path, log)
    finally:
        _fill_defaults(args)


def _apply_profile(args: argparse.Namespace, bundle_path: str | Path,
                   log: Callable[[str], None]) -> dict[str, Any] | None:
    from edgefs.runtime.bundle import read_bundle

    if getattr(args, "no_profile", False):
        return None
    try:
        fingerprint = read_bundle(bundle_path, verify=False).fingerprint
    except EdgefsError:
        return None  # opening the bundle says what is wrong with it
    path = profile_path(fingerprint)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc = load_profile(path, fingerprint)
    except ProfileError as exc:
        log(f"warning: {exc}; it is ignored (run 'edgefs tune {bundle_path}' again, or delete it)")
        return None
    tuned = (f"tuned {str(doc.get('tuned', '?'))[:16].replace('T', ' ')} for {doc['cameras']} camera"
             f"{'s' if doc['cameras'] != 1 else ''} x {doc['fps']:g} FPS")
    own: dict[str, dict[str, Any]] = doc["for_this_bundle"]
    choice: dict[str, Any] = doc["choice"]
    setting: dict[str, Any] | None
    if args.backend is None:
        setting = choice if choice["fingerprint"] == fingerprint else doc["best_for_this_bundle"]
    elif args.backend == "auto":
        setting = None
    else:
        setting = own.get(args.backend)
    if setting is not None and args.device is not None and args.device != setting["device"]:
        setting = None
    if setting is None:
        reason = ("--backend auto given" if args.backend == "auto" else
                  f"nothing measured for --backend {args.backend} held" if args.backend is not None else
                  f"--device {args.device} given" if args.device is not None and own else
                  "no setting of this bundle held")
        log(f"profile: {path} ({tuned}): not applied ({reason})")
    else:
        given = []
        if args.backend is None:
            args.backend = setting["backend"]
        else:
            given.append("--backend")
        if args.device is None:
            args.device = setting["device"]
        if args.threads is None:
            args.threads = setting["threads"]
        elif setting["threads"] is not None:
            given.append("--threads")
        if args.batch_wait_ms is None:
            args.batch_wait_ms = setting["batch_wait_ms"]
        else:
            given.append("--batch-wait")
        options = []
        for key, value in setting["engine_options"].items():
            dest, flag = _OPTION_FLAGS.get(key, (None, None))
            if dest is None:
                continue
            if getattr(args, dest, None) is None:
                setattr(args, dest, value)
                options.append(f"{flag} {value}")
            else:
                given.append(flag)
        threads = "the backend's" if args.threads is None else str(args.threads)
        log(f"profile: {path} ({tuned}): backend {args.backend}, threads {threads}, batch-wait "
            f"{args.batch_wait_ms:g} ms" + (f", {', '.join(options)}" if options else "")
            + (f"; from the command line: {', '.join(given)}" if given else ""))
        sources = len(getattr(args, "sources", None) or [])
        if sources and sources != doc["cameras"]:
            log(f"profile: note: tuned for {doc['cameras']} cameras, this run has {sources}")
    if choice["fingerprint"] != fingerprint:
        log(f"profile: tune chose another bundle for this machine: {choice['bundle']} ({choice['precision']}, "
            f"{choice['input_size'][0]} px, {choice['backend']}): {doc.get('why', '')}. This run keeps "
            f"{bundle_path}; to switch, run that bundle with a class store made for it (enroll again, or "
            f"'edgefs classes reembed --store STORE --bundle {bundle_path} --to {choice['bundle']} --out NEW_STORE')")
    return doc
