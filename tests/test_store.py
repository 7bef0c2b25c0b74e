"""The class store: round trips, refusals that write nothing, migrations, class packs and the CLI."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefs import limits
from edgefs.cli import main
from edgefs.runtime.bundle import Manifest, read_bundle
from edgefs.store import ClassStore, StoreError, schema

DIM = 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60 + b"\xff\xd9"


def manifest(fingerprint: str = "ab" * 32, dim: int = DIM) -> Manifest:
    return Manifest(backbone={}, input={}, output={"dim": dim}, head={"type": "prototype"}, fingerprint=fingerprint)


def shots(k: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(k, dim)).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ClassStore]:
    s = ClassStore.open(tmp_path / "classes.db", manifest())
    yield s
    s.close()


def snapshot(s: ClassStore) -> tuple:
    """Everything a store holds, for 'nothing changed' checks."""
    x, labels, names = s.all_embeddings()
    head = s.load_head_state()
    return (x.tobytes(), labels.tolist(), names, [(c.name, c.shots, c.updated) for c in s.classes()],
            {k: v.tobytes() for k, v in head.arrays.items()}, head.params)


# ---- round trips -----------------------------------------------------------------------------
def test_round_trip_and_pragmas(store: ClassStore, tmp_path: Path) -> None:
    a, b = shots(3, 1), shots(2, 2)
    store.add_class("mug", a, thumbnails=[JPEG, None, JPEG], source="camera:0")
    store.add_class("cup", b.astype(np.float64), source="folder")  # float64 is stored as float32
    np.testing.assert_array_equal(store.embeddings("mug"), a)
    np.testing.assert_array_equal(store.embeddings("cup"), b)
    _, thumbs, sources, _ = store.samples("mug")
    assert thumbs == [JPEG, None, JPEG] and sources == ["camera:0"] * 3
    assert [(c.name, c.shots) for c in store.classes()] == [("mug", 3), ("cup", 2)]
    x, labels, names = store.all_embeddings()
    assert x.dtype == np.float32 and x.shape == (5, DIM) and names == ["mug", "cup"]
    assert labels.tolist() == [0, 0, 0, 1, 1]
    store.close()

    reopened = ClassStore.open(tmp_path / "classes.db", manifest(), create=False)
    np.testing.assert_array_equal(reopened.all_embeddings()[0], x)
    conn = reopened._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.latest_version()
    meta = reopened.meta()
    assert meta["fingerprint"] == "ab" * 32 and meta["embedding_dim"] == str(DIM) and meta["head_type"] == "prototype"
    assert reopened.integrity_check() == "ok"
    reopened.close()


def test_head_state_commits_with_samples(store: ClassStore) -> None:
    protos = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    store.add_class("a", shots(1), head_state={"prototypes": protos[:1]}, head_params={"distance": "cosine"})
    with store.transaction() as tx:
        tx.add_samples("b", shots(2))
        tx.add_samples("a", shots(1))  # existing class: appended
        tx.save_head_state({"prototypes": protos, "counts": np.array([2, 2], np.int64)}, {"distance": "euclidean"})
    head = store.load_head_state()
    assert head.current and head.params == {"distance": "euclidean"}
    np.testing.assert_array_equal(head.arrays["prototypes"], protos)
    assert head.arrays["counts"].dtype == np.int64
    assert [c.shots for c in store.classes()] == [2, 2]
    store.remove("b")  # samples changed without a new head state: it is out of date
    assert not store.load_head_state().current


def test_failed_transaction_writes_nothing(store: ClassStore) -> None:
    store.add_class("a", shots(2))
    before = snapshot(store)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.add_class("b", shots(3))
        tx.save_head_state({"p": np.ones((1, DIM), np.float32)})
        raise RuntimeError("enrollment crashed")
    with pytest.raises(StoreError, match="NaN"), store.transaction() as tx:
        tx.add_class("c", shots(1))
        tx.save_head_state({"p": np.full((1, DIM), np.nan, np.float32)})
    assert snapshot(store) == before


# ---- uniqueness, append / remove / rename touch one class ------------------------------------
def test_uniqueness_and_single_class_changes(store: ClassStore) -> None:
    store.add_class("a", shots(2, 1))
    store.add_class("b", shots(3, 2))
    b_before = (store.embeddings("b").copy(), store.classes()[1])
    with pytest.raises(StoreError, match="--append"):
        store.add_class("a", shots(1))
    store.append("a", shots(1, 3))
    assert store.embeddings("a").shape == (3, DIM)
    store.rename("a", "z")
    with pytest.raises(StoreError, match="already enrolled"):
        store.rename("z", "b")
    with pytest.raises(StoreError, match="not enrolled"):
        store.append("nope", shots(1))
    assert store.remove("z") == 3
    np.testing.assert_array_equal(store.embeddings("b"), b_before[0])
    assert store.classes() == [b_before[1]]
    assert store._conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 3  # cascade removed a's samples
    with pytest.raises(StoreError, match="not enrolled"):
        store.remove("z")


@pytest.mark.parametrize(
    ("embeddings", "thumbnails", "message"),
    [
        (np.full((2, DIM), np.nan, np.float32), None, "NaN"),
        (np.array([[np.inf] * DIM], np.float32), None, "NaN or inf"),
        (np.zeros((2, DIM + 1), np.float32), None, "size-16"),
        (np.zeros((0, DIM), np.float32), None, "empty support set"),
        (np.zeros(DIM, np.float32), None, "one row per shot"),
        (np.zeros((1, DIM), np.uint8), None, "not images"),
        (np.zeros((2, DIM), np.float32), [JPEG], "one per shot"),
        (np.zeros((1, DIM), np.float32), [b"PNG..."], "not a JPEG"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(store: ClassStore, embeddings, thumbnails, message: str) -> None:
    store.add_class("kept", shots(1))
    before = snapshot(store)
    with pytest.raises(StoreError, match=message):
        store.add_class("new", embeddings, thumbnails=thumbnails)
    with pytest.raises(StoreError, match=message):
        store.append("kept", embeddings, thumbnails=thumbnails)
    assert snapshot(store) == before


@pytest.mark.parametrize("name", ["", "  padded ", "x" * 200, "tab\there"])
def test_bad_names(store: ClassStore, name: str) -> None:
    with pytest.raises(StoreError):
        store.add_class(name, shots(1))
    assert store.classes() == []


# ---- opening: bundle, versions, migrations -----------------------------------------------------
def test_other_bundle_is_refused(tmp_path: Path) -> None:
    ClassStore.open(tmp_path / "s.db", manifest("ab" * 32)).close()
    with pytest.raises(StoreError, match=r"belongs to bundle abababababab\.\.\., you opened it with cdcdcdcdcdcd"):
        ClassStore.open(tmp_path / "s.db", manifest("cd" * 32))
    with pytest.raises(StoreError, match="size-16 embeddings"):
        ClassStore.open(tmp_path / "s.db", manifest("ab" * 32, dim=32))
    with pytest.raises(StoreError, match="does not exist"):
        ClassStore.open(tmp_path / "missing.db", manifest(), create=False)
    assert not (tmp_path / "missing.db").exists()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    ClassStore.open(tmp_path / "s.db", manifest()).close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute(f"PRAGMA user_version = {schema.latest_version() + 1}")
    with pytest.raises(StoreError, match="upgrade edgefs"):
        ClassStore.open(tmp_path / "s.db", manifest())


def test_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable edgefs class store"):
        ClassStore.open(tmp_path / "junk.db", manifest())
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(StoreError, match="not an edgefs class store"):
        ClassStore.open(tmp_path / "other.db", manifest())


def test_migration_from_version_0(tmp_path: Path) -> None:
    """An empty SQLite file at user_version 0 (made by hand) is migrated to the current schema."""
    sqlite3.connect(tmp_path / "v0.db").close()
    with ClassStore.open(tmp_path / "v0.db", manifest(), create=False) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == schema.latest_version()
        s.add_class("a", shots(1))


def test_a_new_migration_is_one_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store with data is upgraded by appending one migration; the data survives."""
    shipped = schema.latest_version()
    with ClassStore.open(tmp_path / "v1.db", manifest()) as s:
        s.add_class("a", shots(2, 5))

    def add_label_column(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE classes ADD COLUMN label TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, add_label_column])
    with ClassStore.open(tmp_path / "v1.db", manifest()) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == shipped + 1
        assert "label" in [r[1] for r in s._conn.execute("PRAGMA table_info(classes)")]
        np.testing.assert_array_equal(s.embeddings("a"), shots(2, 5))
        assert s.integrity_check() == "ok"


