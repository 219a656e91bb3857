"""SynthBench's detector is tested like an instrument: right on clean renders, failing on broken ones."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from alice_core.errors import AliceError
from alice_core.world.captions import PromptAttributes, parse_prompt, synthbench_prompts
from alice_core.world.detector import (
    analyse_clip,
    check_bounce,
    check_colour,
    check_motion,
    check_persistence,
    check_shape,
    clip_features,
    frechet_distance,
)
from alice_core.world.render import (
    MOTIONS,
    BackgroundSpec,
    ClipSpec,
    HardExampleWeights,
    ObjectSpec,
    bounce_heights,
    render_clip,
    sample_clip_spec,
)
from alice_core.world.synthbench import (
    _t_quantile_975,
    format_table,
    render_corrupted,
    run_synthbench,
    score_clip,
)

# Every hard single-object case mixed in, and bounces over-represented so each check sees enough of them.
MIXED = HardExampleWeights(bounce=0.4, fast=0.25, small=0.25, textured=0.3)


def _scored(corruption: str, n: int, seed: int, size: int = 64, frames: int = 17) -> list[dict[str, bool]]:
    """Per clip: each check against the rendered (true) attributes, after the corruption."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        spec = sample_clip_spec(rng, size, frames, MIXED)
        obj = spec.objects[0]
        analysis = analyse_clip(render_corrupted(spec, corruption, rng))
        rows.append({
            "colour": check_colour(analysis, obj.colour),
            "shape": check_shape(analysis, obj.shape),
            "motion": check_motion(analysis, obj.motion),
            "wrong_motions": [check_motion(analysis, m) for m in MOTIONS if m != obj.motion],
            "persistence": check_persistence(analysis),
        })
    return rows


def _rate(rows: list[dict], key: str) -> float:
    return float(np.mean([row[key] for row in rows]))


@pytest.fixture(scope="module")
def clean_rows() -> list[dict]:
    return _scored("clean", 200, seed=1)


@pytest.mark.parametrize("attribute", ["colour", "shape", "motion", "persistence"])
def test_clean_clips_pass_each_attribute(clean_rows: list[dict], attribute: str) -> None:
    assert _rate(clean_rows, attribute) >= 0.95


def test_clean_clips_fail_every_wrong_motion_label(clean_rows: list[dict]) -> None:
    wrong = np.array([row["wrong_motions"] for row in clean_rows])
    assert wrong.mean() <= 0.02 and wrong.mean(axis=0).max() <= 0.05


def test_shuffled_clips_fail_motion_but_keep_colour_and_shape() -> None:
    rows = _scored("shuffled", 100, seed=2)
    assert _rate(rows, "motion") <= 0.05
    assert _rate(rows, "colour") >= 0.95 and _rate(rows, "shape") >= 0.95


def test_jittered_clips_fail_motion_and_persistence() -> None:
    rows = _scored("jittered", 100, seed=3)
    assert _rate(rows, "motion") <= 0.05
    assert _rate(rows, "persistence") <= 0.05


@pytest.mark.parametrize("corruption", ["duplicated", "flickering"])
def test_duplicated_or_flickering_objects_fail_persistence(corruption: str) -> None:
    assert _rate(_scored(corruption, 60, seed=4), "persistence") <= 0.05


def test_noise_passes_nothing_but_chance_shape() -> None:
    rows = _scored("noise", 30, seed=5)
    assert _rate(rows, "colour") == 0 and _rate(rows, "motion") == 0 and _rate(rows, "persistence") == 0


def test_small_clips_are_judged_like_large_ones() -> None:
    clean = _scored("clean", 100, seed=6, size=32, frames=9)
    for attribute in ("colour", "shape", "motion", "persistence"):
        assert _rate(clean, attribute) >= 0.95, attribute
    assert _rate(_scored("shuffled", 60, seed=7, size=32, frames=9), "motion") <= 0.05


def _bounce_spec(restitution: float, height: float) -> ObjectSpec:
    return ObjectSpec("circle", "red", 6.0, (32.0, 57.0 - height), (0.0, 0.0), "bounce",
                      gravity=2.0, restitution=restitution, floor=63.0)


def test_bounce_check_rejects_implausible_physics() -> None:
    background = BackgroundSpec()
    plausible = _bounce_spec(0.8, 36.0)
    assert check_bounce(analyse_clip(render_clip(ClipSpec((plausible,), background))))
    gaining = _bounce_spec(1.5, 6.0)  # every bounce higher than the last
    y = bounce_heights(57.0 - 6.0, 0.0, 2.0, 1.5, 57.0, 17)[0]
    assert y.min() > 7 and np.ptp(y) > 20  # stays in frame and moves enough to be judged
    assert not check_bounce(analyse_clip(render_clip(ClipSpec((gaining,), background))))
    # Down and up at constant speed: reverses at the floor, but without gravity.
    zigzag_y = 57.0 - 4.5 * np.abs(np.arange(17) - 8.0)
    zigzag = [np.stack([np.full(17, 32.0), zigzag_y], axis=1)]
    assert not check_bounce(analyse_clip(render_clip(ClipSpec((plausible,), background), zigzag)))
    # Ballistic, but the second bounce happens in mid-air, 17 px above the first floor contact.
    y = _heights_with_floors(20.0, gravity=2.5, restitution=0.8, floors=(57.0, 40.0))
    assert np.ptp(y) > 30 and (np.diff(np.sign(np.diff(y))) < 0).sum() == 2  # two contacts in view
    mid_air = [np.stack([np.full(17, 32.0), y], axis=1)]
    assert not check_bounce(analyse_clip(render_clip(ClipSpec((plausible,), background), mid_air)))


