"""The class store's SQLite schema as an ordered list of migrations.

``PRAGMA user_version`` holds the number of migrations applied: 0 is an empty
database, ``len(MIGRATIONS)`` is the schema this edgefs writes. Migration ``n``
(1-based) takes a store at version ``n - 1`` to version ``n``; the store runs
each one inside the transaction that also sets ``user_version``, so a store is
never left half-migrated. To change the schema, append one function to
:data:`MIGRATIONS`; never edit one that has shipped.

Migrations run inside an open transaction, so they use ``conn.execute`` one
statement at a time (``executescript`` would commit first).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]


def _initial_schema(conn: sqlite3.Connection) -> None:
    """Version 1: meta, classes, samples and head state."""
    statements = (
        # Key/value facts about the store: bundle fingerprint, embedding dim, head type,
        # created/updated times, the edgefs version that created it, head params (JSON).
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE classes ("
        " id INTEGER PRIMARY KEY,"
        " name TEXT NOT NULL UNIQUE,"
        " created REAL NOT NULL,"
        " updated REAL NOT NULL)",
        # embedding: float32 little-endian, exactly embedding_dim values (checked on write and read).
        # thumbnail: small JPEG bytes or NULL. created: seconds since the epoch.
        "CREATE TABLE samples ("
        " id INTEGER PRIMARY KEY,"
        " class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,"
        " embedding BLOB NOT NULL,"
        " thumbnail BLOB,"
        " source TEXT NOT NULL DEFAULT '',"
        " created REAL NOT NULL)",
        "CREATE INDEX samples_by_class ON samples(class_id, id)",
        # One row per named array of the device head (prototypes, fine-tuned weights):
        # dtype as numpy's dtype.str (e.g. '<f4'), shape as a JSON list, C-order bytes.
        "CREATE TABLE head_state ("
        " name TEXT PRIMARY KEY,"
        " dtype TEXT NOT NULL,"
        " shape TEXT NOT NULL,"
        " data BLOB NOT NULL)",
    )
    for statement in statements:
        conn.execute(statement)


def _per_class_head_rows(conn: sqlite3.Connection) -> None:
    """Version 2: the head state saved per class, and the sample set kept as a running digest.

    ``head_rows`` holds each class's part of the head state (its running sum, count, fine-tuned
    row...) as the raw bytes of one record whose layout (names, dtypes, shapes) is in
    ``meta.head_layout``; a change to one class rewrites its row only. Global arrays (a centre
    feature, the calibration sample) stay in ``head_state``. The sample set, which version 1
    recomputed by reading every sample row, becomes a count and an order-free digest in ``meta``
    (``samples``), updated by every transaction from the rows it inserts or deletes; it is
    computed here once from the existing rows. A version-1 head state that matched its samples
    is carried over as it is (whole arrays, still current); the next commit writes it per class.
    """
    from edgefs.store.digest import legacy_sample_set, scan_sample_set

    conn.execute("CREATE TABLE head_rows ("
                 " class_id INTEGER PRIMARY KEY REFERENCES classes(id) ON DELETE CASCADE,"
                 " data BLOB NOT NULL)")
    legacy = legacy_sample_set(conn)
    now = scan_sample_set(conn)
    row = conn.execute("SELECT value FROM meta WHERE key = 'head_samples'").fetchone()
    updates = [("samples", now)]
    if row is not None:
        # The head was derived from exactly the stored samples: record that in the new form.
        updates.append(("head_samples", now if row[0] == legacy else "stale:" + str(row[0])))
    for key, value in updates:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                     "excluded.value", (key, value))


def _single_view_column(conn: sqlite3.Connection) -> None:
    """Version 3: ``samples.single``, the shot as one camera frame is embedded, where ``embedding`` is
    the mean of several views of it (enrollment with shot views, :mod:`edgefs.service.views`).

    ``embedding`` stays what the head is built from; ``single`` (float32 like it, or NULL when the
    embedding is itself one view, as every sample written before this version) is what the unknown
    threshold's calibration scores as a query, since a camera frame is one view. Existing rows keep
    NULL: nothing to convert.
    """
    conn.execute("ALTER TABLE samples ADD COLUMN single BLOB")


# Ordered: MIGRATIONS[i] takes user_version i to i + 1.
MIGRATIONS: list[Migration] = [_initial_schema, _per_class_head_rows, _single_view_column]


def latest_version() -> int:
    """The schema version this edgefs writes (read at call time, so tests can add a migration)."""
    return len(MIGRATIONS)
