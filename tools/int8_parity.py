"""INT8 parity per CPU class: the same INT8 bundle run natively and as other CPUs, against FP32, in one table.

Usage::

    python tools/int8_parity.py --bundle runs/demo/model.edgefs --calib data/demo/units/train \\
        --out reports/int8-parity/colour
    python tools/int8_parity.py --bundle B --calib DIR --int8 B-int8.edgefs   # an INT8 bundle made earlier

The INT8 bundle is made by ``edgefs quantize`` with its defaults (``--target any``) unless
``--int8`` gives one. Its graph then embeds the held-out images of the calibration source
(the images quantisation did not calibrate on, as its own parity check picks them) on:

* ``native``: this machine, ONNX Runtime and OpenVINO;
* ``x86-avx2 (qemu Haswell)``: ONNX Runtime in this venv under ``qemu-x86_64-static -cpu
  Haswell``, which offers AVX2 and no AVX-512/VNNI (ONNX Runtime then takes its AVX2 kernels);
* ``x86-sse4 (qemu Nehalem)``: its SSE4.1 kernels, which widen every product and cannot
  saturate: the exact integer arithmetic, for reference;
* ``aarch64 (qemu <cpu>)``: the aarch64 Python that ``.ci/lane-aarch64.sh`` makes (its
  ``--aarch64-python`` wrapper and ``--aarch64-site`` wheels), ONNX Runtime's ARM kernels.

Per row: mean / min cosine to the FP32 embeddings (native ONNX Runtime), and nearest-prototype
accuracy on the same fixed held-out episodes as FP32's (5-way 1-shot). Native rows add
single-thread CPU time per image, INT8 against FP32 in the same run (interleaved rounds).
Emulated rows say nothing about speed. Writes ``OUT/parity.json`` and ``OUT/parity.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(run: Any, x: np.ndarray, rounds: int) -> list[float]:
    for _ in range(3):
        run(x)
    out = []
    for _ in range(rounds):
        t = time.process_time()
        n = 0
        while time.process_time() - t < 0.5:
            run(x)
            n += 1
        out.append((time.process_time() - t) / n)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, help="the FP32 bundle")
    p.add_argument("--calib", type=Path, help="calibration images (an ImageFolder gives episodes)")
    p.add_argument("--int8", type=Path, help="an INT8 bundle of --bundle (default: edgefs quantize makes one)")
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--images", type=int, default=96, help="held-out images per row (default 96)")
    p.add_argument("--aarch64-python", default=os.environ.get("EDGEFS_AARCH64_PYTHON"),
                   help="the aarch64 Python wrapper .ci/lane-aarch64.sh makes (~/.cache/edgefs/aarch64/bin/...)")
    p.add_argument("--aarch64-site", default=os.environ.get("EDGEFS_AARCH64_SITE"),
                   help="its folder of aarch64 wheels (numpy, onnxruntime)")
    p.add_argument("--no-emulation", action="store_true", help="native rows only")
    p.add_argument("--out", type=Path, default=Path("reports/int8-parity"))
    args = p.parse_args(argv)
    if not args.bundle or not args.calib:
        p.error("--bundle and --calib are required")

    sys.path.insert(0, str(ROOT))
    from edgefs.export.parity import episode_agreement
    from edgefs.export.quantize import quantize_bundle

    from edgefs.cpu import cpu_info
    from edgefs.runtime.bundle import read_bundle
    from edgefs.runtime.calibration import open_calibration_source
    from edgefs.runtime.emulate import Emulator, embed_emulated
    from edgefs.runtime.quantized import quantization_info
    from edgefs.runtime.select import open_engine
    from edgefs.runtime.selfcheck import cosines

    work = Path(tempfile.mkdtemp(prefix="int8-parity."))
    try:
        int8 = args.int8
        if int8 is None:
            int8 = work / "int8.edgefs"
            quantize_bundle(args.bundle, args.calib, int8, calib_images=args.calib_images, log=print)
        parent, child_bundle = read_bundle(args.bundle), read_bundle(int8)
        info = quantization_info(child_bundle) or {}
        # The held-out images of quantisation's own split (same source, seed and counts).
        source = open_calibration_source(args.calib, parent.manifest.input_size, seed=0)
        calibrated = int(info.get("calibration", {}).get("images", args.calib_images))
        list(source.batches(calibrated, 8))
        held, labels = source.held_out(args.images)
        quiet = lambda _: None  # noqa: E731
        fp32 = open_engine(parent, "onnxruntime", device="cpu", threads=1, log=quiet, selfcheck=False)
        ref = np.concatenate([fp32.embed(held[i : i + 8]) for i in range(0, len(held), 8)])
        rows: list[dict[str, Any]] = []

        def emulated(emulator: Emulator) -> tuple[np.ndarray | None, str, float]:
            try:
                got, seconds = embed_emulated(emulator, child_bundle.onnx_path, held)
            except RuntimeError as exc:
                return None, str(exc), 0.0
            return got, "ok", seconds

        def row(name: str, got: np.ndarray | None, status: str = "ok", **extra: Any) -> None:
            r: dict[str, Any] = {"class": name, "status": status, **extra}
            if got is not None:
                cos = cosines(ref, got)
                r.update(mean_cosine=float(cos.mean()), min_cosine=float(cos.min()))
                if labels is not None:
                    ep = episode_agreement(ref, got, labels, "cosine", episodes=300, seed=0)
                    if ep is not None:
                        r.update(accuracy_fp32=ep["accuracy_reference"], accuracy_int8=ep["accuracy_candidate"])
            rows.append(r)
            print(json.dumps(r), flush=True)

        here = cpu_info()
        speed: dict[str, Any] = {}
        for backend in ("onnxruntime", "openvino"):
            try:
                e8 = open_engine(child_bundle, backend, device="cpu", threads=1, log=quiet, selfcheck=False)
                e32 = open_engine(parent, backend, device="cpu", threads=1, log=quiet, selfcheck=False)
            except Exception as exc:  # a backend that is not installed: say so in the table
                row(f"native {here.int8_class}, {backend}", None, f"not run: {exc}")
                continue
            got = np.concatenate([e8.embed(held[i : i + 8]) for i in range(0, len(held), 8)])
            t8, t32 = [], []
            for _ in range(3):  # interleaved: a noisy machine slows both alike
                t8 += cpu_seconds(e8.embed, held[:1], 2)
                t32 += cpu_seconds(e32.embed, held[:1], 2)
            speed[backend] = {"int8_ms": 1000 * float(np.median(t8)), "fp32_ms": 1000 * float(np.median(t32))}
            row(f"native {here.int8_class}, {backend}", got, cpu_ms_int8=speed[backend]["int8_ms"],
                cpu_ms_fp32=speed[backend]["fp32_ms"])
        if not args.no_emulation:
            qemu = shutil.which("qemu-x86_64-static")
            for name, cpu in (("x86-avx2 (qemu Haswell)", "Haswell"), ("x86-sse4 (qemu Nehalem)", "Nehalem")):
                if here.arch != "x86_64" or qemu is None:
                    row(name, None, "not run: needs an x86 machine with qemu-x86_64-static (apt-get install "
                                    "qemu-user-static)")
                    continue
                got, status, secs = emulated(Emulator("x86", name, [qemu, "-cpu", cpu, sys.executable], {}))
                row(name, got, status, seconds=round(secs, 1), backend="onnxruntime")
            wrapper = args.aarch64_python
            if wrapper and Path(wrapper).exists() and args.aarch64_site:
                got, status, secs = emulated(Emulator("arm64", "aarch64", [wrapper], {
                    "PYTHONPATH": os.pathsep.join([args.aarch64_site, str(ROOT)])}))
                row(f"aarch64 (qemu {Path(wrapper).name.rsplit('-', 1)[-1]})", got, status, seconds=round(secs, 1),
                    backend="onnxruntime")
            else:
                row("aarch64", None, "not run: give --aarch64-python and --aarch64-site (.ci/lane-aarch64.sh "
                                     "makes them under ~/.cache/edgefs/aarch64)")
        doc = {"bundle": str(args.bundle), "int8": str(int8), "calib": str(args.calib), "images": len(held),
               "machine": here.to_json(), "quantization": {k: info.get(k) for k in (
                   "target", "int8_format", "weights", "cpu_classes", "method")}, "rows": rows, "speed": speed}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "parity.json").write_text(json.dumps(doc, indent=1))
        lines = [f"# INT8 parity per CPU class: {args.bundle.name}", "",
                 f"INT8 format `{info.get('int8_format')}` ({info.get('weights')}), target `{info.get('target')}`; "
                 f"{len(held)} held-out images of `{args.calib}`; machine: {here.model} ({here.int8_class}, "
                 f"{', '.join(here.instruction_sets())}). Command: `python tools/int8_parity.py "
                 f"{' '.join(argv if argv is not None else sys.argv[1:])}`", "",
                 "| CPU class (how) | mean cos | min cos | 5w1s FP32 | 5w1s INT8 | points | CPU ms INT8 / FP32 |",
                 "|---|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            if "mean_cosine" not in r:
                lines.append(f"| {r['class']} | {r['status']} | | | | | |")
                continue
            acc = ("", "", "") if "accuracy_int8" not in r else (
                f"{100 * r['accuracy_fp32']:.2f}", f"{100 * r['accuracy_int8']:.2f}",
                f"{100 * (r['accuracy_int8'] - r['accuracy_fp32']):+.2f}")
            ms = (f"{r['cpu_ms_int8']:.2f} / {r['cpu_ms_fp32']:.2f} ({r['cpu_ms_fp32'] / r['cpu_ms_int8']:.2f}x)"
                  if "cpu_ms_int8" in r else "emulated: no speed")
            lines.append(f"| {r['class']} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | {acc[0]} | {acc[1]} | "
                         f"{acc[2]} | {ms} |")
        (args.out / "parity.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