def _heights_with_floors(y0: float, gravity: float, restitution: float, floors: tuple[float, ...]) -> np.ndarray:
    """Fine-step ballistic simulation where the n-th contact happens at floors[n] (the last floor repeats)."""
    y, vy, contacts, heights = y0, 0.0, 0, []
    substeps = 1000
    for step in range(16 * substeps + 1):
        if step % substeps == 0:
            heights.append(y)
        vy += gravity / substeps
        y += vy / substeps
        floor = floors[min(contacts, len(floors) - 1)]
        if y >= floor and vy > 0:
            y, vy, contacts = floor, -restitution * vy, contacts + 1
    return np.array(heights)


def _features(corruption: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([clip_features(analyse_clip(render_corrupted(sample_clip_spec(rng), corruption, rng)))
                     for _ in range(n)])


def test_frechet_distance_separates_renders_from_broken_clips() -> None:
    reference = _features("clean", 100, seed=8)
    same_world = frechet_distance(_features("clean", 100, seed=9), reference)
    assert same_world < 0.2
    assert frechet_distance(_features("shuffled", 100, seed=10), reference) > 10 * same_world + 1.0
    assert frechet_distance(_features("noise", 40, seed=11), reference) > 10 * same_world + 1.0
    with pytest.raises(AliceError, match="at least 2"):
        frechet_distance(reference[:1], reference)


def test_frechet_distance_of_identical_gaussians_is_zero_and_grows_with_the_mean_gap() -> None:
    samples = np.random.default_rng(12).normal(size=(500, 4))
    assert abs(frechet_distance(samples, samples)) < 1e-6
    assert frechet_distance(samples + 2.0, samples) == pytest.approx(16.0, rel=1e-6)


def _render_prompt(corruption: str):
    def generate(prompt: str, seed: int) -> np.ndarray:
        attributes = parse_prompt(prompt)
        rng = np.random.default_rng([seed, zlib.crc32(prompt.encode())])
        spec = sample_clip_spec(rng, colour=attributes.colour, shape=attributes.shape, motion=attributes.motion)
        return render_corrupted(spec, corruption, rng)

    return generate


def _ignore_prompt(prompt: str, seed: int) -> np.ndarray:
    return render_clip(sample_clip_spec(np.random.default_rng([seed, zlib.crc32(prompt.encode()), 1])))


def test_run_synthbench_scores_a_faithful_generator_perfectly_and_a_prompt_blind_one_near_chance() -> None:
    prompts = synthbench_prompts()[::3][:20]  # 20 prompts, every motion
    faithful = run_synthbench(_render_prompt("clean"), prompts, seeds=[0, 1, 2])
    for attribute in ("colour", "shape", "direction", "bounce", "persistence", "all"):
        assert faithful.accuracy(attribute)[0] == 1.0
    assert faithful.accuracy("wrong_label_motion")[0] == 0.0
    assert faithful.frechet_distance < 0.5
    blind = run_synthbench(_ignore_prompt, prompts, seeds=[0, 1, 2])
    assert blind.accuracy("colour")[0] < 0.5 and blind.accuracy("all")[0] < 0.2
    # Blind to the prompt, its motion passes about as often under a wrong label as under the right one.
    assert abs(blind.accuracy("wrong_label_motion")[0] - blind.accuracy("direction")[0]) < 0.3
    table = format_table({"faithful": faithful, "blind": blind})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | clips | colour")
    assert "| faithful | 60 | 100.0 ± 0.0 |" in table


def test_confidence_interval_uses_student_t_over_seeds() -> None:
    result = run_synthbench(_render_prompt("jittered"), synthbench_prompts()[:4], seeds=[0, 1])
    mean, half_width = result.accuracy("colour")
    assert mean == 1.0 and half_width == 0.0
    assert _t_quantile_975(1) == 12.706 and _t_quantile_975(40) == pytest.approx(2.021, abs=2e-3)
    assert _t_quantile_975(200) == pytest.approx(1.972, abs=2e-3)
    single = run_synthbench(_render_prompt("clean"), synthbench_prompts()[:4], seeds=[0])
    assert np.isnan(single.accuracy("colour")[1])


def test_run_synthbench_rejects_bad_generators_and_prompts() -> None:
    with pytest.raises(AliceError, match="uint8"):
        run_synthbench(lambda prompt, seed: np.zeros((17, 64, 64, 3), np.float32), ["a red ball bouncing"], [0])
    with pytest.raises(AliceError, match="names no colour"):
        run_synthbench(_render_prompt("clean"), ["a photo of a cat"], [0])


def test_score_clip_skips_attributes_the_prompt_does_not_name() -> None:
    clip = _render_prompt("clean")("a red ball bouncing", 0)
    score = score_clip(clip, PromptAttributes(colour="red", shape=None, motion="bounce"), wrong_motion="left")
    assert score.colour and score.shape is None and score.direction is None and score.bounce
    assert score.wrong_label_motion is False and score.all
