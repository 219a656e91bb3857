"""The unseen colour (azure): rendered, captioned, parsed and detected, but never in the default training data or
SynthBench's standard prompt sets, so LoRA finetuning can be tested on an attribute the model never saw."""

from __future__ import annotations

import dataclasses
import hashlib
import zlib

import numpy as np
import pytest

from alice_core.errors import AliceError
from alice_core.world.captions import (
    COLOUR_WORDS,
    UNSEEN_COLOUR_WORDS,
    attribute_probe_prompts,
    make_training_batch,
    parse_prompt,
    render_attribute_clips,
    synthbench_prompts,
)
from alice_core.world.detector import ClipAnalysis, analyse_clip, check_colour, check_motion, check_shape
from alice_core.world.render import (
    COLOURS,
    MOTIONS,
    SHAPES,
    UNSEEN_COLOURS,
    BackgroundSpec,
    ClipSpec,
    HardExampleWeights,
    ObjectSpec,
    render_clip,
    sample_clip_spec,
)
from alice_core.world.synthbench import run_synthbench

AZURE_WORDS = set(UNSEEN_COLOUR_WORDS["azure"])
PROBE_PIN = "200fa14a8f468b93"  # sha256 prefix of the azure probe prompts
# Every hard single-object case: small and fast objects, textured backgrounds, bounces.
MIXED = HardExampleWeights(bounce=0.4, fast=0.25, small=0.25, textured=0.3)