def test_failed_migration_leaves_the_store_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ClassStore.open(tmp_path / "v1.db", manifest()) as s:
        s.add_class("a", shots(1))

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE extra (id INTEGER)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        ClassStore.open(tmp_path / "v1.db", manifest())
    monkeypatch.undo()
    with ClassStore.open(tmp_path / "v1.db", manifest()) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == schema.latest_version()
        assert s._conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
        assert s.names() == ["a"]


# ---- class packs ------------------------------------------------------------------------------
def filled(path: Path, fingerprint: str = "ab" * 32) -> ClassStore:
    s = ClassStore.open(path, manifest(fingerprint))
    s.add_class("mug", shots(3, 1), thumbnails=[JPEG, None, JPEG], source="camera:0")
    s.add_class("cup", shots(2, 2), source="folder")
    return s


def test_pack_round_trip_between_stores(tmp_path: Path) -> None:
    src = filled(tmp_path / "a.db")
    pack = src.export_pack(tmp_path / "all.efpack")
    dst = ClassStore.open(tmp_path / "b.db", manifest())
    dst.add_class("cup", shots(1, 9))
    with pytest.raises(StoreError, match="--on-conflict"):
        dst.import_pack(pack)
    assert dst.names() == ["cup"]
    result = dst.import_pack(pack, on_conflict="skip")
    assert result.added == ["mug"] and result.skipped == ["cup"]
    assert dst.samples("mug")[1:3] == src.samples("mug")[1:3]  # thumbnails and sources
    np.testing.assert_array_equal(dst.embeddings("mug"), src.embeddings("mug"))
    dst.import_pack(pack, on_conflict="append")
    assert {c.name: c.shots for c in dst.classes()} == {"cup": 3, "mug": 6}
    dst.import_pack(pack, on_conflict="replace")
    for name in ("mug", "cup"):
        np.testing.assert_array_equal(dst.embeddings(name), src.embeddings(name))
    src.export_pack(tmp_path / "one.efpack", ["cup"])
    with zipfile.ZipFile(tmp_path / "one.efpack") as zf:
        assert [c["name"] for c in json.loads(zf.read("pack.json"))["classes"]] == ["cup"]
    with pytest.raises(StoreError, match="not enrolled"):
        src.export_pack(tmp_path / "x.efpack", ["nope"])
    assert not (tmp_path / "x.efpack").exists()


