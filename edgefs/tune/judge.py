"""How ``edgefs tune`` judges a measured setting, chooses among those that hold, and says what a machine
holds instead; the table of every setting.

Torch-free (the device side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edgefs.tune.settings import BundleFacts

SUSTAINED = 0.97
"""Least share of the offered frames a setting must classify to hold N x F."""
DROP_TOLERANCE = 0.01
"""Most stale frames a setting may drop, as a share of the frames offered (at least 1 frame)."""
COSINE_TIE = 0.001
"""Mean cosines to FP32 closer than this are ties (rounding between kernels is ~1e-4 for FP32)."""
DROP_TIE = 0.1
"""Recorded few-shot accuracy drops closer than this many points are ties."""


# ---- judging and choosing -------------------------------------------------------------------------
def drop_allowance(cameras: int, fps: float, seconds: float) -> int:
    """Most stale frames a setting may drop and still hold: :data:`DROP_TOLERANCE` of the offered, at least 1."""
    return max(1, math.floor(DROP_TOLERANCE * cameras * fps * seconds))


def judge(row: dict[str, Any], cameras: int, fps: float) -> list[str]:
    """Why a measured setting does not hold ``cameras`` x ``fps`` (empty: it holds)."""
    if row.get("error"):
        return [f"did not run: {row['error']}"]
    offered = cameras * fps
    why = []
    if row["fps"] < SUSTAINED * offered:
        why.append(f"{row['fps']:.1f} of {offered:g} FPS")
    allowed = drop_allowance(cameras, fps, row["seconds"])
    if row["dropped"] > allowed:
        why.append(f"{row['dropped']} stale frames dropped (> {allowed})")
    p99, period = row["latency_ms"]["p99"], 1000.0 / fps
    if p99 is None or p99 > period:
        why.append("no latency measured" if p99 is None else f"p99 {p99:.1f} ms > {period:.1f} ms")
    return why


def _accuracy_steps(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of least accuracy loss (ties kept) and what each step kept, in words."""
    said = []
    largest = max(r["setting"]["input_size"][0] * r["setting"]["input_size"][1] for r in rows)
    keep = [r for r in rows if r["setting"]["input_size"][0] * r["setting"]["input_size"][1] == largest]
    if len(keep) < len(rows):
        said.append(f"the largest input that held, {keep[0]['setting']['input_size'][0]} px (tune does not measure "
                    "accuracy across input sizes: a smaller input is taken to lose more)")
    drops = [math.inf if r["fewshot_drop_points"] is None else max(0.0, r["fewshot_drop_points"]) for r in keep]
    least = min(drops)
    narrowed = [r for r, d in zip(keep, drops, strict=True) if d <= least + DROP_TIE]
    if len(narrowed) < len(keep):
        said.append("the least few-shot accuracy drop its quantisation recorded"
                    + (f", {least:.2f} points" if least < math.inf else ""))
    keep = narrowed
    cos = [-math.inf if r["cosine"] is None else r["cosine"]["mean"] for r in keep]
    best = max(cos)
    keep = [r for r, c in zip(keep, cos, strict=True) if c >= best - COSINE_TIE]
    said.append(f"mean cosine to FP32 {best:.5f} (closer than {COSINE_TIE} is a tie)" if best > -math.inf
                else "no cosine to FP32 measured")
    return keep, said


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """The held setting of least accuracy loss, ties broken by least CPU per frame; and why, in words."""
    held = [r for r in rows if r["holds"]]
    if not held:
        return None, ""
    keep, said = _accuracy_steps(held)
    best = min(keep, key=lambda r: r["cpu_ms_per_frame"].get("process", math.inf))
    why = (f"{len(held)} of {len(rows)} settings held; least accuracy loss: " + "; ".join(said)
           + f"; then the least CPU per frame of the {len(keep)} as accurate, "
           f"{best['cpu_ms_per_frame']['process']:.2f} ms")
    return best, why


