"""Benchmark the CUDA head kernels against the same math in PyTorch, eager and CUDA-graph replay.

Usage (on a GPU machine with torch and pycuda; see ../shared/DEVICE.md)::

    python tools/bench_kernels.py --out reports/kernels/h100.json

Cases (issue 6 goals on an H100, launch from Python included):
- ``finetune``: 100 SGD steps, 5-way 5-shot (N=25), D=1280: fused Gram kernel (goal <= 100 us),
  plain-loop kernel, PyTorch eager (plain loop and Gram form) and their CUDA-graph replays.
- ``classify``: 1 query against 1,000 unit rows, D=1280, temperature softmax, top-5, best
  cosine and unknown flag: fused kernel (goal <= 20 us), PyTorch eager, CUDA-graph replay.
- ``enroll``: one class from 5 computed embeddings (normalise shots, add to the running sum,
  normalise the mean), D=1280: accumulate kernel (goal <= 20 us), PyTorch eager, graph replay.

Every input already lives on the GPU. "wall" is the time per call measured in Python from the
call until its result is ready (``synchronize``; the classify kernel's result is copied to the
host, PyTorch's is left on the GPU), median and p90 over ``--iterations`` calls; "GPU" is the
CUDA-event time of ``--iterations`` back-to-back calls divided by their number (includes launch
gaps, which dominate microsecond kernels). "floor" is the fewest bytes each case must move over
the device bandwidth measured here (a 1 GiB device-to-device copy). The empty pycuda launch is
reported separately: ``prepared_call`` + synchronize, and the launch alone.

Prints a markdown table and writes every number as JSON to ``--out``. Exits with status 2 and a
message when there is no CUDA GPU, PyTorch or pycuda. A benchmark is a program, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

D = 1280


def fail(message: str) -> None:
    print(f"bench_kernels: {message}", file=sys.stderr)
    sys.exit(2)


def timings(fn: Callable[[], Any], sync: Callable[[], None], iterations: int, warmup: int,
            event: Callable[[], Any]) -> dict[str, float]:
    """Wall microseconds per call (each call synchronised) and GPU microseconds per call."""
    for _ in range(warmup):
        fn()
    sync()
    walls = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        sync()
        walls.append((time.perf_counter() - t0) * 1e6)
    start, end = event(), event()
    start.record()
    for _ in range(iterations):
        fn()
    end.record()
    end.synchronize()
    gpu_us = start.elapsed_time(end) * 1e3 / iterations
    walls.sort()
    return {"wall_p50_us": statistics.median(walls), "wall_p90_us": walls[int(0.9 * (len(walls) - 1))],
            "gpu_us": gpu_us}


def graph_of(torch: Any, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
    """Capture ``fn`` (static inputs) in a CUDA graph; returns (replay, captured outputs)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph.replay, outputs


