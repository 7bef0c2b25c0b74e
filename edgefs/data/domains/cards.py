"""Playing cards: class = card (``queen_heart``), instance = deck (KDE card decks)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgefs.data.debian import Package
from edgefs.data.domains.base import DOMAINS, Domain, Item
from edgefs.data.domains.filters import to_canvas
from edgefs.data.domains.svg import crop_alpha, render_svg

EXCLUDED_DECKS = {
    "future": "its element ids are shifted by one rank (1_club shows 0, 3_spade shows 2)",
    "xskat-german": "German suits (acorns, leaves, hearts, bells): not the French-suited classes",
}

RANKS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "jack", "queen", "king")
SUITS = ("club", "diamond", "heart", "spade")
CARD_IDS = tuple(f"{r}_{s}" for s in SUITS for r in RANKS)
"""The element ids KDE decks give the 52 cards (``1`` is the ace)."""


def deck_files(root: Path) -> dict[str, Path]:
    """``{deck name: svg file}`` for every ``carddecks/svg-<deck>/*.svg[z]`` under ``root``."""
    out: dict[str, Path] = {}
    for folder in sorted(root.glob("usr/share/carddecks/svg-*")):
        files = sorted([*folder.glob("*.svgz"), *folder.glob("*.svg")])
        if files:
            out[folder.name.removeprefix("svg-")] = files[0]
    return out


def deck_zoom(svg: Path, height: int) -> float | None:
    """Zoom that makes a card of this deck ``height`` px tall (cards of one deck share a size)."""
    # The element is rendered on the whole document's canvas, so measure one card first.
    for card in CARD_IDS:
        probe = render_svg(svg, zoom=1.0, export_id=card)
        probe = crop_alpha(probe) if probe is not None else None
        if probe is not None:
            return height / probe.shape[0]
    return None


def render_card(svg: Path, card: str, zoom: float) -> object:
    """One card element cropped to its extent (None when the deck lacks it)."""
    img = render_svg(svg, zoom=zoom, export_id=card)
    return crop_alpha(img) if img is not None else None


@DOMAINS.register("cards")
class Cards(Domain):
    name = "cards"
    summary = "playing cards: class = card, instance = deck (KDE SVG card decks)"
    packages = ("kdegames-card-data-kf5",)
    size = 128
    class_definition = ("one of the 52 French-suited cards, named <rank>_<suit> (rank 1 = ace) as the "
                        "element id inside each KDE SVG deck; jokers and backs are left out")
    instance_definition = "one French-suited deck (carddecks/svg-<deck>), each card element rendered with rsvg-convert"
    min_instances = 5
    # One deck's pip cards differ by a pip or two: alike by construction, not placeholders.
    cross_class_near_duplicates = False

    def extract(self, packages: dict[str, Package], stats: Counter, log: Callable[[str], None]) -> list[Item]:
        decks = deck_files(packages["kdegames-card-data-kf5"].root)
        for deck in sorted(set(decks) & set(EXCLUDED_DECKS)):
            stats[f"deck_excluded:{deck}: {EXCLUDED_DECKS[deck]}"] = 52
            del decks[deck]
        zooms = {deck: deck_zoom(svg, 2 * self.size) for deck, svg in decks.items()}
        jobs = [(deck, svg, card) for deck, svg in decks.items() if zooms[deck] for card in CARD_IDS]
        log(f"cards: rendering {len(jobs)} card elements from {len(decks)} decks")
        with ThreadPoolExecutor(max_workers=2) as pool:
            images = list(pool.map(lambda j: render_card(j[1], j[2], zooms[j[0]]), jobs))
        items = []
        for (deck, svg, card), img in zip(jobs, images, strict=True):
            if img is None:
                stats["card_missing_in_deck"] += 1
                continue
            items.append(Item(card, deck, to_canvas(img, self.size, margin=0.04), f"{svg.name}#{card}"))
        return items