def holds_instead(rows: list[dict[str, Any]], cameras: int, fps: float) -> str:
    """What the machine holds, from the best measured throughput, when nothing held ``cameras`` x ``fps``."""
    ran = [r for r in rows if not r.get("error")]
    if not ran:
        return "no setting ran: " + "; ".join(sorted({str(r["error"]) for r in rows}))[:600]
    best = max(ran, key=lambda r: (r["fps"], -(r["latency_ms"]["p99"] or math.inf)))
    s = best["setting"]
    threads = "" if s["threads"] is None else f", {s['threads']} thread{'s' if s['threads'] != 1 else ''}"
    how = (f"with {s['backend']} {s['precision']} at {s['input_size'][0]} px{threads}, "
           f"batch-wait {s['batch_wait_ms']:g} ms")
    p99 = best["latency_ms"]["p99"] or math.inf
    if best["fps"] >= SUSTAINED * cameras * fps:  # it kept up: latency (or drops) failed it
        # over one period: the rate whose period covers the p99; dropping frames within it: at its limit
        per_camera = math.floor(1000.0 / p99) if p99 > 1000.0 / fps else math.floor(0.9 * fps)
        return (f"this machine keeps up with {cameras} x {fps:g} FPS {how} ({best['fps']:.1f} FPS), but not within "
                f"one frame period ({', '.join(best['why_not'])}): it holds about {cameras} camera"
                f"{'s' if cameras != 1 else ''} x {per_camera} FPS instead; run 'edgefs tune' with those numbers "
                "to check")
    if best["fps"] <= 0:
        return (f"no frame was classified at {cameras} x {fps:g} FPS with any setting (the cameras alone overload "
                "this machine); fewer cameras or a lower frame rate")
    whole = math.floor(best["fps"] / fps)
    per_camera = math.floor(best["fps"] / cameras)
    if whole >= 1:
        lead = f"about {whole} camera{'s' if whole != 1 else ''} x {fps:g} FPS" + (
            f", or {cameras} cameras x {per_camera} FPS," if per_camera >= 1 and cameras > 1 else "")
    elif per_camera >= 1:
        lead = f"about {cameras} camera{'s' if cameras != 1 else ''} x {per_camera} FPS"
    else:
        lead = f"about {math.floor(best['fps'])} FPS in all (1 camera x {math.floor(best['fps'])} FPS)"
    overloaded = f"; its p99 of {p99:.0f} ms was measured overloaded" if p99 < math.inf else ""
    return (f"this machine holds {lead} instead, {how} (the best measured throughput: {best['fps']:.1f} FPS in all"
            f"{overloaded}); run 'edgefs tune' with those numbers to check")


def advice(bundles: Sequence[BundleFacts]) -> list[str]:
    """What to try when nothing holds."""
    tips = []
    fp32 = [b for b in bundles if b.precision == "fp32"]
    if fp32 and not any(b.precision == "int8" for b in bundles):
        b = fp32[0]
        tips.append(f"an INT8 bundle: 'edgefs quantize {b.path} --calib DIR --out "
                    f"{b.path.with_name(b.path.name.removesuffix('.edgefs') + '-int8.edgefs')}', then tune both")
    side = min(b.input_size[0] for b in bundles)
    tips.append(f"a smaller input size: 'edgefs export CKPT --input-size {max(32, side * 3 // 4)} --out DIR' "
                "(and its INT8 bundle), then tune them with these")
    tips.append("fewer cameras or a lower frame rate, or a quieter machine (other processes' load counts here)")
    return tips


# ---- the table ------------------------------------------------------------------------------------
def _text_table(header: list[str], rows: list[list[str]], left: set[int]) -> str:
    """Columns padded to their widest cell: those in ``left`` flush left, the others (numbers) right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    cells = [f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths)]
    cells[-1] = "{}" if len(header) - 1 in left else cells[-1]  # no trailing padding
    fmt = "  ".join(cells)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows)])


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]], cameras: int, fps: float) -> str:
    """Every setting measured, one line each."""
    header = ["#", "bundle", "engine", "threads", "wait ms", "FPS", "dropped", "p50/p99 ms", "CPU ms/frame",
              "cos FP32 mean/min", "few-shot drop", "holds"]
    lines = []
    for i, r in enumerate(rows, 1):
        s = r["setting"]
        label = f"{r['label']} ({s['precision']}, {s['input_size'][0]} px)"
        threads = "-" if s["threads"] is None else str(s["threads"])
        cos = "n/a" if r["cosine"] is None else f"{r['cosine']['mean']:.5f}/{r['cosine']['min']:.5f}"
        drop = ("-" if s["precision"] == "fp32" else "n/a" if r["fewshot_drop_points"] is None
                else f"{r['fewshot_drop_points']:+.2f} pts")
        if r.get("error"):
            lines.append([str(i), label, s["backend"], threads, f"{s['batch_wait_ms']:g}", "-", "-", "-", "-", cos,
                          drop, "no (did not run)"])
            continue
        lat = r["latency_ms"]
        verdict = "yes" if r["holds"] else "no: " + ", ".join(r["why_not"])
        lines.append([str(i), label, s["backend"], threads, f"{s['batch_wait_ms']:g}",
                      f"{r['fps']:.1f}/{cameras * fps:g}", str(r["dropped"]), f"{_num(lat['p50'])}/{_num(lat['p99'])}",
                      _num(r["cpu_ms_per_frame"].get("process"), 2), cos, drop, verdict])
    return _text_table(header, lines, left={0, 1, 2, 11})
