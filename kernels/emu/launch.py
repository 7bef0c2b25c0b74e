"""The launchers of :mod:`edgefs.kernels.launch`, run on the CPU emulation of the kernels (tests).

:func:`accumulate_normalize`, :func:`classify`, :func:`finetune_gram`, :func:`finetune`,
:func:`to_host` and :class:`DeviceBuffer` are the pycuda module's own functions, run under
:func:`edgefs.kernels.runtime.using_runtime` with an :class:`EmuRuntime`: the argument checks,
the ``plan_*`` launch plans (with an H100's 132 SMs and the 48 KiB shared-memory limit), the
grid and block choice and the argument marshalling are the GPU path's code. Only what the
runtime does differs: "device memory" is host memory (each allocation a separate, exactly sized
``malloc``), copies are ``memmove``, and ``prepared_call`` runs the kernel compiled from the same
``.cu`` source by :mod:`edgefs.kernels.emu.build`, after checking the launcher's argument
format letters against the kernel's C++ parameter types.

Environment: ``EDGEFS_EMU_SCHEDULE`` (``forward``, ``reverse`` or ``shuffle[:seed]``, default
``shuffle:1``; see ``cuda_emu.h``) and ``EDGEFS_EMU_VARIANT`` (``plain`` or ``sanitize``; the
latter only in a process started with :func:`edgefs.kernels.emu.build.sanitizer_env`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from edgefs.kernels import launch as gpu
from edgefs.kernels import runtime as kernel_runtime
from edgefs.kernels.emu import build
from edgefs.kernels.plans import SMEM_LIMIT

from edgefs.errors import EdgefsError

SCHEDULES: dict[str, int] = {"forward": 0, "reverse": 1, "shuffle": 2}
SCHEDULE_ENV = "EDGEFS_EMU_SCHEDULE"
VARIANT_ENV = "EDGEFS_EMU_VARIANT"
DEFAULT_SCHEDULE = "shuffle:1"
#: The SM count the launch plans are made for (an H100 / H200).
EMU_SM_COUNT = 132
_ERRLEN = 1024
_F = TypeVar("_F", bound=Callable[..., Any])


class EmulatedKernelError(EdgefsError):
    """The emulation stopped a kernel: deadlock, divergent warp collective, bad launch."""


def parse_schedule(text: str) -> tuple[int, int]:
    """``"shuffle:7"`` -> (schedule code, seed)."""
    name, _, seed = text.partition(":")
    if name not in SCHEDULES or (seed and not seed.isdigit()):
        raise EdgefsError(f"{SCHEDULE_ENV} must be forward, reverse or shuffle[:seed], got {text!r}")
    return SCHEDULES[name], int(seed or 1)


def _libc() -> ctypes.CDLL:
    # The process's malloc: under a preloaded AddressSanitizer, its allocator with redzones.
    lib = ctypes.CDLL(None)
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.restype = None
    lib.free.argtypes = [ctypes.c_void_p]
    return lib


_LIBC = _libc()


class HostAllocation:
    """``nbytes`` of host memory standing in for a ``pycuda.driver.mem_alloc`` allocation."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        ptr = _LIBC.malloc(max(self.nbytes, 1))
        if not ptr:
            raise MemoryError(f"cannot allocate {self.nbytes} bytes for an emulated device buffer")
        self.ptr: int = ptr

    def __int__(self) -> int:
        return self.ptr

    def __del__(self) -> None:
        if getattr(self, "ptr", 0):
            _LIBC.free(self.ptr)
            self.ptr = 0


class HostMemory:
    """The memory calls of ``pycuda.driver`` the launchers make, over host memory."""

    @staticmethod
    def mem_alloc(nbytes: int) -> HostAllocation:
        return HostAllocation(nbytes)

    @staticmethod
    def memset_d8(dst: Any, value: int, nbytes: int) -> None:
        ctypes.memset(int(dst), value, nbytes)

    @staticmethod
    def memcpy_htod(dst: Any, src: np.ndarray) -> None:
        a = np.ascontiguousarray(src)
        ctypes.memmove(int(dst), a.ctypes.data, a.nbytes)

    @staticmethod
    def memcpy_dtoh(dst: np.ndarray, src: Any) -> None:
        if not dst.flags.c_contiguous:
            raise EdgefsError("memcpy_dtoh needs a C-contiguous host array")
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    @staticmethod
    def memcpy_dtod(dst: Any, src: Any, nbytes: int) -> None:
        ctypes.memmove(int(dst), int(src), nbytes)

    @staticmethod
    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)


