"""TensorRT engine files: their cache key, name, header, atomic write and checked read.

A serialized TensorRT engine only runs on the GPU model and TensorRT version it
was built with, and only means something for the bundle it was built from. So
an engine is stored under a key -- bundle fingerprint, TensorRT flavour and
version, GPU name, compute capability, precision and maximum batch -- both in its
file name (to find it) and in a header inside the file (to refuse a renamed or
copied file).

A TensorRT-RTX engine (flavour ``rtx``) is compiled ahead of time without a GPU
for several compute capabilities: its key's GPU name is ``"any"`` and its compute
capability the list of targets, ``"8.0+8.6+8.9"``; it runs on any GPU whose
compute capability is in that list (:meth:`EngineKey.mismatches`).

File layout (all integers little-endian)::

    MAGIC            9 bytes   b"EDGEFSTRT"
    header format    uint16    HEADER_FORMAT
    JSON length      uint32    n
    JSON header      n bytes   UTF-8: key fields, engine size and sha256, edgefs
                               version, build time, calibration and parity figures
    engine           the serialized engine, exactly ``engine_size`` bytes

The layout is read and written with plain Python: this module imports neither
TensorRT nor PyTorch, and is tested in full on machines that have neither.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgefs import __version__, limits
from edgefs.errors import EdgefsError
from edgefs.fileio import FileRefused, atomic_writer, check_regular_file

MAGIC = b"EDGEFSTRT"
HEADER_FORMAT = 1
ENGINES_DIR = "engines"
ENGINE_SUFFIX = ".engine"
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
PORTABLE_GPU = "any"  # the GPU name of an ahead-of-time engine (same value as trt_flavour.PORTABLE_GPU)
_FLAVOUR_TAGS = {"tensorrt": "trt"}  # file-name version prefix; other flavours use their own name
_CC = r"\d+\.\d+"
_PREFIX = struct.Struct("<9sHI")  # magic, header format, JSON length
_MAX_HEADER = 16 << 20  # a header is a few kB; anything near this is a corrupt length field


class EngineFileError(EdgefsError):
    """An engine file that is missing, truncated, corrupt or not an edgefs engine."""


class EngineKeyMismatch(EngineFileError):
    """An intact engine file built for another bundle, GPU, TensorRT version, precision or batch size.

    Attributes:
        differences: ``[(field, in_file, expected), ...]`` for every differing key field.
    """

    def __init__(self, message: str, differences: list[tuple[str, Any, Any]]) -> None:
        super().__init__(message)
        self.differences = differences


def gpu_slug(name: str) -> str:
    """A GPU name as a file-name part: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


