"""pycuda launchers of the head kernels, with the signatures of :mod:`edgefs.heads.reference`.

:func:`accumulate_normalize`, :func:`classify`, :func:`finetune_gram` and :func:`finetune`
take what their NumPy references take. Every array argument may be a NumPy array (copied to
the GPU and back: the slow path, for tests and one-off calls) or GPU memory: an
:class:`edgefs.device.DeviceArray` (what ``Engine.embed_device`` returns), a
:class:`DeviceBuffer`, or anything with ``__cuda_array_interface__`` (a torch CUDA tensor, a
CuPy array), read in place with no host copy. Device arrays must be C-contiguous, float32
(embeddings, support and queries may be float16) or int32 (labels, counts).

pycuda is imported on first use, never at import time, and it runs in the device's
*primary* context (``pycuda.autoprimaryctx``), the one PyTorch, TensorRT and the CUDA runtime
use, so their pointers are valid here. Kernels run on the legacy default stream; a producer
that wrote on another stream (``DeviceArray.stream`` / the interface's ``stream``) is waited
for first. Functions are prepared once (``Function.prepare``) and launched with
``prepared_call`` to keep the Python overhead per launch small; scratch memory is kept
between calls. Launches are serialised by a lock.

Shared memory: without an opt-in that pycuda does not expose, a block gets 48 KiB; each
``plan_*`` function of :mod:`edgefs.kernels.plans` says what goes where for a shape, and is
pure Python (tested on CPU). The pycuda side (context, memory, operands) is
:mod:`edgefs.kernels.runtime`; this module's ``__all__`` names what a head needs of both.

Backends: the launchers reach the GPU only through the :class:`Runtime` that :func:`runtime`
returns (kernel loading, memory allocation and copies, ``prepared_call``). The CPU emulation
of the kernels for tests (:mod:`edgefs.kernels.emu.launch`) runs these same launchers, argument
checks, launch plans and marshalling with a runtime whose "device memory" is host memory and
whose kernels are the same ``.cu`` sources compiled as C++ (:func:`using_runtime`).

Verification status: written and compiled with nvcc (sm_87, sm_90) on a machine with no GPU;
``device_tests/test_kernels.py`` runs every case through these launchers on the CPU emulation
of the kernels in CI (:mod:`edgefs.kernels.emu`: arithmetic, indexing, synchronisation logic,
marshalling), but the GPU variant of those tests and ``tools/bench_kernels.py`` have not run
on a GPU from this code yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from edgefs.kernels.plans import (
    MAX_FINETUNE_THREADS,
    MAX_TOPK,
    block_size,
    plan_classify,
    plan_finetune_gram,
    plan_finetune_plain,
)
from edgefs.kernels.runtime import (
    FLOATS,
    DeviceBuffer,
    Operand,
    Runtime,
    check_size,
    host_labels,
    is_device,
    operand,
    runtime,
    shape_of,
    to_host,
    using_runtime,
)

#: The launchers, and what a head needs to hand them GPU memory.
__all__ = ["DeviceBuffer", "accumulate_normalize", "classify", "finetune", "finetune_gram", "is_device", "runtime",
           "to_host", "using_runtime"]

from edgefs.errors import EdgefsError


def accumulate_normalize(embeddings: Any, labels: Any, sums: Any, counts: Any, *, out: Any = None,
                         touched_only: bool = False, normalize_shots: bool = False,
                         threads: int | None = None) -> Any:
    """:func:`edgefs.heads.reference.accumulate_normalize` on the GPU (one launch).

    Args:
        embeddings: float32 or float16 ``(S, D)``, host or GPU.
        labels: int32 ``(S,)`` in ``0..C-1`` (host labels are range-checked; GPU ones cannot be).
        sums: float32 ``(C, D)``; grows in place (a host array is updated in place too).
        counts: int32 ``(C,)``; incremented in place. On the same side (host/GPU) as ``sums``.
        out: float32 ``(C, D)`` GPU array for the normalised means (GPU state only; default: a
            new :class:`DeviceBuffer`).
        touched_only: process only the classes in ``labels`` (host labels, GPU state and ``out``
            required): rows of other classes in ``out`` are left as they are.
        normalize_shots: scale each shot to unit L2 norm before adding it (what the heads do).
        threads: block size (default 256).

    Returns:
        float32 ``(C, D)`` unit-norm means (zeros where the count is 0): a NumPy array for
        host state, else ``out`` or a new DeviceBuffer. Sums equal NumPy's ``np.add.at`` bit for
        bit (same order of float32 adds); the normalisation differs by summation order only.
    """
    emb = operand(embeddings, "embeddings", FLOATS, 2, host_dtype="float32")
    s = operand(sums, "sums", ("float32",), 2)
    cnt = operand(counts, "counts", ("int32",), 1)
    c, d = s.shape
    if emb.shape[1] != d or cnt.shape != (c,):
        raise EdgefsError(f"embeddings {emb.shape}, sums {s.shape} and counts {cnt.shape} do not fit; "
                          "pass (S, D) embeddings, (C, D) sums and (C,) counts")
    lab = host_labels(labels, emb.shape[0], c)
    if s.on_device != cnt.on_device:
        raise EdgefsError("sums and counts must both be host arrays or both GPU arrays")
    if not s.on_device and not (isinstance(sums, np.ndarray) and isinstance(counts, np.ndarray)):
        raise EdgefsError("host sums and counts must be NumPy arrays: they are updated in place")
    block = block_size(threads, 256, 1024)
    check_size("sums", c, d)
    check_size("embeddings", *emb.shape)
    rows: np.ndarray | None = None
    if touched_only:
        if lab.host is None or not s.on_device or out is None:
            raise EdgefsError("touched_only needs host labels, GPU sums/counts and a GPU out array")
        rows = np.unique(lab.host).astype(np.int32)
    o = operand(out, "out", ("float32",), 2) if out is not None else None
    if o is not None and (not o.on_device or o.shape != (c, d)):
        raise EdgefsError(f"out must be a float32 ({c}, {d}) GPU array, got {o.shape} on the "
                          f"{'GPU' if o.on_device else 'host'}")
    if c == 0:
        return np.zeros((0, d), np.float32) if not s.on_device else (out if out is not None else DeviceBuffer((0, d)))
    rt = runtime()
    with rt.lock:
        pushed = rt.enter()
        try:
            rt.wait_for(emb, lab, s, cnt, *([o] if o else []))
            fn = rt.function("edgefs_accumulate", emb.dtype)
            emb_ptr = rt.device_ptr(emb, "acc.emb")
            label_all, lab_ptr = 0, 0
            if lab.host is not None and lab.host.size and (lab.host == lab.host[0]).all():
                label_all = int(lab.host[0])  # one class: no label upload
            else:
                lab_ptr = rt.device_ptr(lab, "acc.labels")
            rows_ptr, row0, grid = 0, 0, c
            if rows is not None and len(rows) == 1:
                row0, grid = int(rows[0]), 1  # one class (enrolling): no row list to upload
            elif rows is not None:
                rows_ptr = rt.device_ptr(Operand("rows", rows.shape, rows.dtype, None, rows), "acc.rows")
                grid = len(rows)
            sums_ptr = rt.device_ptr(s, "acc.sums")
            counts_ptr = rt.device_ptr(cnt, "acc.counts")
            result: Any
            if s.on_device:
                result = out if out is not None else DeviceBuffer((c, d))
                out_ptr = o.ptr if o is not None else result.ptr
            else:
                out_ptr = rt.scratch("acc.out", 4 * c * d)
            if grid:
                fn.prepared_call((grid, 1, 1), (block, 1, 1), emb_ptr, lab_ptr, label_all, rows_ptr, row0, sums_ptr,
                                 counts_ptr, out_ptr, emb.shape[0], d, int(bool(normalize_shots)))
            if not s.on_device:
                # Host state: update the caller's arrays in place, as the reference does.
                rt.cuda.memcpy_dtoh(s.host, sums_ptr)
                rt.cuda.memcpy_dtoh(cnt.host, counts_ptr)
                if s.host is not sums:
                    sums[...] = s.host
                if cnt.host is not counts:
                    counts[...] = cnt.host
                result = rt.download(out_ptr, (c, d), np.float32)
            return result
        finally:
            rt.leave(pushed)


def classify(queries: Any, weights: Any, temperature: float, k: int, threshold: float, *, bias: Any = None,
             sim_rows: Any = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """:func:`edgefs.heads.reference.classify` on the GPU: one launch per batch.

    Args:
        queries: float32 or float16 ``(Q, D)``, host or GPU (e.g. ``Engine.embed_device``).
        weights: float32 ``(C, D)``; unit rows for cosine scores. Keep it on the GPU: a host
            array is uploaded at every call.
        temperature: logits are ``temperature * <q_n, w_c>``.
        k: classes returned per query, clipped to ``C`` (at most :data:`MAX_TOPK`).
        threshold: a query is unknown when its best similarity is below it.
        bias: optional float32 ``(C,)`` added to the logits (the fine-tune head; not in the
            reference function, which has none).
        sim_rows: optional float32 ``(C, D)`` rows the best similarity is taken against
            (default: ``weights``, as in the reference).
        threads: block size (default 256).

    Returns:
        NumPy ``top_idx`` int32 ``(Q, k)`` (ties -> lower index), ``top_prob`` float32 ``(Q, k)``,
        ``best_sim`` float32 ``(Q,)``, ``unknown`` bool ``(Q,)``.
    """
    q = operand(queries, "queries", FLOATS, 2, host_dtype="float32")
    w = operand(weights, "weights", ("float32",), 2, host_dtype="float32")
    c, d = w.shape
    if q.shape[1] != d:
        raise EdgefsError(f"queries {q.shape} and weights {w.shape} differ in embedding size")
    b = operand(bias, "bias", ("float32",), 1, host_dtype="float32") if bias is not None else None
    if b is not None and b.shape != (c,):
        raise EdgefsError(f"bias has shape {b.shape}; expected ({c},)")
    sr = operand(sim_rows, "sim_rows", ("float32",), 2, host_dtype="float32") if sim_rows is not None else None
    if sr is not None and sr.shape != (c, d):
        raise EdgefsError(f"sim_rows has shape {sr.shape}; expected ({c}, {d})")
    if int(k) < 1:
        raise EdgefsError(f"k must be at least 1, got {k}")
    if int(k) > MAX_TOPK:
        raise EdgefsError(f"k={k} is above the kernel's top-{MAX_TOPK}; ask for fewer classes or use "
                          "edgefs.heads.reference.classify")
    n = q.shape[0]
    if c == 0:
        return (np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32), np.full(n, -np.inf, np.float32),
                np.ones(n, bool))
    kk = min(int(k), c)
    check_size("weights", c, d)
    check_size("scores", n, c)
    block = block_size(threads, 256, 1024)
    if n == 0:
        return (np.zeros((0, kk), np.int32), np.zeros((0, kk), np.float32), np.zeros(0, np.float32),
                np.zeros(0, bool))
    rt = runtime()
    plan = plan_classify(n, c, d, rt.sm_count, block, rt.smem_limit)
    with rt.lock:
        pushed = rt.enter()
        try:
            rt.wait_for(q, w, *(x for x in (b, sr) if x is not None))
            fn = rt.function("edgefs_classify", q.dtype)
            q_ptr = rt.device_ptr(q, "cls.q")
            w_ptr = rt.device_ptr(w, "cls.w")
            b_ptr = rt.device_ptr(b, "cls.bias") if b is not None else 0
            s_ptr = rt.device_ptr(sr, "cls.sim") if sr is not None else 0
            vec = int(d % 4 == 0 and w_ptr % 16 == 0 and s_ptr % 16 == 0)
            ws = rt.scratch("cls.ws", 8 * n * c)
            counters = rt.scratch("cls.counters", 4 * n, zero=True)
            words = n * (2 * kk + 2)
            out = rt.scratch("cls.out", 4 * words)
            idx_ptr, prob_ptr = out, out + 4 * n * kk
            best_ptr, unk_ptr = out + 8 * n * kk, out + 8 * n * kk + 4 * n
            fn.prepared_call((plan.parts * n, 1, 1), (plan.threads, 1, 1), q_ptr, w_ptr, b_ptr, s_ptr, ws,
                             ws + 4 * n * c, counters, idx_ptr, prob_ptr, best_ptr, unk_ptr, c, d, kk,
                             float(np.float32(temperature)), float(np.float32(threshold)), plan.classes_per_block,
                             vec, plan.smem // 4, shared_size=plan.smem)
            staging = rt.pinned("cls.out", 4 * words)[: 4 * words]
            rt.cuda.memcpy_dtoh(staging, out)  # waits for the kernel
            # Copies out of the shared staging buffer before the lock is released.
            as_int, as_float = staging.view(np.int32), staging.view(np.float32)
            return (as_int[: n * kk].reshape(n, kk).copy(), as_float[n * kk : 2 * n * kk].reshape(n, kk).copy(),
                    as_float[2 * n * kk : 2 * n * kk + n].copy(), as_int[2 * n * kk + n :] != 0)
        finally:
            rt.leave(pushed)


def _rate(x: Any, name: str, c: int, d: int) -> tuple[float, Operand | None, int]:
    """A scalar or per-parameter rate/penalty: (scalar, array operand or None, row stride 0|D)."""
    if is_device(x):
        op = operand(x, name, ("float32",), 2 if len(shape_of(x)) == 2 else 1)
        if op.shape == (d,):
            return 0.0, op, 0
        if op.shape == (c, d):
            return 0.0, op, d
        raise EdgefsError(f"{name} on the GPU must have shape ({d},) or ({c}, {d}), got {op.shape}")
    a = np.asarray(x, np.float32)
    if a.ndim == 0:
        return float(a), None, 0
    try:
        if a.ndim == 1 or (a.ndim == 2 and a.shape[0] == 1):
            row = np.broadcast_to(a.reshape(-1), (d,))
            return 0.0, Operand(name, (d,), row.dtype, None, np.ascontiguousarray(row)), 0
        full = np.ascontiguousarray(np.broadcast_to(a, (c, d)))
    except ValueError:
        raise EdgefsError(f"{name} of shape {a.shape} does not broadcast to the weights ({c}, {d})") from None
    return 0.0, Operand(name, (c, d), full.dtype, None, full), d


@dataclass
class _FinetuneArgs:
    x: Operand
    labels: Operand
    w0: Operand
    b0: Operand
    n: int
    c: int
    d: int
    on_device: bool


def _finetune_args(support: Any, labels: Any, w0: Any, b0: Any) -> _FinetuneArgs:
    x = operand(support, "support", FLOATS, 2, host_dtype="float32")
    w = operand(w0, "w0", ("float32",), 2, host_dtype="float32")
    b = operand(b0, "b0", ("float32",), 1, host_dtype="float32")
    n, d = x.shape
    c = w.shape[0]
    if w.shape != (c, d) or b.shape != (c,):
        raise EdgefsError(f"finetune shapes do not agree: support {x.shape}, w0 {w.shape}, b0 {b.shape}; "
                          "expected (N,D), (C,D), (C,)")
    lab = host_labels(labels, n, c)
    if w.on_device != b.on_device:
        raise EdgefsError("w0 and b0 must both be host arrays or both GPU arrays")
    check_size("weights", c, d)
    check_size("support", n, d)
    return _FinetuneArgs(x, lab, w, b, n, c, d, w.on_device)


def _check_out(out: Any, a: _FinetuneArgs) -> tuple[Operand, Operand] | None:
    if out is None:
        return None
    if not a.on_device:
        raise EdgefsError("out= is for GPU inputs; host inputs return new NumPy arrays")
    w = operand(out[0], "out W", ("float32",), 2)
    b = operand(out[1], "out b", ("float32",), 1)
    if not (w.on_device and b.on_device) or w.shape != (a.c, a.d) or b.shape != (a.c,):
        raise EdgefsError(f"out must be GPU float32 arrays of shapes ({a.c}, {a.d}) and ({a.c},)")
    return w, b


def _finetune_outputs(rt: Runtime, a: _FinetuneArgs, out: Any) -> tuple[Any, Any, int, int]:
    """Output W (C, D) and b (C,): ``out`` or new DeviceBuffers for GPU inputs, scratch for host ones."""
    if a.on_device:
        checked = _check_out(out, a)
        if checked is not None:
            assert checked[0].ptr is not None and checked[1].ptr is not None
            return out[0], out[1], checked[0].ptr, checked[1].ptr
        w_out, b_out = DeviceBuffer((a.c, a.d)), DeviceBuffer((a.c,))
        return w_out, b_out, w_out.ptr, b_out.ptr
    w_ptr = rt.scratch("ft.w", 4 * a.c * a.d)
    b_ptr = rt.scratch("ft.b", 4 * a.c)
    return None, None, w_ptr, b_ptr


def _finetune_result(rt: Runtime, a: _FinetuneArgs, w_out: Any, b_out: Any, w_ptr: int, b_ptr: int) -> tuple[Any, Any]:
    if a.on_device:
        return w_out, b_out
    return rt.download(w_ptr, (a.c, a.d), np.float32), rt.download(b_ptr, (a.c,), np.float32)


def _unchanged(rt: Runtime, a: _FinetuneArgs, out: Any) -> tuple[Any, Any]:
    """No support rows: W and b stay as they are (the reference's result), as copies."""
    if not a.on_device:
        assert a.w0.host is not None and a.b0.host is not None
        return a.w0.host.astype(np.float32, copy=True), a.b0.host.astype(np.float32, copy=True)
    with rt.lock:
        pushed = rt.enter()
        try:
            w_out, b_out, w_ptr, b_ptr = _finetune_outputs(rt, a, out)
            assert a.w0.ptr is not None and a.b0.ptr is not None
            if a.c * a.d:
                rt.cuda.memcpy_dtod(w_ptr, a.w0.ptr, 4 * a.c * a.d)
            if a.c:
                rt.cuda.memcpy_dtod(b_ptr, a.b0.ptr, 4 * a.c)
            return w_out, b_out
        finally:
            rt.leave(pushed)


def _vec(d: int, x_dtype: np.dtype, x_ptr: int, *float_ptrs: int) -> int:
    """1 when every row can be read 4 elements at a time: D % 4 == 0, support rows aligned to
    16 bytes (float32) or 8 (float16), float32 rows to 16 (a 0 pointer is an absent array)."""
    x_align = 16 if x_dtype == np.float32 else 8
    return int(d % 4 == 0 and x_ptr % x_align == 0 and all(p % 16 == 0 for p in float_ptrs))


def finetune_gram(support: Any, labels: Any, w0: Any, b0: Any, lr: Any, lr_b: float, steps: int, momentum: float,
                  l2: Any, *, out: tuple[Any, Any] | None = None, threads: int | None = None) -> tuple[Any, Any]:
    """:func:`edgefs.heads.reference.finetune_gram` in one launch (one block).

    The Gram kernel runs when the reference's Gram form is exact (scalar ``l2``; a per-parameter
    ``lr`` only with ``l2 == 0``, then with one Gram per class); otherwise, as the reference,
    the plain loop (:func:`finetune`) runs. Shared/global placement: :func:`plan_finetune_gram`.

    Args:
        support: float32 or float16 ``(N, D)``, host or GPU.
        labels: int32 ``(N,)`` in ``0..C-1``.
        w0: float32 ``(C, D)`` start weights and penalty anchor.
        b0: float32 ``(C,)`` start bias.
        lr: float, or float32 per-parameter rates broadcastable to ``(C, D)`` (on the GPU:
            ``(D,)`` or ``(C, D)``).
        lr_b: bias learning rate.
        steps: SGD steps.
        momentum: heavy-ball coefficient.
        l2: penalty weight, float or float32 array broadcastable to ``(C, D)`` (EWC).
        out: for GPU inputs, GPU float32 ``(C, D)`` and ``(C,)`` arrays to write W and b into
            (saves an allocation per call); they must not alias ``w0``/``b0``.
        threads: block size, a multiple of 32 up to 512 (default 512).

    Returns:
        ``(W float32 (C, D), b float32 (C,))``: NumPy arrays when ``w0`` is on the host, else
        ``out`` or new :class:`DeviceBuffer` objects.
    """
    a = _finetune_args(support, labels, w0, b0)
    if int(steps) < 0:
        raise EdgefsError(f"steps must be >= 0, got {steps}")
    lr_s, lr_op, lr_stride = _rate(lr, "lr", a.c, a.d)
    pen_s, pen_op, _ = _rate(l2, "l2", a.c, a.d)
    per_class = lr_op is not None
    if pen_op is not None or (per_class and pen_s != 0.0):
        return finetune(support, labels, w0, b0, lr, lr_b, steps, momentum, l2, out=out, threads=threads)
    block = block_size(threads, MAX_FINETUNE_THREADS, MAX_FINETUNE_THREADS)
    _check_out(out, a)
    rt = runtime()
    if a.n == 0 or a.c == 0:
        return _unchanged(rt, a, out)
    plan = plan_finetune_gram(a.n, a.c, per_class, rt.smem_limit)
    check_size("Gram", a.c if per_class else 1, a.n, a.n)
    with rt.lock:
        pushed = rt.enter()
        try:
            rt.wait_for(a.x, a.labels, a.w0, a.b0, *([lr_op] if lr_op else []))
            fn = rt.function("edgefs_finetune_gram", a.x.dtype)
            x_ptr = rt.device_ptr(a.x, "ft.x")
            lab_ptr = rt.device_ptr(a.labels, "ft.labels")
            w0_ptr = rt.device_ptr(a.w0, "ft.w0")
            b0_ptr = rt.device_ptr(a.b0, "ft.b0")
            lr_ptr = rt.device_ptr(lr_op, "ft.lr") if lr_op is not None else 0
            work = rt.scratch("ft.work", 4 * plan.work_floats) if plan.work_floats else 0
            w_out, b_out, w_ptr, b_ptr = _finetune_outputs(rt, a, out)
            vec = _vec(a.d, a.x.dtype, x_ptr, w0_ptr, lr_ptr)
            f32 = np.float32
            fn.prepared_call((1, 1, 1), (block, 1, 1), x_ptr, lab_ptr, w0_ptr, b0_ptr, lr_ptr, lr_stride,
                             float(f32(lr_s)), float(f32(lr_b)), int(steps), float(f32(momentum)), float(f32(pen_s)),
                             a.n, a.c, a.d, w_ptr, b_ptr, work, int(plan.k_shared), int(plan.state_shared), vec,
                             shared_size=plan.smem)
            return _finetune_result(rt, a, w_out, b_out, w_ptr, b_ptr)
        finally:
            rt.leave(pushed)


def finetune(support: Any, labels: Any, w0: Any, b0: Any, lr: Any, lr_b: float, steps: int, momentum: float,
             l2: Any, *, out: tuple[Any, Any] | None = None, threads: int | None = None) -> tuple[Any, Any]:
    """:func:`edgefs.heads.reference.finetune` (the plain loop, O(N C D) per step) in one launch.

    Handles every case of the reference, per-parameter ``lr`` and array ``l2`` included. W and
    its velocity are kept in global memory (L1/L2-resident for small heads), the logits in
    shared memory when N*C + 2*C + N floats fit (:func:`plan_finetune_plain`).

    Args and Returns: as :func:`finetune_gram`.
    """
    a = _finetune_args(support, labels, w0, b0)
    if int(steps) < 0:
        raise EdgefsError(f"steps must be >= 0, got {steps}")
    lr_s, lr_op, lr_stride = _rate(lr, "lr", a.c, a.d)
    pen_s, pen_op, pen_stride = _rate(l2, "l2", a.c, a.d)
    block = block_size(threads, MAX_FINETUNE_THREADS, MAX_FINETUNE_THREADS)
    _check_out(out, a)
    rt = runtime()
    if a.n == 0 or a.c == 0:
        return _unchanged(rt, a, out)
    plan = plan_finetune_plain(a.n, a.c, rt.smem_limit)
    check_size("logits", a.n, a.c)
    with rt.lock:
        pushed = rt.enter()
        try:
            rt.wait_for(a.x, a.labels, a.w0, a.b0, *(op for op in (lr_op, pen_op) if op is not None))
            fn = rt.function("edgefs_finetune_plain", a.x.dtype)
            x_ptr = rt.device_ptr(a.x, "ft.x")
            lab_ptr = rt.device_ptr(a.labels, "ft.labels")
            w0_ptr = rt.device_ptr(a.w0, "ft.w0")
            b0_ptr = rt.device_ptr(a.b0, "ft.b0")
            lr_ptr = rt.device_ptr(lr_op, "ft.lr") if lr_op is not None else 0
            pen_ptr = rt.device_ptr(pen_op, "ft.pen") if pen_op is not None else 0
            velocity = rt.scratch("ft.velocity", 4 * a.c * a.d)
            work = rt.scratch("ft.work", 4 * plan.work_floats) if plan.work_floats else 0
            w_out, b_out, w_ptr, b_ptr = _finetune_outputs(rt, a, out)
            vec = _vec(a.d, a.x.dtype, x_ptr, w_ptr, w0_ptr)
            f32 = np.float32
            fn.prepared_call((1, 1, 1), (block, 1, 1), x_ptr, lab_ptr, w0_ptr, b0_ptr, lr_ptr, lr_stride,
                             float(f32(lr_s)), pen_ptr, pen_stride, float(f32(pen_s)), float(f32(lr_b)), int(steps),
                             float(f32(momentum)), a.n, a.c, a.d, w_ptr, b_ptr, velocity, work,
                             int(plan.state_shared), vec, shared_size=plan.smem)
            return _finetune_result(rt, a, w_out, b_out, w_ptr, b_ptr)
        finally:
            rt.leave(pushed)

