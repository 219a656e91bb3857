"""Procedural clips that Alice's tiny text-to-video model trains on and SynthBench scores against.

A clip is one (or two) filled shapes in a fully saturated colour moving over a plain or faintly textured grey
background. Every quantity is defined for 64x64 pixels and 17 frames and scaled to the requested size and frame
count, so a 32x32 / 9-frame clip shows the same motion as a 64x64 / 17-frame one, only coarser.
Coordinates are continuous pixels: x to the right, y downward, pixel (row i, col j) has its centre at (j+.5, i+.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import AliceError

# Eight hues at full saturation and value (30-60 degrees apart: the six 60 degrees apart plus orange between red and
# yellow and purple between blue and magenta) and white: the colours people name first.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "purple": (128, 0, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}
# Colours that render, caption, parse and detect like the others but that the default training data never shows
# (sample_clip_spec draws from COLOURS only), so a LoRA finetune can be tested on an attribute the shipped model
# has provably never seen. Azure's hue (210 degrees) lies halfway between cyan and blue, 30 degrees from both.
UNSEEN_COLOURS: dict[str, tuple[int, int, int]] = {"azure": (0, 128, 255)}
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, **UNSEEN_COLOURS}  # base colours first
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOTIONS: tuple[str, ...] = (*DIRECTIONS, "bounce")
# Grey levels: every colour is >= 180 RGB units away from each of them (orange, purple and azure 182, others >= 200).
BACKGROUND_SHADES: dict[str, int] = {"black": 16, "charcoal": 48, "dark grey": 80, "grey": 112}
TEXTURES: tuple[str, ...] = ("plain", "stripes", "checker")

REFERENCE_SIZE = 64
REFERENCE_FRAMES = 17
MIN_SIZE, MIN_FRAMES = 32, 7


@dataclass(frozen=True)
class HardExampleWeights:
    """Probabilities of the harder cases; the defaults are the easy curriculum stage.

    bounce is the share of single-object clips that bounce instead of moving straight (0.2 = one of the five
    benchmark motions, uniformly); the others are 0 by default because the short CPU training budget only learns
    large, slow, single objects on plain backgrounds reliably.
    """

    bounce: float = 0.2
    crossing: float = 0.0  # two objects crossing paths, one occluding the other
    fast: float = 0.0  # traverse most of the frame instead of a third to a half
    small: float = 0.0  # radius 3-5 px (at 64x64) instead of 6-10
    textured: float = 0.0  # low-contrast stripes / checkerboard instead of a plain background

    def __post_init__(self) -> None:
        for name in ("bounce", "crossing", "fast", "small", "textured"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise AliceError(f"HardExampleWeights.{name} is {value}; use a probability between 0 and 1")

    @classmethod
    def hard_stage(cls) -> HardExampleWeights:
        """A later curriculum stage that mixes in every hard case."""
        return cls(bounce=0.25, crossing=0.25, fast=0.25, small=0.25, textured=0.3)


@dataclass(frozen=True)
class ObjectSpec:
    """One shape and how it moves. Units: pixels and frames of the clip it belongs to."""

    shape: str
    colour: str
    radius: float  # circle radius; square half-side = 0.9 radius; triangle circumradius = 1.3 radius
    start: tuple[float, float]  # centre (centroid for the triangle) at frame 0
    velocity: tuple[float, float]  # px per frame; for "bounce" the vertical part is the initial vertical speed
    motion: str  # one of MOTIONS
    gravity: float = 0.0  # px / frame^2, downward; bounce only
    restitution: float = 1.0  # vertical speed kept at each floor contact; bounce only
    floor: float = 0.0  # y of the floor line the shape's bottom touches; bounce only
    depth: int = 0  # larger is further away: drawn first, so nearer objects occlude it

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise AliceError(f"unknown shape {self.shape!r}; use one of {', '.join(SHAPES)}")
        if self.colour not in ALL_COLOURS:
            raise AliceError(f"unknown colour {self.colour!r}; use one of {', '.join(ALL_COLOURS)}")
        if self.motion not in MOTIONS:
            raise AliceError(f"unknown motion {self.motion!r}; use one of {', '.join(MOTIONS)}")


@dataclass(frozen=True)
class BackgroundSpec:
    shade: str = "charcoal"  # a key of BACKGROUND_SHADES
    texture: str = "plain"  # a member of TEXTURES
    contrast: int = 0  # grey-level difference between the two texture tones
    period: int = 8  # px per light+dark pair of stripes / checker cells
    vertical: bool = False  # stripes run vertically

    def __post_init__(self) -> None:
        if self.shade not in BACKGROUND_SHADES:
            raise AliceError(f"unknown background shade {self.shade!r}; use one of {', '.join(BACKGROUND_SHADES)}")
        if self.texture not in TEXTURES:
            raise AliceError(f"unknown background texture {self.texture!r}; use one of {', '.join(TEXTURES)}")


@dataclass(frozen=True)
class ClipSpec:
    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec
    size: int = REFERENCE_SIZE
    frames: int = REFERENCE_FRAMES

    def __post_init__(self) -> None:
        check_clip_geometry(self.size, self.frames)


def check_clip_geometry(size: int, frames: int) -> None:
    if size < MIN_SIZE:
        raise AliceError(f"clip size {size} px is too small to draw shapes; use size >= {MIN_SIZE} (32 or 64)")
    if frames < MIN_FRAMES:
        raise AliceError(f"{frames} frames cannot show a bounce; use frames >= {MIN_FRAMES} (9 or 17)")


def shape_extents(shape: str, radius: float) -> tuple[float, float, float]:
    """(half width, extent above the centre, extent below the centre) of a shape."""
    if shape == "circle":
        return radius, radius, radius
    if shape == "square":
        return 0.9 * radius, 0.9 * radius, 0.9 * radius
    circumradius = 1.3 * radius  # up-pointing equilateral triangle about its centroid
    return circumradius * math.sqrt(3) / 2, circumradius, circumradius / 2


# ----------------------------------------------------------------------------------------------- trajectories


def object_positions(obj: ObjectSpec, frames: int) -> np.ndarray:
    """Centre of the object in every frame: float [frames, 2] (x, y)."""
    t = np.arange(frames, dtype=np.float64)
    x = obj.start[0] + obj.velocity[0] * t
    if obj.motion == "bounce":
        contact_y = obj.floor - shape_extents(obj.shape, obj.radius)[2]
        y = bounce_heights(obj.start[1], obj.velocity[1], obj.gravity, obj.restitution, contact_y, frames)[0]
    else:
        y = obj.start[1] + obj.velocity[1] * t
    return np.stack([x, y], axis=1)


def bounce_heights(
    y0: float, vy0: float, gravity: float, restitution: float, contact_y: float, frames: int
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Exact ballistic flight with instantaneous floor contacts, sampled at integer frames.

    Returns (y per frame, [(time, rebound speed) per floor contact]). A ball too slow to rebound lies on the floor.
    """
    ys = np.empty(frames)
    y, vy, t = float(y0), float(vy0), 0.0
    contacts: list[tuple[float, float]] = []
    for frame in range(frames):
        while True:
            dt = frame - t
            if y >= contact_y and vy >= -1e-9:  # resting
                y, vy, t = contact_y, 0.0, float(frame)
                break
            # Time until the centre reaches contact height: the positive root of y + vy s + g s^2 / 2 = contact_y.
            s = (-vy + math.sqrt(max(vy * vy + 2.0 * gravity * (contact_y - y), 0.0))) / gravity
            if s > dt:
                y, vy, t = y + vy * dt + 0.5 * gravity * dt * dt, vy + gravity * dt, float(frame)
                break
            y, vy, t = contact_y, -restitution * (vy + gravity * s), t + s
            contacts.append((t, -vy))
        ys[frame] = y
    return ys, contacts


