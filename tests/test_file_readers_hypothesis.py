"""Property tests over the file readers: any input gives a result or an EdgefsError with a message.

Readers: a bundle's ``manifest.json``, a head spec (``head.json`` + ``head.npz``), a class pack (zip) and
image files. Inputs are random bytes, random JSON, and valid files with fields replaced, bytes flipped or
the end cut off. Any other exception (KeyError, TypeError, MemoryError, cv2.error, ...) fails the test.

Bounds: the properties run in a child pytest process whose address space is capped with
``RLIMIT_AS`` (:data:`MEMORY_LIMIT`), so an input that makes a reader allocate gigabytes fails as a
MemoryError instead of passing; hypothesis's ``deadline`` bounds each input's time. The run is
derandomized (the same inputs on every run) and small enough for CI.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgefs.errors import EdgefsError

CHILD = os.environ.get("EDGEFS_PROPERTY_CHILD") == "1"
MEMORY_LIMIT = 1536 << 20  # address space of the child (imports take ~470 MiB of it)
EXAMPLES = int(os.environ.get("EDGEFS_PROPERTY_EXAMPLES", "150"))
DIM = 16

if CHILD:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=2000, database=None,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    # Numbers that have broken readers before: huge counts, floats for ints, negatives.
    nasty_numbers = st.sampled_from([0, -1, 1, 3e8, 1e11, 10**11, 2**63, 1.5, "16", None, True, [], {}])

    def mutations(data: bytes) -> st.SearchStrategy[bytes]:
        """``data`` cut short, with bytes flipped, or with random bytes appended."""
        n = len(data)
        cut = st.integers(0, n).map(lambda k: data[:k])
        flips = st.lists(st.tuples(st.integers(0, max(n - 1, 0)), st.integers(1, 255)), min_size=1, max_size=8).map(
            lambda fl: bytes(b ^ x if i in dict(fl) and (x := dict(fl)[i]) else b for i, b in enumerate(data)))
        tail = st.binary(max_size=64).map(lambda extra: data + extra)
        return st.one_of(cut, flips, tail)

    def count(name: str) -> None:
        out = os.environ.get("EDGEFS_PROPERTY_COUNTS")
        if out:
            with open(out, "a") as f:
                f.write(name + "\n")

    def check(call, name: str):
        count(name)
        try:
            return call()
        except EdgefsError as exc:
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
            return None


# ---- fixtures built without torch: a valid manifest, head spec, pack and images -----------------

def valid_manifest() -> dict:
    return {"format": "edgefs-bundle", "schema_version": 1, "fingerprint": "ab" * 32,
            "backbone": {"name": "conv4"}, "input": {"name": "images", "dtype": "uint8", "layout": "NHWC",
                                                      "height": 28, "width": 28, "channels": 3, "color_order": "RGB"},
            "output": {"name": "embeddings", "dtype": "float32", "dim": DIM},
            "head": {"type": "prototype", "params": {}}, "training": {}, "export": {}}


def valid_head() -> tuple[bytes, bytes]:
    buf = io.BytesIO()
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(buf, w=w)
    doc = {"head_type": "relation", "schema_version": 1, "params": {"hidden": 4},
           "arrays": {"w": {"shape": [3, 4], "dtype": "float32"}}}
    return json.dumps(doc).encode(), buf.getvalue()


_PACK: list[bytes] = []


def valid_pack(tmp: Path) -> bytes:
    """One pack for the whole run (its pack.json holds a time; inputs must not change between runs)."""
    if not _PACK:
        _PACK.append(_make_pack(tmp))
    return _PACK[0]


def _make_pack(tmp: Path) -> bytes:
    from edgefs.runtime.bundle import Manifest
    from edgefs.store import ClassStore

    m = Manifest(backbone={}, input={}, output={"dim": DIM}, head={"type": "prototype"}, fingerprint="ab" * 32)
    with ClassStore.open(tmp / "src.db", m) as s:
        s.add_class("a", np.random.default_rng(0).normal(size=(2, DIM)).astype(np.float32))
        s.add_class("b", np.random.default_rng(1).normal(size=(1, DIM)).astype(np.float32),
                    thumbnails=[b"\xff\xd8\xff\xe0" + b"\0" * 20])
        return s.export_pack(tmp / "p.efpack").read_bytes()


def valid_images() -> list[bytes]:
    import cv2

    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    return [cv2.imencode(ext, img)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm")]


# ---- the properties (run in the memory-capped child) --------------------------------------------

child_only = pytest.mark.skipif(not CHILD, reason="runs inside test_file_readers_in_bounded_memory")

if CHILD:
    @child_only
    @SETTINGS
    @given(data=st.data())
    def test_manifest_reader(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
        from edgefs.runtime.bundle import read_bundle

        folder = tmp_path_factory.mktemp("bundle")
        doc = valid_manifest()
        kind = data.draw(st.sampled_from(["bytes", "json", "field", "number", "mutate"]))
        if kind == "bytes":
            raw = data.draw(st.binary(max_size=256))
        elif kind == "json":
            raw = json.dumps(data.draw(json_values)).encode()
        elif kind in ("field", "number"):
            section = data.draw(st.sampled_from(["input", "output", "head", "backbone", "fingerprint",
                                                 "schema_version", "format", "training"]))
            value = data.draw(json_values if kind == "field" else nasty_numbers)
            if isinstance(doc.get(section), dict) and data.draw(st.booleans()):
                key = data.draw(st.sampled_from(["height", "width", "dim", "type", "channels"]))
                doc[section][key] = value
            else:
                doc[section] = value
            raw = json.dumps(doc).encode()
        else:
            raw = data.draw(mutations(json.dumps(doc).encode()))
        (folder / "manifest.json").write_bytes(raw)
        (folder / "backbone.onnx").write_bytes(b"onnx")
        head_json, head_npz = valid_head()
        (folder / "head.json").write_bytes(head_json)
        (folder / "head.npz").write_bytes(head_npz)
        bundle = check(lambda: read_bundle(folder, verify=False), "manifest")
        if bundle is not None:
            assert bundle.manifest.embedding_dim >= 1 and min(bundle.manifest.input_size) >= 1

    @child_only
    @SETTINGS
    @given(data=st.data())
    def test_head_spec_reader(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
        from edgefs.heads import HeadSpec

        folder = tmp_path_factory.mktemp("head")
        head_json, head_npz = valid_head()
        kind = data.draw(st.sampled_from(["json", "json-field", "npz-bytes", "npz-mutate", "npy-shape"]))
        if kind == "json":
            head_json = json.dumps(data.draw(json_values)).encode()
        elif kind == "json-field":
            doc = json.loads(head_json)
            doc[data.draw(st.sampled_from(["head_type", "schema_version", "params", "arrays"]))] = \
                data.draw(json_values | nasty_numbers)
            head_json = json.dumps(doc).encode()
        elif kind == "npz-bytes":
            head_npz = data.draw(st.binary(max_size=256))
        elif kind == "npz-mutate":
            head_npz = data.draw(mutations(head_npz))
        else:  # a .npy whose header declares a huge shape over a few bytes of data
            shape = data.draw(st.tuples(st.integers(0, 10**12), st.integers(0, 10**6)))
            header = {"descr": "<f4", "fortran_order": False, "shape": shape}
            npy = io.BytesIO()
            np.lib.format.write_array_header_1_0(npy, header)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("w.npy", npy.getvalue() + b"\0" * data.draw(st.integers(0, 64)))
            head_npz = buf.getvalue()
        (folder / "head.json").write_bytes(head_json)
        (folder / "head.npz").write_bytes(head_npz)
        check(lambda: HeadSpec.load(folder / "head"), "head spec")

    @child_only
    @SETTINGS
    @given(data=st.data())
    def test_class_pack_reader(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
        from edgefs.store.packs import PACK_JSON, read_pack

        folder = tmp_path_factory.mktemp("pack")
        good = valid_pack(folder)
        kind = data.draw(st.sampled_from(["bytes", "mutate", "json", "field", "class-field"]))
        if kind == "bytes":
            raw = data.draw(st.binary(max_size=512))
        elif kind == "mutate":
            raw = data.draw(mutations(good))
        else:
            with zipfile.ZipFile(io.BytesIO(good)) as zf:
                members = {n: zf.read(n) for n in zf.namelist()}
            doc = json.loads(members[PACK_JSON])
            if kind == "json":
                doc = data.draw(json_values)
            elif kind == "field":
                doc[data.draw(st.sampled_from(["format", "pack_version", "fingerprint", "embedding_dim",
                                               "classes"]))] = data.draw(json_values | nasty_numbers)
            else:
                entry = doc["classes"][data.draw(st.integers(0, 1))]
                field = data.draw(st.sampled_from(["name", "shots", "thumbnails", "sources"]))
                if data.draw(st.booleans()):
                    entry.pop(field)
                else:
                    entry[field] = data.draw(json_values | nasty_numbers)
            members[PACK_JSON] = json.dumps(doc).encode()
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for n, b in members.items():
                    zf.writestr(n, b)
            raw = buf.getvalue()
        (folder / "x.efpack").write_bytes(raw)
        check(lambda: read_pack(folder / "x.efpack", "ab" * 32, DIM), "class pack")

    @child_only
    @SETTINGS
    @given(data=st.data())
    def test_image_reader(data: st.DataObject) -> None:
        import struct
        import zlib

        from edgefs.imagefile import decode_image

        kind = data.draw(st.sampled_from(["bytes", "mutate", "png-dims"]))
        if kind == "bytes":
            raw = data.draw(st.binary(max_size=256))
        elif kind == "mutate":
            raw = data.draw(st.sampled_from(valid_images()).flatmap(mutations))
        else:
            w, h = data.draw(st.integers(0, 2**32 - 1)), data.draw(st.integers(0, 2**32 - 1))
            ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
            raw = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                   + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data.draw(st.binary(max_size=64)))
        img = check(lambda: decode_image(raw, "x.png"), "image")
        if img is not None:
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


# ---- the runner ---------------------------------------------------------------------------------

@pytest.mark.skipif(CHILD, reason="the runner itself")
def test_file_readers_in_bounded_memory(tmp_path: Path) -> None:
    """Run the properties above in a child with a capped address space; every input must pass."""
    pytest.importorskip("hypothesis")
    counts = tmp_path / "counts.txt"
    env = {**os.environ, "EDGEFS_PROPERTY_CHILD": "1", "EDGEFS_PROPERTY_COUNTS": str(counts),
           "OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "--basetemp", str(tmp_path / "child")],
                          capture_output=True, text=True, env=env, preexec_fn=cap, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    tried: dict[str, int] = {}
    for line in counts.read_text().splitlines():
        tried[line] = tried.get(line, 0) + 1
    print("inputs tried per reader:", tried)
    assert set(tried) == {"manifest", "head spec", "class pack", "image"}
    assert all(n >= min(EXAMPLES, 50) for n in tried.values()), tried