@dataclass(frozen=True)
class EngineKey:
    """What an engine is valid for.

    Attributes:
        fingerprint: the bundle's fingerprint (sha256 of ``backbone.onnx``).
        trt_version: the flavour module's ``__version__``, e.g. ``"10.3.0"``.
        gpu_name: the CUDA device name, e.g. ``"Orin"``; ``"any"`` for an engine
            compiled ahead of time for a list of compute capabilities.
        compute_capability: ``"major.minor"``, e.g. ``"8.7"``; for ``"any"``, the
            targets joined by ``+``, e.g. ``"8.0+8.6+8.9+12.0"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        max_batch: the largest batch the engine's optimisation profile takes.
        flavour: ``"tensorrt"`` or ``"rtx"`` (:mod:`edgefs.runtime.trt_flavour`); files
            written before flavours existed read as ``"tensorrt"``.
    """

    fingerprint: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    max_batch: int
    flavour: str = "tensorrt"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgefsError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if int(self.max_batch) < 1:
            raise EdgefsError(f"max_batch must be at least 1, got {self.max_batch}")
        pattern = rf"{_CC}(\+{_CC})*" if self.gpu_name == PORTABLE_GPU else _CC
        if not re.fullmatch(pattern, self.compute_capability):
            raise EdgefsError(f"compute capability must look like '8.7' (or '8.6+8.9' for gpu 'any'), got "
                              f"{self.compute_capability!r}")

    def targets(self) -> list[str]:
        """The compute capabilities the engine was built for (one unless ``gpu_name`` is ``"any"``)."""
        return self.compute_capability.split("+")

    def stem(self) -> str:
        """``<fingerprint[:12]>_trt<ver>_<gpu-slug>_sm<cc>_<precision>_b<B>`` (``sm87`` for 8.7;
        ``rtx<ver>_any_sm80-86-89`` for an ahead-of-time TensorRT-RTX engine)."""
        tag = _FLAVOUR_TAGS.get(self.flavour, self.flavour)
        sm = "-".join(cc.replace(".", "") for cc in self.targets())
        return (f"{self.fingerprint[:12]}_{tag}{self.trt_version}_{gpu_slug(self.gpu_name)}_"
                f"sm{sm}_{self.precision}_b{int(self.max_batch)}")

    def file_name(self) -> str:
        return self.stem() + ENGINE_SUFFIX

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> EngineKey:
        return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc or f.name != "flavour"})

    def differences(self, other: EngineKey) -> list[tuple[str, Any, Any]]:
        """``[(field, self's value, other's value), ...]`` where the two keys differ."""
        return [(f.name, getattr(self, f.name), getattr(other, f.name))
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def mismatches(self, machine: EngineKey) -> list[tuple[str, Any, Any]]:
        """Like :meth:`differences`, for this file's key against what ``machine`` needs.

        An ahead-of-time engine (``gpu_name == "any"``) fits every GPU whose compute
        capability is one of its targets, so its GPU name is not compared and its
        compute capability only has to contain the machine's.
        """
        diffs = self.differences(machine)
        if self.gpu_name == PORTABLE_GPU and machine.gpu_name != PORTABLE_GPU:
            diffs = [d for d in diffs if d[0] != "gpu_name"]
            if machine.compute_capability in self.targets():
                diffs = [d for d in diffs if d[0] != "compute_capability"]
        return diffs


def engines_dir(bundle_path: str | Path) -> Path:
    """``BUNDLE/engines``: where a bundle's engines, calibration caches and timing caches live."""
    return Path(bundle_path) / ENGINES_DIR


def engine_file_path(bundle_path: str | Path, key: EngineKey) -> Path:
    """Where the engine for ``key`` lives in the bundle (it may not exist)."""
    return engines_dir(bundle_path) / key.file_name()


def candidate_engine_files(bundle_path: str | Path, key: EngineKey) -> list[Path]:
    """Engine files in the bundle whose name matches ``key`` in everything but the batch size,
    largest batch first (the runtime takes the most capable one)."""
    prefix = key.stem().rsplit("_b", 1)[0] + "_b"
    found = []
    for path in engines_dir(bundle_path).glob(prefix + "*" + ENGINE_SUFFIX):
        batch = path.name[len(prefix):-len(ENGINE_SUFFIX)]
        if batch.isdigit():
            found.append((int(batch), path))
    return [p for _, p in sorted(found, reverse=True)]


def rebuild_command(bundle_path: str | Path, precision: str, max_batch: int | None = None,
                    flavour: str = "tensorrt") -> str:
    """The command that builds the engine again on this machine."""
    batch = f" --max-batch {max_batch}" if max_batch is not None else ""
    trt = f" --trt {flavour}" if flavour != "tensorrt" else ""
    return f"edgefs build-engine {bundle_path} --precision {precision}{batch}{trt}"


def write_engine_file(
    path: str | Path, key: EngineKey, engine: bytes, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``engine`` with its header to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: the destination, normally :func:`engine_file_path`.
        key: what the engine is valid for.
        engine: the serialized engine (``bytes(builder.build_serialized_network(...))``).
        info: more header fields, e.g. ``{"calibration": {...}, "parity": {...}, "build": {...}}``;
            they must be JSON-serialisable and must not reuse the reserved names.

    Returns:
        the header as written.
    """
    path = Path(path)
    if not engine:
        raise EngineFileError("refusing to write an empty engine")
    header: dict[str, Any] = {
        "format": "edgefs-tensorrt-engine", "header_format": HEADER_FORMAT, "key": key.to_json(),
        "engine_size": len(engine), "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "edgefs_version": __version__, "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for name, value in (info or {}).items():
        if name in header:
            raise ValueError(f"header field {name!r} is reserved")
        header[name] = value
    blob = json.dumps(header, sort_keys=True).encode()
    with atomic_writer(path) as f:
        f.write(_PREFIX.pack(MAGIC, HEADER_FORMAT, len(blob)))
        f.write(blob)
        f.write(engine)
    return header


def _bundle_of(path: Path) -> Path:
    return path.parent.parent if path.parent.name == ENGINES_DIR else path.parent


def _read_header(f: Any, path: Path, size: int) -> dict[str, Any]:
    prefix = f.read(_PREFIX.size)
    rebuild = f"delete it and run 'edgefs build-engine {_bundle_of(path)}'"
    if len(prefix) < _PREFIX.size:
        raise EngineFileError(f"{path} is truncated ({size} bytes, shorter than its header); {rebuild}")
    magic, version, length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise EngineFileError(
            f"{path} is not an edgefs engine file (it does not start with {MAGIC!r}); a bare TensorRT engine "
            f"from trtexec is not accepted because it carries no key; {rebuild}"
        )
    if version > HEADER_FORMAT:
        raise EngineFileError(
            f"{path} has engine header format {version}, newer than this edgefs reads ({HEADER_FORMAT}); "
            f"upgrade edgefs or {rebuild}"
        )
    if length > min(_MAX_HEADER, size - _PREFIX.size):
        raise EngineFileError(f"{path} is truncated or corrupt (header length {length}, file {size} bytes); {rebuild}")
    try:
        header = json.loads(f.read(length).decode())
        EngineKey.from_json(header["key"])
        int(header["engine_size"])
    except (ValueError, KeyError, TypeError, EdgefsError) as exc:
        raise EngineFileError(f"{path} has an unreadable header ({type(exc).__name__}: {exc}); {rebuild}") from exc
    if not isinstance(header, dict):
        raise EngineFileError(f"{path} has an unreadable header (not a JSON object); {rebuild}")
    return header


def _checked_size(path: Path) -> int:
    """The size of an engine file that is a regular file within :data:`edgefs.limits.MAX_ENGINE_BYTES`."""
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(path)
    try:
        return check_regular_file(path, limits.MAX_ENGINE_BYTES, "engine file")
    except FileRefused as exc:
        raise EngineFileError(f"{exc}; delete it and run 'edgefs build-engine {_bundle_of(path)}'") from None


def read_engine_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of an engine file, without reading the engine.

    Raises:
        EngineFileError: a missing, truncated or foreign file, or an unreadable header.
    """
    path = Path(path)
    try:
        size = _checked_size(path)
        with open(path, "rb") as f:
            return _read_header(f, path, size)
    except FileNotFoundError:
        raise EngineFileError(f"engine file {path} does not exist; build it with 'edgefs build-engine'") from None


def read_engine_file(path: str | Path, expected_key: EngineKey | None) -> tuple[dict[str, Any], bytes]:
    """Read an engine file and check it against the key this machine and bundle need.

    Args:
        path: the engine file.
        expected_key: what the caller needs (this bundle, this GPU, this TensorRT,
            this precision, this batch size); None skips the key check.

    Returns:
        ``(header, engine_bytes)``.

    Raises:
        EngineKeyMismatch: an intact file built for something else; the message names
            each differing field and the command that rebuilds the engine.
        EngineFileError: a missing, truncated or corrupt file.
    """
    path = Path(path)
    try:
        size = _checked_size(path)
        with open(path, "rb") as f:
            header = _read_header(f, path, size)
            engine = f.read()
    except FileNotFoundError:
        raise EngineFileError(f"engine file {path} does not exist; build it with 'edgefs build-engine'") from None
    bundle = _bundle_of(path)
    key = EngineKey.from_json(header["key"])
    rebuild = rebuild_command(bundle, (expected_key or key).precision, flavour=key.flavour)
    if len(engine) != int(header["engine_size"]):
        raise EngineFileError(
            f"{path} is truncated or corrupt: its header declares a {header['engine_size']}-byte engine but "
            f"{len(engine)} bytes follow; rebuild it with '{rebuild}'"
        )
    if "engine_sha256" in header and hashlib.sha256(engine).hexdigest() != header["engine_sha256"]:
        raise EngineFileError(f"{path} is corrupt: the engine's sha256 does not match its header; rebuild it with "
                              f"'{rebuild}'")
    if expected_key is not None:
        diffs = key.mismatches(expected_key)
        if diffs:
            what = "; ".join(f"{name} is {found!r} in the file but {wanted!r} here" for name, found, wanted in diffs)
            command = rebuild_command(bundle, expected_key.precision, expected_key.max_batch, expected_key.flavour)
            raise EngineKeyMismatch(
                f"engine {path} was built for something else ({what}). TensorRT engines only run on the GPU and "
                f"TensorRT version that built them, for the bundle they were built from. Rebuild it on this "
                f"machine with '{command}'",
                diffs,
            )
    return header, engine
