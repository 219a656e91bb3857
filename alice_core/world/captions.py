"""Captions for rendered clips, the parser that reads the intended attributes back, and SynthBench's prompt set.

Captions are built from a few templates with several synonyms per colour, shape and motion, so the text encoder
sees varied wordings of each attribute. The held-out prompts are exact strings from the same vocabulary that
training must never show the model: every colour / shape / motion combination they name is still trained on,
under other wordings, so SynthBench measures generalisation to new phrasings, not to unseen attributes.
Unseen attributes are for finetuning: render_attribute_clips and attribute_probe_prompts cover a colour from
UNSEEN_COLOURS, which neither make_training_batch nor SynthBench's prompt sets ever use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import AliceError
from .render import (
    ALL_COLOURS,
    COLOURS,
    MOTIONS,
    REFERENCE_FRAMES,
    REFERENCE_SIZE,
    SHAPES,
    ClipSpec,
    HardExampleWeights,
    ObjectSpec,
    render_clip,
    sample_clip_spec,
)

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "amber", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"),
    "green": ("green", "emerald", "lime"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "cobalt", "sapphire"),
    "purple": ("purple", "violet", "indigo"),
    "magenta": ("magenta", "pink", "fuchsia"),
    "white": ("white", "snowy", "milky"),
}
# Synonyms of the UNSEEN_COLOURS: parsed like the ones above, but only clips rendered in an unseen colour are
# captioned with them, and make_training_batch never renders one.
UNSEEN_COLOUR_WORDS: dict[str, tuple[str, ...]] = {"azure": ("azure", "cerulean")}
_ALL_COLOUR_WORDS = {**COLOUR_WORDS, **UNSEEN_COLOUR_WORDS}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block", "cube"),
    "triangle": ("triangle", "wedge", "pyramid"),
}
# (present participle, third person) phrase pairs, so templates can say "a ball bouncing" or "a ball bounces".
MOTION_PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "right": (
        ("moving to the right", "moves to the right"), ("moving right", "moves right"),
        ("sliding right", "slides right"), ("drifting rightward", "drifts rightward"),
        ("travelling to the right", "travels to the right"), ("gliding to the right", "glides to the right"),
    ),
    "left": (
        ("moving to the left", "moves to the left"), ("moving left", "moves left"),
        ("sliding left", "slides left"), ("drifting leftward", "drifts leftward"),
        ("travelling to the left", "travels to the left"), ("gliding to the left", "glides to the left"),
    ),
    "up": (
        ("moving up", "moves up"), ("moving upward", "moves upward"), ("sliding upward", "slides upward"),
        ("rising", "rises"), ("floating up", "floats up"), ("climbing upward", "climbs upward"),
    ),
    "down": (
        ("moving down", "moves down"), ("moving downward", "moves downward"),
        ("sliding downward", "slides downward"), ("sinking", "sinks"), ("drifting down", "drifts down"),
        ("descending", "descends"),
    ),
    "bounce": (
        ("bouncing", "bounces"), ("bouncing on the floor", "bounces on the floor"),
        ("hopping along the floor", "hops along the floor"), ("bouncing up and down", "bounces up and down"),
        ("jumping on the ground", "jumps on the ground"), ("bouncing off the ground", "bounces off the ground"),
    ),
}
# {thing} = "<colour word> <shape word>", {ing} / {verb} = a motion phrase pair.
SINGLE_TEMPLATES: tuple[str, ...] = (
    "a {thing} {ing}",
    "a {thing} {verb}",
    "the {thing} {verb}",
    "{thing} {ing}",
    "one {thing} {ing}",
    "a single {thing} {verb}",
    "a video of a {thing} {ing}",
    "a {thing} that {verb}",
)
CROSSING_TEMPLATES: tuple[str, ...] = (
    "a {near} {near_ing} passes in front of a {far} {far_ing}",
    "a {far} {far_ing} goes behind a {near} {near_ing}",
)
BACKGROUND_WORDS: dict[str, str] = {"black": "black", "charcoal": "charcoal", "dark grey": "dark grey",
                                    "grey": "grey", "stripes": "striped", "checker": "checkered"}
BACKGROUND_TEMPLATES: tuple[str, ...] = (" on a {bg} background", " against a {bg} backdrop")
BACKGROUND_MENTION_PROBABILITY = 0.3

_COLOUR_OF_WORD = {word: colour for colour, words in _ALL_COLOUR_WORDS.items() for word in words}
_SHAPE_OF_WORD = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}
_BOUNCE_WORDS = {"bounce", "bounces", "bouncing", "bouncy", "hop", "hops", "hopping", "jump", "jumps", "jumping"}
_DIRECTION_OF_WORD = {
    **dict.fromkeys(("right", "rightward", "rightwards"), "right"),
    **dict.fromkeys(("left", "leftward", "leftwards"), "left"),
    **dict.fromkeys(("up", "upward", "upwards", "rise", "rises", "rising", "climb", "climbs", "climbing",
                     "ascend", "ascends", "ascending"), "up"),
    **dict.fromkeys(("down", "downward", "downwards", "sink", "sinks", "sinking", "descend", "descends",
                     "descending"), "down"),
}


@dataclass(frozen=True)
class PromptAttributes:
    """What a single-object prompt asks for; None where the prompt does not say."""

    colour: str | None
    shape: str | None
    motion: str | None  # one of MOTIONS


def _object_phrase(obj: ObjectSpec, rng: np.random.Generator) -> tuple[str, tuple[str, str]]:
    colour_words, shape_words = _ALL_COLOUR_WORDS[obj.colour], SHAPE_WORDS[obj.shape]
    thing = f"{colour_words[rng.integers(len(colour_words))]} {shape_words[rng.integers(len(shape_words))]}"
    phrases = MOTION_PHRASES[obj.motion]
    return thing, phrases[rng.integers(len(phrases))]


def caption(spec: ClipSpec, rng: np.random.Generator) -> str:
    """A random wording of what the clip shows (deterministic given rng)."""
    if len(spec.objects) == 1:
        thing, (ing, verb) = _object_phrase(spec.objects[0], rng)
        text = SINGLE_TEMPLATES[rng.integers(len(SINGLE_TEMPLATES))].format(thing=thing, ing=ing, verb=verb)
    elif len(spec.objects) == 2:
        near, far = sorted(spec.objects, key=lambda obj: obj.depth)
        (near_thing, (near_ing, _)), (far_thing, (far_ing, _)) = _object_phrase(near, rng), _object_phrase(far, rng)
        template = CROSSING_TEMPLATES[rng.integers(len(CROSSING_TEMPLATES))]
        text = template.format(near=near_thing, near_ing=near_ing, far=far_thing, far_ing=far_ing)
    else:
        raise AliceError(f"captions describe one or two objects; this clip has {len(spec.objects)}")
    if rng.random() < BACKGROUND_MENTION_PROBABILITY:
        background = spec.background
        key = background.shade if background.texture == "plain" else background.texture
        text += BACKGROUND_TEMPLATES[rng.integers(len(BACKGROUND_TEMPLATES))].format(bg=BACKGROUND_WORDS[key])
    return _with_articles(text)


def _with_articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)  # "an aqua ball", "an emerald cube"


def _words(prompt: str) -> list[str]:
    return re.findall(r"[a-z]+", prompt.lower())


def parse_prompt(prompt: str) -> PromptAttributes:
    """The colour, shape and motion a single-object prompt names, recognising every synonym captions use."""
    words = _words(prompt)
    colours = [_COLOUR_OF_WORD[w] for w in words if w in _COLOUR_OF_WORD]
    shapes = [_SHAPE_OF_WORD[w] for w in words if w in _SHAPE_OF_WORD]
    if len(colours) > 1 or len(shapes) > 1:
        raise AliceError(f"prompt {prompt!r} names more than one object; SynthBench scores single-object prompts")
    if any(w in _BOUNCE_WORDS for w in words):
        motion = "bounce"  # "bouncing up and down" names directions too; the bounce word decides
    else:
        directions = {_DIRECTION_OF_WORD[w] for w in words if w in _DIRECTION_OF_WORD}
        motion = directions.pop() if len(directions) == 1 else None
    return PromptAttributes(colours[0] if colours else None, shapes[0] if shapes else None, motion)


# ----------------------------------------------------------------------------------------------- prompt set


def _normalise(text: str) -> str:
    return " ".join(_words(text))


def _fixed_prompt(colour: str, shape: str, motion: str, variant: int) -> str:
    """One wording chosen by arithmetic on variant (no RNG), so the prompt set never drifts with numpy versions."""
    colour_words, shape_words, phrases = _ALL_COLOUR_WORDS[colour], SHAPE_WORDS[shape], MOTION_PHRASES[motion]
    ing, verb = phrases[(variant // 2) % len(phrases)]
    thing = f"{colour_words[variant % len(colour_words)]} {shape_words[(variant // 3) % len(shape_words)]}"
    return _with_articles(SINGLE_TEMPLATES[variant % len(SINGLE_TEMPLATES)].format(thing=thing, ing=ing, verb=verb))


def _build_prompt_sets() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Held-out: every (colour, motion) pair with two of the three shapes (90 prompts, each colour 10x, each shape
    30x, each motion 18x). Train-check: every (colour, motion) pair with the remaining shape (45 prompts)."""
    colours, motions = list(COLOURS), list(MOTIONS)
    heldout: list[str] = []
    train_check: list[str] = []
    for c, colour in enumerate(colours):
        for m, motion in enumerate(motions):
            skipped = (c + m) % len(SHAPES)
            for s, shape in enumerate(SHAPES):
                variant = 7 * c + 11 * m + 5 * s
                if s != skipped:
                    heldout.append(_fixed_prompt(colour, shape, motion, variant))
                else:
                    train_check.append(_fixed_prompt(colour, shape, motion, variant + 1))
    return tuple(heldout), tuple(train_check)


