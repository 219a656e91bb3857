"""SynthBench's analytic detector: what a clip shows, measured without any learned model.

Per frame the background is the median colour (the object covers a few per cent of the frame), foreground is
every pixel far from it, and the largest 8-connected foreground blob is the object. From that track the checks
decide colour (hue of the object's pixels), shape (how much of its bounding box it fills and how bottom-heavy it
is), motion (a straight, dominant displacement, or a ballistic bounce off a floor) and persistence (one object,
in every frame, stable in size, never teleporting). Thresholds are in units of the frame size and clip length so
32x32 / 9-frame clips are judged like 64x64 / 17-frame ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import AliceError
from .render import ALL_COLOURS, COLOURS, DIRECTIONS, MIN_FRAMES, REFERENCE_FRAMES, SHAPES

FOREGROUND_MIN_DISTANCE = 60.0  # RGB units; above the faint texture contrast (<= 42), far below any object (>= 200)
MIN_CHROMA = 40.0  # a blob greyer than this has no colour
MIN_TRAVEL = 0.15  # straight motion must cover this share of the frame (rendered: >= 0.3)
MIN_LINEARITY = 0.9  # R^2 of position along the direction vs time
MAX_SIDEWAYS = 0.5  # sideways extent allowed, as a share of the travel
MIN_BOUNCE_HEIGHT = 0.12  # vertical extent of a bounce, share of the frame
FLOOR_TOLERANCE = 0.15  # a reversal counts as a floor contact within this share of the frame from the lowest point
GRAVITY_RANGE = (2.0, 20.0)  # frame heights per clip^2 (rendered: 6-10)
MAX_PARABOLA_RMS = 0.02  # share of the frame
MIN_PRESENT_FOR_MOTION = 0.8
ONE_BLOB_SHARE = 0.9  # frames that must show exactly one blob
AREA_RANGE = (0.6, 1.6)  # per-frame object area relative to its median
OBJECT_AREA_RANGE = (0.002, 0.12)  # median object area, share of the frame (rendered: 0.004-0.08)
# Largest frame-to-frame centroid jump, share of the frame at 17 frames per clip: any direction (fast bounces near
# the floor reach 0.25) and sideways, where nothing rendered moves faster than 0.05.
MAX_JUMP = 0.3
MAX_SIDEWAYS_JUMP = 0.15
# (fill of the bounding box, bottom-heaviness) of each shape as rendered, measured on 64x64 clips.
SHAPE_PROTOTYPES: dict[str, tuple[float, float]] = {
    "circle": (0.79, 0.0), "square": (1.0, 0.0), "triangle": (0.54, 0.155),
}
SHAPE_FEATURE_SCALE = (0.1, 0.05)


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """Hue of RGB colours [..., 3]; unchanged by mixing with grey, so anti-aliased edges keep the object's hue."""
    r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
    return np.degrees(np.arctan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360.0


# Hues of ALL_COLOURS, the base colours first; white has no hue (see colour_classes). A base colour is judged among
# the base colours only and an unseen colour among all, so a cyan or blue object fails an azure prompt; the price of
# keeping base-colour numbers independent of the unseen colour: an azure object can pass a cyan or a blue prompt.
COLOUR_NAMES = list(ALL_COLOURS)
PALETTE_HUES = _hue_degrees(np.array(list(ALL_COLOURS.values())))
ACHROMATIC = np.array([max(rgb) - min(rgb) < MIN_CHROMA for rgb in ALL_COLOURS.values()])  # white
MIN_WHITE_VALUE = 160.0  # mean RGB of a grey-ish blob that counts as white; every background shade is <= 112


@dataclass(frozen=True)
class ClipAnalysis:
    """The object track of one clip. Per-frame arrays; nan / 0 where no object was found."""

    size: int
    frames: int
    blob_counts: np.ndarray  # int [F]: blobs at least a quarter of the object's typical area
    areas: np.ndarray  # float [F]: object pixels
    centroids: np.ndarray  # float [F, 2]: (x, y) in pixels
    colours: np.ndarray  # float [F, 3]: mean RGB of the object
    fills: np.ndarray  # float [F]: object area / bounding-box area
    bottom_heaviness: np.ndarray  # float [F]: (centroid y - box centre y) / box height; an upward triangle > 0

    @property
    def present(self) -> np.ndarray:
        return self.areas > 0


def _label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of each frame of mask [F, H, W]: a label per pixel, equal within a component and
    unique to it (its smallest flat pixel index), -1 off the mask.

    Min-label propagation over 3x3 neighbourhoods with pointer jumping: numpy only, a few rounds per blob.
    """
    labels = np.full(mask.shape, -1, dtype=np.int32)
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if rows.size == 0:
        return labels
    window = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # work on the occupied box
    inside = mask[window]
    flat_index = np.arange(mask.size, dtype=np.int32).reshape(mask.shape)[window]
    off = np.int32(mask.size)
    current = np.where(inside, flat_index, off)
    padded = np.full((inside.shape[0], inside.shape[1] + 2, inside.shape[2] + 2), off, dtype=np.int32)
    lookup = np.full(mask.size + 1, off, dtype=np.int32)
    while True:
        padded[:, 1:-1, 1:-1] = current
        across = np.minimum(np.minimum(padded[:, :, :-2], padded[:, :, 1:-1]), padded[:, :, 2:])  # 3x3 min, separable
        smallest = np.minimum(np.minimum(across[:, :-2], across[:, 1:-1]), across[:, 2:])
        smallest[~inside] = off
        lookup[flat_index[inside]] = smallest[inside]
        for _ in range(3):  # jump to the label's own label: long chains collapse quickly
            smallest = lookup[smallest]
            smallest[~inside] = off
        if np.array_equal(smallest, current):
            labels[window] = np.where(inside, current, -1)
            return labels
        current = smallest
def check_clip_array(clip: np.ndarray, source: str = "the clip") -> None:
    """Raise AliceError unless clip is what the detector reads: uint8 [frames >= 7, size, size, 3]."""
    if not isinstance(clip, np.ndarray) or clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        got = f"{type(clip).__name__} {getattr(clip, 'dtype', '')} {getattr(clip, 'shape', '')}"
        raise AliceError(f"{source} must be a uint8 numpy array [frames, height, width, 3]; got {got}")
    if clip.shape[1] != clip.shape[2]:
        raise AliceError(f"{source} must have square frames for SynthBench; got {clip.shape[1]}x{clip.shape[2]}")
    if clip.shape[0] < MIN_FRAMES:
        raise AliceError(
            f"{source} needs at least {MIN_FRAMES} frames for SynthBench to judge motion; got {clip.shape[0]}"
        )


def analyse_clip(clip: np.ndarray) -> ClipAnalysis:
    """Track the object in a uint8 clip [F, H, W, 3]."""
    check_clip_array(clip)
    frames, size = clip.shape[0], clip.shape[1]
    pixels = clip.astype(np.float32)
    background = np.median(pixels.reshape(frames, -1, 3), axis=1)
    distance = np.linalg.norm(pixels - background[:, None, None, :], axis=-1)
    candidates = distance[distance > FOREGROUND_MIN_DISTANCE]
    # Half the object's contrast: a pixel belongs to the object when the object covers at least half of it.
    core = float(np.percentile(candidates, 90)) if candidates.size else 2 * FOREGROUND_MIN_DISTANCE
    mask = distance > max(FOREGROUND_MIN_DISTANCE, 0.5 * core)
    labels = _label_components(mask)

    roots, blob_areas = np.unique(labels[labels >= 0], return_counts=True)
    blob_frames = roots // (size * size)
    # The object of each frame is its largest blob: sort blobs by (frame, area) and take each frame's last.
    order = np.lexsort((blob_areas, blob_frames))
    largest = order[np.r_[blob_frames[order][1:] != blob_frames[order][:-1], True]] if roots.size else order
    found = blob_frames[largest]
    main_roots = np.full(frames, -2)  # -2 matches no label (background is -1)
    main_roots[found] = roots[largest]
    areas = np.zeros(frames)
    areas[found] = blob_areas[largest]
    typical_area = float(np.median(areas[found])) if found.size else 0.0
    significant = blob_areas >= max(2.0, 0.25 * typical_area)
    blob_counts = np.bincount(blob_frames[significant], minlength=frames)

    centroids = np.full((frames, 2), np.nan)
    colours = np.full((frames, 3), np.nan)
    fills = np.full(frames, np.nan)
    bottom_heaviness = np.full(frames, np.nan)
    if found.size:
        # Per-frame sums over the object's pixels (np.nonzero yields them grouped by frame, in frame order).
        frame_of, ys, xs = np.nonzero(labels == main_roots[:, None, None])
        starts = np.searchsorted(frame_of, found)
        weight = np.clip(distance[frame_of, ys, xs] / core, 0.0, 1.0)  # coverage estimate: sub-pixel centroid
        weight_sum = np.bincount(frame_of, weight, frames)[found]
        centroids[found, 0] = np.bincount(frame_of, weight * xs, frames)[found] / weight_sum + 0.5
        centroids[found, 1] = np.bincount(frame_of, weight * ys, frames)[found] / weight_sum + 0.5
        object_pixels = pixels[frame_of, ys, xs]
        for channel in range(3):
            colours[found, channel] = np.bincount(frame_of, object_pixels[:, channel], frames)[found] / areas[found]
        top = np.minimum.reduceat(ys, starts)
        box_w = np.maximum.reduceat(xs, starts) - np.minimum.reduceat(xs, starts) + 1
        box_h = np.maximum.reduceat(ys, starts) - top + 1
        fills[found] = areas[found] / (box_w * box_h)
        mean_y = np.bincount(frame_of, ys, frames)[found] / areas[found]
        bottom_heaviness[found] = (mean_y + 0.5 - (top + box_h / 2)) / box_h
    return ClipAnalysis(size, frames, blob_counts, areas, centroids, colours, fills, bottom_heaviness)


# ----------------------------------------------------------------------------------------------- per-frame classes


def colour_classes(analysis: ClipAnalysis, palette_size: int = len(COLOURS)) -> np.ndarray:
    """Index into COLOUR_NAMES per frame, among the first palette_size colours (default: the base colours): the
    nearest hue for a coloured blob, white for a bright grey one; -1 where absent or dark grey."""
    classes = np.full(analysis.frames, -1)
    present = analysis.present
    rgb = analysis.colours[present]
    chromatic_palette = np.flatnonzero(~ACHROMATIC[:palette_size])
    hue_gap = np.abs((_hue_degrees(rgb)[:, None] - PALETTE_HUES[None, chromatic_palette] + 180.0) % 360.0 - 180.0)
    chromatic = rgb.max(axis=1) - rgb.min(axis=1) >= MIN_CHROMA
    whites = np.flatnonzero(ACHROMATIC[:palette_size])
    white = whites[0] if whites.size else -1
    bright = rgb.mean(axis=1) >= MIN_WHITE_VALUE
    classes[present] = np.where(chromatic, chromatic_palette[hue_gap.argmin(axis=1)], np.where(bright, white, -1))
    return classes


def shape_classes(analysis: ClipAnalysis) -> np.ndarray:
    """Index into SHAPES per frame; -1 where absent."""
    classes = np.full(analysis.frames, -1)
    present = analysis.present
    features = np.stack([analysis.fills[present], analysis.bottom_heaviness[present]], axis=1)
    prototypes = np.array([SHAPE_PROTOTYPES[s] for s in SHAPES])
    gaps = ((features[:, None, :] - prototypes[None]) / np.array(SHAPE_FEATURE_SCALE)) ** 2
    classes[present] = gaps.sum(axis=2).argmin(axis=1)
    return classes


def _majority(classes: np.ndarray) -> int:
    valid = classes[classes >= 0]
    return int(np.bincount(valid).argmax()) if valid.size else -1


# ----------------------------------------------------------------------------------------------- checks


def check_colour(analysis: ClipAnalysis, colour: str) -> bool:
    """The object's colour class, in most frames, is the intended colour: among the base colours for a base
    colour, among all for an unseen one (see PALETTE_HUES)."""
    palette_size = len(COLOURS) if colour in COLOURS else len(ALL_COLOURS)
    return _majority(colour_classes(analysis, palette_size)) == COLOUR_NAMES.index(colour)


def check_shape(analysis: ClipAnalysis, shape: str) -> bool:
    """The object's silhouette, in most frames, is nearest to the intended shape's."""
    return _majority(shape_classes(analysis)) == SHAPES.index(shape)


def check_direction(analysis: ClipAnalysis, direction: str) -> bool:
    """Straight motion: the fitted displacement along the direction is large, steady (linear in time) and dominant,
    i.e. it beats the opposite direction (positive) and both perpendicular ones (sideways extent <= half of it)."""
    present = analysis.present
    if present.mean() < MIN_PRESENT_FOR_MOTION or present.sum() < 3:
        return False
    t = np.flatnonzero(present).astype(np.float64)
    along_unit = np.array(DIRECTIONS[direction], dtype=np.float64)
    positions = analysis.centroids[present]
    along = positions @ along_unit
    sideways = positions @ along_unit[::-1]
    slope, intercept = np.polyfit(t, along, 1)
    travel = slope * (analysis.frames - 1)
    spread = float(((along - along.mean()) ** 2).sum())
    linearity = 1.0 - float(((along - (slope * t + intercept)) ** 2).sum()) / spread if spread > 0 else 0.0
    return bool(
        travel >= MIN_TRAVEL * analysis.size
        and linearity >= MIN_LINEARITY
        and np.ptp(sideways) <= MAX_SIDEWAYS * travel
    )


def check_bounce(analysis: ClipAnalysis) -> bool:
    """Plausible bouncing: the height reverses only at a common floor, and between floor contacts it follows
    parabolas with one shared downward gravity (joint least squares) without gaining height after a bounce."""
    if not analysis.present.all():
        return False
    size, steps = analysis.size, analysis.frames - 1
    y = analysis.centroids[:, 1]
    if np.ptp(y) < MIN_BOUNCE_HEIGHT * size:
        return False
    floor = y.max()
    interior = np.arange(1, steps)
    reversals = interior[(y[interior] >= y[interior - 1]) & (y[interior] >= y[interior + 1])]  # lowest points
    if reversals.size == 0 or (y[reversals] < floor - FLOOR_TOLERANCE * size).any():
        return False  # no bounce, or the object turned back up in mid-air
    # Flight segments between contacts; a segment needs 3 frames to say anything about gravity.
    bounds = np.concatenate([[-1], reversals, [analysis.frames]])
    segments = [np.arange(a + 1, b) for a, b in zip(bounds[:-1], bounds[1:]) if b - a - 1 >= 3]
    used = sum(len(s) for s in segments)
    if not segments or used < 1 + 2 * len(segments) + 1:  # at least one equation more than unknowns
        return False
    # Unknowns: gravity, then (height, vertical speed) at the start of each segment.
    design = np.zeros((used, 1 + 2 * len(segments)))
    targets = np.zeros(used)
    row = 0
    for index, frames in enumerate(segments):
        t = (frames - frames[0]).astype(np.float64)
        rows = slice(row, row + len(frames))
        design[rows, 0] = 0.5 * t * t
        design[rows, 1 + 2 * index] = 1.0
        design[rows, 2 + 2 * index] = t
        targets[rows] = y[frames]
        row += len(frames)
    solution = np.linalg.lstsq(design, targets, rcond=None)[0]
    gravity = solution[0] * steps**2 / size  # in frame heights per clip^2
    rms = float(np.sqrt(np.mean((design @ solution - targets) ** 2)))
    if not GRAVITY_RANGE[0] <= gravity <= GRAVITY_RANGE[1] or rms > MAX_PARABOLA_RMS * size:
        return False
    # Apex of each fitted parabola (smallest y): restitution <= 1 means no bounce climbs higher than the one before.
    apexes = solution[1::2] - solution[2::2] ** 2 / (2 * solution[0])
    return bool(np.all(np.diff(apexes) >= -FLOOR_TOLERANCE / 3 * size))


def check_motion(analysis: ClipAnalysis, motion: str) -> bool:
    """Dispatch: "bounce" is judged by check_bounce, the four directions by check_direction."""
    return check_bounce(analysis) if motion == "bounce" else check_direction(analysis, motion)


def check_persistence(analysis: ClipAnalysis) -> bool:
    """One persistent object: present in every frame, alone in >= 90% of them, of plausible and steady size,
    and never jumping between frames much further than rendered motion does."""
    if not analysis.present.all():
        return False
    size, frames = analysis.size, analysis.frames
    areas = analysis.areas
    typical = float(np.median(areas))
    if not OBJECT_AREA_RANGE[0] <= typical / size**2 <= OBJECT_AREA_RANGE[1]:
        return False
    if np.mean(analysis.blob_counts == 1) < ONE_BLOB_SHARE:
        return False
    if not np.all((areas >= AREA_RANGE[0] * typical) & (areas <= AREA_RANGE[1] * typical)):
        return False
    steps = np.diff(analysis.centroids, axis=0) * (frames - 1) / ((REFERENCE_FRAMES - 1) * size)
    return bool(np.linalg.norm(steps, axis=1).max() <= MAX_JUMP and np.abs(steps[:, 0]).max() <= MAX_SIDEWAYS_JUMP)


# ----------------------------------------------------------------------------------------------- distribution


def clip_features(analysis: ClipAnalysis) -> np.ndarray:
    """A 14-number summary of a clip for the Frechet distance: presence, blob count, colour, size, silhouette and
    trajectory statistics, each scaled to roughly unit range."""
    size, steps = analysis.size, analysis.frames - 1
    present = analysis.present
    features = np.zeros(14)
    features[0] = present.mean()
    features[1] = np.minimum(analysis.blob_counts, 5).mean()
    if not present.any():
        return features
    features[2:5] = analysis.colours[present].mean(axis=0) / 255.0
    features[5] = math.sqrt(np.median(analysis.areas[present])) / size
    features[6] = np.median(analysis.fills[present])
    features[7] = np.median(analysis.bottom_heaviness[present])
    track = analysis.centroids[present] / size
    if len(track) >= 3:
        features[8] = np.linalg.norm(np.diff(track, axis=0), axis=1).sum()  # path length
        features[9:11] = track[-1] - track[0]
        features[11:13] = np.ptp(track, axis=0)
        features[13] = np.abs(np.diff(track[:, 1], 2)).mean() * steps  # jerkiness / bounce strength
    return features


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, ridge: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [n, d]:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), matrix roots by symmetric eigendecomposition."""
    if len(features_a) < 2 or len(features_b) < 2:
        raise AliceError("the Frechet distance needs at least 2 clips on each side; use more prompts or seeds")
    mean_gap = features_a.mean(axis=0) - features_b.mean(axis=0)
    eye = ridge * np.eye(features_a.shape[1])
    cov_a = np.cov(features_a, rowvar=False) + eye
    cov_b = np.cov(features_b, rowvar=False) + eye
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    return float(mean_gap @ mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
