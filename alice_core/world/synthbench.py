"""SynthBench: score a text-to-video generator on fixed prompts with the analytic detector.

run_synthbench calls generate(prompt, seed) for every prompt and seed, checks each clip against the attributes
its prompt names, and compares the generated clips' feature distribution with freshly rendered clips of the same
prompts (Frechet distance). format_table prints per-attribute accuracy with 95% confidence intervals over seeds.
The corruptions at the bottom are the detector's own controls (tests and benchmarks/synthbench_detector.py).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import AliceError
from .captions import PromptAttributes, parse_prompt
from .frame_quality import FrameQuality, frame_quality, mean_frame_quality
from .detector import (
    ClipAnalysis,
    analyse_clip,
    check_clip_array,
    check_colour,
    check_motion,
    check_persistence,
    check_shape,
    clip_features,
    frechet_distance,
)
from .render import MOTIONS, ClipSpec, object_positions, render_clip, sample_clip_spec, shape_extents

# Columns of the result table. wrong_label_motion is the motion check scored against a random wrong motion:
# ~0 for a generator that follows the prompt, about its motion accuracy for one that ignores it.
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "direction", "bounce", "wrong_label_motion", "persistence", "all")
_REFERENCE_STREAM = 7_919  # keeps reference renders independent of anything a generator might seed with


@dataclass(frozen=True)
class ClipScore:
    """Pass / fail per attribute; None where the prompt does not ask for it."""

    colour: bool | None
    shape: bool | None
    direction: bool | None  # straight-motion prompts
    bounce: bool | None  # bounce prompts
    wrong_label_motion: bool | None
    persistence: bool

    @property
    def all(self) -> bool:
        """Everything the prompt asks for, and one persistent object."""
        asked = (self.colour, self.shape, self.direction, self.bounce, self.persistence)
        return all(passed for passed in asked if passed is not None)


def score_clip(clip: np.ndarray, attributes: PromptAttributes, wrong_motion: str | None = None) -> ClipScore:
    """Run every check the attributes call for on one clip; wrong_motion gives the wrong-label baseline."""
    return _score(analyse_clip(clip), attributes, wrong_motion)


def _score(analysis: ClipAnalysis, attributes: PromptAttributes, wrong_motion: str | None) -> ClipScore:
    motion = attributes.motion
    return ClipScore(
        colour=None if attributes.colour is None else check_colour(analysis, attributes.colour),
        shape=None if attributes.shape is None else check_shape(analysis, attributes.shape),
        direction=None if motion in (None, "bounce") else check_motion(analysis, motion),
        bounce=None if motion != "bounce" else check_motion(analysis, motion),
        wrong_label_motion=None if wrong_motion is None else check_motion(analysis, wrong_motion),
        persistence=check_persistence(analysis),
    )


def _t_quantile_975(df: int) -> float:
    """Two-sided 95% Student t quantile (table up to 30 degrees of freedom, Cornish-Fisher expansion beyond)."""
    table = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
             2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
             2.045, 2.042)
    if df <= len(table):
        return table[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class SynthBenchResult:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    scores: tuple[tuple[ClipScore, ...], ...]  # [seed][prompt]
    frechet_distance: float
    quality: tuple[tuple[FrameQuality, ...], ...] = ()  # [seed][prompt]: background RMS, fragments per frame

    def frame_quality(self) -> FrameQuality:
        """Background RMS and fragments per frame, averaged over every clip."""
        clips = [q for seed_quality in self.quality for q in seed_quality]
        return mean_frame_quality(clips) if clips else FrameQuality(math.nan, math.nan)

    def accuracy_per_seed(self, attribute: str) -> np.ndarray:
        """Share of prompts passing the attribute, per seed; nan where no prompt asks for it."""
        if attribute not in ATTRIBUTES:
            raise AliceError(f"unknown SynthBench attribute {attribute!r}; use one of {', '.join(ATTRIBUTES)}")
        rates = []
        for seed_scores in self.scores:
            asked = [getattr(score, attribute) for score in seed_scores]
            asked = [passed for passed in asked if passed is not None]
            rates.append(float(np.mean(asked)) if asked else math.nan)
        return np.array(rates)

    def accuracy(self, attribute: str) -> tuple[float, float]:
        """(mean over seeds, half-width of its 95% t confidence interval; nan with a single seed)."""
        rates = self.accuracy_per_seed(attribute)
        if np.isnan(rates).all():
            return math.nan, math.nan
        if len(rates) < 2:
            return float(rates[0]), math.nan
        half_width = _t_quantile_975(len(rates) - 1) * rates.std(ddof=1) / math.sqrt(len(rates))
        return float(rates.mean()), float(half_width)


def _prompt_stream(seed: int, prompt: str) -> list[int]:
    return [seed, zlib.crc32(prompt.encode())]


def render_reference(attributes: PromptAttributes, seed: int, prompt: str, size: int, frames: int) -> np.ndarray:
    """A freshly rendered clip of what the prompt asks for (unnamed attributes drawn at random)."""
    rng = np.random.default_rng([_REFERENCE_STREAM, *_prompt_stream(seed, prompt)])
    spec = sample_clip_spec(rng, size, frames, colour=attributes.colour, shape=attributes.shape,
                            motion=attributes.motion)
    return render_clip(spec)


def run_synthbench(
    generate: Callable[[str, int], np.ndarray], prompts: Sequence[str], seeds: Sequence[int]
) -> SynthBenchResult:
    """Score generate(prompt, seed) -> uint8 [F, H, W, 3] on every prompt and seed."""
    if not prompts or not seeds:
        raise AliceError("run_synthbench needs at least one prompt and one seed; try synthbench_prompts()")
    parsed = []
    for prompt in prompts:
        attributes = parse_prompt(prompt)
        if attributes.colour is None and attributes.shape is None and attributes.motion is None:
            raise AliceError(f"prompt {prompt!r} names no colour, shape or motion SynthBench knows; "
                             "use synthbench_prompts()")
        parsed.append(attributes)
    scores, quality, generated, reference = [], [], [], []
    for seed in seeds:
        seed_scores, seed_quality = [], []
        for prompt, attributes in zip(prompts, parsed):
            clip = generate(prompt, seed)
            check_clip_array(clip, f"generate({prompt!r}, {seed})")
            wrong = None
            if attributes.motion is not None:
                others = [m for m in MOTIONS if m != attributes.motion]
                wrong = others[np.random.default_rng(_prompt_stream(seed, prompt)).integers(len(others))]
            analysis = analyse_clip(clip)
            seed_scores.append(_score(analysis, attributes, wrong))
            seed_quality.append(frame_quality(clip))
            generated.append(clip_features(analysis))
            rendered = render_reference(attributes, seed, prompt, clip.shape[1], clip.shape[0])
            reference.append(clip_features(analyse_clip(rendered)))
        scores.append(tuple(seed_scores))
        quality.append(tuple(seed_quality))
    distance = frechet_distance(np.array(generated), np.array(reference)) if len(generated) >= 2 else math.nan
    return SynthBenchResult(tuple(prompts), tuple(seeds), tuple(scores), distance, tuple(quality))


def format_table(results: dict[str, SynthBenchResult]) -> str:
    """Markdown table: accuracy in % (mean +- 95% CI half-width over seeds) per attribute, the FD, and frame
    quality (background RMS on 0-255, fragments per frame; renders: 0 and 1.0)."""
    header = ["run", "clips", *ATTRIBUTES, "FD", "bg RMS", "fragments"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        cells = [name, str(len(result.prompts) * len(result.seeds))]
        for attribute in ATTRIBUTES:
            mean, half_width = result.accuracy(attribute)
            if math.isnan(mean):
                cells.append("-")
            elif math.isnan(half_width):
                cells.append(f"{100 * mean:.1f}")
            else:
                cells.append(f"{100 * mean:.1f} ± {100 * half_width:.1f}")
        cells.append(f"{result.frechet_distance:.3f}")
        quality = result.frame_quality()
        cells += [f"{quality.background_rms:.2f}", f"{quality.fragments_per_frame:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- detector controls

CORRUPTIONS: tuple[str, ...] = ("clean", "shuffled", "jittered", "duplicated", "flickering", "noise")


def render_corrupted(spec: ClipSpec, corruption: str, rng: np.random.Generator) -> np.ndarray:
    """Render spec, then break one property the detector must notice.

    shuffled: frames in random order; jittered: each object at a random place every frame; duplicated: a second,
    point-mirrored copy of each object; flickering: the objects vanish in about a third of the frames;
    noise: uniform random pixels.
    """
    size, frames = spec.size, spec.frames
    if corruption == "clean":
        return render_clip(spec)
    if corruption == "shuffled":
        order = rng.permutation(frames)
        while np.array_equal(order, np.arange(frames)):
            order = rng.permutation(frames)
        return render_clip(spec)[order]
    if corruption == "jittered":
        positions = []
        for obj in spec.objects:
            half_w, up, down = shape_extents(obj.shape, obj.radius)
            positions.append(np.stack([rng.uniform(half_w, size - half_w, frames),
                                       rng.uniform(up, size - down, frames)], axis=1))
        return render_clip(spec, positions)
    if corruption == "duplicated":
        trajectories = [object_positions(obj, frames) for obj in spec.objects]
        doubled = ClipSpec(spec.objects * 2, spec.background, size, frames)
        return render_clip(doubled, trajectories + [size - t for t in trajectories])
    if corruption == "flickering":
        video = render_clip(spec)
        empty = render_clip(ClipSpec((), spec.background, size, frames))
        gone = rng.choice(frames, size=max(2, frames // 3), replace=False)
        video[gone] = empty[gone]
        return video
    if corruption == "noise":
        return rng.integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)
    raise AliceError(f"unknown corruption {corruption!r}; use one of {', '.join(CORRUPTIONS)}")
