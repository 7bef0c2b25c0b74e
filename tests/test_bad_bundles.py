"""A damaged bundle is refused by the device commands with a clear message and exit code 2."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefs.cli import main


def truncate_onnx(bundle: Path) -> None:
    data = (bundle / "backbone.onnx").read_bytes()
    (bundle / "backbone.onnx").write_bytes(data[: len(data) // 2])


def newer_schema(bundle: Path) -> None:
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["schema_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(doc))


def pickled_head(bundle: Path) -> None:
    np.savez(bundle / "head.npz", w=np.array([{"payload": 1}], dtype=object))
    doc = {"head_type": "prototype", "schema_version": 1, "arrays": {"w": {"shape": [1], "dtype": "object"}}}
    (bundle / "head.json").write_text(json.dumps(doc))


def garbage_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").write_text("{not json")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (truncate_onnx, "does not match the manifest's fingerprint"),
        (newer_schema, "newer than this edgefs reads"),
        (pickled_head, "would need pickle"),
        (garbage_manifest, "unreadable"),
    ],
)
def test_bench_refuses_a_damaged_bundle(
    conv4_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None], expected: str,
) -> None:
    bundle = tmp_path / "b.edgefs"
    shutil.copytree(conv4_bundle, bundle)
    damage(bundle)
    assert main(["bench", str(bundle), "--iterations", "1", "--warmup", "0"]) == 2
    assert expected in capsys.readouterr().err