def _azure_pixel_count(clips: np.ndarray) -> int:
    """Saturated pixels strictly between cyan and blue (B > G > R, both gaps a clear share of the chroma); base
    colours over grey keep G == B (cyan) or R == G (blue) up to rounding, purple has G below R, azure over grey has
    both gaps ~half."""
    rgb = clips.reshape(-1, 3).astype(np.int32)
    chroma = rgb.max(axis=1) - rgb.min(axis=1)
    blue_gap, green_gap = rgb[:, 2] - rgb[:, 1], rgb[:, 1] - rgb[:, 0]
    return int(np.sum((chroma >= 40) & (blue_gap > chroma // 4) & (green_gap > chroma // 4)))


def _words(texts: list[str]) -> set[str]:
    return {w.strip(".,").lower() for text in texts for w in text.split()}


# ----------------------------------------------------------------------------------------------- render


def test_azure_renders_in_its_rgb_and_unknown_colours_name_it() -> None:
    assert UNSEEN_COLOURS == {"azure": (0, 128, 255)} and not set(UNSEEN_COLOURS) & set(COLOURS)
    obj = ObjectSpec("square", "azure", 8.0, (20.0, 30.0), (1.0, 0.0), "right")
    clip = render_clip(ClipSpec((obj,), BackgroundSpec("black"), 64, 9))
    assert tuple(clip[4, 30, 24]) == (0, 128, 255)  # centre at x = 24 in frame 4
    assert tuple(clip[4, 5, 5]) == (16, 16, 16)
    with pytest.raises(AliceError, match="azure"):
        ObjectSpec("square", "brown", 8.0, (20.0, 30.0), (1.0, 0.0), "right")


def test_random_clip_specs_only_draw_base_colours() -> None:
    rng = np.random.default_rng(0)
    for weights in (HardExampleWeights(), HardExampleWeights.hard_stage()):
        colours = [obj.colour for _ in range(1500) for obj in sample_clip_spec(rng, 32, 9, weights).objects]
        assert set(colours) == set(COLOURS)


def test_default_training_batches_never_show_or_name_azure() -> None:
    clips, texts = make_training_batch(np.random.default_rng(1), 300, 32, 9)
    assert _azure_pixel_count(clips) == 0
    assert not _words(texts) & AZURE_WORDS
    assert all(parse_prompt(text).colour in COLOURS for text in texts)
    # Crossing objects blend cyan into blue at their edges, so the hard stage is checked on its captions only.
    _, hard_texts = make_training_batch(np.random.default_rng(2), 200, 32, 9, HardExampleWeights.hard_stage())
    assert not _words(hard_texts) & AZURE_WORDS
    # Control: the pixel test does see azure.
    azure_clips, _ = render_attribute_clips(np.random.default_rng(3), 3, 32, 9)
    assert _azure_pixel_count(azure_clips) > 3 * 9 * 10


# ----------------------------------------------------------------------------------------------- captions


@pytest.mark.parametrize("word", ["azure", "Cerulean"])
def test_parse_prompt_reads_azure_synonyms(word: str) -> None:
    parsed = parse_prompt(f"a {word} wedge slides left.")
    assert (parsed.colour, parsed.shape, parsed.motion) == ("azure", "triangle", "left")


def test_base_caption_vocabulary_has_no_azure_word() -> None:
    assert not {w for words in COLOUR_WORDS.values() for w in words} & AZURE_WORDS
    standard = synthbench_prompts("heldout") + synthbench_prompts("train_check")
    assert not _words(standard) & AZURE_WORDS


def test_probe_prompts_cover_every_shape_and_motion_once_and_are_pinned() -> None:
    probes = attribute_probe_prompts("azure")
    parsed = [parse_prompt(p) for p in probes]
    assert {a.colour for a in parsed} == {"azure"}
    assert sorted((a.shape, a.motion) for a in parsed) == sorted((s, m) for s in SHAPES for m in MOTIONS)
    assert _words(probes) >= AZURE_WORDS and len(set(probes)) == len(probes)
    # Finetuning results are reported on these strings: change them only knowingly.
    assert hashlib.sha256("\n".join(probes).encode()).hexdigest()[:16] == PROBE_PIN
    with pytest.raises(AliceError, match="unknown colour 'brown'"):
        attribute_probe_prompts("brown")



def test_attribute_clips_are_deterministic_azure_varied_and_keep_probes_held_out() -> None:
    clips, texts = render_attribute_clips(np.random.default_rng(4), 60, 32, 9)
    again, same_texts = render_attribute_clips(np.random.default_rng(4), 60, 32, 9)
    assert clips.dtype == np.uint8 and clips.shape == (60, 9, 32, 32, 3)
    np.testing.assert_array_equal(clips, again)
    assert texts == same_texts and len(set(texts)) >= 50
    parsed = [parse_prompt(text) for text in texts]
    assert {a.colour for a in parsed} == {"azure"}
    assert {a.shape for a in parsed} == set(SHAPES) and {a.motion for a in parsed} == set(MOTIONS)
    assert _words(texts) >= AZURE_WORDS
    assert not set(texts) & set(attribute_probe_prompts("azure"))
    for clip in clips:  # plain background: a single grey level wherever the object is not
        grey = clip[(clip.max(axis=-1) == clip.min(axis=-1))]
        assert len(np.unique(grey[:, 0])) == 1


def test_attribute_clips_respect_shape_and_motion_restrictions() -> None:
    clips, texts = render_attribute_clips(np.random.default_rng(5), 8, 64, 17, shapes=["triangle"], motions=["bounce"])
    for clip, text in zip(clips, texts):
        parsed = parse_prompt(text)
        assert (parsed.colour, parsed.shape, parsed.motion) == ("azure", "triangle", "bounce")
        analysis = analyse_clip(clip)
        assert check_shape(analysis, "triangle") and check_motion(analysis, "bounce")
    with pytest.raises(AliceError, match="at least one shape"):
        render_attribute_clips(np.random.default_rng(5), 2, shapes=[])
    with pytest.raises(AliceError, match="unknown colour"):
        render_attribute_clips(np.random.default_rng(5), 2, colour="brown")


# ----------------------------------------------------------------------------------------------- detector


def _colour_rate(colour: str, judged_as: str, size: int, frames: int, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    specs = [sample_clip_spec(rng, size, frames, MIXED, colour=colour) for _ in range(n)]
    return float(np.mean([check_colour(analyse_clip(render_clip(spec)), judged_as) for spec in specs]))


@pytest.mark.parametrize(("size", "frames"), [(32, 9), (64, 17)])
def test_check_colour_recognises_azure_and_rejects_cyan_and_blue(size: int, frames: int) -> None:
    assert _colour_rate("azure", "azure", size, frames, 200, seed=6) >= 0.95
    assert _colour_rate("cyan", "azure", size, frames, 100, seed=7) <= 0.05
    assert _colour_rate("blue", "azure", size, frames, 100, seed=8) <= 0.05


def _analysis_of_colour(rgb: tuple[int, int, int]) -> ClipAnalysis:
    frames = 9
    return ClipAnalysis(
        size=32, frames=frames, blob_counts=np.ones(frames, dtype=int), areas=np.full(frames, 40.0),
        centroids=np.full((frames, 2), 16.0), colours=np.tile(np.array(rgb, dtype=float), (frames, 1)),
        fills=np.full(frames, 0.8), bottom_heaviness=np.zeros(frames),
    )


@pytest.mark.parametrize(
    ("rgb", "passes"),
    [
        # Hue ~221 degrees: azure among all hues, and still blue among the base hues (decision unchanged).
        ((0, 85, 255), {"azure", "blue"}),
        # Hue ~199 degrees: azure, and still cyan among the base hues.
        ((0, 170, 255), {"azure", "cyan"}),
        # Hue ~192 degrees: nearer cyan (180) than azure (210).
        ((0, 200, 255), {"cyan"}),
        ((0, 0, 255), {"blue"}),
        ((255, 128, 0), {"orange"}),
        ((128, 0, 255), {"purple"}),
        ((255, 255, 255), {"white"}),
        ((200, 200, 200), {"white"}),  # a bright grey blob: white, the only colour without a hue
        ((90, 90, 90), set()),  # a dark grey blob has no colour
    ],
)
def test_check_colour_judges_base_colours_among_base_colours_and_azure_among_all(rgb, passes: set[str]) -> None:
    analysis = _analysis_of_colour(rgb)
    assert {c for c in (*COLOURS, *UNSEEN_COLOURS) if check_colour(analysis, c)} == passes


# ----------------------------------------------------------------------------------------------- SynthBench


def _generator(colour_override: str | None):
    """Renders what the prompt asks for, in colour_override instead of the prompt's colour when given."""

    def generate(prompt: str, seed: int) -> np.ndarray:
        attributes = parse_prompt(prompt)
        rng = np.random.default_rng([seed, zlib.crc32(prompt.encode())])
        spec = sample_clip_spec(rng, 32, 9, colour=attributes.colour, shape=attributes.shape,
                                motion=attributes.motion)
        if colour_override is not None:
            spec = dataclasses.replace(
                spec, objects=tuple(dataclasses.replace(obj, colour=colour_override) for obj in spec.objects)
            )
        return render_clip(spec)

    return generate


def test_synthbench_scores_azure_probes_right_only_when_the_clip_is_azure() -> None:
    probes = attribute_probe_prompts("azure")
    faithful = run_synthbench(_generator(None), probes, seeds=[0, 1, 2])
    for attribute in ("colour", "shape", "direction", "bounce", "persistence"):
        assert faithful.accuracy(attribute)[0] >= 0.95, attribute
    for wrong in ("cyan", "blue"):
        recoloured = run_synthbench(_generator(wrong), probes, seeds=[0, 1, 2])
        assert recoloured.accuracy("colour")[0] <= 0.05
        assert recoloured.accuracy("shape")[0] >= 0.95  # only the colour is wrong
