"""The GPU side of the kernel launchers: pycuda in the primary context, kernel loading, memory,
copies, and the operands the launchers accept.

:func:`runtime` returns the process's :class:`Runtime` (pycuda imported on first use, never at
import time); :func:`using_runtime` swaps in another object with its interface for a block (the
CPU emulation of the kernels, :mod:`edgefs.kernels.emu.launch`). :class:`DeviceBuffer` is GPU
memory allocated through it; :func:`operand` reads any array argument (NumPy, an
:class:`edgefs.device.DeviceArray`, a :class:`DeviceBuffer`, ``__cuda_array_interface__``).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import importlib
import importlib.util
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from edgefs.kernels import build
from edgefs.kernels.plans import SMEM_LIMIT

from edgefs.device import DeviceArray
from edgefs.errors import EdgefsError, MissingDependencyError

_INT_MAX = 2**31 - 1
#: pycuda ``prepare`` formats of the kernel entry points (P pointer, i int32, f float32); each
#: entry exists as ``<name>_f32`` and ``<name>_f16`` (float16 embeddings/queries/support).
ARG_FORMATS: dict[str, str] = {
    "edgefs_accumulate": "PPiPiPPPiii",
    "edgefs_classify": "PPPPPPPPPPPiiiffiii",
    "edgefs_finetune_gram": "PPPPPiffiffiiiPPPiii",
    "edgefs_finetune_plain": "PPPPPifPiffifiiiPPPPii",
}
#: The .cu file (module) of each entry point.
MODULES: dict[str, str] = {
    "edgefs_accumulate": "accumulate",
    "edgefs_classify": "classify",
    "edgefs_finetune_gram": "finetune",
    "edgefs_finetune_plain": "finetune",
}
_PYCUDA_INSTALL = "pip install pycuda (needs the CUDA toolkit; on a Jetson JetPack provides it)"
FLOATS = ("float32", "float16")



# ---- operands ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operand:
    """One array argument: its shape and dtype, and where its data is.

    Attributes:
        name: argument name, for messages.
        shape: array shape.
        dtype: NumPy dtype.
        ptr: device pointer when the data is on the GPU, else ``None``.
        host: C-contiguous NumPy array when the data is on the host, else ``None``.
        stream: CUDA stream handle the producer wrote on (``None``, 0, 1: the legacy default).
        owner: the object keeping device memory alive.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    ptr: int | None = None
    host: np.ndarray | None = None
    stream: int | None = None
    owner: Any = None

    @property
    def on_device(self) -> bool:
        return self.ptr is not None


def _contiguous_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= max(extent, 1)
    return tuple(reversed(strides))


def is_device(x: Any) -> bool:
    """Whether ``x`` is GPU memory this module reads in place."""
    return isinstance(x, DeviceArray | DeviceBuffer) or hasattr(x, "__cuda_array_interface__")


