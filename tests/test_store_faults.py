"""Kill an enrolling process at random moments: the store stays sound and holds exactly the committed classes.

A child process enrolls classes in a loop, one transaction each (samples plus the
head's prototypes), and prints ``committed NAME`` after each commit returns. The
parent SIGKILLs it after a seeded random delay, 20 times on the same store, and
after each kill checks that the store opens, ``PRAGMA integrity_check`` is ``ok``,
and the classes are exactly the printed ones, or the printed ones plus the single
class whose commit was in flight (its commit can finish before the kill while
the print is lost). The head state must always match the classes: samples and
head state commit together. Each commit saves the new class's head row only (per-class head
state) and the store's running sample digest, which must equal a full recount after every kill.

``EDGEFS_FAULT_CLASSES=1000`` first fills the store with that many classes (in one transaction,
through the same calls), so the kills land in a store of that size; CI runs it empty.

SIGKILL tests process death, not power loss: the page cache survives it. That
commits also survive a power cut rests on ``synchronous=FULL``, checked in
``test_store.py``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgefs.runtime.bundle import Manifest
from edgefs.store import ClassStore

DIM = 16
FINGERPRINT = "fa" * 32
KILLS = 20
PREFILL = int(os.environ.get("EDGEFS_FAULT_CLASSES", "0"))
STARTUP_KILLS = 3  # the first rounds kill at a random moment from process start (import, open, create)

CHILD = f"""
import sys
import numpy as np
from edgefs.runtime.bundle import Manifest
from edgefs.store import ClassStore

def shots(i):
    return np.random.default_rng(i).normal(size=(3, {DIM})).astype(np.float32)

manifest = Manifest(backbone={{}}, input={{}}, output={{"dim": {DIM}}}, head={{"type": "prototype"}},
                    fingerprint="{FINGERPRINT}")
store = ClassStore.open(sys.argv[1], manifest)
prototypes = store.load_head_state().arrays.get("prototypes", np.zeros((0, {DIM}), np.float32))
i = len(store.classes())
assert prototypes.shape[0] == i, (prototypes.shape, i)
print("ready", flush=True)
while True:
    name = f"c{{i:04d}}"
    emb = shots(i)
    with store.transaction() as tx:
        tx.add_class(name, emb, source="fault-test")
        tx.save_head({{name: {{"prototypes": emb.mean(0)}}}}, {{"count": i + 1}})
    print("committed", name, flush=True)
    i += 1
"""


def name_of(i: int) -> str:
    return f"c{i:04d}"


def manifest() -> Manifest:
    return Manifest(backbone={}, input={}, output={"dim": DIM}, head={"type": "prototype"}, fingerprint=FINGERPRINT)


def run_and_kill(db: Path, delay: float, wait_ready: bool) -> tuple[list[str], str]:
    """Start the child, SIGKILL it after ``delay`` s (from 'ready' if ``wait_ready``); return its commits."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = b""
    if wait_ready:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the child did not start within 60 s"
        head = proc.stdout.readline()
        assert head == b"ready\n", (head, proc.stderr.read().decode())
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    out = (head + proc.stdout.read()).decode()
    err = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the child died before the kill: {err}"
    # Only whole lines count: the kill can land in the middle of a print ("committed c00"), and a
    # commit whose line was cut is the in-flight one (it may or may not have landed).
    whole = out.split("\n")[:-1]
    committed = [line.split()[1] for line in whole if line.startswith("committed ") and len(line.split()) == 2]
    return committed, out


def prefill(db: Path, classes: int) -> list[str]:
    """``classes`` classes as the child would have enrolled them, in one transaction."""
    names = [name_of(i) for i in range(classes)]
    if classes:
        with ClassStore.open(db, manifest()) as store, store.transaction() as tx:
            rows = {}
            for i, name in enumerate(names):
                emb = np.random.default_rng(i).normal(size=(3, DIM)).astype(np.float32)
                tx.add_class(name, emb, source="fault-test")
                rows[name] = {"prototypes": emb.mean(0)}
            tx.save_head(rows, {"count": classes})
    return names


def test_sigkill_during_enrollment_keeps_exactly_the_committed_classes(tmp_path: Path) -> None:
    db = tmp_path / "classes.db"
    rng = random.Random(20240611)
    confirmed: list[str] = prefill(db, PREFILL)  # classes known to be in the store
    figures = []
    start = time.perf_counter()
    for round_ in range(KILLS):
        startup = round_ < STARTUP_KILLS
        delay = rng.uniform(0.0, 0.4) if startup else rng.uniform(0.0, 0.08)
        printed, out = run_and_kill(db, delay, wait_ready=not startup)
        expected = [name_of(k) for k in range(len(confirmed), len(confirmed) + len(printed))]
        assert printed == expected, out

        with ClassStore.open(db, manifest()) as store:
            assert store.integrity_check() == "ok"
            names = store.names()
            in_flight = name_of(len(confirmed) + len(printed))
            assert names in (confirmed + printed, [*confirmed, *printed, in_flight]), (names[-3:], printed[-3:])
            x, labels, _ = store.all_embeddings()
            head = store.load_head_state()
            assert head.current
            for k, name in enumerate(names):
                want = np.random.default_rng(k).normal(size=(3, DIM)).astype(np.float32)
                np.testing.assert_array_equal(x[labels == k], want, err_msg=name)
            protos = head.arrays.get("prototypes", np.zeros((0, DIM), np.float32))
            assert protos.shape == (len(names), DIM)  # the head state committed with the samples
            if names:
                assert head.params == {"count": len(names), "classes": names}
                np.testing.assert_array_equal(protos[-1], x[labels == len(names) - 1].mean(0))
            assert store.sample_set() == store.scan_sample_set()  # the running digest survived the kill
        figures.append((round_, round(delay * 1000), len(printed), names[-1:] == [in_flight], len(names)))
        confirmed = names
    elapsed = time.perf_counter() - start

    print(f"\n{KILLS} kills in {elapsed:.1f} s ({PREFILL} classes prefilled); round, delay ms, commits printed, "
          "in-flight commit landed, classes")
    for row in figures:
        print("  ", *row)
    assert len(confirmed) > 0
