"""The on-device class store (SQLite) and class packs; torch-free.

``ClassStore.open(path, bundle)`` opens the store that belongs to a bundle;
``export_pack`` / ``import_pack`` move classes between stores as one file.
"""

from edgefs.store.packs import ON_CONFLICT, ImportResult, export_pack, import_pack, read_pack
from edgefs.store.store import ClassInfo, ClassStore, HeadState, StoreError, Transaction

__all__ = [
    "ON_CONFLICT",
    "ClassInfo",
    "ClassStore",
    "HeadState",
    "ImportResult",
    "StoreError",
    "Transaction",
    "export_pack",
    "import_pack",
    "read_pack",
]
