"""The device in one object: a bundle's engine, its head and the class store, kept in step.

:class:`Classifier` is what ``edgefs enroll``, ``edgefs classes`` and ``edgefs run``
share. Enrolling a class is::

    frames -> to_batch (manifest size, RGB) -> Engine.embed -> quality gate
           -> head update on a copy -> one store transaction (samples + head state)
           -> the copy becomes the live head

so a failed write (disk full, a kill, bad input) leaves both the store and the
live head as they were, and a reader in another thread (the camera loop) sees the
old head until the new one is complete. Only the enrolled class's rows change:
prototype sums are running sums, and the fine-tune head anchors every weight to
its value before the update (:mod:`edgefs.heads.finetune`).

Device side: no torch (DESIGN.md rule 1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads import ClassifyResult, Head, HeadSpec, build_head
from edgefs.heads.calibration import STATE_ARRAYS, LooCalibrator
from edgefs.imagefile import read_images, thumbnail
from edgefs.runtime.bundle import Bundle, read_bundle
from edgefs.runtime.engine import Engine
from edgefs.runtime.preprocess import FitMode, to_batch
from edgefs.runtime.roi import Roi
from edgefs.service.options import EngineOptions
from edgefs.service.quality import QualityConfig, gate_shots, shot_sharpness
from edgefs.service.views import check_views, view_means
from edgefs.store import ClassStore, SampleSet
from edgefs.store.validate import check_name

#: ``threshold`` values: a cosine, ``"auto"`` (leave-one-out calibration kept up to date after
#: every change, :mod:`edgefs.heads.calibration`) or ``"none"`` (never unknown).
THRESHOLD_MODES = ("auto", "none")


@dataclass
class EnrollResult:
    """What :meth:`Classifier.enroll` did.

    Attributes:
        name: the class.
        added: shots that passed the gate and were stored.
        total: the class's shots after the commit.
        rejected: one message per shot left out (unreadable, blurry, near-duplicate).
        timings_ms: ``embed``, ``views`` (embedding the shots' other views, :mod:`edgefs.service.views`),
            ``gate``, ``head``, ``commit`` and ``total`` in milliseconds.
        threshold: the unknown threshold after the change (None when rejection is off).
    """

    name: str
    added: int
    total: int
    rejected: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None

    def summary(self) -> str:
        t = self.timings_ms
        lines = [
            f"enrolled {self.name!r}: {self.added} shots added, {self.total} in total "
            f"(embed {t.get('embed', 0):.1f} ms, "
            + (f"other views {t['views']:.1f} ms, " if t.get("views", 0) >= 0.05 else "")
            + f"gate {t.get('gate', 0):.1f} ms, head {t.get('head', 0):.2f} ms, "
            f"commit {t.get('commit', 0):.1f} ms)"
        ]
        lines += [f"  left out {r}" for r in self.rejected]
        if self.threshold is not None:
            lines.append(f"  unknown threshold: cosine < {self.threshold:.3f}")
        return "\n".join(lines)


#: The store setting holding :meth:`Classifier.set_floor`'s per-class floors.
FLOORS_SETTING = "threshold_floors"


def _read_floors(settings: dict[str, Any]) -> dict[str, float]:
    """The saved floors, ignoring anything that is not ``{name: cosine}`` (a store from elsewhere)."""
    raw = settings.get(FLOORS_SETTING, {})
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and -1.0 <= v <= 1.0}


def parse_threshold(value: str | float) -> str | float:
    """``"auto"``, ``"none"`` or a cosine in ``[-1, 1]`` (CLI text or a number)."""
    if isinstance(value, str) and value.lower() in THRESHOLD_MODES:
        return value.lower()
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise EdgefsError(f"threshold must be 'auto', 'none' or a cosine between -1 and 1, got {value!r}") from None
    if not -1.0 <= t <= 1.0:
        raise EdgefsError(f"threshold {t} is not a cosine between -1 and 1")
    return t


class Classifier:
    """A bundle's engine and head with the class store behind them.

    Args:
        bundle: the opened bundle.
        engine: an engine of that bundle (:func:`edgefs.runtime.open_engine`); None for
            store maintenance (remove, rename) that embeds nothing.
        store: the class store (opened with the same bundle), or None for a head in memory only.
        head_type: a head type to use instead of the bundle's (e.g. ``"imprint"``).
        threshold: see :data:`THRESHOLD_MODES`; None keeps the store's saved choice
            (``"auto"`` for a new store). The choice is saved with the head state.
        quality: the enrollment gate's thresholds.
        fit: how frames are brought to the input size (``center_crop``, ``resize``, ``letterbox``).
        log: receives progress lines.
        shot_views: enroll each shot as the mean embedding of this many views of it
            (:mod:`edgefs.service.views`: 1, 5 or 7); None keeps the store's saved choice (1 for a new
            store). A choice given is saved in the store's settings for later enrollments.
    """

    def __init__(
        self,
        bundle: Bundle,
        engine: Engine | None,
        store: ClassStore | None = None,
        head_type: str | None = None,
        threshold: str | float | None = None,
        quality: QualityConfig | None = None,
        fit: FitMode = "center_crop",
        log: Callable[[str], None] = print,
        shot_views: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.engine = engine
        self.store = store
        self.quality = quality or QualityConfig()
        self.fit: FitMode = fit
        if threshold is None:
            saved = store.head_params() if store is not None else {}
            threshold = saved.get("threshold_mode", "auto")
        self.threshold_mode = parse_threshold(threshold)
        self.log = log
        saved_views = (store.settings() if store is not None else {}).get("shot_views", 1)
        if shot_views is not None:
            self.shot_views = check_views(shot_views)
        else:
            try:
                self.shot_views = check_views(saved_views)
            except EdgefsError as exc:
                raise EdgefsError(f"the class store's saved setting is unusable: {exc}; pass --shot-views 1, 5 or 7 "
                                  "to replace it") from None
        self._write_lock = threading.Lock()
        spec = bundle.head if head_type in (None, bundle.head.head_type) else HeadSpec(str(head_type))
        self._spec = spec
        # The stored samples the live head is derived from; a write whose transaction finds
        # other samples (another process wrote meanwhile) rebuilds the head first.
        self._basis: SampleSet | None = None
        self._per_class = False  # whether the store holds this head's rows per class (else save them all)
        self._calib: LooCalibrator | None = None  # the calibration sample, loaded when first needed
        self._calib_saved: dict[str, np.ndarray] = {}
        # Per class, the lowest cosine its held-out live frames reached (live enrollment): the
        # automatic threshold stays at or below it, so a class whose shots were nearly the same
        # view is not silenced by a threshold calibrated on them. ``threshold_note`` says when.
        self._floors: dict[str, float] = _read_floors(store.settings() if store is not None else {})
        self.threshold_note = ""
        self.head: Head = self._load_head()
        if shot_views is not None and store is not None and self.shot_views != saved_views:
            self._say_enrolled_keep_views(saved_views, self.shot_views)
            try:
                self.save_settings(shot_views=self.shot_views)
            except EdgefsError as exc:
                self.log(f"shot views {self.shot_views} used for this run but not saved ({exc})")

    @classmethod
    def open(
        cls,
        bundle_path: str | Path,
        store_path: str | Path | None = None,
        *,
        options: EngineOptions | None = None,
        quality: QualityConfig | None = None,
        fit: FitMode = "center_crop",
        create: bool = True,
        log: Callable[[str], None] = print,
        engine_defaults: Mapping[str, Any] | None = None,
    ) -> Classifier:
        """Read the bundle, open its engine and the store, and restore the head.

        ``options``: the engine and head (:class:`edgefs.service.options.EngineOptions`; None: the defaults).
        ``engine_defaults``: backend tuning that ``options.engine_options`` overrides
        (:func:`edgefs.runtime.select.open_engine`'s ``defaults``).

        Raises:
            EdgefsError: a bad bundle, a store of another bundle, an unknown backend or head type.
        """
        from edgefs.runtime.select import open_engine

        o = options or EngineOptions()
        bundle = read_bundle(bundle_path)
        store = ClassStore.open(store_path, bundle, create=create) if store_path is not None else None
        try:
            engine = open_engine(bundle, backend=o.backend, device=o.device, threads=o.threads, log=log,
                                 options=o.engine_options, defaults=engine_defaults)
            return cls(bundle, engine, store, o.head_type, o.threshold, quality, fit, log, o.shot_views)
        except BaseException:
            if store is not None:
                store.close()
            raise

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- head state --------------------------------------------------------------------
    def _new_head(self) -> Head:
        return build_head(self._spec, self.bundle.manifest.embedding_dim)

    def _load_head(self) -> Head:
        """The saved head when it is derived from exactly the stored samples and of this type, else
        one rebuilt from the stored samples (and saved, where the store is writable).

        A head saved per class is assembled from its classes' rows; its saved threshold is used as
        it is (it was calibrated at the commit that saved it), so opening reads no sample unless
        the head keeps every shot (matching, siamese, fine-tune), whose shots are the samples.
        """
        head = self._new_head()
        self._calib = None
        self._calib_saved = {}
        if self.store is None:
            return self._set_threshold(head)
        saved = self.store.load_head_state()
        self._basis = self.store.sample_set()
        self._per_class = saved.per_class
        names = saved.params.get("classes") if saved.per_class else self.store.names()
        if not names:
            return self._set_threshold(head)
        if saved.current and saved.arrays and saved.params.get("head_type") == head.head_type:
            try:
                arrays = dict(saved.arrays)
                self._calib_saved = {k: arrays.pop(k) for k in STATE_ARRAYS if k in arrays}
                if head.keeps_shots and "support" not in arrays:
                    x, labels, _ = self.store.all_embeddings()
                    arrays.update(head.shots_arrays(x, labels))
                head.load_state(arrays, saved.params)
                if head.classes == names:
                    if self.threshold_mode != saved.params.get("threshold_mode") or self.threshold_mode != "auto":
                        self._set_threshold(head)  # a fixed cosine, none, or a changed choice
                    return head
            except EdgefsError as exc:
                self.log(f"saved head state not usable ({exc}); rebuilding it from the stored samples")
        elif saved.arrays and not saved.current:
            self.log(f"the saved head state is out of date ({saved.staleness()}); "
                     "rebuilding it from the stored samples")
        head = self._set_threshold(self._rebuilt())
        self._save_rebuilt(head)
        return head

    def _rebuilt(self) -> Head:
        """A head built from every stored sample (call under the store's transaction to see a consistent set);
        the calibration sample is rebuilt from them too."""
        assert self.store is not None
        head = self._new_head()
        x, labels, names, ids, singles = self.store.all_embeddings(with_ids=True, with_singles=True)
        head.add_classes({n: x[labels == i] for i, n in enumerate(names)})
        self._calib = LooCalibrator()
        if len(x):
            self._calib.rebuild(head, x, labels, ids, singles)
        self._per_class = False  # the next save writes every class's row
        return head

    def _save_rebuilt(self, head: Head) -> None:
        """Save a head rebuilt at open unless the samples changed meanwhile; a read-only store keeps it in memory."""
        assert self.store is not None
        try:
            with self.store.transaction() as tx:
                if tx.sample_set() != self._basis:
                    return  # another writer was faster; its commit saved a head of its own
                self.save_head(tx, head, None)
        except EdgefsError as exc:
            self.log(f"the rebuilt head is used but not saved ({exc})")
            return
        self._basis = tx.committed_samples
        self._per_class = True
        self.log(f"saved the rebuilt head state ({self._basis.count if self._basis else 0} samples)")

    def save_head(self, tx: Any, head: Head, changed: Sequence[str] | None) -> None:
        """Save ``head`` in transaction ``tx``: the rows of the ``changed`` classes (None: every class's),
        the params with the threshold choice, and the global arrays with the calibration sample."""
        names = head.classes if changed is None or not self._per_class else list(changed)
        if getattr(head, "changed_rows", set()) is None:
            names = head.classes  # a full fine-tune refit changed every row
        extra = self._calib.arrays() if self._calib is not None and self.threshold_mode == "auto" else {}
        tx.save_head(head.class_rows(names), {**head.state_params(), "threshold_mode": self.threshold_mode},
                     {**head.global_arrays(), **extra})

    def _calibrator(self, head: Head) -> LooCalibrator:
        """The calibration sample for ``head``: restored from the saved state (the sample's embeddings
        read back by row id) or rebuilt from every stored sample."""
        assert self.store is not None
        if self._calib is not None:
            return self._calib
        calib = LooCalibrator()
        index = {n: i for i, n in enumerate(head.classes)}

        def fetch(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x, singles, names = self.store.samples_by_id(ids, with_singles=True)  # type: ignore[union-attr]
            return x, singles, np.array([index.get(n, -1) if n is not None else -1 for n in names], np.int32)

        restored = bool(self._calib_saved) and calib.restore(head, self._calib_saved, fetch)
        if not restored or (calib.cls < 0).any():
            calib = LooCalibrator()
            x, labels, _, ids, singles = self.store.all_embeddings(with_ids=True, with_singles=True)
            if len(x):
                calib.rebuild(head, x, labels, ids, singles)
        self._calib = calib
        return calib

    def _set_threshold(self, head: Head) -> Head:
        mode = self.threshold_mode
        if mode == "none":
            head.threshold = -1.0
        elif mode == "auto":
            head.threshold = self._floored(head, self._calibrated(head))
        else:
            head.threshold = float(mode)
        return head

    def _floored(self, head: Head, calibrated: float) -> float:
        """``calibrated``, lowered to the lowest held-out floor of the head's classes (:meth:`set_floor`)."""
        floors = {name: f for name, f in self._floors.items() if name in head.classes}
        self.threshold_note = ""
        if not floors or calibrated <= -1.0:
            return calibrated
        name = min(floors, key=floors.__getitem__)
        if floors[name] >= calibrated:
            return calibrated
        self.threshold_note = (f"lowered from {calibrated:.3f} so that the held-out frames of {name!r} are "
                               "accepted: its shots were closer to each other than the live view will be")
        return floors[name]

    def set_floor(self, name: str, cosine: float) -> bool:
        """Keep the automatic threshold at or below ``cosine`` while class ``name`` is enrolled (the
        lowest similarity its held-out live frames reached), saved with the store in one commit.
        True when that lowers the threshold now in force."""
        self._need_store("keep a threshold floor")
        if not -1.0 <= cosine <= 1.0:
            raise EdgefsError(f"a threshold floor is a cosine between -1 and 1, got {cosine}")
        with self._write_lock:
            if name not in self.head.classes:
                return False
            before = self.threshold
            floors = {k: v for k, v in self._floors.items() if k in self.head.classes}
            floors[name] = round(float(cosine), 6)
            self._commit_floors(floors, lambda head: None, lambda tx: None, lambda calib, head, tx: None, [])
        return before is not None and self.threshold is not None and self.threshold < before

    def _calibrated(self, head: Head) -> float:
        """Leave-one-out threshold over the stored shots (:mod:`edgefs.heads.calibration`); -1 (reject
        nothing) until that is possible."""
        if self.store is None or not head.classes:
            return -1.0
        try:
            # The head's own view of the shots: centred when its spec has a center.
            return self._calibrator(head).threshold(head)
        except EdgefsError:  # one class with one shot: nothing to calibrate from yet
            return -1.0

    @property
    def classes(self) -> list[str]:
        return list(self.head.classes)

    @property
    def threshold(self) -> float | None:
        return None if self.head.threshold <= -1.0 else float(self.head.threshold)

    # ---- embedding -------------------------------------------------------------------------
    def prepare(self, frames: Sequence[np.ndarray] | np.ndarray, input_order: str = "RGB") -> np.ndarray:
        """Frames of any size as the engine's uint8 ``(B, H, W, 3)`` RGB batch."""
        return to_batch(frames, self.bundle.manifest, mode=self.fit, input_order=input_order)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(B, D)`` embeddings of a prepared batch, checked for NaN/inf."""
        if self.engine is None:
            raise EdgefsError("this classifier was opened without an engine; open it with Classifier.open()")
        emb = self.engine.embed(batch)
        if not np.isfinite(emb).all():
            bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
            raise EdgefsError(f"the engine returned NaN/inf embeddings for images {bad.tolist()}; "
                              "check the bundle (precision overflow?) and the images")
        return emb

    # ---- enrollment ------------------------------------------------------------------------
    def enroll(
        self,
        name: str,
        frames: Sequence[np.ndarray] | np.ndarray,
        *,
        names: Sequence[str] | None = None,
        append: bool = False,
        source: str = "",
        input_order: str = "RGB",
        problems: Sequence[str] = (),
    ) -> EnrollResult:
        """Enroll ``name`` (or, with ``append``, add shots to it) from camera frames or images.

        Args:
            name: the class name.
            frames: uint8 images of any size (``input_order`` channels).
            names: a label per frame for messages (file names), or None.
            append: add to an enrolled class instead of creating one.
            source: where the shots came from, e.g. ``camera:0`` or a folder.
            input_order: ``"RGB"`` (files read by :func:`read_images`) or ``"BGR"`` (OpenCV).
            problems: messages about inputs already left out (unreadable files), reported back.

        Returns:
            :class:`EnrollResult`.

        Raises:
            EdgefsError: no shots, or none passed the gate (the reasons are in the message),
                a duplicate name without ``append``, an unknown class with ``append``;
                nothing is written and the live head is unchanged.
        """
        t0 = time.perf_counter()
        self._check_target(name, append)
        if frames is None or len(frames) == 0:
            raise EdgefsError(f"no images to enroll {name!r} from" + (f": {'; '.join(problems)}" if problems else ""))
        sharp = [self.shot_sharpness(f, input_order) for f in frames]
        batch = self.prepare(frames, input_order)
        emb = self.embed(batch)
        return self.enroll_embedded(name, batch, emb, names=names, append=append, source=source,
                                    problems=problems, started=t0, sharpness=sharp)

    def shot_sharpness(self, frame: np.ndarray, input_order: str = "RGB") -> float:
        """The blur gate's measure of one frame as read, at the smaller of its own resolution and
        the engine's input (:func:`edgefs.service.quality.shot_sharpness`)."""
        return shot_sharpness(frame, self.bundle.manifest.input_size, self.fit, input_order)

    def _check_target(self, name: str, append: bool) -> None:
        check_name(name)  # empty, the reject label, control characters: refused before any work
        if name in self.head.classes and not append:
            raise EdgefsError(f"class {name!r} is already enrolled; pass --append to add shots to it, "
                              "or remove it first with 'edgefs classes remove'")
        if append and name not in self.head.classes:
            raise EdgefsError(f"class {name!r} is not enrolled, so there is nothing to --append to; "
                              f"enrolled: {', '.join(self.head.classes) or 'none'}")

    def enroll_embedded(
        self,
        name: str,
        batch: np.ndarray,
        embeddings: np.ndarray,
        *,
        names: Sequence[str] | None = None,
        append: bool = False,
        source: str = "",
        problems: Sequence[str] = (),
        started: float | None = None,
        sharpness: Sequence[float] | None = None,
        embed: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> EnrollResult:
        """:meth:`enroll` for shots already prepared and embedded (the camera loop has both); the
        arguments not listed here are :meth:`enroll`'s.

        Args:
            batch: uint8 ``(K, H, W, 3)`` engine inputs (for the gate and the thumbnails).
            embeddings: float32 ``(K, D)`` their embeddings.
            started: ``time.perf_counter()`` when the shots' processing began (for timings).
            sharpness: per shot, :meth:`shot_sharpness` of the frame as read; None: measured
                on ``batch`` (right when the frames were not enlarged to the input size).
            embed: what embeds the shots' other views when :attr:`shot_views` is above 1 (a
                uint8 batch of engine inputs to float32 embeddings); None: :meth:`embed`. The
                camera loop passes one that runs on its own thread, the engine's only user.
        """
        t0 = time.perf_counter() if started is None else started
        t1 = time.perf_counter()
        self._check_target(name, append)
        if len(batch) != len(embeddings) or not len(batch):
            raise EdgefsError(f"enroll_embedded() needs as many embeddings as images, got {len(embeddings)} "
                              f"and {len(batch)}")
        # The gate judges the shots as captured (single views): means of views are closer to each
        # other than the shots are, and would pass for near-duplicates.
        singles = np.asarray(embeddings, np.float32)
        existing = None
        if append and self.store is not None:
            existing = self.store.singles(name)
            existing = self.store.embeddings(name) if existing is None else existing
        gate = gate_shots(batch, singles, self.quality, existing, list(names) if names else None,
                          None if sharpness is None else np.asarray(sharpness, np.float64))
        rejected = [*problems, *gate.reasons]
        if not gate.keep.any():
            raise EdgefsError(f"no shot of {name!r} passed the quality gate; nothing was enrolled:\n  "
                              + "\n  ".join(rejected))
        thumbs = [thumbnail(im) for im in batch[gate.keep]]
        t_gate = time.perf_counter()
        n_views = self.shot_views  # read once: the web app may change it meanwhile
        kept_single = singles[gate.keep] if n_views > 1 else None
        kept_emb = view_means(batch[gate.keep], singles[gate.keep], n_views, embed or self.embed)
        t2 = time.perf_counter()
        marks: list[float] = []

        def change(head: Head) -> None:
            (head.append if append else head.add_class)(name, kept_emb)
            marks.append(time.perf_counter())

        def calibrate(calib: LooCalibrator, head: Head, tx: Any) -> None:
            idx = head.index(name)
            (calib.appended if append else calib.added)(head, idx, kept_emb, tx.added_ids(name), kept_single)

        with self._write_lock:
            self._check_target(name, append)  # another thread may have enrolled it meanwhile
            head = self._commit(change,
                                lambda tx: (tx.append if append else tx.add_class)(name, kept_emb, thumbs, source,
                                                                                   kept_single),
                                calibrate, [name])
        t4 = time.perf_counter()
        t3 = marks[-1] if marks else t2
        timings = {"embed": (t1 - t0) * 1e3, "gate": (t_gate - t1) * 1e3, "views": (t2 - t_gate) * 1e3,
                   "head": (t3 - t2) * 1e3, "commit": (t4 - t3) * 1e3, "total": (t4 - t0) * 1e3}
        return EnrollResult(name, int(gate.keep.sum()), head.shots(name), rejected, timings, self.threshold)

    def _commit(self, change: Callable[[Head], object], write: Callable[[Any], object],
                calibrate: Callable[[LooCalibrator, Head, Any], object], changed: Sequence[str]) -> Head:
        """Apply ``change`` to a copy of the head and ``write`` to the store in one transaction; swap the copy in.

        The copy shares the live head's row buffers (:meth:`edgefs.heads.Head.fork`), so it costs
        O(classes), not O(classes x D). Inside the transaction (SQLite's write lock, ``BEGIN
        IMMEDIATE``) the stored samples are compared with the ones the live head was derived from
        (O(1): the store's running digest). If another process wrote meanwhile, the head is
        rebuilt from the samples as they are now before ``change`` is applied, so no writer's
        update is lost from the saved head. Then ``calibrate`` updates the calibration sample and
        only the ``changed`` classes' rows are saved. Call with ``_write_lock`` held.
        """
        if self.store is None:
            head = self.head.fork()
            change(head)
            self._set_threshold(head)
            self.head = head
            return head
        try:
            with self.store.transaction() as tx:
                now = tx.sample_set()
                if now != self._basis:
                    before = self._basis.count if self._basis else 0
                    self.log(f"the class store changed since it was read ({before} samples then, {now.count} now: "
                             "another process wrote to it); rebuilding the head from the stored samples")
                    head = self._rebuilt()
                else:
                    head = self.head.fork()
                auto = self.threshold_mode == "auto"
                calib = self._calibrator(head) if auto else None  # before the change: it indexes its classes
                change(head)
                write(tx)
                if calib is not None:
                    calibrate(calib, head, tx)
                self._set_threshold(head)
                self.save_head(tx, head, changed)
        except BaseException:
            self._calib = None  # it may hold the failed change: restored from the last commit's state
            raise
        if self._calib is not None and self.threshold_mode == "auto":
            self._calib_saved = self._calib.arrays()  # what this commit saved, for a restore after a failure
        self._basis = tx.committed_samples
        self._per_class = True
        self.head = head
        return head

    def add_embedded_classes(self, classes: dict[str, tuple[np.ndarray, Sequence[bytes | None] | None]],
                             source: str = "") -> None:
        """Enroll many new classes from shots already embedded and vetted, in one commit (bulk loading).

        The same path as :meth:`enroll_embedded` (head update on a copy, calibration, the classes'
        head rows and samples in one transaction) without the quality gate, as a class pack import.

        Args:
            classes: name -> (float32 ``(K, D)`` embeddings, K JPEG thumbnails or None).
            source: where the shots came from.

        Raises:
            EdgefsError: a name already enrolled or given twice, bad embeddings; nothing is written.
        """
        for name in classes:
            self._check_target(name, False)
        embedded = {name: np.asarray(emb, np.float32) for name, (emb, _) in classes.items()}

        def write(tx: Any) -> None:
            for name, (_, thumbs) in classes.items():
                tx.add_class(name, embedded[name], thumbs, source)

        def calibrate(calib: LooCalibrator, head: Head, tx: Any) -> None:
            first = len(head.classes) - len(embedded)
            for offset, (name, shots) in enumerate(embedded.items()):
                calib.added(head, first + offset, shots, tx.added_ids(name))

        with self._write_lock:
            self._commit(lambda head: head.add_classes(embedded), write, calibrate, list(embedded))

    def remove(self, *names: str) -> dict[str, int]:
        """Forget classes: their samples and head rows, in one commit (all or none).

        Returns:
            name -> number of samples removed. Other classes are untouched.
        """
        shots: dict[str, int] = {}
        gone: list[tuple[int, int]] = []

        def change(head: Head) -> None:
            shots.clear()
            gone.clear()
            for name in names:
                shots[name] = head.shots(name)  # EdgefsError naming the enrolled classes if absent
                gone.append((head.index(name), shots[name]))
                head.remove(name)

        def calibrate(calib: LooCalibrator, head: Head, tx: Any) -> None:
            for idx, count in gone:
                calib.removed(head, idx, count)

        with self._write_lock:
            self._commit_floors(self._floors_after(dict.fromkeys(names)), change,
                                lambda tx: [tx.remove(n) for n in names], calibrate, [])
        return shots

    def remove_on_full_disk(self, names: Sequence[str], cause: Exception | None = None) -> Any:
        """:meth:`remove` when the disk is full (it raised :class:`edgefs.store.StoreFull`): the
        classes are removed with the space reserve kept beside the store
        (:func:`edgefs.store.remove_on_full_disk`), and the live head is rebuilt in memory from the
        remaining samples (nothing more is written; the saved head state, marked out of date, is
        rewritten by the next commit or open). Returns the store's ``Removal`` (its ``summary``)."""
        from edgefs.store import StoreFull, remove_on_full_disk

        store = self._need_store("remove classes")
        with self._write_lock:
            removal = remove_on_full_disk(store.path, self.bundle, list(names),
                                          cause=cause if isinstance(cause, StoreFull) else None)
            self._floors = self._floors_after(dict.fromkeys(names))  # saved with the next commit's settings
            self.head = self._set_threshold(self._rebuilt())
            self._basis = store.sample_set()
        return removal

    def rename(self, old: str, new: str) -> None:
        """Rename a class in the head and the store together (its threshold floor follows it)."""
        check_name(new)
        with self._write_lock:
            self._commit_floors(self._floors_after({old: new}), lambda head: head.rename(old, new),
                                lambda tx: tx.rename(old, new), lambda calib, head, tx: None, [])

    def _floors_after(self, moves: dict[str, str | None]) -> dict[str, float]:
        """The threshold floors once classes are renamed (``old -> new``) or removed (``old -> None``)."""
        floors = dict(self._floors)
        for old, new in moves.items():
            value = floors.pop(old, None)
            if value is not None and new is not None:
                floors[new] = value
        return floors

    def _commit_floors(self, floors: dict[str, float], change: Callable[[Head], object],
                       write: Callable[[Any], object], calibrate: Callable[[LooCalibrator, Head, Any], object],
                       changed: Sequence[str]) -> Head:
        """:meth:`_commit` with new threshold floors: in force for the commit's threshold, saved in its
        transaction when they differ, and put back if it fails."""
        previous, self._floors = self._floors, floors

        def write_both(tx: Any) -> None:
            write(tx)
            if floors != previous and self.store is not None:
                tx.save_settings({**self.store.settings(), FLOORS_SETTING: floors})

        try:
            return self._commit(change, write_both, calibrate, changed)
        except BaseException:
            self._floors = previous
            raise

    def remove_shots(self, name: str, sample_ids: Sequence[int]) -> int:
        """Remove single shots of ``name`` (row ids from :meth:`ClassStore.sample_rows`); the head is
        rebuilt from the remaining samples in the same commit. Returns how many were removed."""
        store = self._need_store("remove single shots")
        removed = [0]

        def write(tx: Any) -> None:
            removed[0] = tx.remove_samples(name, sample_ids)

        with self._write_lock:
            self._commit_rebuilt(store, write)
        return removed[0]

    def import_pack(self, path: str | Path, on_conflict: str = "error") -> Any:
        """Import a class pack (untrusted: read and checked whole before anything is written) and make
        its classes live: samples and the rebuilt head in one commit. Returns the
        :class:`edgefs.store.ImportResult`."""
        from edgefs.store.packs import apply_pack, read_pack

        store = self._need_store("import a class pack")
        pack = read_pack(path, store.fingerprint, store.dim)
        result: list[Any] = []
        with self._write_lock:
            self._commit_rebuilt(store, lambda tx: result.append(apply_pack(store, tx, pack, on_conflict)))
        return result[0]

    def set_threshold(self, value: str | float) -> float | None:
        """Change the unknown threshold (``auto``, ``none`` or a cosine); saved with the head state and
        live from the next frame. Returns the threshold now in force (None: rejection off)."""
        mode = parse_threshold(value)
        with self._write_lock:
            before = self.threshold_mode
            self.threshold_mode = mode
            try:
                self._commit(lambda head: None, lambda tx: None, lambda calib, head, tx: None, [])
            except BaseException:
                self.threshold_mode = before
                raise
        return self.threshold

    def set_shot_views(self, views: int) -> int:
        """Enroll from now on with ``views`` views per shot (:mod:`edgefs.service.views`), saved with the store.
        Classes already enrolled keep theirs. Returns the value in force."""
        views = check_views(views)
        if self.store is not None:
            self.save_settings(shot_views=views)
        if views != self.shot_views:
            self._say_enrolled_keep_views(self.shot_views, views)
        self.shot_views = views
        return views

    def _say_enrolled_keep_views(self, before: object, after: int) -> None:
        """Log that the classes already enrolled keep the prototypes of their views (not re-embedded:
        their stored thumbnails are too small to enroll from again without losing accuracy)."""
        names = self.classes
        if not names:
            return
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        self.log(f"shot views {before} -> {after} for classes enrolled from now on; the {len(names)} "
                 f"already enrolled ({shown}) keep the prototypes they were enrolled with: remove them and "
                 f"enroll them again from the camera to use {after}")

    def settings(self) -> dict[str, Any]:
        """Device settings saved with the store (e.g. ``smooth``); {} without a store."""
        return self.store.settings() if self.store is not None else {}

    def save_settings(self, **values: Any) -> dict[str, Any]:
        """Merge ``values`` into the saved settings, durably; returns them all."""
        store = self._need_store("save settings")
        with self._write_lock, store.transaction() as tx:
            merged = {**store.settings(), **values}
            tx.save_settings(merged)
        return merged

    def _need_store(self, doing: str) -> ClassStore:
        if self.store is None:
            raise EdgefsError(f"cannot {doing} without a class store; open the classifier with one")
        return self.store

    def _commit_rebuilt(self, store: ClassStore, write: Callable[[Any], object]) -> Head:
        """``write`` to the store, then rebuild the head from the samples as written, in one transaction.

        For changes no head can apply incrementally (a single shot removed, a pack imported).
        Call with ``_write_lock`` held.
        """
        try:
            with store.transaction() as tx:
                write(tx)
                head = self._set_threshold(self._rebuilt())  # reads see this transaction's writes
                self.save_head(tx, head, None)
        except BaseException:
            self._calib = None  # it may hold the failed change: restored from the last commit's state
            raise
        if self._calib is not None and self.threshold_mode == "auto":
            self._calib_saved = self._calib.arrays()
        self._basis = tx.committed_samples
        self._per_class = True
        self.head = head
        return head

    # ---- classification --------------------------------------------------------------------
    def classify(self, embeddings: np.ndarray, k: int = 3) -> ClassifyResult:
        """Rank the enrolled classes for float ``(Q, D)`` embeddings."""
        return self.head.classify(embeddings, k)

    def classify_frames(self, frames: Sequence[np.ndarray] | np.ndarray, k: int = 3,
                        input_order: str = "RGB") -> ClassifyResult:
        """Prepare, embed and classify frames in one call."""
        return self.classify(self.embed(self.prepare(frames, input_order)), k)


def enroll_files(
    bundle: str | Path,
    store: str | Path,
    label: str,
    images: Sequence[str | Path],
    *,
    append: bool = False,
    options: EngineOptions | None = None,
    quality: QualityConfig | None = None,
    fit: FitMode = "center_crop",
    roi: Roi | None = None,
    log: Callable[[str], None] = print,
) -> EnrollResult:
    """``edgefs enroll``: read image files, enroll them as ``label`` into the store, one commit.

    Unreadable files are left out with a message; if no shot is left, nothing is written.
    ``roi`` crops each image first, as the camera loop crops each frame it classifies;
    ``options`` as :meth:`Classifier.open` takes them.
    """
    frames, names, problems = read_images(images)
    if roi is not None and not roi.is_full:
        frames = [roi.crop(f) for f in frames]
    for p in problems:
        log(f"warning: {p}")
    with Classifier.open(bundle, store, options=options, quality=quality, fit=fit, log=log) as clf:
        source = ",".join(str(p) for p in images) if len(images) <= 3 else f"{images[0]} (+{len(images) - 1} more)"
        return clf.enroll(label, frames, names=names, append=append, source=source, problems=problems)