# ----------------------------------------------------------------------------------------------- sampling


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high)) if high > low else float(low)


def _sample_radius(rng: np.random.Generator, scale: float, small: bool) -> float:
    return _uniform(rng, 3.0, 5.0) * scale if small else _uniform(rng, 6.0, 10.0) * scale


def _sample_background(rng: np.random.Generator, size: int, textured: bool) -> BackgroundSpec:
    shade = str(rng.choice(list(BACKGROUND_SHADES)))
    if not textured:
        return BackgroundSpec(shade=shade)
    # Contrast stays below what the detector treats as foreground (60 RGB units: 24 * sqrt(3) ~ 42).
    return BackgroundSpec(
        shade=shade,
        texture=str(rng.choice(TEXTURES[1:])),
        contrast=int(rng.integers(12, 25)),
        period=max(4, int(round(8 * size / REFERENCE_SIZE))),
        vertical=bool(rng.integers(2)),
    )


def _straight_object(
    rng: np.random.Generator, size: int, frames: int, shape: str, colour: str, radius: float, direction: str, fast: bool
) -> ObjectSpec:
    half_w, up, down = shape_extents(shape, radius)
    margin = size / REFERENCE_SIZE
    x_range = (half_w + margin, size - half_w - margin)
    y_range = (up + margin, size - down - margin)
    dx, dy = DIRECTIONS[direction]
    along, across = (x_range, y_range) if dx else (y_range, x_range)
    # Distance covered over the clip, as a share of the frame: a third to a half, or most of it when fast.
    travel = _uniform(rng, 0.55, 0.75) if fast else _uniform(rng, 0.3, 0.5)
    travel = min(travel * size, along[1] - along[0])
    low = _uniform(rng, along[0], along[1] - travel)
    a0 = low if dx + dy > 0 else low + travel
    c0 = _uniform(rng, *across)
    speed = travel / (frames - 1)
    start = (a0, c0) if dx else (c0, a0)
    return ObjectSpec(shape, colour, radius, start, (dx * speed, dy * speed), direction)


