"""Image-to-video in the app: the start image reaches the pipeline (same video as the library makes from it), a
model that needs one refuses to run without it and a text-to-video model refuses one, in the app's words; a Wan2.1
I2V model reads it through the CLIP vision file chosen from the app's list."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from alice_core.errors import AliceError
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.video_io import read_video, read_video_metadata
from webui.studio import START_IMAGE_NAME, Job, Studio

from tests.bundles import random_tiny_bundle
from tests.test_clip_vision import WIDTH as CLIP_WIDTH
from tests.test_clip_vision import clip_files  # noqa: F401  (fixture: tiny CLIP vision file and folder)

PROMPT = "a red ball bouncing"


@pytest.fixture(scope="module")
def studio(tmp_path_factory, clip_files):  # noqa: F811
    models = tmp_path_factory.mktemp("models")
    random_tiny_bundle(models / "i2v-test", name="i2v-test", image_to_video=True)
    random_tiny_bundle(models / "random-test")
    random_tiny_bundle(models / "clip-i2v-test", name="clip-i2v-test", image_dim=CLIP_WIDTH)  # Wan2.1 I2V's inputs
    (models / "clip_vision").mkdir()
    shutil.copy(clip_files[0] / "clip_vision_tiny.safetensors", models / "clip_vision")
    return Studio(tmp_path_factory.mktemp("out"), models_dir=models)


def picture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)


def test_the_start_image_reaches_the_pipeline(studio):
    pipe = studio.pipeline("local/i2v-test")
    assert pipe.start_image_use() == "needed" and studio.pipeline("local/random-test").start_image_use() == "none"
    made = studio.generate(Job(model="local/i2v-test", prompt=PROMPT, seed=3, sampler="rcm", steps=2,
                               image=picture()))
    expected = load_pipeline(studio.models_dir / "i2v-test")(
        GenerationSettings(prompt=PROMPT, seed=3, sampler="rcm", steps=2), image=picture())
    torch.testing.assert_close(made.video.latents, expected.latents, atol=1e-5, rtol=1e-5)
    assert read_video(made.path)[0].shape == expected.frames.shape
    other = studio.generate(Job(model="local/i2v-test", prompt=PROMPT, seed=3, sampler="rcm", steps=2,
                                image=picture(1)))
    assert (other.video.latents - made.video.latents).abs().max() > 0.1  # the image matters
    assert read_video_metadata(made.path)["image"] == START_IMAGE_NAME


def test_a_missing_or_unwanted_start_image_is_named_in_the_apps_words(studio):
    with pytest.raises(AliceError, match=r"^i2v-test is an image-to-video model: upload a start image \(Start "
                                         r"image, under the prompt\)$"):
        studio.generate(Job(model="local/i2v-test", prompt=PROMPT))
    with pytest.raises(AliceError, match=r"^random-test is a text-to-video model and takes no start image; remove "
                                         r"the picture from Start image$"):
        studio.generate(Job(model="local/random-test", prompt=PROMPT, image=picture()))


def test_wan21_i2v_reads_the_start_image_through_the_chosen_clip_vision_file(studio):
    assert "clip_vision_tiny.safetensors" in studio.clip_vision_names()
    job = Job(model="local/clip-i2v-test", prompt=PROMPT, seed=4, sampler="rcm", steps=2, image=picture(),
              clip_vision="clip_vision_tiny.safetensors")
    made = studio.generate(job)
    expected = load_pipeline(studio.models_dir / "clip-i2v-test",
                             clip_vision=studio.models_dir / "clip_vision" / "clip_vision_tiny.safetensors")(
        GenerationSettings(prompt=PROMPT, seed=4, sampler="rcm", steps=2), image=picture())
    torch.testing.assert_close(made.video.latents, expected.latents, atol=1e-5, rtol=1e-5)
    pipe = studio.pipeline("local/clip-i2v-test")
    assert pipe.image_encoder.width == CLIP_WIDTH and pipe.replace().image_encoder is pipe.image_encoder  # LoRA copy
    with pytest.raises(AliceError, match=r"^clip-i2v-test is a Wan2.1 image-to-video model and needs the CLIP vision "
                                         r"encoder: choose it in CLIP vision \(under Start image\)"):
        studio.generate(dataclasses.replace(job, clip_vision=""))
    with pytest.raises(AliceError, match=r"^unknown CLIP vision file '../clip.safetensors'; pick one from the CLIP "
                                         r"vision list"):
        studio.generate(dataclasses.replace(job, clip_vision="../clip.safetensors"))
