"""The shapes world: scenes of flat-coloured objects on simple backgrounds.

A `Scene` is a square canvas, a `Background` and up to four `Obj`s, listed
back to front. Everything is integer geometry and flat colour, with no
anti-aliasing, so the masks, boxes, depth and labels of a rendered scene are
exact, and rendering is a pure function of the scene.

Geometry
    Every shape fills a `size x size` pixel box whose top-left corner is
    (`x`, `y`). A pixel belongs to a shape when its centre lies inside the
    shape's outline in the unit box [-0.5, 0.5]^2. Object sizes come in three
    classes (small, medium, large), a fixed fraction of the canvas.

Depth
    Objects sit at whole metres 1..9 (nearer objects are drawn later), the
    background at `BACKGROUND_DEPTH_M` = 10 m, the far end of InstructCV's
    0-10 m encoding (spec instructcv.md section 7.3).

Colours
    `OBJECT_COLORS` are 8 saturated colours, none of them in the blue hue band
    that detection boxes use (OpenCV hue 100-140), so drawn boxes decode.
    `BACKGROUND_COLORS` are greys, pastels and dark tones, far in RGB from
    every object colour (also along any gradient between two of them), so
    colour regions separate objects from background (the scene reader relies
    on this), and far from each other, so backgrounds can be told apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

# --------------------------------------------------------------------------- tables

OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 30),
    "green": (40, 160, 60),
    "cyan": (20, 190, 200),
    "purple": (150, 40, 170),
    "pink": (250, 120, 180),
    "brown": (130, 80, 30),
}

# Chosen for separation: >= 58 apart from each other, >= 75 from every object colour (>= 61 along
# any two-colour gradient), and none in the detection-box blue band.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "silver": (175, 175, 175),
    "gray": (128, 128, 128),
    "black": (25, 25, 25),
    "beige": (235, 225, 195),
    "light blue": (190, 215, 245),
    "dark green": (30, 80, 45),
    "plum": (90, 40, 80),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "diamond", "cross")

# Object size classes as a fraction of the canvas side.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.25, "medium": 0.32, "large": 0.40}
SIZE_CLASSES: tuple[str, ...] = ("small", "medium", "large")

BACKGROUND_KINDS: tuple[str, ...] = ("solid", "gradient", "stripes", "checker")
BACKGROUND_DEPTH_M = 10.0
OBJECT_DEPTHS_M: tuple[float, ...] = tuple(float(d) for d in range(1, 10))

MIN_CANVAS = 48  # below this, small objects (12 px) leave drawn detection boxes too small to decode
MAX_CANVAS = 512
MAX_OBJECTS = 4

# Named places: the canvas is cut in thirds; an object "at the top left" has its
# centre at the centre of the top-left ninth (clamped so it stays on the canvas).
PLACES: dict[str, tuple[int, int]] = {  # name -> (column, row)
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
PLACE_BY_CELL: dict[tuple[int, int], str] = {v: k for k, v in PLACES.items()}


def check_canvas_size(size: Any, name: str = "size") -> int:
    """Validate a canvas side length; returns it as int."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer number of pixels in [{MIN_CANVAS}, {MAX_CANVAS}]; got {size!r}.")
    size = int(size)
    if size < MIN_CANVAS:
        raise ValueError(
            f"`{name}`={size} is too small: the smallest objects need a canvas of at least "
            f"{MIN_CANVAS}x{MIN_CANVAS} pixels (expected {MIN_CANVAS} <= {name} <= {MAX_CANVAS})."
        )
    if size > MAX_CANVAS:
        raise ValueError(f"`{name}`={size} is too large (expected {MIN_CANVAS} <= {name} <= {MAX_CANVAS}).")
    return size


def object_pixels(size_class: str, canvas: int) -> int:
    """Side length in pixels of an object of a size class on a canvas."""
    return max(4, int(round(SIZE_FRACTIONS[size_class] * canvas)))


# --------------------------------------------------------------------------- shape masks


