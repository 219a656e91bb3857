"""Alice's procedural world: rendered clips and captions to train the tiny model on, and SynthBench to score it."""

from .captions import (
    PromptAttributes,
    attribute_probe_prompts,
    caption,
    is_heldout,
    make_training_batch,
    parse_prompt,
    render_attribute_clips,
    synthbench_prompts,
)
from .detector import ClipAnalysis, analyse_clip, clip_features, frechet_distance
from .render import (
    ALL_COLOURS,
    COLOURS,
    MOTIONS,
    SHAPES,
    UNSEEN_COLOURS,
    BackgroundSpec,
    ClipSpec,
    HardExampleWeights,
    ObjectSpec,
    object_positions,
    render_clip,
    sample_clip_spec,
)
from .synthbench import ClipScore, SynthBenchResult, format_table, run_synthbench, score_clip

__all__ = [
    "ALL_COLOURS", "COLOURS", "MOTIONS", "SHAPES", "UNSEEN_COLOURS", "BackgroundSpec", "ClipAnalysis", "ClipScore",
    "ClipSpec", "HardExampleWeights", "ObjectSpec", "PromptAttributes", "SynthBenchResult", "analyse_clip",
    "attribute_probe_prompts", "caption", "clip_features", "format_table", "frechet_distance", "is_heldout",
    "make_training_batch", "object_positions", "parse_prompt", "render_attribute_clips", "render_clip",
    "run_synthbench", "sample_clip_spec", "score_clip", "synthbench_prompts",
]
