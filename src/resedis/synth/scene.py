"""Procedural scenes: coloured shapes over textured backgrounds, with exact masks.

A scene is rendered into a *label map* ``(H, W) int16`` in painter's order (later
objects overwrite earlier ones; ``-1`` is background), so an object's mask is exactly
its VISIBLE pixels: ``label == k``. Every kept object keeps at least
``MIN_VISIBLE_FRACTION`` of its own rasterised area visible and at least
``MIN_VISIBLE_PIXELS`` pixels; objects whose placement would break that for any earlier
object are re-placed or dropped.

Sizes are nominal: a shape is inscribed in a circle of radius ``r`` with
``r = f * sqrt(W * H)``, ``f`` in ``SIZE_FRACTIONS["small"]`` or ``["large"]`` (the
ranges are disjoint by a factor of ~2 in radius, ~4 in area).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring")

#: Saturated or extreme colours that stay distinct after JPEG (backgrounds are greyish mid-tones).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 165, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 30),
    "purple": (145, 50, 190),
    "orange": (245, 135, 20),
    "white": (246, 246, 246),
    "black": (22, 22, 22),
}

SIZES: tuple[str, ...] = ("small", "large")
SIZE_FRACTIONS: dict[str, tuple[float, float]] = {"small": (0.05, 0.07), "large": (0.13, 0.18)}

MIN_SIDE, MAX_SIDE = 240, 800
MIN_OBJECTS, MAX_OBJECTS = 2, 10
MIN_VISIBLE_FRACTION = 0.6
MIN_VISIBLE_PIXELS = 80
#: Probability that a new object copies the shape (and maybe colour) of an earlier one,
#: so that scenes contain look-alikes (needed for "the largest", multi-instance queries).
REPEAT_PROB = 0.3
PLACEMENT_TRIES = 25
GRAIN_TILE = 128


@dataclass(frozen=True)
class SceneObject:
    """One kept object. ``mask`` is (H, W) bool of its visible pixels."""

    shape: str
    color: str
    size: str
    mask: np.ndarray


@dataclass(frozen=True)
class Scene:
    """A rendered scene: ``image`` (H, W, 3) uint8 RGB and objects in drawing order."""

    image: np.ndarray
    objects: list[SceneObject]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def sample_image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) in [240, 800], aspect ratio at most 2.5, square 15% of the time."""
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    if rng.random() < 0.15:
        return width, width
    lo = max(MIN_SIDE, math.ceil(width / 2.5))
    hi = min(MAX_SIDE, math.floor(width * 2.5))
    return width, int(rng.integers(lo, hi + 1))


