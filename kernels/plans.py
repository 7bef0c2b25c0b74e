"""Launch plans of the head kernels: what goes in shared memory and what in global scratch for a
shape, how many blocks and threads. Pure Python (tested on CPU); :mod:`edgefs.kernels.launch`
follows them, on the GPU and under the CPU emulation alike.

Shared memory: without an opt-in that pycuda does not expose, a block gets 48 KiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefs.errors import EdgefsError

#: Dynamic shared memory one block may use (48 KiB minus room for the kernels' static arrays).
SMEM_LIMIT = 48 * 1024 - 512
#: Largest top-k the fused classify returns (one block argmax per rank).
MAX_TOPK = 32
#: Largest block of the fine-tune kernels (their __launch_bounds__).
MAX_FINETUNE_THREADS = 512


@dataclass(frozen=True)
class ClassifyPlan:
    """Grid of the fused classify: ``parts`` blocks of ``threads`` per query, each scoring
    ``classes_per_block`` classes; ``smem`` bytes of dynamic shared memory (max(D, C) floats, or
    what fits: the kernel tiles a longer query or class row through global memory)."""

    classes_per_block: int
    parts: int
    threads: int
    smem: int


def plan_classify(queries: int, classes: int, dim: int, sm_count: int = 132, threads: int = 256,
                  smem_limit: int = SMEM_LIMIT) -> ClassifyPlan:
    """Split the classes of each query over enough blocks to fill about 2 waves of SMs.

    Shared memory holds ``max(D, C)`` floats when they fit under ``smem_limit``; above it (C or D
    beyond ~12,000) the kernel keeps the query or the class row in global memory (L2) instead,
    so any size runs.
    """
    smem = 4 * min(max(dim, classes), max(smem_limit // 4, 1))
    warps = threads // 32
    target_blocks = max(1, 2 * sm_count // max(queries, 1))
    per_block = max(warps, -(-classes // target_blocks))
    per_block = -(-per_block // warps) * warps  # whole warps' worth of classes
    return ClassifyPlan(per_block, -(-classes // per_block), threads, smem)


@dataclass(frozen=True)
class GramPlan:
    """Where the fused Gram fine-tune keeps its arrays.

    Attributes:
        k_shared: K (N*N floats, or C*N*N per class) in shared memory, else in global scratch.
        state_shared: base, A, velocity, logits (4*N*C floats), b, vb (2*C) and labels (N) in
            shared memory, else in global scratch.
        smem: dynamic shared memory bytes.
        work_floats: global scratch floats.
    """

    k_shared: bool
    state_shared: bool
    smem: int
    work_floats: int


def plan_finetune_gram(n: int, classes: int, per_class: bool, smem_limit: int = SMEM_LIMIT) -> GramPlan:
    """Everything in shared memory when it fits, else K or the state alone, else neither.

    With 48 KiB: scalar lr, 5-way 5-shot (N=25) takes 625 + 500 + 35 floats (4.6 KiB); all in
    shared up to about N*N + 4*N*C <= 12,000 (e.g. N=64 with C=30, N=100 with C=5).
    """
    k_floats = (classes if per_class else 1) * n * n
    state_floats = 4 * n * classes + 2 * classes + n
    for k_shared, state_shared in ((True, True), (True, False), (False, True), (False, False)):
        smem = 4 * (k_floats * k_shared + state_floats * state_shared)
        if smem <= smem_limit:
            work = k_floats * (not k_shared) + state_floats * (not state_shared)
            return GramPlan(k_shared, state_shared, smem, work)
    raise AssertionError("unreachable: the last plan uses no shared memory")


@dataclass(frozen=True)
class PlainPlan:
    """Where the plain-loop fine-tune keeps its logits/gradient (N*C), b, vb (2*C), labels (N)."""

    state_shared: bool
    smem: int
    work_floats: int


def plan_finetune_plain(n: int, classes: int, smem_limit: int = SMEM_LIMIT) -> PlainPlan:
    """Logits in shared memory when N*C + 2*C + N floats fit, else in global scratch."""
    floats = n * classes + 2 * classes + n
    if 4 * floats <= smem_limit:
        return PlainPlan(True, 4 * floats, 0)
    return PlainPlan(False, 0, floats)


def block_size(threads: int | None, default: int, limit: int) -> int:
    t = default if threads is None else int(threads)
    if t < 32 or t > limit or t % 32:
        raise EdgefsError(f"threads must be a multiple of 32 in 32..{limit}, got {threads}")
    return t