def rewrite(pack: Path, out: Path, change) -> Path:
    """Copy a pack, letting ``change(members: dict[name, bytes])`` edit its members."""
    with zipfile.ZipFile(pack) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    change(members)
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out


def edit_json(members: dict[str, bytes], **fields) -> None:
    doc = json.loads(members["pack.json"])
    doc.update(fields)
    members["pack.json"] = json.dumps(doc).encode()


def pickled_npy(members: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"payload": 1}, None], dtype=object), allow_pickle=True)
    members["embeddings/00000.npy"] = buf.getvalue()


def npy_of(arr: np.ndarray):
    def change(members: dict[str, bytes]) -> None:
        buf = io.BytesIO()
        np.save(buf, arr)
        members["embeddings/00001.npy"] = buf.getvalue()

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: edit_json(m, fingerprint="cd" * 32), "made with bundle cdcdcdcdcdcd"),
        (lambda m: edit_json(m, pack_version=99), "upgrade edgefs"),
        (lambda m: edit_json(m, format="zip"), "not an edgefs class pack"),
        (pickled_npy, "without pickle"),
        (lambda m: m.update({"../../evil.sh": b"rm -rf /"}), "unexpected"),
        (lambda m: m.update({"/etc/passwd": b"x"}), "unexpected"),
        (lambda m: m.pop("thumbnails/00000/00002.jpg"), "missing"),
        (npy_of(np.zeros((2, DIM), np.float64)), "dtype float64"),
        (npy_of(np.zeros((3, DIM), np.float32)), r"shape \(3, 16\)"),
        (npy_of(np.full((2, DIM), np.nan, np.float32)), "NaN"),
        (lambda m: m.update({"thumbnails/00000/00000.jpg": b"GIF89a"}), "not a JPEG"),
        (lambda m: m.update({"pack.json": b"{oops"}), "not valid JSON"),
    ],
)
def test_bad_pack_is_refused_and_nothing_imported(tmp_path: Path, change, message: str) -> None:
    good = filled(tmp_path / "a.db").export_pack(tmp_path / "good.efpack")
    bad = rewrite(good, tmp_path / "bad.efpack", change)
    dst = ClassStore.open(tmp_path / "b.db", manifest())
    dst.add_class("kept", shots(1))
    before = snapshot(dst)
    with pytest.raises(StoreError, match=message):
        dst.import_pack(bad)
    assert snapshot(dst) == before