def _sanitizer_loaded() -> bool:
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


class EmuFunction:
    """One kernel entry point of an emulated library, with pycuda's ``prepare``/``prepared_call``."""

    def __init__(self, lib: ctypes.CDLL, entry: str, rt: EmuRuntime) -> None:
        self.entry = entry
        self.rt = rt
        try:
            self._launch = getattr(lib, f"edgefs_emu_launch_{entry}")
            signature = getattr(lib, f"edgefs_emu_signature_{entry}")
        except AttributeError:
            raise EdgefsError(f"the emulated library has no kernel {entry}") from None
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_ulonglong, ctypes.c_char_p,
                                 ctypes.c_size_t]
        signature.restype = ctypes.c_char_p
        self.signature: str = signature().decode()
        self.formats = ""

    def prepare(self, formats: str) -> None:
        """Check the launcher's argument letters against the kernel's C++ parameter types."""
        if formats != self.signature:
            raise EdgefsError(f"{self.entry}: the launcher passes arguments {formats!r} but the kernel takes "
                              f"{self.signature!r} (P pointer, i int, I unsigned, f float); fix ARG_FORMATS")
        self.formats = formats

    def prepared_call(self, grid: tuple[int, ...], block: tuple[int, ...], *args: Any, shared_size: int = 0) -> None:
        """Run the kernel to completion (synchronous, unlike a GPU launch)."""
        if len(args) != len(self.formats):
            raise EdgefsError(f"{self.entry} takes {len(self.formats)} arguments, got {len(args)}")
        values: list[Any] = []
        for code, a in zip(self.formats, args, strict=True):
            if code == "P":
                values.append(ctypes.c_void_p(int(a) or None))
            elif code == "i":
                values.append(ctypes.c_int(int(a)))
            elif code == "I":
                values.append(ctypes.c_uint(int(a)))
            elif code == "f":
                values.append(ctypes.c_float(float(a)))
            else:
                raise EdgefsError(f"{self.entry}: argument format {code!r} is not emulated")
        argv = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
        err = ctypes.create_string_buffer(_ERRLEN)
        g = (ctypes.c_uint * 3)(*(int(v) for v in grid))
        b = (ctypes.c_uint * 3)(*(int(v) for v in block))
        rc = self._launch(g, b, int(shared_size), argv, self.rt.schedule, self.rt.next_seed(), err, _ERRLEN)
        if rc != 0:
            raise EmulatedKernelError(f"{self.entry} (grid {tuple(grid)}, block {tuple(block)}, "
                                      f"{shared_size} B shared): {err.value.decode(errors='replace')}")