def _bounce_object(
    rng: np.random.Generator, size: int, frames: int, shape: str, colour: str, radius: float
) -> ObjectSpec:
    half_w, up, down = shape_extents(shape, radius)
    margin = size / REFERENCE_SIZE
    floor = size - margin
    contact_y = floor - down
    height_room = contact_y - (up + margin)
    steps = frames - 1
    # Keep the largest frame-to-frame jump a modest share of the frame so a bounce still reads as one moving object.
    max_step = 0.3 * size * (REFERENCE_FRAMES - 1) / steps
    for _ in range(200):
        gravity = _uniform(rng, 6.0, 10.0) * size / steps**2  # 6-10 frame-heights per clip^2
        restitution = _uniform(rng, 0.65, 0.9)
        height = _uniform(rng, 0.45, 1.0) * height_room  # of the centre above contact height at frame 0
        vy0 = _uniform(rng, -0.5, 0.5) * math.sqrt(2.0 * gravity * height)
        apex = height + (vy0 * vy0 / (2.0 * gravity) if vy0 < 0 else 0.0)
        if apex > height_room:
            continue
        ys, contacts = bounce_heights(contact_y - height, vy0, gravity, restitution, contact_y, frames)
        # At least one contact, each seen as a reversal (>= 2 frames after it), every rebound clearly visible
        # (no dribbling to rest).
        visible = bool(contacts) and contacts[-1][0] <= steps - 2
        lively = all(speed * speed / (2.0 * gravity) >= 0.12 * size for _, speed in contacts)
        if visible and lively and np.abs(np.diff(ys)).max() <= max_step and _longest_flight(ys) >= 4:
            break
    else:
        raise RuntimeError("bounce sampling found no trajectory in 200 tries")  # p < 1e-10 for frames >= 7
    travel = _uniform(rng, -0.3, 0.3) * size
    travel = float(np.clip(travel, -(size - 2 * (half_w + margin)), size - 2 * (half_w + margin)))
    x0 = _uniform(rng, half_w + margin + max(0.0, -travel), size - half_w - margin - max(0.0, travel))
    return ObjectSpec(
        shape, colour, radius, (x0, contact_y - height), (travel / steps, vy0), "bounce",
        gravity=gravity, restitution=restitution, floor=floor,
    )


def _longest_flight(ys: np.ndarray) -> int:
    """Frames in the longest stretch between the sampled lowest points: at 9 frames per clip a bounce needs one
    arc of >= 4 frames for its parabola to be visible (and checkable) at all."""
    inner = np.arange(1, len(ys) - 1)
    lowest = inner[(ys[inner] >= ys[inner - 1]) & (ys[inner] >= ys[inner + 1])]
    bounds = np.concatenate([[-1], lowest, [len(ys)]])
    return int((np.diff(bounds) - 1).max())


def _crossing_objects(
    rng: np.random.Generator, size: int, frames: int, weights: HardExampleWeights
) -> tuple[ObjectSpec, ...]:
    """Two objects on one line moving towards each other; they overlap mid-clip and the nearer one occludes."""
    scale = size / REFERENCE_SIZE
    colours = rng.choice(list(COLOURS), size=2, replace=False)
    shapes = rng.choice(SHAPES, size=2)
    radii = [_sample_radius(rng, scale, rng.random() < weights.small) for _ in range(2)]
    horizontal = bool(rng.integers(2))
    extents = [shape_extents(str(s), r) for s, r in zip(shapes, radii)]
    reach = max(e[0] if horizontal else max(e[1], e[2]) for e in extents) + scale
    cross_reach = max(max(e[1], e[2]) if horizontal else e[0] for e in extents) + scale
    travel = min(_uniform(rng, 0.5, 0.7) * size, size - 2 * reach)
    centre = _uniform(rng, reach + travel / 2, size - reach - travel / 2)
    line = _uniform(rng, cross_reach + 2 * scale, size - cross_reach - 2 * scale)
    speed = travel / (frames - 1)
    near = int(rng.integers(2))
    objects = []
    for index, sign in enumerate((1, -1)):
        along0 = centre - sign * travel / 2
        across = line + _uniform(rng, -2.0, 2.0) * scale  # not perfectly aligned, still overlapping
        if horizontal:
            start, velocity, motion = (along0, across), (sign * speed, 0.0), "right" if sign > 0 else "left"
        else:
            start, velocity, motion = (across, along0), (0.0, sign * speed), "down" if sign > 0 else "up"
        depth = 0 if index == near else 1
        objects.append(ObjectSpec(str(shapes[index]), str(colours[index]), radii[index], start, velocity, motion,
                                  depth=depth))
    return tuple(objects)


