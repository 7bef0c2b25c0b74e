"""The ``tensorrt`` engine: a serialized TensorRT engine built on this device by ``edgefs build-engine``.

The engine file is found by its key (bundle fingerprint, TensorRT version, GPU
name, compute capability, precision; see :mod:`edgefs.runtime.engine_file`) and
checked against it before TensorRT sees a byte. Input and output buffers are
allocated once, for the engine's largest batch, with pycuda in the device's
**primary** CUDA context -- the context the CUDA runtime, PyTorch, CuPy and the
edgefs kernels also use -- so the output pointer handed out by
:meth:`TensorRTEngine.embed_device` can be read by any of them without a copy.

TensorRT and pycuda are imported when an engine is opened, never when this
module is imported: importing it registers the backend and costs nothing on a
machine without them, and opening it there raises
:class:`~edgefs.errors.MissingDependencyError` naming what to install.

Target: TensorRT 10.x (JetPack 6) and TensorRT-RTX 1.x (an RTX-class GPU), the
two flavours of :mod:`edgefs.runtime.trt_flavour` -- both have the name-based
tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).
The flavour is the one in the engine file's key; a TensorRT-RTX engine compiled
ahead of time runs on any GPU among its target compute capabilities (the runtime
finishes the compilation for that GPU when the engine is deserialized).
TensorRT 8.x used binding indices and ``execute_async_v2``; it is not supported.

**Unverified here.** No machine this was written on has a GPU (see
shared/DEVICE.md): deserializing and running an engine has never run. TensorRT-RTX
engines are built by this project's CI (tests/test_trt_build.py) but not run; the
key, file format and lookup logic are tested without a GPU in
tests/test_engine_file.py; device_tests/test_tensorrt.py runs the rest wherever a
TensorRT flavour, pycuda and a GPU are present.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np

from edgefs._lazy import require
from edgefs.errors import EdgefsError
from edgefs.runtime.bundle import INPUT_NAME, OUTPUT_NAME, Bundle
from edgefs.runtime.engine import ENGINES, DeviceArray, Engine
from edgefs.runtime.engine_file import (
    ENGINE_SUFFIX,
    EngineFileError,
    EngineKey,
    engines_dir,
    read_engine_file,
    read_engine_header,
    rebuild_command,
)
from edgefs.runtime.trt_flavour import FLAVOURS, Flavour, installed_flavours, resolve_flavour, shared_logger

TENSORRT_INSTALL = FLAVOURS.get("tensorrt").install
PYCUDA_INSTALL = ("pip install 'edgefs[cuda]' (pycuda; it builds against the CUDA toolkit: on Jetson, JetPack's "
                  "/usr/local/cuda)")


def import_tensorrt(why: str = "the tensorrt engine backend", flavour: str = "tensorrt") -> ModuleType:
    """The flavour's module (``tensorrt`` by default), or a :class:`~edgefs.errors.MissingDependencyError`
    saying how to install it."""
    return FLAVOURS.get(flavour).load(why)


def import_pycuda(why: str = "the tensorrt engine backend") -> ModuleType:
    """``pycuda.driver``, initialised, or a :class:`~edgefs.errors.MissingDependencyError`."""
    cuda = require("pycuda.driver", install=PYCUDA_INSTALL, why=why)
    try:
        cuda.init()  # idempotent; pycuda.autoinit is not used: it creates a private, non-shareable context
    except cuda.Error as exc:
        raise EdgefsError(f"the CUDA driver did not initialise ({exc}); is there an NVIDIA GPU and driver?") from exc
    return cuda


def device_index(device: str | None) -> int:
    """``None``/``"cuda"`` -> 0, ``"cuda:N"`` -> N; anything else is refused."""
    name = (device or "cuda").lower()
    if name == "auto":
        name = "cuda"
    head, _, index = name.partition(":")
    if head != "cuda":
        raise EdgefsError(f"the tensorrt backend runs on a CUDA GPU; got device {device!r} (use 'cuda' or 'cuda:N')")
    try:
        return int(index or 0)
    except ValueError:
        raise EdgefsError(f"bad device {device!r}; use 'cuda' or 'cuda:N'") from None


class PrimaryContext:
    """The device's primary CUDA context, retained once and made current around each use.

    Pushing and popping around every call (rather than leaving a context current)
    keeps the engine usable from any thread, e.g. a camera pipeline's worker.
    """

    def __init__(self, cuda: ModuleType, index: int) -> None:
        if index >= cuda.Device.count():
            raise EdgefsError(f"no CUDA device {index}: this machine has {cuda.Device.count()}")
        self.cuda = cuda
        self.device = cuda.Device(index)
        self.context = self.device.retain_primary_context()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()


def gpu_identity(index: int = 0) -> tuple[str, str]:
    """``(GPU name, compute capability "major.minor")`` of CUDA device ``index``.

    Raises:
        MissingDependencyError: pycuda is not installed.
        EdgefsError: no CUDA driver or no such device.
    """
    cuda = import_pycuda()
    if index >= cuda.Device.count():
        raise EdgefsError(f"no CUDA device {index}: this machine has {cuda.Device.count()}")
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    return str(dev.name()), f"{major}.{minor}"


def machine_identity(index: int = 0, flavour: str = "tensorrt") -> tuple[str, str, str]:
    """``(flavour version, GPU name, compute capability "major.minor")`` of this machine.

    Raises:
        MissingDependencyError: the flavour's module or pycuda is not installed.
    """
    gpu, cc = gpu_identity(index)  # first: where there is no GPU, TensorRT need not be loaded at all
    trt = import_tensorrt(flavour=flavour)
    return FLAVOURS.get(flavour).version(trt), gpu, cc


def engine_key(bundle: Bundle, precision: str, max_batch: int, index: int = 0, flavour: str = "tensorrt") -> EngineKey:
    """The key an engine for ``bundle`` must carry to run on this machine's GPU ``index``
    (an ahead-of-time engine matches it through :meth:`EngineKey.mismatches`)."""
    version, gpu, cc = machine_identity(index, flavour)
    return EngineKey(bundle.fingerprint, version, gpu, cc, precision, int(max_batch), flavour)


def engine_path_for(
    bundle: Bundle, precision: str, device: str | None = None, flavours: list[Flavour] | None = None
) -> Path | None:
    """The engine file that can run ``bundle`` at ``precision`` on this machine, or None.

    Builds nothing. Among engines built for this bundle, an installed TensorRT
    flavour and its version, this GPU (or, ahead of time, its compute capability)
    and precision, the one with the largest batch whose header checks out is
    returned. Returns None where no TensorRT flavour or pycuda is installed, or no
    GPU exists, so callers such as :func:`edgefs.runtime.select.open_engine` can
    ask on any machine.
    """
    found: list[tuple[int, Path]] = []
    for flavour in installed_flavours() if flavours is None else flavours:
        try:
            key = engine_key(bundle, precision, 1, device_index(device), flavour.name)
        except EdgefsError:
            continue
        for path in sorted(engines_dir(bundle.path).glob("*" + ENGINE_SUFFIX)):
            try:
                header = read_engine_header(path)
            except EngineFileError:
                continue
            have = EngineKey.from_json(header["key"])
            if not [d for d in have.mismatches(key) if d[0] != "max_batch"]:
                found.append((have.max_batch, path))
    return max(found)[1] if found else None


find_engine = engine_path_for  # the name edgefs.runtime.select uses


@ENGINES.register("tensorrt")
class TensorRTEngine(Engine):
    """A deserialized TensorRT engine with device buffers for its largest batch.

    Args:
        bundle: the bundle the engine was built from.
        device: ``"cuda"`` or ``"cuda:N"`` (default ``cuda:0``).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``: which engine to load.
        threads: ignored (kept for the common backend signature).
        engine_path: a specific engine file instead of looking one up; its key is
            still checked against this bundle and machine.

    The TensorRT flavour (``tensorrt`` or ``rtx``) is the one in the engine's key.

    Attributes:
        engine_path: the file loaded; ``header``: its JSON header; ``flavour``: its
            TensorRT flavour; ``verified``: whether the build compared it with ONNX
            Runtime (False for an engine built where no GPU could run it).
        max_batch: the largest batch per execution (larger inputs to :meth:`embed`
            are split; :meth:`embed_device` refuses them).
        output_dtype: the engine's output dtype name (``"float32"`` for every edgefs
            export: reduced precision applies inside the engine).

    Raises:
        MissingDependencyError: TensorRT or pycuda is not installed.
        EdgefsError: no engine for this bundle/GPU/precision (the message gives the
            ``edgefs build-engine`` command), a file for another key, or an engine
            TensorRT refuses to deserialize.
    """

    backend = "tensorrt"

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str | None = None,
        precision: str = "fp16",
        threads: int | None = None,
        engine_path: str | Path | None = None,
    ) -> None:
        super().__init__(bundle)
        del threads
        if engine_path is None and not installed_flavours():
            resolve_flavour()  # raises, naming how to install either flavour
        self.cuda = import_pycuda()
        index = device_index(device)
        self.device = f"cuda:{index}"
        self.precision = precision
        self.ctx = PrimaryContext(self.cuda, index)
        path = Path(engine_path) if engine_path is not None else engine_path_for(bundle, precision, self.device)
        if path is None:
            flavours = ", ".join(f.description for f in installed_flavours())
            raise EdgefsError(
                f"no {precision} engine for bundle {bundle.path} (fingerprint {bundle.fingerprint[:12]}) on this GPU "
                f"for {flavours}; build one with '{rebuild_command(bundle.path, precision)}' (add --trt rtx for "
                "TensorRT-RTX)"
            )
        probe = read_engine_header(path)
        self.flavour = str(probe["key"].get("flavour", "tensorrt"))
        self.trt = import_tensorrt(flavour=self.flavour)
        key = engine_key(bundle, precision, int(probe["key"]["max_batch"]), index, self.flavour)
        self.header, blob = read_engine_file(path, key)
        self.verified = bool(self.header.get("verified", "parity" in self.header))
        self.engine_path = path
        with self.ctx.active():
            self._load(blob)

    def _load(self, blob: bytes) -> None:
        trt, cuda = self.trt, self.cuda
        self._logger, self._errors = shared_logger(trt, print)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            errors = "; ".join(self._errors[-3:]) or "no error logged"
            raise EdgefsError(
                f"TensorRT could not deserialize {self.engine_path} ({errors}); rebuild it with "
                f"'{rebuild_command(self.bundle.path, self.precision, flavour=self.flavour)}'"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if sorted(names) != sorted([INPUT_NAME, OUTPUT_NAME]):
            raise EdgefsError(f"{self.engine_path} has tensors {names}, expected {INPUT_NAME!r} and {OUTPUT_NAME!r}")
        in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(INPUT_NAME)))
        if in_dtype != np.uint8:
            raise EdgefsError(f"{self.engine_path} takes {in_dtype} input; edgefs engines take uint8 images")
        self.output_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(OUTPUT_NAME))).name
        # Profile 0's (min, opt, max) shapes: the largest batch sizes the buffers.
        self.max_batch = int(self._engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0])
        self._context = self._engine.create_execution_context()
        h, w = self.input_size
        itemsize = np.dtype(self.output_dtype).itemsize
        self._d_input = cuda.mem_alloc(self.max_batch * h * w * 3)
        self._d_output = cuda.mem_alloc(self.max_batch * self.embedding_dim * itemsize)
        # Page-locked host staging, so the copies really are asynchronous on the stream.
        self._h_input = cuda.pagelocked_empty((self.max_batch, h, w, 3), np.uint8)
        self._h_output = cuda.pagelocked_empty((self.max_batch, self.embedding_dim), self.output_dtype)
        self._stream = cuda.Stream()
        # Marks when the last host -> device input copy finished: the pinned staging buffer is
        # reused, and embed_device() returns without waiting for the stream.
        self._input_copied = cuda.Event()
        self._input_copied.record(self._stream)
        self._context.set_tensor_address(INPUT_NAME, int(self._d_input))
        self._context.set_tensor_address(OUTPUT_NAME, int(self._d_output))

    def _enqueue(self, chunk: np.ndarray) -> int:
        """Copy ``chunk`` in and run the engine on the stream (no synchronisation). Returns its batch size."""
        b = len(chunk)
        self._input_copied.synchronize()  # the previous call's copy may still be reading the staging buffer
        self._h_input[:b] = chunk
        self.cuda.memcpy_htod_async(self._d_input, self._h_input[:b], self._stream)
        self._input_copied.record(self._stream)
        if not self._context.set_input_shape(INPUT_NAME, tuple(chunk.shape)):
            raise EdgefsError(f"TensorRT refused input shape {chunk.shape} (engine takes 1..{self.max_batch})")
        if not self._context.execute_async_v3(stream_handle=self._stream.handle):
            raise EdgefsError(f"TensorRT failed to run {self.engine_path} on a batch of {b} (see its log)")
        return b

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Args: images uint8 ``(B, H, W, 3)`` RGB at the bundle's input size (any B; split by max_batch).

        Returns: float32 ``(B, D)`` on the host.
        """
        images = self.check_input(images)
        out = np.empty((len(images), self.embedding_dim), np.float32)
        with self.ctx.active():
            for start in range(0, len(images), self.max_batch):
                b = self._enqueue(images[start:start + self.max_batch])
                self.cuda.memcpy_dtoh_async(self._h_output[:b], self._d_output, self._stream)
                self._stream.synchronize()
                out[start:start + b] = self._h_output[:b]
        return out

    def embed_device(self, images: np.ndarray) -> DeviceArray:
        """Like :meth:`embed`, leaving ``(B, D)`` of ``output_dtype`` in GPU memory.

        Nothing is synchronised: the result is ready in the order of ``stream``, so a
        consumer launching on that stream needs no host wait. The buffer belongs to
        this engine and is overwritten by its next ``embed``/``embed_device`` call.

        Raises:
            EdgefsError: more than ``max_batch`` images (split them; one device buffer
                holds one execution).
        """
        images = self.check_input(images)
        if len(images) > self.max_batch:
            raise EdgefsError(
                f"embed_device() takes at most {self.max_batch} images (the engine's max batch), got {len(images)}; "
                "split the batch, or rebuild with a larger --max-batch"
            )
        with self.ctx.active():
            b = self._enqueue(images)
        return DeviceArray(int(self._d_output), (b, self.embedding_dim), self.output_dtype,
                           stream=int(self._stream.handle), owner=self)

    def close(self) -> None:
        """Free the device buffers now (they are also freed when the engine is collected)."""
        with self.ctx.active():
            self._stream.synchronize()
            for name in ("_d_input", "_d_output"):
                buffer = getattr(self, name, None)
                if buffer is not None:
                    buffer.free()
                    setattr(self, name, None)

    def describe(self) -> str:
        flavour = "" if self.flavour == "tensorrt" else f"{self.flavour}, "
        unverified = "" if self.verified else ", not yet compared with ONNX Runtime"
        return (f"{self.backend} ({flavour}{self.precision}, {self.device}, {self.engine_path.name}, max batch "
                f"{self.max_batch}{unverified})")