def _polygon_inside(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        x1, y1 = verts[i]
        x2, y2 = verts[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (v >= min(y1, y2)) & (v < max(y1, y2))
        xs = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < xs)
    return inside


def _normalised(verts: np.ndarray) -> np.ndarray:
    """Stretch vertices so that their bounding box is exactly [-0.5, 0.5]^2."""
    lo, hi = verts.min(0), verts.max(0)
    return (verts - lo) / (hi - lo) - 0.5


def _star_vertices() -> np.ndarray:
    k = np.arange(10)
    ang = -np.pi / 2 + k * np.pi / 5
    rad = np.where(k % 2 == 0, 1.0, 0.5)
    return _normalised(np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1))


_POLYGONS = {
    "triangle": np.array([[0.0, -0.5], [0.5, 0.5], [-0.5, 0.5]]),
    "diamond": np.array([[0.0, -0.5], [0.5, 0.0], [0.0, 0.5], [-0.5, 0.0]]),
    "star": _star_vertices(),
}
RING_INNER = 0.25  # inner radius of a ring, in units of the box side (outer radius 0.5)
CROSS_HALF_WIDTH = 1.0 / 6.0


@lru_cache(maxsize=4096)
def _shape_mask_cached(shape: str, size: int) -> np.ndarray:
    c = (np.arange(size) + 0.5) / size - 0.5
    u, v = np.meshgrid(c, c)  # u: x (columns), v: y (rows)
    if shape == "circle":
        m = u * u + v * v <= 0.25
    elif shape == "square":
        m = np.ones((size, size), dtype=bool)
    elif shape == "ring":
        r2 = u * u + v * v
        m = (r2 <= 0.25) & (r2 > RING_INNER * RING_INNER)
    elif shape == "cross":
        m = (np.abs(u) <= CROSS_HALF_WIDTH) | (np.abs(v) <= CROSS_HALF_WIDTH)
    elif shape in _POLYGONS:
        m = _polygon_inside(u, v, _POLYGONS[shape])
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    m = np.ascontiguousarray(m)
    m.setflags(write=False)
    return m


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean `size x size` mask of a shape (read-only, cached)."""
    return _shape_mask_cached(shape, int(size))


# --------------------------------------------------------------------------- scene model


@dataclass(frozen=True)
class Obj:
    """One object: a shape of a named colour in a `size x size` box at (x, y), `depth` metres away."""

    shape: str
    color: str
    x: int
    y: int
    size: int
    depth: float
    size_class: str = "medium"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return OBJECT_COLORS[self.color]

    @property
    def name(self) -> str:
        """How instructions refer to the object: "red circle"."""
        return f"{self.color} {self.shape}"

    @property
    def box(self) -> tuple[int, int, int, int]:
        """[x1, y1, x2, y2] of the full (unoccluded) object, x2/y2 exclusive."""
        return (self.x, self.y, self.x + self.size, self.y + self.size)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.size / 2.0, self.y + self.size / 2.0)

    def place(self, canvas: int) -> str:
        return place_of(self.center, canvas)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "color": self.color,
            "x": int(self.x),
            "y": int(self.y),
            "size": int(self.size),
            "depth": float(self.depth),
            "size_class": self.size_class,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Obj":
        return cls(
            shape=d["shape"],
            color=d["color"],
            x=int(d["x"]),
            y=int(d["y"]),
            size=int(d["size"]),
            depth=float(d["depth"]),
            size_class=d.get("size_class", "medium"),
        )


@dataclass(frozen=True)
class Background:
    """`kind` in BACKGROUND_KINDS; `colors` are BACKGROUND_COLORS names (one for solid, two otherwise).

    `vertical` picks the direction of gradients and stripes (True: colour changes
    along x, i.e. vertical bands); `period` is the stripe width / checker cell in pixels.
    """

    kind: str = "solid"
    colors: tuple[str, ...] = ("white",)
    vertical: bool = False
    period: int = 8

    def describe(self) -> str:
        c = self.colors
        if self.kind == "solid":
            return f"plain {c[0]}"
        if self.kind == "gradient":
            d = "horizontal" if self.vertical else "vertical"
            return f"a {d} gradient from {c[0]} to {c[1]}"
        if self.kind == "stripes":
            d = "vertical" if self.vertical else "horizontal"
            return f"{c[0]} and {c[1]} {d} stripes"
        return f"a {c[0]} and {c[1]} checkerboard"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "colors": list(self.colors), "vertical": bool(self.vertical), "period": int(self.period)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Background":
        return cls(kind=d["kind"], colors=tuple(d["colors"]), vertical=bool(d["vertical"]), period=int(d["period"]))

    def render(self, canvas: int) -> np.ndarray:
        """HxWx3 uint8 image of the background alone."""
        cols = [np.array(BACKGROUND_COLORS[c], dtype=np.float64) for c in self.colors]
        idx = np.arange(canvas)
        if self.kind == "solid":
            return np.broadcast_to(cols[0].astype(np.uint8), (canvas, canvas, 3)).copy()
        if self.kind == "gradient":
            t = idx / max(canvas - 1, 1)
            line = np.rint(cols[0][None, :] * (1 - t[:, None]) + cols[1][None, :] * t[:, None]).astype(np.uint8)
            if self.vertical:  # varies along x
                return np.broadcast_to(line[None, :, :], (canvas, canvas, 3)).copy()
            return np.broadcast_to(line[:, None, :], (canvas, canvas, 3)).copy()
        c0, c1 = cols[0].astype(np.uint8), cols[1].astype(np.uint8)
        band = (idx // self.period) % 2
        if self.kind == "stripes":
            sel = band[None, :] if self.vertical else band[:, None]
            sel = np.broadcast_to(sel, (canvas, canvas))
        elif self.kind == "checker":
            sel = (band[:, None] + band[None, :]) % 2
        else:
            raise ValueError(f"unknown background kind {self.kind!r}; expected one of {BACKGROUND_KINDS}")
        return np.where(sel[..., None] == 1, c1, c0).astype(np.uint8)


@dataclass
class Rendered:
    """A rendered scene: RGB image, per-pixel object index (-1 = background) and depth in metres."""

    image: np.ndarray  # HxWx3 uint8
    labels: np.ndarray  # HxW int8, index into scene.objects, -1 for background
    depth: np.ndarray  # HxW float32, metres

    def mask(self, i: int) -> np.ndarray:
        """Visible pixels of object i."""
        return self.labels == i


@dataclass(frozen=True)
class Scene:
    canvas: int
    background: Background = field(default_factory=Background)
    objects: tuple[Obj, ...] = ()

    def render(self) -> Rendered:
        n = self.canvas
        img = self.background.render(n)
        labels = np.full((n, n), -1, dtype=np.int8)
        depth = np.full((n, n), BACKGROUND_DEPTH_M, dtype=np.float32)
        for i, o in enumerate(self.objects):
            m, ys, xs = _clipped_mask(o, n)
            if m is None:
                continue
            img[ys, xs][m] = o.rgb
            labels[ys, xs][m] = i
            depth[ys, xs][m] = o.depth
        return Rendered(img, labels, depth)

    def with_objects(self, objects: Iterable[Obj]) -> "Scene":
        return replace(self, objects=tuple(objects))

    def with_background(self, background: Background) -> "Scene":
        return replace(self, background=background)

    def find(self, name: str) -> int:
        """Index of the object called `name` ("red circle")."""
        for i, o in enumerate(self.objects):
            if o.name == name:
                return i
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "canvas": int(self.canvas),
            "background": self.background.to_dict(),
            "objects": [o.to_dict() for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scene":
        return cls(
            canvas=int(d["canvas"]),
            background=Background.from_dict(d["background"]),
            objects=tuple(Obj.from_dict(o) for o in d["objects"]),
        )


def _clipped_mask(o: Obj, n: int):
    """The object's mask clipped to the canvas, and the canvas slices it covers."""
    m = shape_mask(o.shape, o.size)
    x0, y0 = max(o.x, 0), max(o.y, 0)
    x1, y1 = min(o.x + o.size, n), min(o.y + o.size, n)
    if x1 <= x0 or y1 <= y0:
        return None, None, None
    m = m[y0 - o.y : y1 - o.y, x0 - o.x : x1 - o.x]
    return m, slice(y0, y1), slice(x0, x1)


