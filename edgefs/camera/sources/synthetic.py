"""The synthetic camera: classes of any ImageFolder held up in front of a camera, with the true label of each frame.

``synthetic:DIR?classes=a,b&fps=30&seed=0&size=320x240&hold=45&difficulty=0.5&still=0``

The stream is a sequence of *presentations* of ``hold`` frames: like a person
holding an object up to a camera for a while, each shows one image of one class,
printed on a card, composited onto a textured background and moving smoothly:
position, scale, rotation and perspective tilt follow slow sinusoids with a
little hand jitter, the camera pans, the light changes, the focus breathes,
moving cards blur, and the sensor adds noise. Classes come in shuffled rounds
(every class once per round), so any stretch of ``hold * n_classes`` frames is
balanced. Everything is a function of ``(seed, frame index)``: two sources with
the same options give the same frames, and :meth:`SyntheticSource.render` can
draw any frame out of order.

Data layout: ``DIR/<class>/<image>`` (a plain class-folder layout) or the glyph
benchmark's ``DIR/<split>/<script>/<char>/<n>.png``; class names are the folder
paths relative to the split (``greek/U+03B1``), as the data readers name them.
A folder with ``train``/``val``/``test`` sub-folders is read at ``split=``
(default ``test``: the held-out classes).

Options (in the URI query or as keyword arguments):

* which classes: ``classes=a,b,c`` (full names, or the last part when unique:
  ``U+03B1``), ``n_classes=5`` (a seeded choice of 5), ``split=test``,
  ``instances=0:5`` (a slice of each class's sorted images: enroll from some
  instances and stream others);
* the stream: ``size=320x240``, ``fps=30``, ``seed=0``, ``hold=45`` frames per
  presentation, ``gap=0`` frames of empty background after each (label None),
  ``frames=N`` (end after N frames), ``live`` (default: live unless ``frames`` is
  given; live paces to ``fps`` in real time, not live renders as fast as read);
* how hard: ``difficulty=0.5`` in [0, 1] sets every knob below; each can be set
  on its own: ``motion`` (amplitude, fraction of the frame), ``scale`` (relative
  size change), ``rotate`` (degrees), ``perspective`` (tilt), ``blur`` (sigma in
  pixels at 240 lines), ``lighting`` (relative gain change), ``noise`` (sensor
  noise sigma, grey levels), ``clutter`` (background texture, 0-1);
  ``object_size=0.75`` (card side / the frame's shorter side);
* a still scene: ``still=1`` (default 0) holds each presentation's card, camera
  and light where the moving stream would show them at some instant (see
  :attr:`SyntheticConfig.still`): camera stills, the same scenes without motion
  or motion blur; only the sensor noise changes from frame to frame.

How long each object is shown: ``hold`` frames (default 45, 1.5 s at 30 FPS), then
the next class's card. A live enrollment spans longer than that (a countdown, then
shots spaced apart), so a user enrolling from this camera could not keep one object
in view as they would hold up a real one. :meth:`SyntheticSource.present` plays that
user: from the next presentation on it shows only the named class, each
presentation a new pose, light and background, until released. The camera loop
calls it when an enrollment from this source names one of its classes, and
:meth:`SyntheticSource.scene` says what is shown (the web app's status reports it).

Rendering costs well under 2 ms per 320x240 frame on one core: backgrounds,
lighting fields and noise are drawn once at open, each frame is one crop, one
perspective warp of a small card into its bounding box, one multiply, one or two
blurs and a saturating add/subtract of noise.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np

from edgefs.camera.sources import Source, SourceError, SourceOptions, register_source
from edgefs.imagefile import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")

# The knobs at difficulty 1; difficulty d scales them by d (clutter: 0.3 + 0.7 d).
_KNOBS_AT_1 = {"motion": 0.12, "scale": 0.3, "rotate": 20.0, "perspective": 0.3, "blur": 1.8,
               "lighting": 0.4, "noise": 10.0}
_BACKGROUNDS = 8
_LIGHTS = 8
_NOISE_PAD = 64


@dataclass(frozen=True)
class SyntheticConfig:
    """How the synthetic camera renders; None knobs follow ``difficulty`` (module docstring).

    Attributes:
        size: ``(width, height)`` of the frames.
        fps: frame rate: the pace of a live stream, and the clock of the motion.
        seed: everything random follows from it and the frame index.
        hold: frames per presentation of one image of one class.
        gap: frames of empty background at the end of each presentation (label None).
        difficulty: 0 (a still, centred, clean card) to 1 (hard); sets the knobs left None.
        object_size: card side as a fraction of the frame's shorter side.
        motion, scale, rotate, perspective, blur, lighting, noise, clutter: the knobs.
        still: a still scene. Every frame of a presentation shows it as the moving
            stream shows it at the presentation's first instant: card pose, hand
            jitter, camera pan, light gain and focus are frozen there, and there is
            no motion blur; the sensor noise still changes per frame. Each of those
            waves starts at a uniformly random phase, so its value at that instant is
            distributed as the moving stream's value at any frame: the stills sample
            pose, light (gain and light field) and focus as the stream does, rather
            than at a neutral setting. A reference on stills therefore differs from
            the stream only by what motion costs (movement, motion blur), not by an
            easier light. The knobs keep their meaning (``rotate`` still sets the
            spread of the card's angle across presentations). Other options and the
            stream's labels, classes and presentations are the same as with
            ``still=False``.
    """

    size: tuple[int, int] = (320, 240)
    fps: float = 30.0
    seed: int = 0
    hold: int = 45
    gap: int = 0
    difficulty: float = 0.5
    object_size: float = 0.75
    motion: float | None = None
    scale: float | None = None
    rotate: float | None = None
    perspective: float | None = None
    blur: float | None = None
    lighting: float | None = None
    noise: float | None = None
    clutter: float | None = None
    still: bool = False

    def resolved(self) -> SyntheticConfig:
        """A copy with every None knob set from ``difficulty``."""
        d = self.difficulty
        values = {k: (v * d if getattr(self, k) is None else getattr(self, k)) for k, v in _KNOBS_AT_1.items()}
        values["clutter"] = 0.3 + 0.7 * d if self.clutter is None else self.clutter
        return replace(self, **values)

    def check(self) -> None:
        """Raise :class:`SourceError` for values out of range."""
        w, h = self.size
        problems = []
        if w < 16 or h < 16:
            problems.append(f"size {w}x{h} is below 16x16")
        if not self.fps > 0:
            problems.append(f"fps must be positive, got {self.fps}")
        if self.hold < 1 or not 0 <= self.gap < self.hold:
            problems.append(f"need hold >= 1 and 0 <= gap < hold, got hold={self.hold} gap={self.gap}")
        if not 0 <= self.difficulty <= 1:
            problems.append(f"difficulty must be in [0, 1], got {self.difficulty}")
        if not 0.05 <= self.object_size <= 1.5:
            problems.append(f"object_size must be in [0.05, 1.5], got {self.object_size}")
        if not isinstance(self.still, bool):
            problems.append(f"still must be True or False, got {self.still!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name in _KNOBS_AT_1 or f.name == "clutter") and value is not None and value < 0:
                problems.append(f"{f.name} must be >= 0, got {value}")
        if problems:
            raise SourceError("synthetic camera: " + "; ".join(problems), retryable=False)


def find_classes(root: Path, split: str | None = None) -> tuple[Path, dict[str, list[Path]]]:
    """The classes of an ImageFolder: every folder that directly holds images is one.

    Args:
        root: ``root/<class>/<image>``, ``root/<group>/<class>/<image>`` or a split
            layout ``root/{train,val,test}/...``.
        split: which split of a split layout (default ``test``); ``"."`` reads ``root``
            whole even when it has split folders.

    Returns:
        ``(base, {class name: sorted image paths})``: names are posix paths relative
        to ``base`` (the split folder, or ``root``), sorted.

    Raises:
        SourceError: a missing folder or split, or no images.
    """
    if not root.is_dir():
        raise SourceError(f"synthetic camera: no such folder {root}; give an image folder with one sub-folder "
                          "per class (render glyphs with 'edgefs data glyphs --out DIR')", retryable=False)
    base = root
    if split != ".":
        has_splits = any((root / s).is_dir() for s in SPLITS)
        if split is not None or has_splits:
            name = split or "test"
            base = root / name
            if not base.is_dir():
                present = [s for s in SPLITS if (root / s).is_dir()] or ["none"]
                raise SourceError(f"synthetic camera: {root} has no split {name!r} (present: {', '.join(present)})",
                                  retryable=False)
    classes: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images = sorted(f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith("."))
        here = Path(folder)
        if images and here != base:
            classes[here.relative_to(base).as_posix()] = [here / f for f in images]
    if not classes:
        raise SourceError(f"synthetic camera: {base} has no class folders with images; expected "
                          f"{base}/<class>/<image>.png", retryable=False)
    return base, dict(sorted(classes.items()))


def _match_classes(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    by_last: dict[str, list[str]] = {}
    for name in available:
        by_last.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    chosen: list[str] = []
    for want in wanted:
        if want in available:
            name = want
        elif len(by_last.get(want, [])) == 1:
            name = by_last[want][0]
        else:
            hits = [n for n in available if n.endswith("/" + want)]
            if len(hits) != 1:
                why = "is ambiguous: " + ", ".join(hits[:5]) if len(hits) > 1 else "is not a class here"
                shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
                raise SourceError(f"synthetic camera: class {want!r} {why}; {len(available)} classes: {shown}",
                                  retryable=False)
            name = hits[0]
        if name not in chosen:
            chosen.append(name)
    return chosen


def _parse_slice(text: str | None) -> slice:
    if not text:
        return slice(None)
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return slice(int(parts[0]), int(parts[0]) + 1)
        if len(parts) == 2:
            return slice(int(parts[0]) if parts[0] else None, int(parts[1]) if parts[1] else None)
    except ValueError:
        pass
    raise SourceError(f"synthetic camera: instances={text!r} must be a slice such as 0:5, 5: or 3",
                      retryable=False)


@dataclass
class _Presentation:
    """What one presentation (``hold`` frames) shows, and how it moves."""

    label: str
    card: np.ndarray  # uint8 (h, w, 3) RGB
    background: int
    light: int
    # each motion term: (base, amplitude, angular frequency in rad/frame, phase)
    x: tuple[float, ...]
    y: tuple[float, ...]
    size: tuple[float, ...]
    angle: tuple[float, ...]
    tilt_x: tuple[float, ...]
    tilt_y: tuple[float, ...]
    gain: tuple[float, ...]
    focus: tuple[float, ...]
    pan_x: tuple[float, ...]
    pan_y: tuple[float, ...]
    jitter: tuple[float, float, float, float]  # amplitude, angular frequency, phase x, phase y


def _wave(term: tuple[float, ...], t: float) -> float:
    base, amplitude, omega, phase = term
    return base + amplitude * math.sin(omega * t + phase)


def _wave_speed(term: tuple[float, ...], t: float) -> float:
    _, amplitude, omega, phase = term
    return amplitude * omega * math.cos(omega * t + phase)


@register_source
class SyntheticSource(Source):
    """Renders classes of an ImageFolder as a camera stream with ground-truth labels (module docstring).

    Args:
        root: the ImageFolder (or glyph benchmark) folder.
        config: :class:`SyntheticConfig`.
        classes: class names to show (full or unique last parts); None: all (or ``n_classes``).
        n_classes: show a seeded choice of this many classes.
        split: which split of a split layout (default ``test``).
        instances: the slice of each class's sorted images to use, e.g. ``"0:5"``.
        frames: end after this many frames (None: never).
        live: pace to ``config.fps`` in real time (default: ``frames is None``).
        name, uri: the source's name and URI.

    Attributes:
        classes: the class names in the stream, sorted.
        config: the resolved configuration (knobs set).
    """

    schemes = ("synthetic",)
    uri_forms = ("synthetic:DIR?classes=a,b|n_classes=5&fps=30&seed=0&size=320x240&hold=45&difficulty=0.5"
                 "&still=0&frames=N   a rendered camera with true labels (still=1: camera stills, no motion)",)

    def __init__(self, root: str | Path, config: SyntheticConfig | None = None, *,
                 classes: Sequence[str] | None = None, n_classes: int | None = None, split: str | None = None,
                 instances: str | None = None, frames: int | None = None, live: bool | None = None,
                 name: str | None = None, uri: str | None = None) -> None:
        cfg = config or SyntheticConfig()
        cfg.check()
        self.config = cfg.resolved()
        is_live = frames is None if live is None else live
        text = uri or f"synthetic:{root}"
        super().__init__(name or text, live=is_live, fps=cfg.fps, pace_fps=cfg.fps if is_live else None, uri=text)
        self.root = Path(root)
        self.frames = frames
        self._base, available = find_classes(self.root, split)
        names = list(available)
        if classes:
            names = sorted(_match_classes(classes, names))
        if n_classes is not None:
            if not 1 <= n_classes <= len(names):
                raise SourceError(f"synthetic camera: n_classes={n_classes} but {len(names)} classes are available",
                                  retryable=False)
            pick = np.random.default_rng([cfg.seed, 5]).choice(len(names), n_classes, replace=False)
            names = sorted(names[i] for i in pick)
        cut = _parse_slice(instances)
        self._files = {n: available[n][cut] for n in names}
        empty = [n for n, f in self._files.items() if not f]
        if empty:
            raise SourceError(f"synthetic camera: instances={instances} leaves no image for class(es) "
                              f"{', '.join(empty[:5])}", retryable=False)
        self.classes: list[str] = names
        self._next_index = 0
        self._images: dict[tuple[str, int], np.ndarray | None] = {}
        self._cycle: tuple[int, np.ndarray] | None = None
        self._presentation: tuple[int, _Presentation] | None = None
        self._backgrounds: list[np.ndarray] = []
        self._lights: list[np.ndarray] = []
        self._noise: tuple[np.ndarray, np.ndarray] | None = None
        self._margin = 0
        # (class, first presentation number) while a simulated user holds one class up (present()).
        self._held: tuple[str, int] | None = None

    @classmethod
    def from_uri(cls, target: str, options: SourceOptions, *, uri: str, name: str | None) -> SyntheticSource:
        if not target:
            raise SourceError("synthetic camera: give an image folder, e.g. synthetic:data/glyphs28?n_classes=5",
                              retryable=False)
        defaults = SyntheticConfig()
        knobs = {k: options.number(k, minimum=0.0) for k in (*_KNOBS_AT_1, "clutter")}
        config = SyntheticConfig(
            size=options.size("size", defaults.size) or defaults.size,
            fps=options.number("fps", defaults.fps, minimum=0.01) or defaults.fps,
            seed=options.integer("seed", defaults.seed) or 0,
            hold=options.integer("hold", defaults.hold, minimum=1) or defaults.hold,
            gap=options.integer("gap", 0, minimum=0) or 0,
            difficulty=options.number("difficulty", defaults.difficulty, 0.0, 1.0) or 0.0,
            object_size=options.number("object_size", defaults.object_size, 0.05, 1.5) or defaults.object_size,
            still=bool(options.flag("still", defaults.still)),
            **knobs,
        )
        return cls(Path(target).expanduser(), config, classes=options.names("classes"),
                   n_classes=options.integer("n_classes", minimum=1), split=options.text("split"),
                   instances=options.text("instances"), frames=options.integer("frames", minimum=0),
                   live=options.flag("live"), name=name, uri=uri)

    # ---- the Source hooks ----------------------------------------------------------------
    def _open(self) -> None:
        if not self._backgrounds:
            self._prepare()

    def _next(self) -> tuple[np.ndarray, str | None] | None:
        if self.frames is not None and self._next_index >= self.frames:
            return None
        index = self._next_index
        image, label = self.render_with_label(index)
        self._next_index += 1
        return image, label

    def _close(self) -> None:
        pass

    # ---- a simulated user ------------------------------------------------------------------
    def present(self, label: str | None) -> bool:
        """Show only ``label`` from the next presentation on, as a user holds one object up to
        enroll it (each presentation a new pose, light and background); ``None`` releases it, and
        the shuffled rounds go on from the next presentation. Thread-safe (one attribute swap).
        False (nothing changes) when ``label`` is not one of :attr:`classes`."""
        if label is None:
            self._held = None
            return True
        if label not in self._files:
            return False
        self._held = (label, self._next_index // self.config.hold + 1)
        return True

    def scene(self) -> dict[str, object]:
        """What the camera shows now: the class (``None`` in a gap), the seconds until the next
        object, the seconds each object is held, and the class a simulated user holds up (if any)."""
        cfg = self.config
        index = max(self._next_index - 1, 0)
        held = self._held
        left = cfg.hold - index % cfg.hold
        return {"showing": self.label_at(index), "next_in_s": round(left / cfg.fps, 2),
                "hold_s": round(cfg.hold / cfg.fps, 2), "held": held[0] if held else None}

    # ---- rendering -------------------------------------------------------------------------
    def label_at(self, index: int) -> str | None:
        """The ground-truth label of frame ``index`` (None in a gap), without rendering it."""
        cfg = self.config
        if index % cfg.hold >= cfg.hold - cfg.gap:
            return None
        return self._label_of(index // cfg.hold)

    def _label_of(self, number: int) -> str:
        """The class of presentation ``number``: the held one while a user holds one up."""
        held = self._held
        if held is not None and number >= held[1]:
            return held[0]
        return self.classes[self._class_of(number)]

    def render(self, index: int) -> np.ndarray:
        """Frame ``index`` as uint8 ``(H, W, 3)`` RGB (any order of calls gives the same frames)."""
        return self.render_with_label(index)[0]

    def render_with_label(self, index: int) -> tuple[np.ndarray, str | None]:
        """``(frame index as uint8 (H, W, 3) RGB, its label)``."""
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        if not self._backgrounds:
            self._prepare()
        cfg = self.config
        w, h = cfg.size
        number, t = divmod(index, cfg.hold)
        p = self._get_presentation(number)
        # A still scene is read at the presentation's first instant (SyntheticConfig.still).
        clock = 0 if cfg.still else t
        m = self._margin
        ox = min(2 * m, max(0, round(m + _wave(p.pan_x, clock))))
        oy = min(2 * m, max(0, round(m + _wave(p.pan_y, clock))))
        frame = self._backgrounds[p.background][oy:oy + h, ox:ox + w].copy()
        shown = t < cfg.hold - cfg.gap
        if shown:
            self._draw_card(frame, p, clock)
        gain = _wave(p.gain, clock)
        cv2.multiply(frame, self._lights[p.light], dst=frame, scale=gain / 128.0)
        unit = min(w, h) / 240.0
        sigma = max(0.0, _wave(p.focus, clock)) * unit
        if sigma >= 0.35:
            cv2.GaussianBlur(frame, (0, 0), sigma, dst=frame)
        if not cfg.still:
            self._motion_blur(frame, p, t, shown)
        self._add_noise(frame, index)
        return frame, (p.label if shown else None)

    def _draw_card(self, frame: np.ndarray, p: _Presentation, t: float) -> None:
        h, w = frame.shape[:2]
        side = _wave(p.size, t) * min(w, h)
        jit_a, jit_w, jit_px, jit_py = p.jitter
        cx = (_wave(p.x, t) + jit_a * math.sin(jit_w * t + jit_px)) * w
        cy = (_wave(p.y, t) + jit_a * math.sin(jit_w * t + jit_py)) * h
        angle = math.radians(_wave(p.angle, t))
        tx, ty = _wave(p.tilt_x, t), _wave(p.tilt_y, t)
        ca, sa = math.cos(angle), math.sin(angle)
        dst = np.empty((4, 2), np.float32)
        for i, (ux, uy) in enumerate(((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))):
            # A tilt shrinks the far edge: about the vertical axis (tx) the left/right edges,
            # about the horizontal axis (ty) the top/bottom ones.
            x = ux * (1.0 + 2.0 * ty * uy) * side
            y = uy * (1.0 + 2.0 * tx * ux) * side
            dst[i] = (cx + ca * x - sa * y, cy + sa * x + ca * y)
        x0, y0 = max(0, math.floor(dst[:, 0].min())), max(0, math.floor(dst[:, 1].min()))
        x1, y1 = min(w, math.ceil(dst[:, 0].max()) + 1), min(h, math.ceil(dst[:, 1].max()) + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            return  # the card is off the frame
        ch, cw = p.card.shape[:2]
        src = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
        dst -= (x0, y0)
        matrix = cv2.getPerspectiveTransform(src, dst)
        roi = frame[y0:y1, x0:x1]
        cv2.warpPerspective(p.card, matrix, (x1 - x0, y1 - y0), dst=roi, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_TRANSPARENT)

    def _motion_blur(self, frame: np.ndarray, p: _Presentation, t: float, shown: bool) -> None:
        """Blur along the card's (or the pan's) motion: a box filter as long as the path in half a frame."""
        h, w = frame.shape[:2]
        vx = _wave_speed(p.x, t) * w + _wave_speed(p.pan_x, t)
        vy = _wave_speed(p.y, t) * h + _wave_speed(p.pan_y, t)
        if not shown:
            vx, vy = _wave_speed(p.pan_x, t), _wave_speed(p.pan_y, t)
        length = 0.5 * math.hypot(vx, vy)
        k = round(length)
        if k >= 2:
            ksize = (k, 1) if abs(vx) >= abs(vy) else (1, k)
            cv2.blur(frame, ksize, dst=frame)

    def _add_noise(self, frame: np.ndarray, index: int) -> None:
        if self._noise is None:
            return
        h, w = frame.shape[:2]
        # A cheap integer hash of (seed, index) picks where in the noise field this frame's noise starts.
        mix = (index * 0x9E3779B1 + self.config.seed * 0x85EBCA77 + 0x27D4EB2F) & 0xFFFFFFFF
        mix = ((mix ^ (mix >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
        ox, oy = mix % _NOISE_PAD, (mix >> 8) % _NOISE_PAD
        plus, minus = self._noise
        cv2.add(frame, plus[oy:oy + h, ox:ox + w], dst=frame)
        cv2.subtract(frame, minus[oy:oy + h, ox:ox + w], dst=frame)

    # ---- what is drawn once ------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg = self.config
        w, h = cfg.size
        self._margin = round(0.04 * min(w, h) * min(1.0, cfg.motion / 0.06))  # camera pan range, px
        bw, bh = w + 2 * self._margin, h + 2 * self._margin
        self._backgrounds = [_background(bw, bh, cfg.clutter, np.random.default_rng([cfg.seed, 3, k]))
                             for k in range(_BACKGROUNDS)]
        self._lights = [_light_field(w, h, cfg.lighting, np.random.default_rng([cfg.seed, 4, k]))
                        for k in range(_LIGHTS)]
        if cfg.noise > 0:
            rng = np.random.default_rng([cfg.seed, 6])
            field = rng.normal(0.0, cfg.noise, (h + _NOISE_PAD, w + _NOISE_PAD, 3)).astype(np.float32)
            self._noise = (np.clip(field, 0, 255).astype(np.uint8), np.clip(-field, 0, 255).astype(np.uint8))

    def _class_of(self, number: int) -> int:
        n = len(self.classes)
        cycle, position = divmod(number, n)
        if self._cycle is None or self._cycle[0] != cycle:
            self._cycle = (cycle, np.random.default_rng([self.config.seed, 2, cycle]).permutation(n))
        return int(self._cycle[1][position])

    def _get_presentation(self, number: int) -> _Presentation:
        label = self._label_of(number)
        if self._presentation is not None and self._presentation[0] == number \
                and self._presentation[1].label == label:
            return self._presentation[1]
        p = self._make_presentation(number, label)
        self._presentation = (number, p)
        return p

    def _make_presentation(self, number: int, label: str) -> _Presentation:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 1, number])
        files = self._files[label]
        first = int(rng.integers(len(files)))
        held = self._held
        if held is not None and held[0] == label and number >= held[1]:
            # The user turns the object between presentations: its images in turn, not at random.
            first = (number - held[1]) % len(files)
        image = None
        for step in range(len(files)):  # an unreadable image: the next one of the class
            image = self._image(label, (first + step) % len(files))
            if image is not None:
                break
        if image is None:
            raise SourceError(f"synthetic camera: no image of class {label!r} can be read ({files[0].parent})",
                              retryable=False)
        paper = rng.uniform(200, 255, 3) * rng.uniform(0.92, 1.0)
        ink = rng.uniform(0, 70, 3)
        card = _card(image, paper, ink)

        def term(base: float, amplitude: float, hz: tuple[float, float] = (0.12, 0.45)) -> tuple[float, ...]:
            omega = 2 * math.pi * rng.uniform(*hz) / cfg.fps
            return (base, amplitude * rng.uniform(0.5, 1.0), omega, rng.uniform(0, 2 * math.pi))

        def spread(x: float) -> float:
            return float(rng.uniform(-x, x))

        mot, margin = cfg.motion, self._margin
        return _Presentation(
            label=label, card=card, background=int(rng.integers(_BACKGROUNDS)), light=int(rng.integers(_LIGHTS)),
            x=term(0.5 + spread(mot * 0.6), mot),
            y=term(0.5 + spread(mot * 0.4), mot * 0.6),
            size=term(cfg.object_size * (1 + spread(cfg.scale * 0.5)), cfg.object_size * cfg.scale * 0.5),
            angle=term(spread(cfg.rotate * 0.5), cfg.rotate * 0.5),
            tilt_x=term(spread(cfg.perspective * 0.5), cfg.perspective * 0.5),
            tilt_y=term(spread(cfg.perspective * 0.5), cfg.perspective * 0.5),
            gain=term(1.0 + spread(cfg.lighting * 0.6), cfg.lighting * 0.4, (0.1, 0.3)),
            focus=term(cfg.blur * rng.uniform(0.1, 0.6), cfg.blur * 0.4, (0.2, 0.6)),
            pan_x=term(0.0, margin * 0.9, (0.05, 0.2)),
            pan_y=term(0.0, margin * 0.9, (0.05, 0.2)),
            jitter=(mot * 0.04, 2 * math.pi * rng.uniform(2.0, 4.0) / cfg.fps, rng.uniform(0, 6.3),
                    rng.uniform(0, 6.3)),
        )

    def _image(self, label: str, i: int) -> np.ndarray | None:
        key = (label, i)
        if key not in self._images:
            from edgefs.imagefile import ImageRefused

            path = self._files[label][i]
            try:
                image = _read_any(path)
            except ImageRefused as exc:  # over edgefs.limits, or not an image: skipped like an unreadable one
                image = None
                warnings.warn(f"synthetic camera: skipping image {exc}; remove or replace it", stacklevel=2)
            else:
                if image is None:
                    warnings.warn(f"synthetic camera: skipping unreadable image {path}", stacklevel=2)
            self._images[key] = image
        return self._images[key]


def _read_any(path: Path) -> np.ndarray | None:
    """uint8 grey ``(H, W)`` or RGB ``(H, W, 3)``, or None when OpenCV cannot decode it.

    Read within :mod:`edgefs.limits`: the file's size, then the pixel count its header
    declares, before anything is decoded.

    Raises:
        ImageRefused: missing, not a regular file (a link to a device), over
            :data:`edgefs.limits.MAX_IMAGE_FILE_BYTES` or :data:`edgefs.limits.MAX_IMAGE_PIXELS`,
            or not an image (an empty file); the message starts with the path and says why.
    """
    from edgefs.imagefile import check_image_bytes, read_image_bytes

    data = read_image_bytes(path, str(path))
    check_image_bytes(data, str(path))
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if image is None:
        return None
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1.0, float(image.max())))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def _card(image: np.ndarray, paper: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """The printed card: a grey image becomes ink on paper with a margin; a colour image is used as it is.

    Returns uint8 ``(S, S', 3)`` RGB, about 128 pixels on its longer side (what the warp samples).
    """
    if image.ndim == 2:
        g = image.astype(np.float32) / 255.0
        pad = max(1, round(0.08 * max(g.shape)))
        g = cv2.copyMakeBorder(g, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=1.0)
        rgb = g[:, :, None] * paper.astype(np.float32) + (1.0 - g[:, :, None]) * ink.astype(np.float32)
        card = np.clip(rgb, 0, 255).astype(np.uint8)
    else:
        card = image
    longest = max(card.shape[:2])
    scale = 128.0 / longest
    if abs(scale - 1.0) > 0.05:
        size = (max(2, round(card.shape[1] * scale)), max(2, round(card.shape[0] * scale)))
        card = cv2.resize(card, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    return np.ascontiguousarray(card)


def _background(w: int, h: int, clutter: float, rng: np.random.Generator) -> np.ndarray:
    """A textured background: a colour gradient, blotches at two scales, a few out-of-focus shapes."""
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xs / w - 0.5) * math.cos(angle) + (ys / h - 0.5) * math.sin(angle) + 0.5).clip(0, 1)
    bg = c0.astype(np.float32) + ramp[:, :, None] * (c1 - c0).astype(np.float32)
    for cells, amplitude in ((4, 40.0), (16, 18.0)):
        # Mostly brightness, a little colour: real backgrounds are less garish than per-channel noise.
        small = rng.normal(0, 1, (cells, max(2, round(cells * w / h)), 1)).astype(np.float32)
        small = small + 0.35 * rng.normal(0, 1, (*small.shape[:2], 3)).astype(np.float32)
        bg += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * amplitude * clutter
    canvas = np.clip(bg, 0, 255).astype(np.uint8)
    for _ in range(round(14 * clutter)):
        colour = tuple(int(v) for v in rng.uniform(20, 235, 3))
        x, y = int(rng.integers(w)), int(rng.integers(h))
        r = int(rng.integers(max(3, min(w, h) // 30), max(4, min(w, h) // 5)))
        kind = int(rng.integers(3))
        if kind == 0:
            cv2.circle(canvas, (x, y), r, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(canvas, (x - r, y - r // 2), (x + r, y + r // 2), colour, -1)
        else:
            x2, y2 = int(rng.integers(w)), int(rng.integers(h))
            cv2.line(canvas, (x, y), (x2, y2), colour, max(1, r // 6), cv2.LINE_AA)
    # The background is further away than the card: out of focus.
    return cv2.GaussianBlur(canvas, (0, 0), 1.0 + 1.5 * min(w, h) / 480)


def _light_field(w: int, h: int, lighting: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``(h, w, 3)`` gains at 128 = 1.0: light from one side, a vignette and a colour cast."""
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xs / w - 0.5, ys / h - 0.5
    side = (u * math.cos(angle) + v * math.sin(angle)) * lighting * rng.uniform(0.5, 1.0)
    vignette = -(u * u + v * v) * 0.6 * min(1.0, lighting * 2.0)
    cast = 1.0 + rng.uniform(-1, 1, 3) * lighting * 0.2
    field = (1.0 + side + vignette)[:, :, None] * cast.astype(np.float32) * 128.0
    return np.clip(field, 0, 255).astype(np.uint8)
