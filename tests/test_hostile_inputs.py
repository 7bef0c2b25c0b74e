"""Hostile and unlucky inputs of the workstation commands: each gives a clear edgefs message, in bounded memory.

Class packs that are zip bombs or whose zip directory lies about a member's size.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgefs.runtime.bundle import Manifest
from edgefs.store import ClassStore, StoreError
from edgefs.store.packs import PACK_JSON, embeddings_member

# ---- class packs: refused from the zip directory, read in bounded memory -----------------------------

DIM = 16
BOMB = 64 << 20  # under MAX_PACK_NPY_BYTES: a size the old reader read whole


def pack_members(tmp_path: Path) -> dict[str, bytes]:
    manifest = Manifest(backbone={}, input={}, output={"dim": DIM}, head={"type": "prototype"}, fingerprint="ab" * 32)
    store = ClassStore.open(tmp_path / "src.db", manifest)
    store.add_class("a", np.random.default_rng(0).normal(size=(2, DIM)).astype(np.float32))
    with zipfile.ZipFile(store.export_pack(tmp_path / "good.efpack")) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_pack(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return path


def declare(path: Path, member: str, size: int, crc: int) -> None:
    """Patch the uncompressed size and CRC that the zip headers (local and central) give ``member``."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(member).header_offset
    struct.pack_into("<I", raw, local + 14, crc)
    struct.pack_into("<I", raw, local + 22, size)
    at = raw.find(b"PK\x01\x02")
    while at != -1:
        (length,) = struct.unpack_from("<H", raw, at + 28)
        if raw[at + 46:at + 46 + length] == member.encode():
            struct.pack_into("<I", raw, at + 16, crc)
            struct.pack_into("<I", raw, at + 24, size)
        at = raw.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(raw))


def import_peak(pack: Path, tmp_path: Path) -> tuple[str, int]:
    """Import ``pack`` into a new store; returns the refusal and the peak of Python allocations meanwhile."""
    manifest = Manifest(backbone={}, input={}, output={"dim": DIM}, head={"type": "prototype"}, fingerprint="ab" * 32)
    store = ClassStore.open(tmp_path / "dst.db", manifest)
    tracemalloc.start()
    try:
        with pytest.raises(StoreError) as refused:
            store.import_pack(pack)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert store.classes() == []
    return str(refused.value), peak


def test_pack_member_of_zeros_is_refused_from_the_directory(tmp_path: Path) -> None:
    members = pack_members(tmp_path)
    member = embeddings_member(0)
    members[member] = members[member][:128] + bytes(BOMB - 128)  # the real header, then zeros
    pack = write_pack(tmp_path / "bomb.efpack", members)
    del members
    assert pack.stat().st_size < 200_000
    with zipfile.ZipFile(pack) as zf:
        compressed = zf.getinfo(member).compress_size
    message, peak = import_peak(pack, tmp_path)
    assert message == (f"class pack {pack} declares {BOMB} bytes of embeddings and thumbnails in {compressed} "
                       "compressed bytes, more than 50 times as many (edgefs.limits.MAX_PACK_EXPANSION): embeddings "
                       "and JPEGs do not compress like that; it is a zip bomb or damaged: refusing it")
    assert peak < 8 << 20, f"{peak} bytes allocated while refusing"


def test_pack_whose_directory_understates_a_member_is_read_in_bounded_memory(tmp_path: Path) -> None:
    members = pack_members(tmp_path)
    member = embeddings_member(0)
    honest = members[member]
    members[member] = honest[:128] + bytes(BOMB - 128)
    pack = write_pack(tmp_path / "liar.efpack", members)
    del members
    declare(pack, member, len(honest), zlib.crc32(honest))  # the honest member's size and CRC
    message, peak = import_peak(pack, tmp_path)
    assert message.startswith(f"class pack {pack} is not a readable zip (truncated or corrupt: Bad CRC-32 for file "
                              f"'{member}')")
    assert peak < 8 << 20, f"{peak} bytes allocated: the member was decompressed past its declared size"


def test_pack_member_larger_than_its_class_is_refused_before_reading(tmp_path: Path) -> None:
    members = pack_members(tmp_path)
    member = embeddings_member(0)
    members[member] = members[member][:128] + np.random.default_rng(1).bytes(2 << 20)  # incompressible
    pack = write_pack(tmp_path / "big.efpack", members)
    message, _ = import_peak(pack, tmp_path)
    assert message == (f"class pack {pack}: member '{member}' declares {128 + (2 << 20)} bytes, but class 'a' has "
                       f"2 shots of {DIM} float32 values (at most {2 * DIM * 4 + 16384} bytes with its header); it is "
                       "damaged or hostile: refusing it")
    with zipfile.ZipFile(pack) as zf:
        assert json.loads(zf.read(PACK_JSON))["classes"][0]["shots"] == 2