def test_pack_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = filled(tmp_path / "a.db").export_pack(tmp_path / "good.efpack")
    dst = ClassStore.open(tmp_path / "b.db", manifest())
    # A member larger than the per-entry limit (declared size checked before reading).
    monkeypatch.setattr(limits, "MAX_PACK_NPY_BYTES", 100)
    with pytest.raises(StoreError, match=r"declares .* over the limit"):
        dst.import_pack(good)
    monkeypatch.undo()
    # A zip bomb: a highly compressible member far over the total budget.
    monkeypatch.setattr(limits, "MAX_PACK_TOTAL_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.efpack"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf, zipfile.ZipFile(good) as src:
        for n in src.namelist():  # 8 MiB of zeros deflate to a few KiB
            zf.writestr(n, b"\0" * (8 << 20) if n == "embeddings/00000.npy" else src.read(n))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(StoreError, match="over the limit"):
        dst.import_pack(bomb)
    assert dst.classes() == []


def test_lying_sizes_and_truncation(tmp_path: Path) -> None:
    good = filled(tmp_path / "a.db").export_pack(tmp_path / "good.efpack")
    dst = ClassStore.open(tmp_path / "b.db", manifest())
    data = good.read_bytes()
    (tmp_path / "cut.efpack").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(StoreError, match="truncated or corrupt"):
        dst.import_pack(tmp_path / "cut.efpack")
    # A central directory that understates the first .npy's uncompressed size (offset 24 of
    # each 46-byte central header): zipfile stops at the declared size and the CRC fails.
    lying = bytearray(data)
    target = b"embeddings/00000.npy"
    pos = lying.find(b"PK\x01\x02")
    while pos != -1:
        name_len = int.from_bytes(lying[pos + 28: pos + 30], "little")
        if lying[pos + 46: pos + 46 + name_len] == target:
            lying[pos + 24: pos + 28] = (16).to_bytes(4, "little")
        pos = lying.find(b"PK\x01\x02", pos + 4)
    (tmp_path / "lying.efpack").write_bytes(bytes(lying))
    with pytest.raises(StoreError, match="truncated or corrupt"):
        dst.import_pack(tmp_path / "lying.efpack")
    assert dst.classes() == []


# ---- CLI and the device rule --------------------------------------------------------------------
def test_cli_classes(conv4_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = read_bundle(conv4_bundle)
    dim = bundle.manifest.embedding_dim
    db, other = tmp_path / "classes.db", tmp_path / "other.db"
    with ClassStore.open(db, bundle) as s:
        s.add_class("alpha", shots(2, 1, dim))
        s.add_class("beta", shots(1, 2, dim))
    common = ["--store", str(db), "--bundle", str(conv4_bundle)]
    assert main(["classes", "list", *common]) == 0
    out = capsys.readouterr().out
    assert "2 classes, 3 samples" in out and "alpha" in out and "beta" in out
    assert main(["classes", "rename", "beta", "gamma", *common]) == 0
    assert main(["classes", "export", str(tmp_path / "p.efpack"), "alpha", *common]) == 0
    assert main(["classes", "import", str(tmp_path / "p.efpack"), "--store", str(other),
                 "--bundle", str(conv4_bundle)]) == 0
    assert main(["classes", "import", str(tmp_path / "p.efpack"), *common]) == 2
    assert "--on-conflict" in capsys.readouterr().err
    assert main(["classes", "remove", "alpha", "nope", *common]) == 2  # all or nothing
    assert main(["classes", "remove", "alpha", *common]) == 0
    with ClassStore.open(db, bundle) as s, ClassStore.open(other, bundle) as o:
        assert s.names() == ["gamma"] and o.names() == ["alpha"]
    assert main(["classes", "list", "--store", str(tmp_path / "none.db"), "--bundle", str(conv4_bundle)]) == 2
    assert not (tmp_path / "none.db").exists()


def test_store_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import edgefs.store, edgefs.service.classes, edgefs.cli.classes\n"
        "heavy = sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'edgefs.backbones', 'edgefs.train')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def class_singles(members: dict[str, bytes], entry: int, arr: np.ndarray | None) -> None:
    """Declare single views for pack class ``entry`` (and write ``arr`` as its member, if given)."""
    doc = json.loads(members["pack.json"])
    doc["classes"][entry]["singles"] = True
    members["pack.json"] = json.dumps(doc).encode()
    if arr is not None:
        buf = io.BytesIO()
        np.save(buf, arr)
        members[f"singles/{entry:05d}.npy"] = buf.getvalue()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: class_singles(m, 1, None), "missing"),  # declared, absent
        (lambda m: class_singles(m, 1, np.zeros((3, DIM), np.float32)), r"shape \(3, 16\)"),
        (lambda m: class_singles(m, 1, np.full((2, DIM), np.inf, np.float32)), "NaN or inf"),
        (lambda m: m.update({"singles/00001.npy": b"x"}), "unexpected"),  # present, undeclared
        (lambda m: edit_json(m, classes=[{**json.loads(m["pack.json"])["classes"][0], "singles": "yes"}]),
         "'singles' must be true or false"),
    ],
)
def test_a_pack_with_bad_single_views_is_refused(tmp_path: Path, change, message: str) -> None:
    good = filled(tmp_path / "a.db").export_pack(tmp_path / "good.efpack")
    bad = rewrite(good, tmp_path / "bad.efpack", change)
    dst = ClassStore.open(tmp_path / "b.db", manifest())
    before = snapshot(dst)
    with pytest.raises(StoreError, match=message):
        dst.import_pack(bad)
    assert snapshot(dst) == before