class EmuRuntime(kernel_runtime.Runtime):
    """:class:`edgefs.kernels.runtime.Runtime` on host memory and emulated kernels.

    Args:
        variant: ``plain`` or ``sanitize`` (see :mod:`edgefs.kernels.emu.build`).
        schedule: ``forward``, ``reverse`` or ``shuffle[:seed]``.
        cache: library cache folder (default: the cubin cache's ``emu/``).
    """

    host_memory = True

    def __init__(self, variant: str = "plain", schedule: str = DEFAULT_SCHEDULE, *, cache: Path | None = None) -> None:
        if variant not in build.VARIANTS:
            raise EdgefsError(f"{VARIANT_ENV} must be one of {sorted(build.VARIANTS)}, got {variant!r}")
        if variant == "sanitize" and not _sanitizer_loaded():
            raise EdgefsError("the sanitizer build of the emulated kernels loads only into a process that "
                              "preloads AddressSanitizer: run it with the environment of "
                              "edgefs.kernels.emu.build.sanitizer_env() "
                              "(LD_PRELOAD=$(g++ -print-file-name=libasan.so))")
        self.variant = variant
        self.schedule, self._seed = parse_schedule(schedule)
        self.cache = cache
        self.cuda: Any = HostMemory()
        self.sm_count = EMU_SM_COUNT
        self.smem_limit = SMEM_LIMIT
        self.lock = threading.RLock()
        self._libraries: dict[str, ctypes.CDLL] = {}
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self._scratch: dict[str, tuple[int, Any]] = {}
        self._pinned: dict[str, np.ndarray] = {}
        self._launches = 0

    def next_seed(self) -> int:
        """Seed of the next launch's shuffle: the runtime's seed, then one more per launch."""
        self._launches += 1
        return self._seed + self._launches - 1

    # -- no GPU context, no streams
    def enter(self) -> bool:
        return False

    def leave(self, pushed: bool) -> None:
        return None

    def wait_for(self, *ops: kernel_runtime.Operand) -> None:
        return None

    # -- kernels
    def raw_function(self, module: str, entry: str) -> Any:
        """``entry`` of the emulated library of ``kernels/<module>.cu``."""
        lib = self._libraries.get(module)
        if lib is None:
            lib = ctypes.CDLL(str(build.build(module, self.variant, cache=self.cache)))
            self._libraries[module] = lib
        return EmuFunction(lib, entry, self)

    # -- memory
    def scratch(self, name: str, nbytes: int, *, zero: bool = False) -> int:
        """Scratch ``name`` of exactly ``nbytes`` (so overruns reach the allocation's end), kept and
        reused while the size stays the same (so state a kernel leaves, such as classify's
        counters, carries over as on the GPU); zeroed when made when ``zero``."""
        have = self._scratch.get(name)
        if have is None or have[0] != nbytes:
            alloc = self.cuda.mem_alloc(nbytes)
            if zero:
                self.cuda.memset_d8(alloc, 0, max(int(nbytes), 1))
            have = (int(nbytes), alloc)
            self._scratch[name] = have
        return int(have[1])

    def device_ptr(self, op: kernel_runtime.Operand, slot: str) -> int:
        if op.ptr is not None and not getattr(getattr(op.owner, "runtime", None), "host_memory", False):
            raise EdgefsError(f"{op.name} is GPU memory; the emulated kernels read host memory only: pass a NumPy "
                              "array or an edgefs.kernels.emu.launch.DeviceBuffer")
        return super().device_ptr(op, slot)


_RUNTIMES: dict[tuple[str, str], EmuRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def runtime(variant: str | None = None, schedule: str | None = None) -> EmuRuntime:
    """The process's :class:`EmuRuntime` for a variant and schedule (defaults from the environment)."""
    key = (variant or os.environ.get(VARIANT_ENV, "plain"), schedule or os.environ.get(SCHEDULE_ENV, DEFAULT_SCHEDULE))
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(key)
        if rt is None:
            rt = _RUNTIMES[key] = EmuRuntime(*key)
    return rt


def _emulated(fn: _F) -> _F:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with gpu.using_runtime(runtime()):
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


accumulate_normalize = _emulated(gpu.accumulate_normalize)
classify = _emulated(gpu.classify)
finetune_gram = _emulated(gpu.finetune_gram)
finetune = _emulated(gpu.finetune)
to_host = _emulated(gpu.to_host)


class DeviceBuffer(gpu.DeviceBuffer):
    """:class:`edgefs.kernels.runtime.DeviceBuffer` in emulated device (host) memory."""

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.float32, *, zero: bool = False) -> None:
        with gpu.using_runtime(runtime()):
            super().__init__(shape, dtype, zero=zero)


def load_kernel(source: Path, entry: str, formats: str, *, variant: str = "plain", schedule: str = DEFAULT_SCHEDULE,
                cache: Path | None = None) -> EmuFunction:
    """Kernel ``entry`` of any ``.cu`` source, emulated and prepared with ``formats`` (pycuda letters).

    For tests of the emulation itself; the head kernels go through the launchers above.
    """
    rt = EmuRuntime(variant, schedule, cache=cache)
    fn = EmuFunction(ctypes.CDLL(str(build.build_library(source, variant, cache=cache))), entry, rt)
    fn.prepare(formats)
    return fn