def bandwidth(torch: Any) -> float:
    """Device bytes per second of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * src.numel() * 4 * 10 / (start.elapsed_time(end) * 1e-3)


# ---- cases --------------------------------------------------------------------------------------
def bench_finetune(torch: Any, launch: Any, ref: Any, run: Callable[..., dict[str, float]]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    c, shots, steps, lr, mom, l2 = 5, 5, 100, 0.5, 0.9, 0.01
    centres = ref.l2_normalize(rng.normal(size=(c, D)))
    y = np.repeat(np.arange(c), shots).astype(np.int32)
    x = ref.l2_normalize(centres[y] + 0.3 * ref.l2_normalize(rng.normal(size=(len(y), D))))
    w0 = (10.0 * centres).astype(np.float32)
    b0 = np.zeros(c, np.float32)
    want = ref.finetune_gram(x, y, w0, b0, lr, lr, steps, mom, l2)
    tx, ty, tw0, tb0 = (torch.from_numpy(a).cuda() for a in (x, y.astype(np.int64), w0, b0))
    dx, dy, dw0, db0 = (launch.DeviceBuffer.from_host(a) for a in (x, y, w0, b0))
    out = (launch.DeviceBuffer(w0.shape), launch.DeviceBuffer(b0.shape))
    onehot = torch.nn.functional.one_hot(ty, c).float()
    n = float(len(y))

    def torch_plain() -> tuple[Any, Any]:
        w, b = tw0.clone(), tb0.clone()
        vw, vb = torch.zeros_like(w), torch.zeros_like(b)
        for _ in range(steps):
            g = (torch.softmax(tx @ w.T + b, dim=1) - onehot) / n
            vw = mom * vw + (g.T @ tx + l2 * (w - tw0))
            vb = mom * vb + g.sum(0)
            w, b = w - lr * vw, b - lr * vb
        return w, b

    def torch_gram() -> tuple[Any, Any]:
        k, base = tx @ tx.T, tx @ tw0.T
        a = torch.zeros(c, len(y), device="cuda")
        va, b, vb = torch.zeros_like(a), tb0.clone(), torch.zeros_like(tb0)
        for _ in range(steps):
            g = (torch.softmax(base + k @ a.T + b, dim=1) - onehot) / n
            va = mom * va + (g.T + l2 * a)
            vb = mom * vb + g.sum(0)
            a, b = a - lr * va, b - lr * vb
        return tw0 + a @ tx, b

    def gram_kernel() -> Any:
        return launch.finetune_gram(dx, dy, dw0, db0, lr, lr, steps, mom, l2, out=out)

    def plain_kernel() -> Any:
        return launch.finetune(dx, dy, dw0, db0, lr, lr, steps, mom, l2, out=out)

    def diff(result: tuple[Any, Any]) -> float:
        w = result[0].cpu().numpy() if hasattr(result[0], "cpu") else launch.to_host(result[0])
        return float(np.abs(w - want[0]).max())

    sync_k = launch.runtime().cuda.Context.synchronize
    rows = {}
    rows["kernel: fused Gram"] = {**run(gram_kernel, sync_k), "max_abs_diff_W": diff(gram_kernel())}
    rows["kernel: plain loop"] = {**run(plain_kernel, sync_k), "max_abs_diff_W": diff(plain_kernel())}
    eager_plain = torch_plain()
    rows["torch eager: plain loop"] = {**run(torch_plain, torch.cuda.synchronize), "max_abs_diff_W": diff(eager_plain)}
    rows["torch eager: Gram form"] = {**run(torch_gram, torch.cuda.synchronize), "max_abs_diff_W": diff(torch_gram())}
    for name, fn in (("plain loop", torch_plain), ("Gram form", torch_gram)):
        replay, outputs = graph_of(torch, fn)
        replay()
        torch.cuda.synchronize()
        rows[f"torch CUDA graph: {name}"] = {**run(replay, torch.cuda.synchronize), "max_abs_diff_W": diff(outputs)}
    gram = gram_kernel()
    rows["kernel: fused Gram"]["max_abs_diff_vs_eager_W"] = float(
        np.abs(launch.to_host(gram[0]) - eager_plain[0].cpu().numpy()).max())
    floor_bytes = 4 * (x.size + y.size + 2 * w0.size + 2 * b0.size)
    return {"what": f"{steps} SGD steps, {c}-way {shots}-shot, D={D}", "goal_us": 100, "floor_bytes": floor_bytes,
            "reference": "torch eager: plain loop", "rows": rows}


def bench_classify(torch: Any, launch: Any, ref: Any, run: Callable[..., dict[str, float]]) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    c, k, temperature, threshold = 1000, 5, 10.0, 0.3
    w = ref.l2_normalize(rng.normal(size=(c, D)))
    q = (w[7] + 0.5 * ref.l2_normalize(rng.normal(size=(1, D)))).astype(np.float32)
    want = ref.classify(q, w, temperature, k, threshold)
    tq, tw = torch.from_numpy(q).cuda(), torch.from_numpy(w).cuda()
    dw = launch.DeviceBuffer.from_host(w)

    def torch_eager() -> tuple[Any, ...]:
        cos = torch.nn.functional.normalize(tq, dim=1, eps=1e-12) @ tw.T
        top = torch.softmax(temperature * cos, dim=1).topk(k, dim=1)
        best = cos.max(dim=1).values
        return top.indices, top.values, best, best < threshold

    def kernel() -> Any:
        return launch.classify(tq, dw, temperature, k, threshold)

    def diff(result: tuple[Any, ...]) -> float:
        prob = result[1].cpu().numpy() if hasattr(result[1], "cpu") else result[1]
        return float(np.abs(prob - want[1]).max())

    rows = {"kernel: fused classify": {**run(kernel, lambda: None), "max_abs_diff_prob": diff(kernel())},
            "torch eager": {**run(torch_eager, torch.cuda.synchronize), "max_abs_diff_prob": diff(torch_eager())}}
    replay, outputs = graph_of(torch, torch_eager)
    replay()
    torch.cuda.synchronize()
    rows["torch CUDA graph"] = {**run(replay, torch.cuda.synchronize), "max_abs_diff_prob": diff(outputs)}
    return {"what": f"1 query vs {c} classes, D={D}, top-{k}", "goal_us": 20, "floor_bytes": 4 * (w.size + q.size),
            "reference": "torch eager", "rows": rows}


def bench_enroll(torch: Any, launch: Any, ref: Any, run: Callable[..., dict[str, float]]) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    c, shots, label = 100, 5, 42
    x = rng.normal(size=(shots, D)).astype(np.float32)
    tx = torch.from_numpy(x).cuda()
    sums, counts = launch.DeviceBuffer((c, D), zero=True), launch.DeviceBuffer((c,), np.int32, zero=True)
    protos = launch.DeviceBuffer((c, D), zero=True)
    labels = np.full(shots, label, np.int32)
    t_sums, t_counts = torch.zeros(c, D, device="cuda"), torch.zeros(c, device="cuda")
    t_protos = torch.zeros(c, D, device="cuda")

    def kernel() -> Any:
        return launch.accumulate_normalize(tx, labels, sums, counts, out=protos, touched_only=True,
                                           normalize_shots=True)

    def torch_eager() -> Any:
        t_sums[label] += torch.nn.functional.normalize(tx, dim=1, eps=1e-12).sum(0)
        t_counts[label] += shots
        t_protos[label] = torch.nn.functional.normalize(t_sums[label] / t_counts[label], dim=0, eps=1e-12)
        return t_protos

    sync_k = launch.runtime().cuda.Context.synchronize
    rows = {"kernel: accumulate + normalise": run(kernel, sync_k),
            "torch eager": run(torch_eager, torch.cuda.synchronize)}
    replay, _ = graph_of(torch, torch_eager)
    rows["torch CUDA graph"] = run(replay, torch.cuda.synchronize)
    # Correctness on a fresh state: one enrollment against the NumPy reference.
    s2, c2 = launch.DeviceBuffer((c, D), zero=True), launch.DeviceBuffer((c,), np.int32, zero=True)
    got = launch.accumulate_normalize(tx, labels, s2, c2, normalize_shots=True)
    s_ref, c_ref = np.zeros((c, D), np.float32), np.zeros(c, np.int32)
    want = ref.accumulate_normalize(ref.l2_normalize(x), labels, s_ref, c_ref)
    rows["kernel: accumulate + normalise"]["max_abs_diff_proto"] = float(np.abs(got.to_host() - want).max())
    floor_bytes = 4 * (x.size + 3 * D + 2)
    return {"what": f"one class from {shots} embeddings, D={D}", "goal_us": 20, "floor_bytes": floor_bytes,
            "reference": "torch eager", "rows": rows}


def bench_empty_launch(launch: Any, iterations: int) -> dict[str, float]:
    rt = launch.runtime()
    fn = rt.raw_function("noop", "edgefs_noop")
    fn.prepare("")
    sync = rt.cuda.Context.synchronize
    for _ in range(20):
        fn.prepared_call((1, 1, 1), (32, 1, 1))
    sync()
    walls = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn.prepared_call((1, 1, 1), (32, 1, 1))
        sync()
        walls.append((time.perf_counter() - t0) * 1e6)
    t0 = time.perf_counter()
    for _ in range(iterations):
        fn.prepared_call((1, 1, 1), (32, 1, 1))
    launch_only = (time.perf_counter() - t0) * 1e6 / iterations
    sync()
    return {"launch_and_sync_p50_us": statistics.median(walls), "launch_only_us": launch_only}


# ---- report -------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# CUDA head kernels ({m['gpu']})",
        "",
        f"{m['gpu']}, driver CUDA {m['cuda_driver']}, torch {m['torch']} (CUDA {m['torch_cuda']}), "
        f"pycuda {m['pycuda']}, nvcc cubins for {m['arch']}; {report['iterations']} timed calls after "
        f"{report['warmup']} warm-up. Device bandwidth measured: {report['bandwidth_gb_s']:.0f} GB/s. Empty pycuda "
        f"launch: {report['empty_launch']['launch_and_sync_p50_us']:.1f} us with synchronize, "
        f"{report['empty_launch']['launch_only_us']:.1f} us to launch only.",
        "",
        "| case | implementation | wall p50 (us) | wall p90 (us) | GPU (us) | vs reference | floor (us) | goal (us) "
        "| max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, case in report["cases"].items():
        base = case["rows"][case["reference"]]["wall_p50_us"]
        floor_us = case["floor_bytes"] / (report["bandwidth_gb_s"] * 1e9) * 1e6
        for impl, row in case["rows"].items():
            diff = next((f"{v:.1e}" for k, v in row.items() if k.startswith("max_abs_diff")), "")
            goal = f"{case['goal_us']}" if impl.startswith("kernel") else ""
            lines.append(f"| {name}: {case['what']} | {impl} | {row['wall_p50_us']:.1f} | {row['wall_p90_us']:.1f} "
                         f"| {row['gpu_us']:.1f} | {base / row['wall_p50_us']:.1f}x | {floor_us:.2f} | {goal} "
                         f"| {diff} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/kernels/bench_kernels.json", help="JSON report path")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        fail("PyTorch is not installed; this benchmark compares the kernels with PyTorch on a CUDA GPU")
    if not torch.cuda.is_available():
        fail("no CUDA GPU on this machine; run it on the GPU machine (../shared/DEVICE.md)")
    torch.cuda.init()  # the primary context first, then pycuda retains the same one
    from edgefs.kernels import launch

    from edgefs.errors import EdgefsError
    from edgefs.heads import reference as ref

    try:
        rt = launch.runtime()
    except EdgefsError as exc:
        fail(str(exc))
    import pycuda

    driver = int(rt.cuda.get_driver_version())

    def run(fn: Callable[[], Any], sync: Callable[[], None]) -> dict[str, float]:
        return timings(fn, sync, args.iterations, args.warmup, lambda: torch.cuda.Event(enable_timing=True))

    report: dict[str, Any] = {
        "machine": {"gpu": torch.cuda.get_device_name(), "arch": rt.arch, "sms": rt.sm_count,
                    "cuda_driver": f"{driver // 1000}.{driver % 1000 // 10}",
                    "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                    "pycuda": getattr(pycuda, "VERSION_TEXT", "?"), "python": platform.python_version()},
        "iterations": args.iterations, "warmup": args.warmup,
        "bandwidth_gb_s": bandwidth(torch) / 1e9,
        "empty_launch": bench_empty_launch(launch, args.iterations),
        "cases": {},
    }
    for name, bench in (("finetune", bench_finetune), ("classify", bench_classify), ("enroll", bench_enroll)):
        report["cases"][name] = bench(torch, launch, ref, run)
    table = markdown(report)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