def object_mask(o: Obj, canvas: int) -> np.ndarray:
    """Full (amodal) mask of an object on the canvas."""
    out = np.zeros((canvas, canvas), dtype=bool)
    m, ys, xs = _clipped_mask(o, canvas)
    if m is not None:
        out[ys, xs] = m
    return out


def visible_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """[x1, y1, x2, y2] (x2/y2 exclusive) of the True pixels, or None."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


# --------------------------------------------------------------------------- places


def place_of(center: tuple[float, float], canvas: int) -> str:
    """Named place (3x3 grid) of a point."""
    cx, cy = center
    col = min(2, max(0, int(cx * 3 // canvas)))
    row = min(2, max(0, int(cy * 3 // canvas)))
    return PLACE_BY_CELL[(col, row)]


def place_position(place: str, size: int, canvas: int) -> tuple[int, int]:
    """Top-left (x, y) of a `size` box centred on a named place, clamped to the canvas."""
    if place not in PLACES:
        raise ValueError(f"unknown place {place!r}; expected one of {sorted(PLACES)}")
    col, row = PLACES[place]
    cx = (2 * col + 1) * canvas / 6.0
    cy = (2 * row + 1) * canvas / 6.0
    x = int(min(max(math.floor(cx - size / 2.0 + 0.5), 0), canvas - size))
    y = int(min(max(math.floor(cy - size / 2.0 + 0.5), 0), canvas - size))
    return x, y


# --------------------------------------------------------------------------- sampling


def random_background(rng: np.random.Generator, canvas: int, kinds: Sequence[str] = BACKGROUND_KINDS,
                      exclude: Background | None = None) -> Background:
    """A random background (never equal to `exclude`)."""
    names = list(BACKGROUND_COLORS)
    for _ in range(100):
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "solid":
            cols = (names[int(rng.integers(len(names)))],)
        else:
            a, b = rng.choice(len(names), size=2, replace=False)
            cols = (names[int(a)], names[int(b)])
        period = max(2, canvas // 8)
        bg = Background(kind=kind, colors=cols, vertical=bool(rng.integers(2)), period=period)
        if kind == "solid":
            bg = replace(bg, vertical=False)
        if kind == "checker":
            bg = replace(bg, vertical=False)
        if exclude is None or bg != exclude:
            return bg
    raise RuntimeError("could not draw a distinct background")  # pragma: no cover


def min_fragment(canvas: int) -> int:
    """Smallest allowed visible piece of an object, in pixels (12 at 64 px)."""
    return max(4, int(0.05 * object_pixels("small", canvas) ** 2))


def visible_fractions(scene: Scene) -> list[float]:
    r = scene.render()
    out = []
    for i, o in enumerate(scene.objects):
        full = int(shape_mask(o.shape, o.size).sum())
        out.append(float((r.labels == i).sum()) / max(full, 1))
    return out


def is_valid(scene: Scene, min_visible: float = 0.75) -> bool:
    """Every object inside the canvas, at least `min_visible` of it visible, and no visible
    piece of an occluded object smaller than `min_fragment` pixels (so masks have no specks)."""
    n = scene.canvas
    for o in scene.objects:
        if o.x < 0 or o.y < 0 or o.x + o.size > n or o.y + o.size > n:
            return False
    r = scene.render()
    frag = min_fragment(n)
    for i, o in enumerate(scene.objects):
        vis = r.labels == i
        full = int(shape_mask(o.shape, o.size).sum())
        k = int(vis.sum())
        if k < min_visible * full:
            return False
        if k < full:
            cnt, _, stats, _ = cv2.connectedComponentsWithStats(vis.astype(np.uint8), connectivity=8)
            if cnt > 2 and stats[1:, cv2.CC_STAT_AREA].min() < frag:
                return False
    return True


def sort_by_depth(objects: Iterable[Obj]) -> tuple[Obj, ...]:
    """Back to front (farthest first)."""
    return tuple(sorted(objects, key=lambda o: -o.depth))


def random_object(rng: np.random.Generator, canvas: int, *, color: str | None = None, shape: str | None = None,
                  size_class: str | None = None, depth: float = 5.0, exclude_colors: Iterable[str] = ()) -> Obj:
    if color is None:
        pool = [c for c in OBJECT_COLORS if c not in set(exclude_colors)]
        color = pool[int(rng.integers(len(pool)))]
    if shape is None:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if size_class is None:
        size_class = SIZE_CLASSES[int(rng.integers(len(SIZE_CLASSES)))]
    s = object_pixels(size_class, canvas)
    x = int(rng.integers(0, canvas - s + 1))
    y = int(rng.integers(0, canvas - s + 1))
    return Obj(shape=shape, color=color, x=x, y=y, size=s, depth=float(depth), size_class=size_class)


def random_scene(rng: np.random.Generator, canvas: int, n_objects: int | None = None, *,
                 min_objects: int = 1, max_objects: int = MAX_OBJECTS, background: Background | None = None,
                 min_visible: float = 0.75, max_tries: int = 50, exclude_colors: Iterable[str] = (),
                 bg_kinds: Sequence[str] = BACKGROUND_KINDS) -> Scene:
    """A random valid scene; object colours are distinct within a scene.

    Objects are placed one by one; a placement is rejected when it leaves any
    object less than `min_visible` visible. When an object cannot be placed in
    `max_tries` draws the scene keeps the objects placed so far (never fewer
    than one).
    """
    canvas = check_canvas_size(canvas, "canvas")
    if n_objects is None:
        n_objects = int(rng.integers(min_objects, max_objects + 1))
    if background is None:
        background = random_background(rng, canvas, bg_kinds)
    colors = [c for c in OBJECT_COLORS if c not in set(exclude_colors)]
    n_objects = min(n_objects, len(colors), MAX_OBJECTS)
    if n_objects <= 0:
        return Scene(canvas, background, ())
    depths = sorted(rng.choice(OBJECT_DEPTHS_M, size=n_objects, replace=False).tolist(), reverse=True)
    color_order = rng.permutation(len(colors))
    objs: list[Obj] = []
    for k in range(n_objects):
        color = colors[int(color_order[k])]
        for _ in range(max_tries):
            o = random_object(rng, canvas, color=color, depth=depths[k])
            cand = Scene(canvas, background, tuple(objs) + (o,))
            if _quick_ok(cand, min_visible):
                objs.append(o)
                break
    if not objs:  # pragma: no cover - a single object always fits
        objs.append(random_object(rng, canvas, color=colors[int(color_order[0])], depth=depths[0]))
    return Scene(canvas, background, tuple(objs))


def _quick_ok(scene: Scene, min_visible: float) -> bool:
    """`is_valid` with a cheap box-overlap shortcut for the common no-overlap case."""
    objs = scene.objects
    boxes = [o.box for o in objs]
    overlap = False
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                overlap = True
                break
        if overlap:
            break
    if not overlap:
        return True
    return is_valid(scene, min_visible)


# --------------------------------------------------------------------------- text


def describe_object(o: Obj, canvas: int | None = None, *, size_word: bool = True, place: bool = True) -> str:
    words = []
    if size_word:
        words.append(o.size_class)
    words += [o.color, o.shape]
    s = "a " + " ".join(words)
    if place and canvas is not None:
        s += f" at the {o.place(canvas)}"
    return s


def caption(scene: Scene, *, places: bool = True, sizes: bool = True) -> str:
    """Plain-English description: 'a small red circle at the top left and a large green star at the center on plain white'."""
    parts = [describe_object(o, scene.canvas, size_word=sizes, place=places) for o in scene.objects]
    if not parts:
        return f"an empty canvas with {_bg_phrase(scene.background)}"
    if len(parts) == 1:
        objs = parts[0]
    else:
        objs = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{objs} on {_bg_phrase(scene.background)}"


def _bg_phrase(bg: Background) -> str:
    """'a plain white background', 'a background of beige and plum vertical stripes', ..."""
    d = bg.describe()
    if bg.kind == "solid":
        return f"a {d} background"
    if bg.kind == "checker":
        return f"{d} background"
    if bg.kind == "stripes":
        return f"a background of {d}"
    return f"a background with {d}"