def sample_clip_spec(
    rng: np.random.Generator,
    size: int = REFERENCE_SIZE,
    frames: int = REFERENCE_FRAMES,
    hard_weights: HardExampleWeights | None = None,
    *,
    colour: str | None = None,
    shape: str | None = None,
    motion: str | None = None,
) -> ClipSpec:
    """A random clip. Giving colour / shape / motion fixes that attribute and forces a single object.

    Only a given colour can be one of UNSEEN_COLOURS: random draws come from COLOURS, the training palette."""
    check_clip_geometry(size, frames)
    weights = hard_weights or HardExampleWeights()
    background = _sample_background(rng, size, rng.random() < weights.textured)
    conditioned = colour is not None or shape is not None or motion is not None
    if not conditioned and rng.random() < weights.crossing:
        return ClipSpec(_crossing_objects(rng, size, frames, weights), background, size, frames)
    colour = colour or str(rng.choice(list(COLOURS)))
    shape = shape or str(rng.choice(SHAPES))
    if motion is None:
        motion = "bounce" if rng.random() < weights.bounce else str(rng.choice(list(DIRECTIONS)))
    radius = _sample_radius(rng, size / REFERENCE_SIZE, rng.random() < weights.small)
    if motion == "bounce":
        obj = _bounce_object(rng, size, frames, shape, colour, radius)
    else:
        obj = _straight_object(rng, size, frames, shape, colour, radius, motion, rng.random() < weights.fast)
    return ClipSpec((obj,), background, size, frames)


# ----------------------------------------------------------------------------------------------- drawing


def render_background(background: BackgroundSpec, size: int) -> np.ndarray:
    """float32 [size, size] grey levels."""
    base = float(BACKGROUND_SHADES[background.shade])
    if background.texture == "plain":
        return np.full((size, size), base, dtype=np.float32)
    cells = (np.arange(size) // max(1, background.period // 2)) % 2
    if background.texture == "stripes":
        tone = np.broadcast_to(cells[None, :] if background.vertical else cells[:, None], (size, size))
    else:
        tone = cells[:, None] ^ cells[None, :]
    return (base + background.contrast * (tone - 0.5)).astype(np.float32)


def _coverage(shape: str, radius: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Share of each pixel the shape covers, from a signed distance (one-pixel-wide anti-aliased edge)."""
    if shape == "circle":
        distance = np.sqrt(dx * dx + dy * dy) - radius
    elif shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - 0.9 * radius
    else:
        circumradius = 1.3 * radius
        slant = np.abs(dx) * (math.sqrt(3) / 2) - dy * 0.5  # the two slanted edges, mirrored
        distance = np.maximum(dy, slant) - circumradius / 2
    return np.clip(0.5 - distance, 0.0, 1.0)


def render_clip(spec: ClipSpec, positions: list[np.ndarray] | None = None) -> np.ndarray:
    """uint8 [frames, size, size, 3]. positions overrides each object's trajectory ([frames, 2] per object)."""
    size, frames = spec.size, spec.frames
    if positions is None:
        positions = [object_positions(obj, frames) for obj in spec.objects]
    grey = render_background(spec.background, size)
    video = np.repeat(np.repeat(grey[None, :, :, None], 3, axis=3), frames, axis=0)
    order = sorted(range(len(spec.objects)), key=lambda i: -spec.objects[i].depth)  # far first
    for index in order:
        obj = spec.objects[index]
        colour = np.asarray(ALL_COLOURS[obj.colour], dtype=np.float32)
        reach = max(shape_extents(obj.shape, obj.radius)) + 1.0
        for frame, (cx, cy) in enumerate(positions[index]):
            x0, x1 = max(0, int(cx - reach)), min(size, int(math.ceil(cx + reach)))
            y0, y1 = max(0, int(cy - reach)), min(size, int(math.ceil(cy + reach)))
            if x0 >= x1 or y0 >= y1:
                continue
            dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
            dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
            alpha = _coverage(obj.shape, obj.radius, dx, dy)[:, :, None]
            window = video[frame, y0:y1, x0:x1]
            window += alpha * (colour - window)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)