_HELDOUT_PROMPTS, _TRAIN_CHECK_PROMPTS = _build_prompt_sets()
_HELDOUT_NORMALISED = frozenset(_normalise(p) for p in _HELDOUT_PROMPTS)


def synthbench_prompts(split: str = "heldout") -> list[str]:
    """SynthBench's fixed single-object prompts.

    "heldout": 90 exact strings training never sees (make_training_batch rejects them; see is_heldout).
    "train_check": 45 prompts worded like training captions, for checking fit on the training distribution.
    """
    if split == "heldout":
        return list(_HELDOUT_PROMPTS)
    if split == "train_check":
        return list(_TRAIN_CHECK_PROMPTS)
    raise AliceError(f"unknown SynthBench split {split!r}; use 'heldout' or 'train_check'")


def is_heldout(text: str) -> bool:
    """True if text is a held-out SynthBench prompt (ignoring case, punctuation and spacing)."""
    return _normalise(text) in _HELDOUT_NORMALISED


def make_training_batch(
    rng: np.random.Generator,
    n: int,
    size: int = REFERENCE_SIZE,
    frames: int = REFERENCE_FRAMES,
    hard_weights: HardExampleWeights | None = None,
    focus: Sequence[PromptAttributes] = (),
    focus_fraction: float = 0.0,
) -> tuple[np.ndarray, list[str]]:
    """n rendered clips (uint8 [n, frames, size, size, 3]) and captions, none of them a held-out prompt.

    focus: attribute sets (e.g. of the prompts a model gets wrong) that a `focus_fraction` of the clips render
    (hard-example mining); their captions are other wordings, never the held-out prompt strings."""
    clips = np.empty((n, frames, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    for index in range(n):
        if focus and rng.random() < focus_fraction:  # drawn only with a focus: other runs keep their stream
            wanted = focus[rng.integers(len(focus))]
            spec = sample_clip_spec(rng, size, frames, hard_weights, colour=wanted.colour, shape=wanted.shape,
                                    motion=wanted.motion)
        else:
            spec = sample_clip_spec(rng, size, frames, hard_weights)
        clips[index] = render_clip(spec)
        text = caption(spec, rng)
        while is_heldout(text):  # re-word rather than re-sample, so the attribute distribution is unchanged
            text = caption(spec, rng)
        captions.append(text)
    return clips, captions


# ----------------------------------------------------------------------------------------------- one colour


def _check_known_colour(colour: str) -> None:
    if colour not in ALL_COLOURS:
        raise AliceError(f"unknown colour {colour!r}; use one of {', '.join(ALL_COLOURS)}")


def attribute_probe_prompts(colour: str = "azure") -> list[str]:
    """Fixed single-object prompts (no RNG) for scoring one colour with run_synthbench: one per shape and motion
    pair (15), naming the colour with each of its synonyms in turn. render_attribute_clips never captions a clip
    with one of them, so they stay held out from a finetune on those clips."""
    _check_known_colour(colour)
    return [
        _fixed_prompt(colour, shape, motion, 5 * s + 4 * m)
        for s, shape in enumerate(SHAPES)
        for m, motion in enumerate(MOTIONS)
    ]


def render_attribute_clips(
    rng: np.random.Generator,
    n: int,
    size: int = REFERENCE_SIZE,
    frames: int = REFERENCE_FRAMES,
    colour: str = "azure",
    shapes: Sequence[str] | None = None,
    motions: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """n single-object clips in one colour on plain backgrounds (uint8 [n, frames, size, size, 3]) and varied
    captions, for finetuning on that colour; deterministic given rng. shapes / motions restrict the shapes and
    motions drawn (default: all of them), uniformly."""
    _check_known_colour(colour)
    shape_pool = SHAPES if shapes is None else tuple(shapes)
    motion_pool = MOTIONS if motions is None else tuple(motions)
    if not shape_pool or not motion_pool:
        raise AliceError("render_attribute_clips needs at least one shape and one motion; pass None for all of them")
    probes = frozenset(_normalise(p) for p in attribute_probe_prompts(colour))
    clips = np.empty((n, frames, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    for index in range(n):
        shape, motion = str(rng.choice(shape_pool)), str(rng.choice(motion_pool))
        spec = sample_clip_spec(rng, size, frames, colour=colour, shape=shape, motion=motion)
        clips[index] = render_clip(spec)
        text = caption(spec, rng)
        while _normalise(text) in probes:  # keep the probe prompts held out
            text = caption(spec, rng)
        captions.append(text)
    return clips, captions
