"""Name -> factory registries (backbones, methods, heads, engine backends, camera sources, data domains).

A part registers itself with its registry's decorator in its own module, and that is all
it takes: a registry made with ``package=`` imports every module of that package (or, with
``suffix=``, those whose names end with it) the first time it is asked about a name, so no
list of modules is kept anywhere. Modules whose names start with ``_`` are not parts.
Importing this module, or a module that makes a registry, imports no part (and so no
torch, ONNX Runtime or OpenCV that a part needs).

Lists of choices in the CLI, tables in the docs and parametrized tests are
generated from these, so adding a component means registering it once.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, overload

from edgefs.errors import EdgefsError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection filled by a decorator that refuses duplicate names.

    Args:
        kind: what the parts are, for messages (``"head"``, ``"camera source"``).
        package: the package whose modules are the parts: each is imported on the first
            lookup (``get``, ``names``, ``in``...), never at import time. None: the parts are
            registered by whoever imports them.
        suffix: only modules whose names end with this are parts (``"_backend"`` where the
            package also holds other modules).
    """

    def __init__(self, kind: str, package: str | None = None, suffix: str = "") -> None:
        self.kind = kind
        self.package = package
        self.suffix = suffix
        self._items: dict[str, T] = {}
        self._ranks: dict[str, int] = {}
        self._found = package is None
        self._finding = False
        self._lock = threading.RLock()

    def register(self, name: str, *, rank: int | None = None) -> Callable[[T], T]:
        """Decorator: register the object under ``name``.

        Args:
            rank: where ``name`` comes in :meth:`listing` (lowest first); names without one
                follow, by name.
        """

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            if rank is not None:
                self._ranks[name] = rank
            return obj

        return decorator

    def modules(self) -> list[str]:
        """The modules that hold the parts: every module of ``package`` (ending with ``suffix``)."""
        if self.package is None:
            return []
        package = importlib.import_module(self.package)
        found = {info.name for info in pkgutil.iter_modules(package.__path__)
                 if info.name.endswith(self.suffix) and not info.name.startswith("_")}
        return [f"{self.package}.{name}" for name in sorted(found)]

    def _find(self) -> None:
        """Import the part modules once. A lookup made while they are being imported (by one of
        them, in the same thread) sees the parts registered so far; other threads wait."""
        if self._found:
            return
        with self._lock:
            if self._found or self._finding:
                return
            self._finding = True
            try:
                for module in self.modules():
                    importlib.import_module(module)
                self._found = True  # not after a failed import: the next lookup tries again
            finally:
                self._finding = False

    def get(self, name: str) -> T:
        self._find()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise EdgefsError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._find()
        return sorted(self._items)

    def ranked(self) -> list[str]:
        """Every registered name: those registered with a rank first (lowest first), then the others by name."""
        self._find()
        return sorted(self._items, key=lambda name: (name not in self._ranks, self._ranks.get(name, 0), name))

    def listing(self) -> Names:
        """A live, read-only sequence of :meth:`ranked`: it finds the parts when first read, not now."""
        return Names(self)

    def __contains__(self, name: object) -> bool:
        self._find()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class Names(Sequence[str]):
    """The names of a registry in :meth:`Registry.ranked` order, read when used (argparse choices,
    messages), so that a module can hold them as a constant without importing the parts."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def _names(self) -> list[str]:
        return self._registry.ranked()

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Names | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists and tuples, which do not hash alike

    def __repr__(self) -> str:
        return repr(tuple(self._names()))
