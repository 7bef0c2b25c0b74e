"""Run every kernel case of device_tests/test_kernels.py on the CPU emulation and report it.

Prints the number of cases run, passed, failed and skipped, the wall time, and the largest error
per kernel and quantity against its tolerance; writes the same as JSON.

    python tools/emu_kernels.py [--slow] [--schedule shuffle:1|forward|reverse] [--out reports/emu_kernels.json]

``--slow`` adds the cases too heavy for the default CI run (device_tests/test_kernels.py,
``emu_heavy``); ``--sanitize`` runs the selection with the ASan + UBSan build instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", action="store_true", help="also run the heavy cases (marked slow)")
    parser.add_argument("--sanitize", action="store_true", help="use the ASan + UBSan build")
    parser.add_argument("--schedule", default=None, help="EDGEFS_EMU_SCHEDULE (default shuffle:1)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "emu_kernels.json")
    args = parser.parse_args(argv)

    from edgefs.kernels.emu import build, launch

    env = build.sanitizer_env() if args.sanitize else dict(os.environ)
    env[launch.VARIANT_ENV] = "sanitize" if args.sanitize else "plain"
    if args.schedule:
        env[launch.SCHEDULE_ENV] = args.schedule
    for name in ("accumulate", "classify", "finetune"):  # compile first: not part of the time
        build.build(name, env[launch.VARIANT_ENV])
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "kernels.json"
        env["EDGEFS_KERNEL_REPORT"] = str(report)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "device_tests/test_kernels.py",
               "-k", "emu", "-rs"]
        if args.slow:
            cmd += ["-m", "slow or not slow"]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if not report.is_file():
            print(done.stdout[-5000:], done.stderr[-5000:], sep="\n")
            return done.returncode or 1
        result = json.loads(report.read_text())
    result.update(seconds=round(seconds, 1), slow=args.slow, sanitize=args.sanitize,
                  schedule=env.get(launch.SCHEDULE_ENV, launch.DEFAULT_SCHEDULE),
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs", compiler=str(build.find_compiler()))
    o = result["outcomes"]
    print(f"emulated kernel cases: {o['passed']} passed, {o['failed']} failed, {o['skipped']} skipped "
          f"in {seconds:.1f} s ({result['machine']}, schedule {result['schedule']}"
          f"{', ASan + UBSan' if args.sanitize else ''})")
    print(f"{'kernel':15} {'quantity':28} {'cases':>5} {'max error':>10} {'tolerance':>10}")
    for r in result["errors"]:
        print(f"{r['kernel']:15} {r['quantity']:28} {r['cases']:5d} {r['max_error']:10.3g} {r['tolerance']:10.3g}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