def operand(x: Any, name: str, dtypes: tuple[str, ...], ndim: int, *, host_dtype: str | None = None) -> Operand:
    """Describe argument ``x`` (host or device) and check its rank and dtype.

    Args:
        x: NumPy array (or array-like), DeviceArray, DeviceBuffer or object with
            ``__cuda_array_interface__``.
        name: for messages.
        dtypes: accepted dtype names.
        ndim: required rank.
        host_dtype: host arrays of another dtype are converted to this one (as the NumPy
            reference does with ``np.asarray(x, np.float32)``); device arrays never are.

    Raises:
        EdgefsError: wrong rank or dtype, or non-contiguous device memory.
    """
    if isinstance(x, DeviceArray):
        op = Operand(name, tuple(int(s) for s in x.shape), np.dtype(x.dtype), int(x.ptr), None, int(x.stream), x.owner)
    elif isinstance(x, DeviceBuffer):
        op = Operand(name, x.shape, x.dtype, x.ptr, None, None, x)
    elif hasattr(x, "__cuda_array_interface__"):
        cai = x.__cuda_array_interface__
        shape = tuple(int(s) for s in cai["shape"])
        dtype = np.dtype(cai["typestr"])
        strides = cai.get("strides")
        if strides is not None and tuple(strides) != _contiguous_strides(shape, dtype.itemsize):
            raise EdgefsError(f"{name} is a strided view (strides {tuple(strides)}) in GPU memory; the kernels need "
                              "C-contiguous rows: pass x.contiguous() (torch) or cupy.ascontiguousarray(x)")
        op = Operand(name, shape, dtype, int(cai["data"][0]), None, cai.get("stream"), x)
    else:
        a = np.asarray(x)
        if host_dtype is not None and a.dtype.name not in dtypes:
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise EdgefsError(f"{name} has dtype {a.dtype}; expected {' or '.join(dtypes)}")
            a = a.astype(host_dtype)
        op = Operand(name, a.shape, a.dtype, None, np.ascontiguousarray(a))
    if len(op.shape) != ndim:
        raise EdgefsError(f"{name} has shape {op.shape}; expected a {ndim}-D array")
    if op.dtype.name not in dtypes:
        where = "GPU" if op.on_device else "host"
        raise EdgefsError(f"{name} ({where}) has dtype {op.dtype}; expected {' or '.join(dtypes)}")
    return op


def host_labels(labels: Any, n: int, classes: int, name: str = "labels") -> Operand:
    """int32 ``(n,)`` labels; host ones are range-checked like the reference."""
    op = operand(labels, name, ("int32",), 1, host_dtype="int32")
    if op.shape != (n,):
        raise EdgefsError(f"{name} have shape {op.shape}; expected ({n},): one per row")
    if op.host is not None and n and (op.host.min() < 0 or op.host.max() >= classes):
        raise EdgefsError(f"{name} must lie in 0..{classes - 1}")
    return op


def check_size(what: str, *extents: int) -> None:
    total = 1
    for e in extents:
        total *= max(int(e), 1)
    if total > _INT_MAX:
        raise EdgefsError(f"{what} has {total} elements; the kernels index with int32 (at most {_INT_MAX})")


