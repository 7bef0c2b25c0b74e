"""Compile the unmodified ``kernels/*.cu`` sources as C++ for the CPU emulation (test support).

Each source is compiled by g++ (or clang++) with ``cuda_emu.h`` force-included (``-include``,
``-x c++``) into one shared library per kernel module, holding a C entry point per kernel:
``edgefs_emu_launch_<entry>(grid, block, dynamic_smem, args, schedule, seed, err, errlen)``
and ``edgefs_emu_signature_<entry>()`` (the parameter types in pycuda's ``prepare`` letters).
The ``.cu`` file is included verbatim by a generated wrapper; a second generated unit defines
the ``extern __shared__`` arrays the source declares (found with ``nm``) as thread-local
buffers of :data:`DYNAMIC_SHARED_CAPACITY` bytes, of which a launch uses the first
``dynamic_smem`` (the rest is poisoned for AddressSanitizer).

Two variants: ``plain`` (-O2, for the test suite) and ``sanitize`` (``-fsanitize=address,
undefined -fno-sanitize-recover=all``, loaded only in a process that preloads the ASan runtime,
see :func:`sanitizer_env`). Libraries are cached like the cubins of :mod:`edgefs.kernels.build`:
``<cache>/emu/<name>-<variant>-<key>.so`` with the key the sha256 of the kernel source and its
headers, the emulation header, this build recipe, the compiler's version text and the flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from edgefs.kernels import build as cubin_build
from edgefs.kernels.build import KernelBuildError

from edgefs.errors import MissingDependencyError
from edgefs.fileio import atomic_write_bytes

EMU_DIR = Path(__file__).resolve().parent
HEADER = EMU_DIR / "cuda_emu.h"
INCLUDE_DIR = EMU_DIR / "include"
CXX_ENV = "EDGEFS_EMU_CXX"
#: Bytes of each ``extern __shared__`` array; a launch may use up to this much dynamic shared memory.
DYNAMIC_SHARED_CAPACITY = 64 * 1024
_COMMON = ("-std=c++17", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing", "-ffp-contract=off",
           "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function")
#: Compiler flags per variant (the link adds -shared).
VARIANTS: dict[str, tuple[str, ...]] = {
    "plain": ("-O2", *_COMMON),
    "sanitize": ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                 "-fno-sanitize-recover=all", *_COMMON),
}
_INSTALL = "install a C++ compiler (Debian/Ubuntu: 'sudo apt install g++'), or point EDGEFS_EMU_CXX at one"
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
_DYNAMIC = re.compile(r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?[\w:]+\s+(\w+)\s*\[\s*\]")


def find_compiler() -> Path:
    """The C++ compiler: ``$EDGEFS_EMU_CXX``, else g++, clang++ or c++ on PATH.

    Raises:
        MissingDependencyError: none found.
    """
    given = os.environ.get(CXX_ENV)
    if given:
        if shutil.which(given):
            return Path(str(shutil.which(given)))
        raise MissingDependencyError(f"{CXX_ENV}={given} is not an executable; {_INSTALL}")
    for name in ("g++", "clang++", "c++"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise MissingDependencyError(f"the emulated CUDA kernels need a C++ compiler and none is on PATH; {_INSTALL}")


@lru_cache(maxsize=4)
def compiler_version(cxx: Path) -> str:
    """``cxx --version``, part of the cache key (:func:`edgefs.kernels.build.tool_version`)."""
    return cubin_build.tool_version(cxx, _INSTALL[0].upper() + _INSTALL[1:])


def entry_points(source: Path) -> list[str]:
    """The ``extern "C" __global__`` kernels of a ``.cu`` source, in order."""
    return _ENTRY.findall(source.read_text())


def _emulation_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([HEADER, *INCLUDE_DIR.glob("*.h"), Path(__file__).resolve()]):  # this file: the recipe
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def library_path(source: Path, variant: str = "plain", *, cache: Path | None = None) -> Path:
    """Where the emulated library of ``source`` is (or will be) cached."""
    cxx = find_compiler()
    doc = json.dumps([cubin_build.source_digest(source), _emulation_digest(), compiler_version(cxx),
                      list(VARIANTS[variant]), DYNAMIC_SHARED_CAPACITY], separators=(",", ":"))
    key = hashlib.sha256(doc.encode()).hexdigest()
    return (cache or cubin_build.cache_dir()) / "emu" / f"{source.stem}-{variant}-{key[:20]}.so"


def _run(cmd: list[str], what: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise KernelBuildError(f"{what} failed (exit {done.returncode}):\n$ {' '.join(cmd)}\n"
                               f"{done.stdout}{done.stderr}")
    return done.stdout


def _dynamic_symbols(obj: Path, names: set[str]) -> list[str]:
    """Mangled names of the undefined ``extern __shared__`` arrays in ``obj``."""
    nm = shutil.which("nm")
    if nm is None:
        raise MissingDependencyError("the emulated kernel build needs 'nm' (binutils): sudo apt install binutils")
    mangled = _run([nm, "-P", "-u", str(obj)], "nm").split("\n")
    readable = _run([nm, "-P", "-C", "-u", str(obj)], "nm").split("\n")
    found = []
    for raw, text in zip(mangled, readable, strict=True):
        if not raw.strip():
            continue
        # POSIX format: "<name> <type> [value size]"; a demangled name may hold spaces.
        symbol, name = raw.split()[0], text.rstrip().rsplit(" ", 1)[0]
        if " " not in name and name.split("::")[-1] in names:
            found.append(symbol)
    return found


def compile_library(source: Path, out: Path, variant: str = "plain") -> Path:
    """Compile ``source`` into the shared library ``out`` (written atomically).

    Raises:
        KernelBuildError: the compiler rejected the source; the message holds the command and output.
    """
    cxx = str(find_compiler())
    flags = list(VARIANTS[variant])
    entries = entry_points(source)
    if not entries:
        raise KernelBuildError(f'{source} declares no extern "C" __global__ kernel')
    dynamic = set(_DYNAMIC.findall(source.read_text()))
    with tempfile.TemporaryDirectory(prefix="edgefs-emu-") as tmp:
        work = Path(tmp)
        wrapper = work / f"{source.stem}_emu.cpp"
        wrapper.write_text(f'#include "{source.resolve()}"\n' + "".join(f"EDGEFS_EMU_EXPORT({e})\n" for e in entries))
        include = ["-include", str(HEADER), "-I", str(INCLUDE_DIR), "-I", str(source.resolve().parent)]
        obj = work / "kernel.o"
        _run([cxx, *flags, *include, "-x", "c++", "-c", str(wrapper), "-o", str(obj)], f"compiling {source.name}")
        defs = work / "shared_defs.cpp"
        lines = ["#define EDGEFS_EMU_SECOND_UNIT 1", f'#include "{HEADER}"']
        for i, symbol in enumerate(_dynamic_symbols(obj, dynamic) if dynamic else []):
            lines += [
                f"alignas(16) thread_local unsigned char edgefs_emu_dynamic_{i}[{DYNAMIC_SHARED_CAPACITY}] "
                f'__asm__("{symbol}");',
                # The TLS init function the compiler may call before each access: nothing to do.
                f'extern "C" void edgefs_emu_dynamic_init_{i}() __asm__("_ZTH{symbol[2:]}");',
                f'extern "C" void edgefs_emu_dynamic_init_{i}() {{}}',
                f"static void* edgefs_emu_dynamic_address_{i}() {{ return edgefs_emu_dynamic_{i}; }}",
                f"static int edgefs_emu_dynamic_registered_{i} = edgefs_emu::register_dynamic_shared("
                f"&edgefs_emu_dynamic_address_{i}, {DYNAMIC_SHARED_CAPACITY});",
            ]
        defs.write_text("\n".join(lines) + "\n")
        defs_obj = work / "shared_defs.o"
        _run([cxx, *flags, "-x", "c++", "-c", str(defs), "-o", str(defs_obj)], "compiling the shared-memory unit")
        lib = work / "kernel.so"
        _run([cxx, *flags, "-shared", str(obj), str(defs_obj), "-o", str(lib)], f"linking {source.name}")
        atomic_write_bytes(out, lib.read_bytes())
    return out


def build_library(source: Path, variant: str = "plain", *, cache: Path | None = None, force: bool = False) -> Path:
    """The cached emulated library of any kernel source, compiled first if absent (or ``force``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    path = library_path(source, variant, cache=cache)
    if force or not path.is_file():
        compile_library(source, path, variant)
    return path


def build(name: str, variant: str = "plain", *, cache: Path | None = None, force: bool = False) -> Path:
    """The emulated library of ``kernels/<name>.cu``."""
    return build_library(cubin_build.source_path(name), variant, cache=cache, force=force)


def sanitizer_runtime() -> Path:
    """The compiler's shared AddressSanitizer runtime, to preload into a process that loads the
    ``sanitize`` libraries (ASan must come first in the library list).

    Raises:
        MissingDependencyError: the compiler has no libasan.so.
    """
    cxx = str(find_compiler())
    name = _run([cxx, "-print-file-name=libasan.so"], "locating libasan").strip()
    if not name or not Path(name).is_file():
        raise MissingDependencyError(f"{cxx} has no AddressSanitizer runtime (libasan.so); Debian/Ubuntu: "
                                     "sudo apt install libasan8 (the one matching the compiler)")
    return Path(name).resolve()


def sanitizer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process that loads ``sanitize`` libraries: the ASan runtime
    preloaded, leak checks off (Python itself keeps memory to exit), every report fatal."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = str(sanitizer_runtime())
    env["ASAN_OPTIONS"] = ("detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86:"
                           "detect_stack_use_after_return=0:allocator_may_return_null=1")
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=87"
    return env
