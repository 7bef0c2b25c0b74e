"""The on-device class store (SQLite) and class packs; torch-free.

``ClassStore.open(path, bundle)`` opens the store that belongs to a bundle;
``export_pack`` / ``import_pack`` move classes between stores as one file.

Split by job: :mod:`~edgefs.store.store` (the store: open, reads, space given back),
:mod:`~edgefs.store.transaction` (writes in one SQLite transaction),
:mod:`~edgefs.store.headstate` (the head-state rows: the one place they are read and written),
:mod:`~edgefs.store.files` (the file: another application's refused, side files, the space
reserve), :mod:`~edgefs.store.space` (removal on a full disk), :mod:`~edgefs.store.records`,
:mod:`~edgefs.store.packs`, :mod:`~edgefs.store.digest`, :mod:`~edgefs.store.schema`,
:mod:`~edgefs.store.validate`. The store imports nothing above itself (no service, camera or CLI).
"""

from edgefs.store.files import RESERVE_BYTES, StoreFull, enrolled_names, store_files
from edgefs.store.headstate import HeadState
from edgefs.store.packs import ON_CONFLICT, ImportResult, export_pack, import_pack, read_pack
from edgefs.store.records import ClassInfo, SampleRow, SampleSet
from edgefs.store.space import Removal, remove_on_full_disk
from edgefs.store.store import ClassStore
from edgefs.store.transaction import Transaction
from edgefs.store.validate import StoreError

__all__ = [
    "ON_CONFLICT",
    "RESERVE_BYTES",
    "ClassInfo",
    "ClassStore",
    "HeadState",
    "ImportResult",
    "Removal",
    "SampleRow",
    "SampleSet",
    "StoreError",
    "StoreFull",
    "Transaction",
    "enrolled_names",
    "export_pack",
    "import_pack",
    "read_pack",
    "remove_on_full_disk",
    "store_files",
]