def _polygon(shape: str, r: float, rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """Vertices (x, y) relative to the centre, y down; None for round shapes."""

    def regular(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
        return [
            (radius * math.cos(math.radians(start_deg + 360.0 * k / n)), radius * math.sin(math.radians(start_deg + 360.0 * k / n)))
            for k in range(n)
        ]

    def rotate(pts: list[tuple[float, float]], deg: float) -> list[tuple[float, float]]:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return [(x * c - y * s, x * s + y * c) for x, y in pts]

    jitter = float(rng.uniform(-12.0, 12.0))  # small tilts only: a 45-degree square would be a diamond
    if shape == "square":
        return regular(4, r, 45.0 + jitter)
    if shape == "triangle":
        return regular(3, r, -90.0 + jitter)
    if shape == "hexagon":
        return regular(6, r, float(rng.uniform(0.0, 60.0)))
    if shape == "diamond":
        return [(0.0, -r), (0.62 * r, 0.0), (0.0, r), (-0.62 * r, 0.0)]
    if shape == "star":
        outer, inner = regular(5, r, -90.0 + jitter), regular(5, 0.45 * r, -54.0 + jitter)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, w = r, 0.3 * r
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        return rotate(pts, jitter)
    return None


def rasterize_shape(shape: str, r: float, rng: np.random.Generator) -> np.ndarray:
    """The full (unoccluded) shape as a bool patch of side ``2 * ceil(r) + 1``; centre at the middle."""
    half = int(math.ceil(r))
    side = 2 * half + 1
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    c = float(half)
    if shape in ("circle", "ring"):
        draw.ellipse([c - r, c - r, c + r, c + r], fill=1)
        if shape == "ring":
            ri = 0.55 * r
            draw.ellipse([c - ri, c - ri, c + ri, c + ri], fill=0)
    else:
        pts = _polygon(shape, r, rng)
        assert pts is not None, shape
        draw.polygon([(c + x, c + y) for x, y in pts], fill=1)
    return np.asarray(canvas, dtype=bool)


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured, desaturated mid-tone background, (H, W, 3) float32 in [0, 255].

    Kinds (chosen at random): two-colour gradient, smooth value noise, stripes, checker.
    Channel values stay within ~[70, 200] with low saturation, so every palette colour
    (saturated, or near-white / near-black) stands out.
    """

    def tone() -> np.ndarray:
        base = rng.uniform(95.0, 170.0)
        return (base + rng.uniform(-14.0, 14.0, size=3)).astype(np.float32)

    a, b = tone(), tone()
    kind = int(rng.integers(0, 4))
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    if kind == 0:  # gradient along a random direction
        theta = rng.uniform(0.0, 2.0 * math.pi)
        t = xs * math.cos(theta) + ys * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == 1:  # smooth value noise: a coarse random grid, bicubically upsampled
        gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        grid = (rng.random((gh, gw)) * 255.0).astype(np.uint8)
        t = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
    elif kind == 2:  # soft stripes
        theta = rng.uniform(0.0, math.pi)
        period = rng.uniform(0.04, 0.15)
        u = (xs * width * math.cos(theta) + ys * height * math.sin(theta)) / (period * math.sqrt(width * height))
        t = 0.5 + 0.5 * np.sin(2.0 * math.pi * u)
    else:  # checkerboard
        cell = int(rng.integers(16, 64))
        iy = (np.arange(height) // cell)[:, None]
        ix = (np.arange(width) // cell)[None, :]
        t = ((ix + iy) % 2).astype(np.float32)
    # blend through a 256-entry colour table: one gather instead of full-size float arithmetic
    levels = np.clip(np.broadcast_to(t, (height, width)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    table = a + (b - a) * np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    return np.take(table, levels, axis=0)


def _grain(rng: np.random.Generator, width: int, height: int, *, sigma: float) -> np.ndarray:
    """Gaussian sensor-like noise, (H, W, 3) float32: a random 128-px tile, repeated from a
    random offset (drawing H*W*3 normals per image would dominate the rendering time)."""
    tile = rng.standard_normal((GRAIN_TILE, GRAIN_TILE, 3), dtype=np.float32) * sigma
    reps = (height // GRAIN_TILE + 2, width // GRAIN_TILE + 2, 1)
    oy, ox = (int(v) for v in rng.integers(0, GRAIN_TILE, size=2))
    return np.tile(tile, reps)[oy : oy + height, ox : ox + width]


def render_scene(rng: np.random.Generator, width: int, height: int) -> Scene:
    """Render one scene with 2–10 objects (fewer than asked only when placement fails twice over).

    Returns a :class:`Scene`; object masks are the visible pixels, (H, W) bool.
    """
    n_target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    label = np.full((height, width), -1, dtype=np.int16)
    full_area: list[int] = []
    visible: list[int] = []
    attrs: list[tuple[str, str, str]] = []
    scale = math.sqrt(width * height)

    def try_place(shape: str, color: str, size: str) -> bool:
        for _ in range(PLACEMENT_TRIES):
            lo, hi = SIZE_FRACTIONS[size]
            r = min(float(rng.uniform(lo, hi)) * scale, 0.45 * min(width, height))
            patch = rasterize_shape(shape, r, rng)
            side = patch.shape[0]
            if side >= min(width, height):
                continue
            x0 = int(rng.integers(0, width - side + 1))
            y0 = int(rng.integers(0, height - side + 1))
            window = label[y0 : y0 + side, x0 : x0 + side]
            covered = window[patch]
            k = len(attrs)
            if k:
                # same-coloured objects must not overlap: their boundary would be invisible
                if any(attrs[j][1] == color for j in np.unique(covered[covered >= 0])):
                    continue
                lost = np.bincount(covered[covered >= 0], minlength=k)
                after = np.asarray(visible) - lost
                if np.any(after < np.maximum(MIN_VISIBLE_FRACTION * np.asarray(full_area), MIN_VISIBLE_PIXELS)):
                    continue
                visible[:] = after.tolist()
            area = int(patch.sum())
            window[patch] = k
            full_area.append(area)
            visible.append(area)
            return True
        return False

    tries = 0
    while len(attrs) < n_target and tries < 2 * n_target + 4:
        tries += 1
        if attrs and rng.random() < REPEAT_PROB:
            shape, color, _ = attrs[int(rng.integers(0, len(attrs)))]
            if rng.random() < 0.5:
                color = list(COLORS)[int(rng.integers(0, len(COLORS)))]
        else:
            shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
            color = list(COLORS)[int(rng.integers(0, len(COLORS)))]
        size = SIZES[int(rng.integers(0, len(SIZES)))]
        # the first two objects are always small enough to fit, so every scene has >= 2
        if len(attrs) < MIN_OBJECTS and tries > 2:
            size = "small"
        if try_place(shape, color, size):
            attrs.append((shape, color, size))
    if len(attrs) < MIN_OBJECTS:  # practically unreachable: two small shapes always fit
        raise RuntimeError(f"could not place {MIN_OBJECTS} objects in a {width}x{height} scene")

    image = render_background(rng, width, height)
    lut = np.asarray([COLORS[c] for _, c, _ in attrs], dtype=np.float32)
    # a small per-object brightness jitter keeps flat colours from looking identical
    lut = np.clip(lut + rng.uniform(-8.0, 8.0, size=(len(attrs), 1)).astype(np.float32), 0, 255)
    fg = label >= 0
    image[fg] = lut[label[fg]]
    image += _grain(rng, width, height, sigma=float(rng.uniform(2.0, 7.0)))
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    objects = [SceneObject(shape=s, color=c, size=z, mask=(label == k)) for k, (s, c, z) in enumerate(attrs)]
    return Scene(image=pixels, objects=objects)
