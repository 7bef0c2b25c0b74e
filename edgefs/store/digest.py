"""The identity of a class store's sample set, kept in O(changed rows) per commit.

A sample is identified by (class id, class name, sample id, insertion time): samples are
only inserted or deleted, never changed, and a row id is never reused with the same
insertion time. The set's identity is its count and the sum, modulo 2**256, of the
sha256 of each sample's identity (an additive multiset hash): inserting or deleting a
sample adds or subtracts its own hash, and renaming a class replaces its samples' hashes,
so a commit updates the digest from the rows it touches instead of reading every row.
Two sets with the same count and digest are the same set unless sha256 collides in sum.

The text form is ``"COUNT:HEX"`` (64 hex digits).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable

_MOD = 1 << 256


def sample_hash(class_id: int, name: str, sample_id: int, created: float) -> int:
    """The hash of one sample's identity, as a 256-bit integer."""
    text = f"{int(class_id)}\x1f{name}\x1f{int(sample_id)}\x1f{float(created)!r}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


def combine(text: str, added: Iterable[tuple[int, str, int, float]] = (),
            removed: Iterable[tuple[int, str, int, float]] = ()) -> str:
    """``text`` (``"COUNT:HEX"``) with the ``added`` samples counted in and the ``removed`` ones out."""
    count_text, hex_text = text.split(":", 1)
    count, value = int(count_text), int(hex_text, 16)
    for sample in added:
        count, value = count + 1, (value + sample_hash(*sample)) % _MOD
    for sample in removed:
        count, value = count - 1, (value - sample_hash(*sample)) % _MOD
    return f"{count}:{value:064x}"


EMPTY = f"0:{0:064x}"


def scan_sample_set(conn: sqlite3.Connection) -> str:
    """The digest computed from every sample row (one scan; what the running digest must equal)."""
    return combine(EMPTY, conn.execute(
        "SELECT c.id, c.name, s.id, s.created FROM samples s JOIN classes c ON c.id = s.class_id"))


def legacy_sample_set(conn: sqlite3.Connection) -> str:
    """The sample set as schema version 1 recorded it (count and a sha256 over the ordered rows)."""
    h = hashlib.sha256()
    count = 0
    rows = conn.execute("SELECT c.id, c.name, s.id, s.created FROM samples s JOIN classes c ON c.id = s.class_id "
                        "ORDER BY c.id, s.id")
    for class_id, name, sample_id, created in rows:
        h.update(f"{class_id}\x1f{name}\x1f{sample_id}\x1f{float(created)!r}\x1e".encode())
        count += 1
    return f"{count}:{h.hexdigest()}"