def test_single_views_are_checked_and_travel_in_packs(tmp_path: Path) -> None:
    s = ClassStore.open(tmp_path / "a.db", manifest())
    with pytest.raises(StoreError, match="one single view per shot"):
        s.add_class("mug", shots(3), singles=shots(2, 5))
    with pytest.raises(StoreError, match="single views of 'mug'"):
        s.add_class("mug", shots(3), singles=np.full((3, DIM), np.nan, np.float32))
    assert s.names() == []
    s.add_class("mug", shots(3), singles=shots(3, 5))
    s.add_class("cup", shots(2, 2))
    s.append("cup", shots(1, 3), singles=shots(1, 4))  # a class may mix: NULL where a shot is one view
    np.testing.assert_array_equal(s.singles("mug"), shots(3, 5))
    with pytest.raises(StoreError, match="'bowl' is not enrolled"):
        s.singles("bowl")
    np.testing.assert_array_equal(s.singles("cup"), np.concatenate([shots(2, 2), shots(1, 4)]))
    pack = s.export_pack(tmp_path / "p.efpack")
    assert json.loads(zipfile.ZipFile(pack).read("pack.json"))["pack_version"] == 2
    dst = ClassStore.open(tmp_path / "b.db", manifest())
    dst.import_pack(pack)
    for name in ("mug", "cup"):
        np.testing.assert_array_equal(dst.singles(name), s.singles(name))
        np.testing.assert_array_equal(dst.embeddings(name), s.embeddings(name))
