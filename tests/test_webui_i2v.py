"""Image-to-video in the app: the start image reaches the pipeline (same video as the library makes from it), a
model that needs one refuses to run without it and a text-to-video model refuses one, in the app's words."""

import numpy as np
import pytest
import torch

from alice_core.errors import AliceError
from alice_core.pipeline import GenerationSettings, load_pipeline
from alice_core.video_io import read_video, read_video_metadata
from webui.studio import START_IMAGE_NAME, Job, Studio

from tests.bundles import random_tiny_bundle

PROMPT = "a red ball bouncing"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    random_tiny_bundle(models / "i2v-test", name="i2v-test", image_to_video=True)
    random_tiny_bundle(models / "random-test")
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