# ---- runtime ------------------------------------------------------------------------------------
class Runtime:
    """pycuda in the primary context: loaded kernel functions and reusable scratch memory.

    Use :func:`runtime` (one per process) rather than building it.

    Raises:
        MissingDependencyError: pycuda is not installed, or its driver module cannot load.
        EdgefsError: no usable GPU.
    """

    #: Whether "device" pointers are host memory (the CPU emulation's runtime).
    host_memory = False

    def __init__(self) -> None:
        if importlib.util.find_spec("pycuda") is None:
            raise MissingDependencyError(f"the CUDA head kernels need the Python package 'pycuda', which is not "
                                         f"installed. Install it with: {_PYCUDA_INSTALL}; or use the NumPy heads")
        try:
            self.cuda: Any = importlib.import_module("pycuda.driver")
        except ImportError as exc:
            raise MissingDependencyError(f"pycuda is installed but its CUDA driver module does not load ({exc}); "
                                         "an NVIDIA driver (libcuda.so) is needed, or use the NumPy heads") from exc
        try:
            primary = importlib.import_module("pycuda.autoprimaryctx")
        except (self.cuda.Error, RuntimeError) as exc:
            raise EdgefsError(f"no usable CUDA GPU ({exc}); use the NumPy heads (edgefs.heads) here") from exc
        self.context: Any = primary.context
        self.device: Any = primary.device
        self.owner = threading.get_ident()
        self.arch = build.arch_of(self.device.compute_capability())
        attrs = self.cuda.device_attribute
        self.sm_count = int(self.device.get_attribute(attrs.MULTIPROCESSOR_COUNT))
        self.smem_limit = min(SMEM_LIMIT, int(self.device.get_attribute(attrs.MAX_SHARED_MEMORY_PER_BLOCK)) - 512)
        self.lock = threading.RLock()
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self._scratch: dict[str, tuple[int, Any]] = {}
        self._pinned: dict[str, np.ndarray] = {}
        self._libcuda: Any = None

    # -- context and streams
    def enter(self) -> bool:
        """Make the primary context current on this thread; True if it had to be pushed."""
        if threading.get_ident() == self.owner:
            return False
        self.context.push()
        return True

    def leave(self, pushed: bool) -> None:
        if pushed:
            self.cuda.Context.pop()

    def wait_for(self, *ops: Operand) -> None:
        """Order our legacy-stream launches after producers that wrote on another stream."""
        for op in ops:
            if op.on_device and op.stream not in (None, 0, 1):
                if self._libcuda is None:
                    self._libcuda = ctypes.CDLL("libcuda.so.1")
                status = self._libcuda.cuStreamSynchronize(ctypes.c_void_p(int(op.stream)))
                if status != 0:
                    raise EdgefsError(f"cuStreamSynchronize on the stream of {op.name} failed with CUDA error {status}")

    # -- kernels
    def function(self, name: str, dtype: Any = np.float32) -> Any:
        """Entry point ``name`` (a key of :data:`ARG_FORMATS`) for float32 or float16 inputs,
        compiled for this GPU (cached on disk), loaded and prepared once."""
        entry = entry_point(name, dtype)
        fn = self._functions.get(entry)
        if fn is None:
            fn = self.raw_function(MODULES[name], entry)
            fn.prepare(ARG_FORMATS[name])
            self._functions[entry] = fn
        return fn

    def raw_function(self, module: str, entry: str) -> Any:
        """``entry`` of ``kernels/<module>.cu`` as a pycuda Function (not prepared)."""
        if module not in self._modules:
            self._modules[module] = self.cuda.module_from_buffer(build.build(module, self.arch).read_bytes())
        return self._modules[module].get_function(entry)

    # -- memory
    def scratch(self, name: str, nbytes: int, *, zero: bool = False) -> int:
        """Device scratch ``name`` of at least ``nbytes`` (kept and reused; zeroed when first made)."""
        have = self._scratch.get(name)
        if have is None or have[0] < nbytes:
            size = max(int(nbytes), 256, 0 if have is None else 2 * have[0])
            alloc = self.cuda.mem_alloc(size)
            if zero:
                self.cuda.memset_d8(alloc, 0, size)
            have = (size, alloc)
            self._scratch[name] = have
        return int(have[1])

    def pinned(self, name: str, nbytes: int) -> np.ndarray:
        """Page-locked host staging bytes ``name`` of at least ``nbytes`` (kept and reused)."""
        buf = self._pinned.get(name)
        if buf is None or buf.nbytes < nbytes:
            buf = self.cuda.pagelocked_empty(max(int(nbytes), 256), np.uint8)
            self._pinned[name] = buf
        return buf

    def device_ptr(self, op: Operand, slot: str) -> int:
        """Pointer to ``op``'s data on the GPU, uploading host data into scratch ``slot``."""
        if op.ptr is not None:
            return op.ptr
        assert op.host is not None
        if op.host.nbytes == 0:
            return 0
        ptr = self.scratch(slot, op.host.nbytes)
        self.cuda.memcpy_htod(ptr, op.host)
        return ptr

    def download(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        out = np.empty(shape, dtype)
        if out.nbytes:
            self.cuda.memcpy_dtoh(out, ptr)
        return out


def entry_point(name: str, dtype: Any) -> str:
    """The kernel symbol of launcher entry ``name`` for float32 or float16 inputs."""
    return f"{name}_{'f16' if np.dtype(dtype) == np.float16 else 'f32'}"


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()
_OVERRIDE: contextvars.ContextVar[Any] = contextvars.ContextVar("edgefs_kernel_runtime", default=None)


@contextlib.contextmanager
def using_runtime(rt: Any) -> Iterator[Any]:
    """Within the block (this thread / task only), launchers and new DeviceBuffers use ``rt``,
    an object with :class:`Runtime`'s interface, instead of the pycuda runtime."""
    token = _OVERRIDE.set(rt)
    try:
        yield rt
    finally:
        _OVERRIDE.reset(token)


def runtime() -> Runtime:
    """The process's :class:`Runtime`, created (pycuda imported, context retained) on first use;
    inside :func:`using_runtime`, the runtime given there."""
    override = _OVERRIDE.get()
    if override is not None:
        return override
    global _RUNTIME
    if _RUNTIME is None:
        with _RUNTIME_LOCK:
            if _RUNTIME is None:
                _RUNTIME = Runtime()
    return _RUNTIME


class DeviceBuffer:
    """A C-contiguous array in GPU memory, allocated by pycuda in the primary context.

    It exposes ``__cuda_array_interface__`` (torch.as_tensor / cupy.asarray read it in place)
    and is accepted by every launcher. Launchers return their GPU results as DeviceBuffers.

    Args:
        shape: array shape.
        dtype: NumPy dtype (float32, float16 or int32 for the kernels).
        zero: fill with zero bytes.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.float32, *, zero: bool = False) -> None:
        rt = runtime()
        self.runtime = rt  # the runtime (GPU or emulation) that owns the memory
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.alloc = rt.cuda.mem_alloc(max(self.nbytes, 1))
        if zero and self.nbytes:
            rt.cuda.memset_d8(self.alloc, 0, self.nbytes)

    @property
    def ptr(self) -> int:
        return int(self.alloc)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        if self.runtime.host_memory:
            # An emulated buffer is host memory: no GPU consumer may read it in place.
            raise AttributeError("an emulated DeviceBuffer (host memory) has no __cuda_array_interface__")
        # stream 1: written on the legacy default stream, which consumers order themselves after.
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": 1}

    @classmethod
    def from_host(cls, array: np.ndarray) -> DeviceBuffer:
        """A GPU copy of a host array (made C-contiguous)."""
        a = np.ascontiguousarray(array)
        buf = cls(a.shape, a.dtype)
        if a.nbytes:
            buf.runtime.cuda.memcpy_htod(buf.ptr, a)
        return buf

    def to_host(self) -> np.ndarray:
        """A host copy (waits for the kernels that write it)."""
        return self.runtime.download(self.ptr, self.shape, self.dtype)

    def upload(self, array: np.ndarray, row: int = 0) -> None:
        """Copy host rows into this buffer starting at ``row`` (first axis)."""
        a = np.ascontiguousarray(array, self.dtype)
        row_bytes = self.nbytes // max(self.shape[0], 1) if self.shape else self.nbytes
        if row < 0 or row * row_bytes + a.nbytes > self.nbytes:
            raise EdgefsError(f"cannot upload {a.shape} at row {row} into a buffer of shape {self.shape}")
        if a.nbytes:
            self.runtime.cuda.memcpy_htod(self.ptr + row * row_bytes, a)

    def rows(self, count: int, start: int = 0) -> DeviceArray:
        """A view of rows ``start .. start+count`` as a DeviceArray (no copy; this buffer owns it)."""
        if not self.shape or start < 0 or start + count > self.shape[0]:
            raise EdgefsError(f"rows {start}..{start + count} are outside a buffer of shape {self.shape}")
        row_bytes = self.nbytes // max(self.shape[0], 1)
        return DeviceArray(self.ptr + start * row_bytes, (count, *self.shape[1:]), self.dtype.name, 0, self)


def shape_of(x: Any) -> tuple[int, ...]:
    if isinstance(x, DeviceArray | DeviceBuffer):
        return tuple(x.shape)
    return tuple(x.__cuda_array_interface__["shape"])


def to_host(x: Any) -> np.ndarray:
    """A host copy of any array argument (NumPy arrays are returned as they are)."""
    if isinstance(x, DeviceBuffer):
        return x.to_host()
    if not is_device(x):
        return np.asarray(x)
    op = operand(x, "array", ("float32", "float16", "int32"), len(shape_of(x)))
    rt = runtime()
    with rt.lock:
        pushed = rt.enter()
        try:
            rt.wait_for(op)
            assert op.ptr is not None
            return rt.download(op.ptr, op.shape, op.dtype)
        finally:
            rt.leave(pushed)


