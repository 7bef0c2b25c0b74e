"""The domain contract and the registry.

A domain names the packages it needs and turns their unpacked trees into
:class:`Item` s (class, instance, RGB image already on the domain's square
canvas). Everything after extraction is shared (:mod:`edgefs.data.domains.build`).
A domain is one module of this package whose :class:`Domain` subclass carries
``@DOMAINS.register(name)``; :data:`DOMAINS` imports the modules on its first lookup.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgefs.data import debian
from edgefs.registry import Registry

SPLITS = ("train", "val", "test")


@dataclass
class Item:
    """One image of one class.

    Attributes:
        cls: class name (a folder name: ``[a-z0-9_.-]``).
        instance: who drew it (theme, deck, tileset, flag set, file); unique within a class.
        image: ``(S, S, 3)`` uint8 RGB on the domain's background.
        source: where it came from inside its package (for audits).
    """

    cls: str
    instance: str
    image: np.ndarray = field(repr=False)
    source: str = ""


class Domain:
    """Base class of a registered domain; subclasses set the attributes and implement :meth:`extract`."""

    name: str = ""
    summary: str = ""
    packages: tuple[str, ...] = ()
    size: int = 84
    background: str = "white (transparent pixels composited on white)"
    background_level: int = 255
    class_definition: str = ""
    instance_definition: str = ""
    min_instances: int = 5
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # Near-duplicate threshold: Hamming distance on the 64-bit difference hash (see filters).
    near_duplicate_bits: int = 4
    # Drop near-duplicates across classes (placeholders, one drawing filed under two names).
    # Off where classes are alike by construction (one deck's 3 and 4 of clubs differ by one pip).
    cross_class_near_duplicates: bool = True

    def extract(self, packages: dict[str, debian.Package], stats: Counter,
                log: Callable[[str], None]) -> list[Item]:
        """Turn unpacked packages into items; count what was skipped and why in ``stats``."""
        raise NotImplementedError


DOMAINS: Registry[type[Domain]] = Registry("domain", package="edgefs.data.domains")


def slug(text: str) -> str:
    """A folder-safe lower-case name: ``"Printer Network"`` -> ``"printer_network"``."""
    s = re.sub(r"[^a-z0-9.+-]+", "_", text.lower()).strip("_.")
    return s or "_"


def split_classes(classes: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Class-disjoint train/val/test lists: sorted names shuffled by ``seed``, cut by ``fractions``.

    Each split gets at least one class when there are three or more.
    """
    names = sorted(classes)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    n = len(shuffled)
    n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
    n_train = n - n_val - n_test
    return {"train": sorted(shuffled[:n_train]), "val": sorted(shuffled[n_train:n_train + n_val]),
            "test": sorted(shuffled[n_train + n_val:])}
