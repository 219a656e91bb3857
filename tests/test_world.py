"""The procedural world: renderer, captions, prompt parser, held-out prompt set and training batches."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from alice_core.errors import AliceError
from alice_core.world import captions as captions_module
from alice_core.world.captions import (
    COLOUR_WORDS,
    MOTION_PHRASES,
    SHAPE_WORDS,
    caption,
    is_heldout,
    make_training_batch,
    parse_prompt,
    synthbench_prompts,
)
from alice_core.world.render import (
    BACKGROUND_SHADES,
    COLOURS,
    DIRECTIONS,
    MOTIONS,
    SHAPES,
    BackgroundSpec,
    ClipSpec,
    HardExampleWeights,
    ObjectSpec,
    object_positions,
    render_clip,
    sample_clip_spec,
    shape_extents,
)


def _specs(seed: int, n: int, size: int = 64, frames: int = 17, **kwargs) -> list[ClipSpec]:
    rng = np.random.default_rng(seed)
    return [sample_clip_spec(rng, size, frames, **kwargs) for _ in range(n)]


# ----------------------------------------------------------------------------------------------- renderer


@pytest.mark.parametrize(("size", "frames"), [(64, 17), (32, 9)])
def test_render_is_deterministic_and_shaped(size: int, frames: int) -> None:
    first = [render_clip(spec) for spec in _specs(3, 5, size, frames)]
    again = [render_clip(spec) for spec in _specs(3, 5, size, frames)]
    for clip, same in zip(first, again):
        assert clip.dtype == np.uint8 and clip.shape == (frames, size, size, 3)
        np.testing.assert_array_equal(clip, same)
    assert not np.array_equal(first[0], first[1])


def test_object_is_drawn_in_its_palette_colour_on_a_grey_background() -> None:
    obj = ObjectSpec("square", "cyan", 8.0, (20.0, 30.0), (1.0, 0.0), "right")
    clip = render_clip(ClipSpec((obj,), BackgroundSpec(shade="dark grey")))
    x, y = object_positions(obj, 17)[5]
    assert tuple(clip[5, int(y), int(x)]) == COLOURS["cyan"]
    assert tuple(clip[5, 2, 2]) == (BACKGROUND_SHADES["dark grey"],) * 3


def test_palette_is_saturated_or_white_and_far_from_every_background() -> None:
    assert set(COLOURS) >= {"red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "white"}
    assert len(SHAPES) == 3
    palette = np.array(list(COLOURS.values()), dtype=float)
    chroma = palette.max(axis=1) - palette.min(axis=1)
    assert set(chroma) == {255.0, 0.0} and palette[chroma == 0].tolist() == [[255, 255, 255]]  # saturated, or white
    pairwise = np.linalg.norm(palette[:, None] - palette[None], axis=-1)
    assert pairwise[~np.eye(len(palette), dtype=bool)].min() >= 127
    greys = np.array([[v] * 3 for v in BACKGROUND_SHADES.values()], dtype=float)
    assert np.linalg.norm(palette[:, None] - greys[None], axis=-1).min() > 180


def test_straight_motions_cross_a_good_part_of_the_frame_and_stay_inside() -> None:
    for direction, (dx, dy) in DIRECTIONS.items():
        for spec in _specs(4, 25, motion=direction, hard_weights=HardExampleWeights(fast=0.5, small=0.5)):
            obj = spec.objects[0]
            track = object_positions(obj, spec.frames)
            travel = (track[-1] - track[0]) @ np.array([dx, dy])
            assert travel >= 0.3 * spec.size - 1e-9
            assert np.allclose(np.diff(track, axis=0), np.diff(track, axis=0)[0])  # constant velocity
            half_w, up, down = shape_extents(obj.shape, obj.radius)
            assert track[:, 0].min() - half_w >= 0 and track[:, 0].max() + half_w <= spec.size
            assert track[:, 1].min() - up >= 0 and track[:, 1].max() + down <= spec.size


@pytest.mark.parametrize(("size", "frames"), [(64, 17), (32, 9)])
def test_bounces_are_parabolic_between_floor_contacts_and_lose_height(size: int, frames: int) -> None:
    for spec in _specs(5, 30, size, frames, motion="bounce"):
        obj = spec.objects[0]
        y = object_positions(obj, frames)[:, 1]
        contact_y = obj.floor - shape_extents(obj.shape, obj.radius)[2]
        assert y.max() <= contact_y + 1e-9 and y.min() - shape_extents(obj.shape, obj.radius)[1] >= 0
        acceleration = np.diff(y, 2)
        free_flight = np.isclose(acceleration, obj.gravity)
        assert free_flight.sum() >= len(acceleration) // 2  # gravity between contacts ...
        assert (acceleration[~free_flight] < obj.gravity).all()  # ... and upward kicks only at the floor
        assert 1 <= (~free_flight).sum() and 0.65 <= obj.restitution <= 0.9
        lowest = [k for k in range(1, frames - 1) if y[k] >= y[k - 1] and y[k] >= y[k + 1]]
        assert lowest and all(contact_y - y[k] < 0.3 * size for k in lowest)


def test_crossing_objects_overlap_and_the_nearer_one_occludes() -> None:
    rng = np.random.default_rng(6)
    weights = HardExampleWeights(crossing=1.0)
    for _ in range(10):
        spec = sample_clip_spec(rng, hard_weights=weights)
        assert len(spec.objects) == 2 and spec.objects[0].colour != spec.objects[1].colour
        near, far = sorted(spec.objects, key=lambda obj: obj.depth)
        velocities = np.array([near.velocity, far.velocity])
        assert np.allclose(velocities[0], -velocities[1])  # towards each other on one line
        tracks = [object_positions(obj, spec.frames) for obj in (near, far)]
        gaps = np.linalg.norm(tracks[0] - tracks[1], axis=1)
        frame = int(gaps.argmin())
        assert gaps[frame] < near.radius
        x, y = tracks[0][frame]
        assert tuple(render_clip(spec)[frame, int(y), int(x)]) == COLOURS[near.colour]


def test_default_weights_are_the_easy_stage_and_hard_stage_mixes_in_every_hard_case() -> None:
    easy = _specs(7, 200)
    assert all(len(s.objects) == 1 and s.background.texture == "plain" for s in easy)
    assert all(6 <= s.objects[0].radius <= 10 for s in easy)
    assert 0.1 < np.mean([s.objects[0].motion == "bounce" for s in easy]) < 0.3
    hard = _specs(7, 200, hard_weights=HardExampleWeights.hard_stage())
    assert np.mean([len(s.objects) == 2 for s in hard]) > 0.15
    assert np.mean([s.background.texture != "plain" for s in hard]) > 0.2
    assert np.mean([s.objects[0].radius < 6 for s in hard]) > 0.15
    with pytest.raises(AliceError, match="probability"):
        HardExampleWeights(bounce=1.5)


def test_textured_backgrounds_are_low_contrast() -> None:
    for spec in _specs(8, 20, hard_weights=HardExampleWeights(textured=1.0)):
        background = render_clip(ClipSpec((), spec.background, spec.size, spec.frames))
        assert spec.background.texture != "plain"
        assert 12 <= np.ptp(background) <= 25


def test_bad_geometry_is_a_user_error() -> None:
    with pytest.raises(AliceError, match="size"):
        sample_clip_spec(np.random.default_rng(0), size=16)
    with pytest.raises(AliceError, match="frames"):
        sample_clip_spec(np.random.default_rng(0), frames=3)
    with pytest.raises(AliceError, match="shape"):
        ObjectSpec("hexagon", "red", 5.0, (10.0, 10.0), (0.0, 0.0), "left")


# ----------------------------------------------------------------------------------------------- captions


def test_captions_are_deterministic_varied_and_parse_back_to_the_rendered_attributes() -> None:
    specs = _specs(10, 600, hard_weights=HardExampleWeights(bounce=0.3, textured=0.3))
    texts = [caption(spec, np.random.default_rng(i)) for i, spec in enumerate(specs)]
    assert texts == [caption(spec, np.random.default_rng(i)) for i, spec in enumerate(specs)]
    for spec, text in zip(specs, texts):
        obj = spec.objects[0]
        parsed = parse_prompt(text)
        assert (parsed.colour, parsed.shape, parsed.motion) == (obj.colour, obj.shape, obj.motion), text
    words = Counter(w for text in texts for w in text.split())
    for synonyms in (*COLOUR_WORDS.values(), *SHAPE_WORDS.values()):
        assert sum(words[w] > 0 for w in synonyms) >= 2
    assert len(set(texts)) > 500
    assert not any(" a a" in t or t.startswith("a a") or " a e" in t for t in texts)  # "an aqua", "an emerald"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red ball bouncing", ("red", "circle", "bounce")),
        ("a crimson circle hops along the floor", ("red", "circle", "bounce")),
        ("a blue square moving to the left", ("blue", "square", "left")),
        ("a green triangle slides upward", ("green", "triangle", "up")),
        ("A Fuchsia CUBE, sinking.", ("magenta", "square", "down")),
        ("turquoise wedge drifting rightward on a striped background", ("cyan", "triangle", "right")),
        ("a golden disc bouncing up and down", ("yellow", "circle", "bounce")),
        ("something blue", ("blue", None, None)),
        ("a ball going up and down", (None, "circle", None)),  # ambiguous direction, no bounce word
    ],
)
def test_parse_prompt_recognises_synonyms(prompt: str, expected: tuple) -> None:
    parsed = parse_prompt(prompt)
    assert (parsed.colour, parsed.shape, parsed.motion) == expected


def test_every_caption_word_for_an_attribute_is_parsed() -> None:
    for colour, words in COLOUR_WORDS.items():
        assert all(parse_prompt(f"a {w} ball bouncing").colour == colour for w in words)
    for shape, words in SHAPE_WORDS.items():
        assert all(parse_prompt(f"a red {w} bouncing").shape == shape for w in words)
    for motion, phrases in MOTION_PHRASES.items():
        for ing, verb in phrases:
            assert parse_prompt(f"a red ball {ing}").motion == motion
            assert parse_prompt(f"the red ball {verb}").motion == motion


def test_two_object_captions_are_not_scorable_prompts() -> None:
    rng = np.random.default_rng(11)
    spec = sample_clip_spec(rng, hard_weights=HardExampleWeights(crossing=1.0))
    text = caption(spec, rng)
    assert "front" in text or "behind" in text
    with pytest.raises(AliceError, match="more than one object"):
        parse_prompt(text)


# ----------------------------------------------------------------------------------------------- prompt set


def test_heldout_prompts_cover_every_attribute_and_are_pinned() -> None:
    heldout = synthbench_prompts("heldout")
    assert 60 <= len(heldout) <= 100 and len(set(heldout)) == len(heldout)
    parsed = [parse_prompt(p) for p in heldout]
    assert {a.colour for a in parsed} == set(COLOURS)
    assert {a.shape for a in parsed} == set(SHAPES)
    assert {a.motion for a in parsed} == set(MOTIONS)
    assert min(Counter(a.motion for a in parsed).values()) >= 10
    # Changing the vocabulary or the selection changes these strings, which models trained earlier may have seen:
    # update the pin only together with retraining.
    assert hashlib.sha256("\n".join(heldout).encode()).hexdigest()[:16] == "849815262ce29995"


def test_train_check_prompts_are_disjoint_from_heldout() -> None:
    train_check = synthbench_prompts("train_check")
    assert train_check and not any(is_heldout(p) for p in train_check)
    assert all(None not in (a.colour, a.shape, a.motion) for a in map(parse_prompt, train_check))
    with pytest.raises(AliceError, match="split"):
        synthbench_prompts("test")


def test_is_heldout_ignores_case_punctuation_and_spacing() -> None:
    prompt = synthbench_prompts()[0]
    assert is_heldout(prompt) and is_heldout("  " + prompt.upper() + ". ")
    assert not is_heldout(prompt + " slowly")


def test_training_batch_shapes_and_never_a_heldout_caption(monkeypatch: pytest.MonkeyPatch) -> None:
    clips, texts = make_training_batch(np.random.default_rng(12), 6, size=32, frames=9)
    assert clips.shape == (6, 9, 32, 32, 3) and clips.dtype == np.uint8 and len(texts) == 6
    # Force the caption generator to produce a held-out prompt first: the batch must re-word it.
    real_caption = captions_module.caption
    calls = []

    def heldout_first(spec: ClipSpec, rng: np.random.Generator) -> str:
        calls.append(spec)
        return synthbench_prompts()[0] if len(calls) == 1 else real_caption(spec, rng)

    monkeypatch.setattr(captions_module, "caption", heldout_first)
    _, texts = make_training_batch(np.random.default_rng(13), 3)
    assert len(calls) == 4 and not any(is_heldout(t) for t in texts)
