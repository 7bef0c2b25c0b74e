"""Compile the head kernels with nvcc, once per GPU architecture, into an on-disk cubin cache.

Each ``kernels/<name>.cu`` becomes ``<cache>/<name>-<arch>-<key>.cubin``, where the key is
the sha256 of the source (with every ``*.cuh`` header beside it), the architecture
(``sm_90``), the nvcc version text and the flags: a new source, compiler or GPU gets a new
file, an unchanged one is never recompiled. Files are written atomically, so concurrent
processes or a power cut leave a whole cubin or none. The cache lives in
``$EDGEFS_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/edgefs/kernels``, else
``~/.cache/edgefs/kernels``.

Nothing here needs a GPU or pycuda: :func:`compile_check` builds every kernel for a named
architecture (CI does so for ``sm_87``, Jetson Orin, and ``sm_90``, H100), and
:mod:`edgefs.kernels.launch` loads the cubin for the current GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from edgefs.errors import EdgefsError, MissingDependencyError
from edgefs.fileio import atomic_write_bytes

KERNEL_DIR = Path(__file__).resolve().parent
CACHE_ENV = "EDGEFS_KERNEL_CACHE"
#: Where a CUDA toolkit is looked for when nvcc is not on PATH (after $CUDA_HOME, $CUDA_PATH).
CUDA_ROOTS: tuple[str, ...] = ("/usr/local/cuda",)
NVCC_ENV = "EDGEFS_NVCC"
# No fast math: the kernels must round like NumPy's float32 (IEEE division and sqrt).
NVCC_FLAGS: tuple[str, ...] = ("-cubin", "-O3", "-std=c++17", "-Werror", "all-warnings")
_ARCH = re.compile(r"^sm_\d{2,3}[a-z]?$")
_INSTALL = (
    "Install the CUDA toolkit (on a Jetson it comes with JetPack: 'sudo apt install nvidia-jetpack'; "
    "elsewhere NVIDIA's 'cuda-toolkit' package), or point EDGEFS_NVCC at an nvcc binary"
)


class KernelBuildError(EdgefsError):
    """nvcc rejected a kernel source."""


def kernel_sources() -> list[Path]:
    """The ``kernels/*.cu`` sources, sorted by name."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def source_path(name: str) -> Path:
    """``kernels/<name>.cu``; EdgefsError naming the known kernels if there is none."""
    path = KERNEL_DIR / f"{name}.cu"
    if not path.is_file():
        known = ", ".join(p.stem for p in kernel_sources())
        raise EdgefsError(f"no kernel source {path.name}; known: {known}")
    return path


def source_digest(source: Path) -> str:
    """sha256 of a ``.cu`` file and of every ``*.cuh`` header in its folder (names included)."""
    h = hashlib.sha256()
    for path in [source, *sorted(source.parent.glob("*.cuh"))]:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def check_arch(arch: str) -> str:
    """Return ``arch`` if it names a real architecture such as ``sm_87`` or ``sm_90a``."""
    if not isinstance(arch, str) or not _ARCH.match(arch):
        raise EdgefsError(f"GPU architecture must look like 'sm_87' or 'sm_90', got {arch!r}")
    return arch


def arch_of(capability: tuple[int, int]) -> str:
    """``(9, 0)`` (a device's compute capability) -> ``"sm_90"``."""
    major, minor = (int(v) for v in capability)
    return check_arch(f"sm_{major}{minor}")


def cache_dir() -> Path:
    """Where cubins are kept (see the module docstring); not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    root = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return root / "edgefs" / "kernels"


def find_nvcc() -> Path:
    """nvcc from ``$EDGEFS_NVCC``, ``PATH``, ``$CUDA_HOME/bin`` or ``/usr/local/cuda/bin``.

    Raises:
        MissingDependencyError: none found; the message says what to install.
    """
    given = os.environ.get(NVCC_ENV)
    if given:
        if Path(given).is_file():
            return Path(given)
        raise MissingDependencyError(f"{NVCC_ENV}={given} does not exist. {_INSTALL}")
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), *CUDA_ROOTS):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root) / "bin" / "nvcc"
    raise MissingDependencyError(
        "compiling the CUDA head kernels needs nvcc, the CUDA compiler, which is not on PATH, in "
        f"$CUDA_HOME/bin or in /usr/local/cuda/bin. {_INSTALL}"
    )


@lru_cache(maxsize=8)
def tool_version(tool: Path, install: str) -> str:
    """The full ``TOOL --version`` text: part of a build cache's key, so that another compiler (or
    another build of one) never reuses what this one made. The real and the emulated kernel builds
    both call it.

    Raises:
        MissingDependencyError: the tool cannot be run; ``install`` says how to get it.
    """
    try:
        done = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MissingDependencyError(f"cannot run {tool} --version ({exc}). {install}") from exc
    return done.stdout.strip()


def nvcc_version(nvcc: Path) -> str:
    """The full ``nvcc --version`` text (release and build), part of the cache key."""
    return tool_version(nvcc, _INSTALL)


def cache_key(digest: str, arch: str, version: str, flags: tuple[str, ...] = NVCC_FLAGS) -> str:
    """sha256 over (source digest, architecture, nvcc version text, flags)."""
    doc = json.dumps([digest, check_arch(arch), version, list(flags)], separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def cubin_path(name: str, arch: str, *, cache: Path | None = None, nvcc: Path | None = None) -> Path:
    """Where the cubin of kernel ``name`` for ``arch`` is (or will be) cached."""
    source = source_path(name)
    key = cache_key(source_digest(source), arch, nvcc_version(nvcc or find_nvcc()))
    return (cache or cache_dir()) / f"{name}-{arch}-{key[:20]}.cubin"


def compile_cubin(source: Path, arch: str, out: Path, *, nvcc: Path | None = None) -> Path:
    """Compile ``source`` for ``arch`` and write the cubin to ``out`` atomically.

    Raises:
        KernelBuildError: nvcc failed; the message holds its command line and output.
    """
    nvcc = nvcc or find_nvcc()
    with tempfile.TemporaryDirectory(prefix="edgefs-nvcc-") as tmp:
        target = Path(tmp) / "kernel.cubin"
        cmd = [str(nvcc), *NVCC_FLAGS, f"-arch={check_arch(arch)}", "-I", str(source.parent), "-o", str(target),
               str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise KernelBuildError(f"nvcc failed on {source.name} for {arch} (exit {done.returncode}):\n"
                                   f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
        atomic_write_bytes(out, target.read_bytes())
    return out


def build(name: str, arch: str, *, cache: Path | None = None, force: bool = False) -> Path:
    """The cached cubin of kernel ``name`` for ``arch``, compiled first if absent (or ``force``)."""
    nvcc = find_nvcc()
    path = cubin_path(name, arch, cache=cache, nvcc=nvcc)
    if force or not path.is_file():
        compile_cubin(source_path(name), arch, path, nvcc=nvcc)
    return path


def compile_check(arch: str, *, cache: Path | None = None, force: bool = False, jobs: int | None = None) -> list[Path]:
    """Compile every ``kernels/*.cu`` for ``arch``, no GPU needed, and return the cubin paths.

    Args:
        arch: e.g. ``"sm_87"`` (Jetson Orin) or ``"sm_90"`` (H100).
        cache: cubin folder (default :func:`cache_dir`); compiled files are reused from it.
        force: recompile even when a cubin with the same key exists.
        jobs: parallel nvcc processes (default: the CPU count).

    Raises:
        MissingDependencyError: no nvcc. KernelBuildError: a kernel does not compile.
    """
    check_arch(arch)
    names = [p.stem for p in kernel_sources()]
    with ThreadPoolExecutor(max_workers=max(1, jobs or os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda n: build(n, arch, cache=cache, force=force), names))
