"""SynthBench's frame-quality measure against renders (0 and 1.0), corrupted renders, and scipy's labelling."""

import numpy as np
import pytest
from scipy import ndimage

from alice_core.world import render_clip, run_synthbench, sample_clip_spec, synthbench_prompts
from alice_core.world.frame_quality import frame_quality
from alice_core.world.synthbench import render_corrupted


def _specs(size, frames, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_clip_spec(rng, size, frames) for _ in range(n)]


@pytest.mark.parametrize("size,frames", [(32, 9), (64, 17)])
def test_renders_have_a_clean_background_and_one_fragment_per_frame(size, frames):
    for spec in _specs(size, frames):
        quality = frame_quality(render_clip(spec))
        assert quality.background_rms == 0.0 and quality.fragments_per_frame == 1.0


def _object_mask(clip):
    """Pixels that differ from the clip's plain background in the clean render (the object and its soft edge)."""
    background = np.median(clip.reshape(-1, 3), axis=0)
    return (clip != background).any(axis=-1)


def test_background_noise_is_measured_as_its_rms_on_the_0_255_scale():
    rng = np.random.default_rng(1)
    for spec in _specs(32, 9):
        clip = render_clip(spec)
        near_object = ndimage.binary_dilation(_object_mask(clip), structure=np.ones((1, 5, 5)))
        noise = np.where(near_object[..., None], 0, rng.normal(0, 5.0, clip.shape)).round()
        noisy = np.clip(clip + noise, 0, 255).astype(np.uint8)
        want = np.sqrt(np.mean((noisy.astype(float) - clip)[~near_object] ** 2))  # independent: known background
        got = frame_quality(noisy).background_rms
        assert got == pytest.approx(want, rel=0.05) and 4.5 < got < 5.5
        assert frame_quality(noisy).fragments_per_frame == 1.0  # faint noise is not an object


def test_broken_and_doubled_objects_count_their_fragments():
    rng = np.random.default_rng(2)
    for spec in _specs(64, 17):
        clip = render_clip(spec)
        background = np.median(clip.reshape(-1, 3), axis=0)
        broken = clip.copy()
        mask = _object_mask(clip)
        for f in range(clip.shape[0]):  # cut each frame's object into four along its centre lines
            ys, xs = np.nonzero(mask[f])
            cy, cx = int(ys.mean()), int(xs.mean())
            broken[f, cy - 1:cy + 2, :] = background
            broken[f, :, cx - 1:cx + 2] = background
        # Independent count: scipy's 8-connected labelling of the pixels far from the background colour.
        far = np.linalg.norm(broken.astype(float) - background, axis=-1) > 60
        want = np.mean([(np.bincount(ndimage.label(far[f], np.ones((3, 3)))[0].ravel())[1:] >= 0.002 * 64 * 64).sum()
                        for f in range(clip.shape[0])])
        got = frame_quality(broken).fragments_per_frame
        assert got == pytest.approx(want) and got > 2.0
        doubled = frame_quality(render_corrupted(spec, "duplicated", rng)).fragments_per_frame
        assert 1.2 < doubled <= 2.0


def test_speckled_backgrounds_raise_the_rms_when_faint_and_the_fragments_when_strong():
    # 2x2-pixel blocks over a fifth of the background: what a noisy DiT sample looks like.
    rng = np.random.default_rng(3)
    clip = render_clip(_specs(32, 9, n=1)[0])
    speckle = rng.random((9, 16, 16)) < 0.2
    speckle = speckle.repeat(2, axis=1).repeat(2, axis=2) & ~_object_mask(clip)
    faint, strong = clip.copy(), clip.copy()
    faint[speckle] = np.clip(clip[speckle] + rng.integers(-30, 31, (int(speckle.sum()), 3)), 0, 255)
    strong[speckle] = rng.choice([0, 255], (int(speckle.sum()), 3))
    quality = frame_quality(faint)
    assert quality.background_rms > 5 and quality.fragments_per_frame == 1.0
    assert frame_quality(strong).fragments_per_frame > 3


def test_synthbench_reports_frame_quality_per_run():
    prompts = synthbench_prompts()[:4]

    def faithful(prompt, seed):
        return render_clip(sample_clip_spec(np.random.default_rng(seed), 32, 9))

    result = run_synthbench(faithful, prompts, [0, 1])
    quality = result.frame_quality()
    assert quality.background_rms == 0.0 and quality.fragments_per_frame == 1.0
    assert len(result.quality) == 2 and len(result.quality[0]) == 4
