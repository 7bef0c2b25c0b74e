"""This machine's CPU: architecture, instruction sets, and the INT8 class a quantised graph must suit.

INT8 arithmetic differs between CPUs. On x86 without VNNI (SSE, AVX2, AVX-512 without
VNNI) ONNX Runtime's and oneDNN's u8 x s8 kernels add pairs of 8-bit products into a
16-bit sum (``vpmaddubsw``) that saturates when both products are large; VNNI
(``vpdpbusd``) and ARM's widening or dot-product instructions add into 32 bits. A graph
that is right on one class can be several points worse on another, so an INT8 bundle
records the classes it was made for (:mod:`edgefs.export.quantize`, ``--target``) and the
engines check the machine against it.

The instruction sets come from NumPy's runtime CPUID probe (``__cpu_features__``), which
sees what the process may really use (under ``qemu-x86_64-static -cpu Haswell`` it sees
AVX2 and no AVX-512), completed by ``/proc/cpuinfo`` flags NumPy does not list
(``avx_vnni``, ``amx_int8``). Torch-free; no heavy imports.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INT8_CLASSES = ("x86-vnni", "x86", "arm64")
"""CPU classes an INT8 bundle can claim: x86 with a VNNI dot product (AVX-512 VNNI or
AVX-VNNI: 32-bit sums), other x86 (16-bit pair sums that saturate), 64-bit ARM."""
TARGETS = ("any", *INT8_CLASSES)
"""What ``edgefs quantize --target`` takes; ``any`` claims every class in :data:`INT8_CLASSES`."""


@dataclass(frozen=True)
class CpuInfo:
    """What the engines and ``edgefs doctor`` need to know about the CPU.

    Attributes:
        arch: ``x86_64`` or ``aarch64`` (``platform.machine()``, normalised).
        model: the model name (``/proc/cpuinfo``), or ``""`` where none is given.
        cores: logical cores this process may use.
        features: instruction-set names, upper case (``AVX2``, ``AVX512VNNI``, ``AVX_VNNI``,
            ``AMX_INT8``, ``ASIMDDP`` for ARM's dot product...).
    """

    arch: str
    model: str
    cores: int
    features: frozenset[str] = field(default_factory=frozenset)

    @property
    def int8_class(self) -> str:
        """``x86-vnni``, ``x86`` or ``arm64`` (``other`` for anything else)."""
        if self.arch == "x86_64":
            return "x86-vnni" if self.features & {"AVX512VNNI", "AVX_VNNI", "AVX512_CLX"} else "x86"
        if self.arch == "aarch64":
            return "arm64"
        return "other"

    def instruction_sets(self) -> list[str]:
        """The sets that matter for the engines, in a fixed order (for ``doctor``)."""
        wanted = ("SSE41", "AVX2", "FMA3", "AVX512F", "AVX512VNNI", "AVX_VNNI", "AVX512BF16", "AMX_INT8",
                  "AMX_BF16", "NEON", "ASIMD", "ASIMDDP", "ASIMDFHM", "I8MM", "SVE")
        return [f for f in wanted if f in self.features]

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "model": self.model, "cores": self.cores, "int8_class": self.int8_class,
                "instruction_sets": self.instruction_sets()}


def _numpy_features() -> set[str]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found  # NumPy 2
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as found
        except ImportError:
            return set()
    return {name for name, present in found.items() if present}


def _proc_cpuinfo() -> tuple[str, set[str]]:
    """Model name and the flags NumPy does not probe, from ``/proc/cpuinfo`` (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "model", "cpu model") and not model and not value.strip().isdigit():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    extra = {"AVX_VNNI": "avx_vnni", "AMX_INT8": "amx_int8", "AMX_BF16": "amx_bf16", "I8MM": "i8mm",
             "SVE": "sve", "ASIMDDP": "asimddp"}
    return model, {name for name, flag in extra.items() if flag in flags}


def _normal_arch(machine: str) -> str:
    machine = machine.lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This process's CPU (probed once)."""
    arch = _normal_arch(platform.machine())
    model, extra = _proc_cpuinfo()
    features = _numpy_features()
    if arch == "x86_64" and "AVX2" not in features:
        extra -= {"AVX_VNNI"}  # /proc/cpuinfo is the host's under an emulated, older CPU: trust CPUID
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return CpuInfo(arch=arch, model=model or platform.processor(), cores=cores, features=frozenset(features | extra))


def claimed_classes(target: str) -> list[str]:
    """The INT8 classes a ``--target`` claims (``any``: all of them)."""
    if target not in TARGETS:
        raise ValueError(f"unknown INT8 target {target!r}; use one of {', '.join(TARGETS)}")
    return list(INT8_CLASSES) if target == "any" else [target]
